"""The main job on the tiny config gives the family stored in tests/data: architectures, MOPs, test top-1 and
the random baseline, to the last image. Any change of the numbers (training, search, export, evaluation,
the random baseline) shows here and must update the stored expectation deliberately."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPECTED = Path(__file__).with_name("data") / "tiny_run_family.json"


def test_tiny_main_job_reproduces_the_stored_family(tmp_path):
    # oneDNN held to AVX2: its AVX-512 kernels round differently, and binary networks turn rounding into signs.
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "nasbnn", "run", "--config", "tiny", "--out", str(out), "--no-progress",
                          "pipeline.bench_repeats=0", "pipeline.finetune_members=0"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((out / "summary.json").read_text())
    want = json.loads(EXPECTED.read_text())
    assert [f["arch"] for f in got["family"]] == [f["arch"] for f in want["family"]]
    for g, w in zip(got["family"], want["family"]):
        assert g["mops"] == pytest.approx(w["mops"], abs=1e-6)
        assert g["top1"] == w["top1"], g["arch"]
        assert g.get("random_median_top1") == w["random_median_top1"], g["arch"]
    assert got["gap_over_random_median"] == pytest.approx(want["gap_over_random_median"], abs=1e-9)
    assert got["evaluated_in_search"] == want["evaluated_in_search"]
