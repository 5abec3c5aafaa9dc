"""Installed size of the runtime-only package (what a device needs to run packed models) against the full
install with the training stack, each in a fresh virtual environment. Prints JSON.

    python benchmarks/install_size.py [--keep DIR]

Builds a wheel of this checkout, then installs ``nasbnn``, ``nasbnn[images]`` and ``nasbnn[train]`` with
pip (from whatever index pip is configured with) and sums the site-packages of each, leaving out pip and
setuptools, which every virtual environment brings. Also checks that the runtime environment has no
torch and runs ``nasbnn infer --help`` there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Brought by ``python -m venv`` itself: not part of either install.
BASE = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth")


def _mb(folder: Path) -> float:
    total = 0
    for p in folder.iterdir():
        if p.name.split("-")[0] in BASE or p.name in BASE:
            continue
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and not f.is_symlink()]
        total += sum(f.stat().st_size for f in files)
    return round(total / 1e6, 1)


def _venv(root: Path, name: str, requirement: str) -> dict[str, object]:
    env = root / name
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    py = env / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", requirement], check=True)
    site = next((env / "lib").glob("python3*/site-packages"))
    freeze = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                            text=True).stdout.split()
    has_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    infer_ok = subprocess.run([str(env / "bin" / "nasbnn"), "infer", "--help"], capture_output=True).returncode == 0
    return {"requirement": requirement.replace(str(root), "<tmp>"), "mb": _mb(site), "torch_importable": has_torch,
            "infer_help_ok": infer_ok, "packages": sorted(p for p in freeze if not p.startswith(BASE))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", default=None, help="build the environments here and keep them (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp).resolve()
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(root / "wheel"), str(REPO)], check=True, capture_output=True)
        wheel = next((root / "wheel").glob("nasbnn-*.whl"))
        out = {name: _venv(root, name, f"{wheel}{extra}")
               for name, extra in (("runtime", ""), ("runtime_images", "[images]"), ("full", "[train]"))}
    out["python"] = sys.version.split()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
