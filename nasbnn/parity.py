"""Check this implementation against outputs of the official NAS-BNN code (parity fixtures).

A fixture folder holds ``logits_seed<S>.json`` (architectures, weight modes, inputs and the upstream
logits), ``ops_seed<S>.json`` (upstream FLOPs/BOPs/OPs) and ``make_state.py``, which rebuilds the
deterministic upstream-format state dict for seed S.

Random binary networks turn any rounding difference into sign flips, so bit-level agreement of the
float kernels matters: oneDNN picks different convolution kernels (and summation orders) on AVX-512
and AVX2 machines. :func:`check_logits` is therefore best run with ``ONEDNN_MAX_CPU_ISA`` set to the
ISA the fixtures were made with (``AVX2`` for the shipped ones); ``nasbnn parity`` does that itself.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, NasbnnError

__all__ = ["ISAS", "check_logits", "check_ops", "fixture_files", "format_parity", "logits_cases", "run_parity"]


def fixture_files(folder: str | Path, kind: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{kind}_seed*.json"))


def _make_state(folder: Path, seed: int) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("nasbnn_fixture_make_state", folder / "make_state.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(folder / "make_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keys = json.loads((folder / "state_keys.json").read_text())
    make = getattr(module, "make_state", None)
    if not callable(make):
        raise NasbnnError(f"{str(folder / 'make_state.py')!r} defines no make_state(keys, seed) function")
    state = make(keys, seed)
    if not isinstance(state, dict) or not state:
        got = "an empty dict" if isinstance(state, dict) else type(state).__name__
        raise NasbnnError(f"{str(folder / 'make_state.py')!r}: make_state(keys, {seed}) returned {got}, not a state "
                          "dict")
    return state


def check_ops(folder: str | Path) -> list[dict[str, Any]]:
    """Per architecture of every ``ops_seed*.json``: our vs upstream MFLOPs/MBOPs/MOPs."""
    from .cost import arch_cost
    from .presets import create_space
    from .upstream import arch_from_upstream

    space = create_space("imagenet")
    out = []
    for f in fixture_files(folder, "ops"):
        for i, entry in enumerate(json.loads(f.read_text())):
            arch = arch_from_upstream(entry["arch"], space, nondecreasing=False)
            c = arch_cost(arch, space)
            rel = max(abs(getattr(c, k) - entry[k]) / abs(entry[k]) for k in ("mflops", "mbops", "mops"))
            out.append({"file": f.name, "index": i, "mops": c.mops, "upstream_mops": entry["mops"], "rel_err": rel})
    return out


def logits_cases(folder: str | Path) -> Iterator[tuple[str, int, Any, Any, dict[str, Any]]]:
    """Every case of every ``logits_seed*.json``: ``(file name, index in the file, supernet, input, case)``, the
    supernet holding the fixture's state with the case's architecture set (in eval mode)."""
    import numpy as np
    import torch

    from .models import SuperBNN
    from .presets import create_space
    from .upstream import arch_from_upstream, load_upstream_checkpoint

    folder = Path(folder)
    space = create_space("imagenet")
    for f in fixture_files(folder, "logits"):
        data = json.loads(f.read_text())
        state = _make_state(folder, int(data["seed"]))
        net = SuperBNN(space).eval()
        load_upstream_checkpoint(net, state)
        x = torch.from_numpy(np.load(folder / data["input"]))
        for i, case in enumerate(data["cases"]):
            net.set_arch(arch_from_upstream(case["arch"], space, nondecreasing=False), nondecreasing=False)
            yield f.name, i, net, x, case


def check_logits(folder: str | Path) -> list[dict[str, Any]]:
    """Per case of every ``logits_seed*.json``: relative L2 error of our logits vs upstream's."""
    import torch

    results = []
    for name, _, net, x, case in logits_cases(folder):
        with torch.no_grad(), net.precision(case["weights"]):
            y = net(x)
        ref = torch.tensor(case["logits"], dtype=torch.float32)
        rel = float((y - ref).norm() / ref.norm())
        results.append({"file": name, "case": case["name"], "weights": case["weights"], "rel_l2": rel})
    return results


