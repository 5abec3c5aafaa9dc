"""The AMX probe computes exact binary dot products on both sides (AMX only where the CPU has it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import probe_amx


def test_probe_results_are_exact():
    out = probe_amx.probe([128, 320], seconds=0.001, seed=1)
    assert [r["k_bits"] for r in out["rows"]] == [128, 320]
    for row in out["rows"]:
        assert row["popcount_exact"] is True
        assert row["popcount_gmacs"] > 0
        if out["amx"] == "available":
            assert row["amx_exact"] is True
        else:
            assert "amx_gmacs" not in row


def test_probe_refuses_partial_words():
    with pytest.raises(SystemExit, match="multiple of 64"):
        probe_amx.probe([100], seconds=0.001, seed=0)
