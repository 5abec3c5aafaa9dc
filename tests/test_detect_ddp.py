"""Detector training under torchrun (2 gloo ranks on CPU) equals one process (opt-in: -m slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasbnn.detect.synthetic import generate_synthetic_coco
from nasbnn.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    generate_synthetic_coco(tmp_path / "data", images=32, val_images=8, size=64, seed=0)
    # A frozen backbone keeps BatchNorm out of it (per-rank batch statistics differ by design); GroupNorm in
    # the head is per sample, so the data-parallel step must equal the single-process one.
    args = ["detect", "train", "--no-progress", "device=cpu", "backbone.space=tiny", f"data.root={tmp_path / 'data'}",
            "data.train=train", "data.val=val", "data.canvas=64", "data.batch_size=8", "data.synthetic=null",
            "train.epochs=1", "detect.freeze_backbone=true", "detect.neck_width=16", "detect.gn_groups=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # --standalone: torchrun picks a free rendezvous port itself (no probe-then-bind race).
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nasbnn", *args, f"out={tmp_path / 'ddp'}"]
    single = [sys.executable, "-m", "nasbnn", *args, f"out={tmp_path / 'single'}"]
    for cmd in (ddp, single):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