#: The values oneDNN accepts for ``ONEDNN_MAX_CPU_ISA`` on x86-64 (``ALL``: no limit).
ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
        "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16", "ALL")


def _check_settings(isa: str, tolerance: float) -> str:
    """``isa`` in the spelling oneDNN reads, after checking it and ``tolerance``.

    Raises:
        ConfigError: an ISA oneDNN does not know, or a tolerance that is negative or not a number.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance must be a finite number >= 0 (a relative L2 error), got {tolerance}")
    name = str(isa).strip().upper()
    if name not in ISAS:
        raise ConfigError(f"--isa {isa!r} is not a oneDNN ISA; choose one of {', '.join(ISAS)}")
    return name


#: Seconds the parity check's child interpreter may take (the official fixtures need a few).
PARITY_TIMEOUT_S = 600.0


def run_parity(fixtures: str | Path | None = None, *, isa: str = "AVX2", tolerance: float = 1e-3) -> dict[str, Any]:
    """:func:`check_logits` and :func:`check_ops` on a fixture folder, in a child interpreter whose oneDNN is held
    to ``isa`` (it must be set before PyTorch loads); ``ok`` says whether every logit case is within
    ``tolerance`` and every OPs figure within 1e-6.

    Raises:
        ConfigError: an unknown ``isa``, a negative or non-finite ``tolerance``, or not a fixture folder
            (no ``make_state.py``, or nothing to compare).
        NasbnnError: the check could not run, ended without a result, or took more than :data:`PARITY_TIMEOUT_S`.
    """
    import os
    import subprocess
    import sys

    isa = _check_settings(isa, tolerance)
    folder = Path(fixtures or os.environ.get("NASBNN_UPSTREAM_FIXTURES", "../shared/fixtures/upstream"))
    if not (folder / "make_state.py").is_file():
        raise ConfigError(f"{str(folder)!r} is not a parity fixture folder (no make_state.py)")
    if not fixture_files(folder, "logits") and not fixture_files(folder, "ops"):
        raise ConfigError(f"parity fixture folder {str(folder)!r} has nothing to compare (no logits_seed*.json "
                          "or ops_seed*.json)")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
    code = ("import json,sys; from nasbnn.parity import check_logits, check_ops; "
            "print(json.dumps({'logits': check_logits(sys.argv[1]), 'ops': check_ops(sys.argv[1])}))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True,
                              timeout=PARITY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NasbnnError(f"parity check did not finish within {PARITY_TIMEOUT_S:g} s (it takes seconds on the "
                          f"official fixtures); does {str(folder / 'make_state.py')!r} end?") from None
    if proc.returncode != 0:
        said = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        why = said[-1] if said else f"it ended with exit status {proc.returncode} and no message"
        why = re.sub(r"^nasbnn\.errors\.\w+: ", "", why)
        raise NasbnnError(f"parity check failed to run: {why}")
    lines = proc.stdout.strip().splitlines()
    try:
        res = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        res = None
    if not (isinstance(res, dict) and isinstance(res.get("logits"), list) and isinstance(res.get("ops"), list)):
        raise NasbnnError(f"parity check ended without a result (did {str(folder / 'make_state.py')!r} end the "
                          "process?)")
    ok = all(r["rel_l2"] <= tolerance for r in res["logits"]) and all(r["rel_err"] <= 1e-6 for r in res["ops"])
    return {**res, "ok": ok}


def format_parity(res: dict[str, Any]) -> str:
    """The logits table, the worst OPs error and the verdict of a :func:`run_parity` result."""
    from .utils.table import format_table

    rows = [[r["file"], r["case"], r["weights"], r["rel_l2"]] for r in res["logits"]]
    worst = max((r["rel_err"] for r in res["ops"]), default=0.0)
    return "\n".join([format_table(["file", "case", "weights", "rel L2"], rows),
                      f"OPs: {len(res['ops'])} architectures, worst relative error {worst:.2e}",
                      "parity: OK" if res["ok"] else "parity: FAILED"])
