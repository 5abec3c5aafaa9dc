"""Check this implementation against outputs of the official NAS-BNN code (parity fixtures).

A fixture folder holds ``logits_seed<S>.json`` (architectures, weight modes, inputs and the upstream
logits), ``ops_seed<S>.json`` (upstream FLOPs/BOPs/OPs) and ``state_keys.json`` (the upstream state dict's
names and shapes), from which :func:`fixture_state` rebuilds the deterministic upstream-format state for
seed S. Nothing in the folder is executed: its ``make_state.py`` is not needed.

Random binary networks turn any rounding difference into sign flips, so bit-level agreement of the
float kernels matters: oneDNN picks different convolution kernels (and summation orders) on AVX-512
and AVX2 machines. :func:`check_logits` is therefore best run with ``ONEDNN_MAX_CPU_ISA`` set to the
ISA the fixtures were made with (``AVX2`` for the shipped ones); ``nasbnn parity`` does that itself.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, NasbnnError
from .utils.io import read_json

__all__ = ["ISAS", "check_logits", "check_ops", "fixture_files", "fixture_state", "format_parity", "logits_cases",
           "run_parity"]


def fixture_files(folder: str | Path, kind: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{kind}_seed*.json"))


def _leaf_tensor(key: str, shape: list[int], g: Any) -> Any:
    """One tensor of the fixture state: how the fixtures draw each kind of parameter (README of the fixtures)."""
    import torch

    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    if leaf in ("w_init_state", "scaling_factor"):
        return torch.ones(shape)
    if leaf.startswith(("matrix_", "fp2bin_")):  # Bi-Transformation matrices: near the identity
        return torch.eye(shape[0]) + 0.05 * torch.randn(shape, generator=g)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "w_scale":
        return 0.004 * (0.5 + torch.rand(shape, generator=g))
    if ".prelu" in key:
        return 0.25 + 0.05 * torch.randn(shape, generator=g)
    if ".bn." in key and leaf == "weight":
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if leaf == "weight" and len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return 0.1 * torch.randn(shape, generator=g)  # biases of BN, RSign, RPReLU and the classifier


def fixture_state(keys: dict[str, list[int]], seed: int) -> dict[str, Any]:
    """The upstream-format supernet state the fixtures were made with, rebuilt from ``state_keys.json``.

    Each tensor comes from its own generator, seeded with the CRC32 of its key xor ``seed``; the integer
    candidate buffers are left out (the model derives them). This is the rule the fixture folder's
    ``make_state.py`` follows, computed here so that no code from the folder is run.
    """
    import torch

    state = {}
    for key, shape in keys.items():
        if key.rsplit(".", 1)[-1] in ("biggest_cand", "smallest_cand"):
            continue
        state[key] = _leaf_tensor(key, shape, torch.Generator().manual_seed(zlib.crc32(key.encode()) ^ seed))
    return state


def _state_keys(folder: Path) -> dict[str, list[int]]:
    """``state_keys.json`` of a fixture folder: parameter name -> shape."""
    f = folder / "state_keys.json"
    keys = read_json(f, error=ConfigError, missing=f"{str(folder)!r} is not a parity fixture folder (no "
                     "state_keys.json)")
    if not (isinstance(keys, dict) and keys and all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                               and 0 <= d <= 1 << 20 for d in v)
            for k, v in keys.items())):
        raise ConfigError(f"{str(f)!r} must map parameter names to shapes (lists of sizes)")
    return keys


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
            errs = [abs(getattr(c, k) - entry[k]) / abs(entry[k]) for k in ("mflops", "mbops", "mops")]
            rel = max(errs) if all(math.isfinite(e) for e in errs) else math.inf
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
        state = fixture_state(_state_keys(folder), int(data["seed"]))
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
            (no valid ``state_keys.json``, or nothing to compare).
        NasbnnError: the check could not run, ended without a result, or took more than :data:`PARITY_TIMEOUT_S`.
    """
    import os
    import subprocess
    import sys

    isa = _check_settings(isa, tolerance)
    folder = Path(fixtures or os.environ.get("NASBNN_UPSTREAM_FIXTURES", "../shared/fixtures/upstream"))
    _state_keys(folder)
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
                          "official fixtures)") from None
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
        raise NasbnnError("parity check ended without a result")
    if not res["logits"] and not res["ops"]:
        raise ConfigError(f"parity fixture folder {str(folder)!r} holds no cases: nothing was compared")
    # NaN fails every comparison: an error that is not a finite number is never within the tolerance
    ok = (all(math.isfinite(r["rel_l2"]) and r["rel_l2"] <= tolerance for r in res["logits"])
          and all(math.isfinite(r["rel_err"]) and r["rel_err"] <= 1e-6 for r in res["ops"]))
    return {**res, "ok": ok}


def format_parity(res: dict[str, Any]) -> str:
    """The logits table, the worst OPs error and the verdict of a :func:`run_parity` result."""
    from .utils.table import format_table

    rows = [[r["file"], r["case"], r["weights"], r["rel_l2"]] for r in res["logits"]]
    worst = max((r["rel_err"] for r in res["ops"]), default=0.0)
    return "\n".join([format_table(["file", "case", "weights", "rel L2"], rows),
                      f"OPs: {len(res['ops'])} architectures, worst relative error {worst:.2e}",
                      "parity: OK" if res["ok"] else "parity: FAILED"])
