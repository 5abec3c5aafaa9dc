"""benchmarks/ab_engine.py times two revisions from their own worktrees and leaves no worktree behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "ab_engine.py"


def _worktrees() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_same_revision_on_both_sides():
    before = _worktrees()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--base", "HEAD", "--head", "HEAD", "--pairs", "1",
                           "--repeats", "2", "--space", "tiny", "--threads", "1", "--batch", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["revisions"]["base"] == res["revisions"]["head"]
    assert res["resolution"] == 16 and res["pairs"] == 1 and res["batch"] == 2
    assert res["checksums"]["base"] == res["checksums"]["head"] > 0  # the same network computes the same logits
    for side in ("base", "head"):
        assert len(res["all_ms"][side]["1"]) == 1 and res["median_ms"][side]["1"] > 0
        assert 0 < res["median_best_ms"][side]["1"] <= res["median_ms"][side]["1"]  # one process: its fastest call
    ratio = res["median_ms"]["base"]["1"] / res["median_ms"]["head"]["1"]
    assert abs(res["base_over_head"]["1"] - ratio) < 1e-12
    ratio = res["median_best_ms"]["base"]["1"] / res["median_best_ms"]["head"]["1"]
    assert abs(res["base_over_head_best"]["1"] - ratio) < 1e-12
    assert _worktrees() == before


def test_unknown_revision_is_a_one_line_error():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--base", "no-such-revision", "--pairs", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown revision" in proc.stderr
