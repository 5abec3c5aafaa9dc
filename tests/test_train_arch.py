"""``nasbnn train-arch``: one architecture from scratch, exact resume, bundles, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from nasbnn.bundle import load_bundle, read_bundle_info
from nasbnn.cli import main
from nasbnn.config import RunConfig, load_config
from nasbnn.errors import CheckpointError, InvalidArch
from nasbnn.presets import create_space
from nasbnn.train.bn import evaluate_top1
from nasbnn.train.checkpoint import load_checkpoint
from nasbnn.train.standalone import train_arch

TINY = ["space.name=tiny", "data.name=synthetic", "data.holdout_per_class=8", "data.batch_size=16",
        "data.eval_batch_size=64", "data.synthetic.num_train=160", "data.synthetic.num_test=64",
        "train.epochs=1", "train.log_every=1", "train.checkpoint_every=2", "train.lr=0.005", "device=cpu"]


def cfg_for(out, *extra: str) -> RunConfig:
    return load_config(RunConfig, None, [*TINY, f"out={out}", *extra])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    arch = str(create_space("tiny").smallest())
    full = train_arch(cfg_for(tmp_path / "full", "model.weight_norm=false"), arch, progress=False)
    assert full["step"] == full["total_steps"] >= 6
    part_cfg = cfg_for(tmp_path / "part", "model.weight_norm=false")
    first = train_arch(part_cfg, arch, progress=False, max_steps=3)
    assert first["step"] == 3
    second = train_arch(part_cfg, arch, progress=False, resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt", kind="standalone")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt", kind="standalone")
    assert a["step"] == b["step"] == full["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert second["test_top1"] == full["test_top1"]
    # The bundle is the trained network, keeps the switch, and reproduces the reported accuracy.
    net = load_bundle(tmp_path / "full" / "bundle")
    assert net.weight_norm is False and str(net.arch) == arch
    assert read_bundle_info(tmp_path / "full" / "bundle")["metrics"]["test_top1"] == full["test_top1"]
    from nasbnn.context import build_data_and_space

    data, _ = build_data_and_space(cfg_for(tmp_path / "full"))
    test = list(data.test.loader(batch_size=64, train=False, seed=0))
    assert evaluate_top1(net, test)["top1"] == pytest.approx(full["test_top1"])
    summary = json.loads((tmp_path / "full" / "standalone_summary.json").read_text())
    assert summary["test_top1"] == full["test_top1"] and summary["arch"] == arch
    # A resume must train the same architecture and the same switches.
    with pytest.raises(CheckpointError, match=r"cannot resume: the checkpoint trains '.*', not '"):
        train_arch(part_cfg, str(create_space("tiny").largest()), progress=False, resume=True)
    with pytest.raises(CheckpointError, match=r"model\.weight_norm: checkpoint false, config true"):
        train_arch(cfg_for(tmp_path / "part"), arch, progress=False, resume=True)


def test_training_learns_the_synthetic_task(tmp_path):
    out = train_arch(cfg_for(tmp_path, "train.epochs=4"), str(create_space("tiny").largest()), progress=False)
    assert out["test_top1"] > 100 / 5 + 15  # well above chance (5 classes)


def test_arch_outside_the_space_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(InvalidArch, match="not in search space 'tiny'"):
        train_arch(cfg_for(tmp_path), "c4k3g1.1|c8k3g1.1", progress=False)
    bad = str(create_space("tiny").largest()).replace("k3", "k9", 1)
    rc = main(["train-arch", "--config", "tiny", "--arch", bad, f"out={tmp_path / 'x'}", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("nasbnn train-arch: error:")
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
    rc = main(["train-arch", "--config", "tiny", "--arch", "garbage", f"out={tmp_path / 'y'}", "--no-progress"])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
