"""Parity with the official NAS-BNN code on the fixtures in $NASBNN_UPSTREAM_FIXTURES.

Every ``logits_seed*.json`` and ``ops_seed*.json`` in the folder is checked; state dicts are rebuilt by
``nasbnn.parity.fixture_state`` (bit for bit what the folder's ``make_state.py`` gives, checked here).
Logits run in a subprocess with oneDNN pinned to the ISA the fixtures were made with (AVX2), because
random binary networks amplify kernel rounding differences (AVX-512 vs AVX2 summation order) into sign
flips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("NASBNN_UPSTREAM_FIXTURES", REPO.parent / "shared" / "fixtures" / "upstream"))

pytestmark = pytest.mark.skipif(
    not (FIXTURES / "make_state.py").is_file(), reason=f"no upstream parity fixtures at {FIXTURES}"
)


def test_fixture_state_is_the_folders_make_state_bit_for_bit():
    """parity never runs the folder's script; its own rebuild of the state must be the script's exactly."""
    import torch
    from upstream_files import fixture_state as script_state

    from nasbnn.parity import fixture_state

    keys = json.loads((FIXTURES / "state_keys.json").read_text())
    for seed in (0, 5):
        want, got = script_state(seed), fixture_state(keys, seed)
        assert list(got) == list(want)
        for k, v in want.items():
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_ops_match_upstream_to_1e6():
    from nasbnn.parity import check_ops, fixture_files

    files = fixture_files(FIXTURES, "ops")
    assert files, "fixture folder has no ops_seed*.json"
    results = check_ops(FIXTURES)
    assert len(results) >= 2
    worst = max(r["rel_err"] for r in results)
    assert worst <= 1e-6, max(results, key=lambda r: r["rel_err"])


def test_logits_match_upstream_in_both_weight_modes():
    from nasbnn.parity import fixture_files

    files = fixture_files(FIXTURES, "logits")
    assert files, "fixture folder has no logits_seed*.json"
    expected = sum(len(json.loads(f.read_text())["cases"]) for f in files)
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="2")
    code = "import json,sys; from nasbnn.parity import check_logits; print(json.dumps(check_logits(sys.argv[1])))"
    proc = subprocess.run([sys.executable, "-c", code, str(FIXTURES)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == expected
    assert {r["weights"] for r in results} >= {"binary", "fp"}
    bad = [r for r in results if not r["rel_l2"] <= 1e-3]
    assert not bad, bad
