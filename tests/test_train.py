"""Supernet training: the step, resume equality, divergence handling, errors, checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch

from nasbnn.cli import main
from nasbnn.config import RunConfig, load_config
from nasbnn.errors import CheckpointError
from nasbnn.train.checkpoint import load_checkpoint
from nasbnn.train.supernet import TrainingDiverged, train_supernet

TINY = [*helpers.TINY, "train.epochs=1", "train.log_every=1", "train.checkpoint_every=2", "train.eval_images=32",
        "train.lr=0.005"]


def tiny_cfg(out: Path, *extra: str) -> RunConfig:
    return load_config(RunConfig, None, [*TINY, f"out={out}", *extra])


def test_step_returns_named_losses_and_learns(tmp_path):
    cfg = tiny_cfg(tmp_path / "a", "train.epochs=6", "train.eval_every_epochs=6")
    summary = train_supernet(cfg, progress=False)
    assert summary["step"] == summary["total_steps"] == 6 * 160 // 16
    from nasbnn.utils.metrics import read_jsonl

    recs = [r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    assert {"loss", "loss_teacher", "loss_smallest", "loss_random", "teacher_top1", "lr"} <= set(recs[0])
    first = sum(r["loss_teacher"] for r in recs[:5]) / 5
    last = sum(r["loss_teacher"] for r in recs[-5:]) / 5
    assert last < first  # the teacher learns the synthetic task
    assert summary["teacher_top1"] > 100 / 5  # above chance (5 classes), BN recalibrated


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, kind="supernet")["model"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = tiny_cfg(tmp_path / "full", "train.epochs=2")
    train_supernet(full, progress=False, max_steps=10)
    part = tiny_cfg(tmp_path / "part", "train.epochs=2")
    train_supernet(part, progress=False, max_steps=4)  # "killed" after step 4 (last checkpoint at 4)
    train_supernet(part, progress=False, resume=True, max_steps=10)
    a, b = _state(tmp_path / "full" / "checkpoint.pt"), _state(tmp_path / "part" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    cb = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert ca["step"] == cb["step"] == 10
    for (ka, va), (_, vb) in zip(ca["optimizer"]["state"].items(), cb["optimizer"]["state"].items()):
        assert torch.equal(va["exp_avg"], vb["exp_avg"]), ka


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import nasbnn.train.supernet as sn

    calls = {"n": 0}
    real = sn.smooth_cross_entropy

    def poisoned(logits, target, smoothing):
        calls["n"] += 1
        loss = real(logits, target, smoothing)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(sn, "smooth_cross_entropy", poisoned)
    cfg = tiny_cfg(tmp_path / "nan", "train.epochs=2")
    with pytest.raises(TrainingDiverged, match="at step 3") as err:
        train_supernet(cfg, progress=False)
    assert f"the last good checkpoint is '{tmp_path / 'nan' / 'checkpoint.pt'}'" in str(err.value)
    ck = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_optimizer_groups_decay_only_conv_and_classifier_weights():
    from nasbnn.models import SuperBNN
    from nasbnn.presets import create_space
    from nasbnn.train.optim import param_groups

    net = SuperBNN(create_space("tiny"))
    groups = param_groups(net, 5e-6)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in groups[1]["params"]}
    assert "classifier.weight" in decayed and "stages.1.0.conv_kxk.weight" in decayed
    assert "stages.0.0.conv.weight" in decayed
    assert not any(k.endswith(("fp2bin", "bias", "slope", "shift", "step_size")) or "transform_" in k
                   for k in decayed)


def test_warmup_then_cosine_schedule():
    from nasbnn.train.optim import cosine_lambda

    fn = cosine_lambda(100, 10, start_factor=0.1)
    assert fn(0) == pytest.approx(0.1)
    assert fn(5) == pytest.approx(0.55)
    assert fn(10) == pytest.approx(1.0)
    assert fn(55) == pytest.approx(0.5)
    assert fn(100) == pytest.approx(0.0, abs=1e-12)


def test_checkpoint_of_another_space_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path / "x")
    train_supernet(cfg, progress=False, max_steps=2)
    from nasbnn.presets import create_space

    with pytest.raises(CheckpointError, match="trained on search space 'tiny'"):
        load_checkpoint(tmp_path / "x" / "checkpoint.pt", space=create_space("fashion-mnist"))
    with pytest.raises(CheckpointError, match="not a nasbnn checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


def _run_cli(*args: str) -> int:
    return main(list(args))


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    out = str(tmp_path / "r")
    cases = [
        (["train-supernet", "train.lrr=1", f"out={out}"], "unknown config key 'train.lrr'"),
        (["train-supernet", "train.lr=fast", f"out={out}"], "config key 'train.lr'"),
        (["train-supernet", "--resume", f"out={out}"], "cannot resume"),
        (["train-supernet", "data.root=/nonexistent/fmnist", f"out={out}"], "not found"),
        (["train-supernet", *TINY, "space.name=nope", f"out={out}"], "unknown search space 'nope'"),
    ]
    for argv, expected in cases:
        code = _run_cli(*argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, argv
        assert expected in err, (argv, err)
        assert len(err.splitlines()) == 1, err
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("train: {epochs: [1, 2]}\n")
    assert _run_cli("train-supernet", "--config", str(bad_cfg)) == 2
    assert "train.epochs" in capsys.readouterr().err
    # a dataset folder of the wrong format
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"garbage")
    assert _run_cli("train-supernet", "data.name=cifar10", f"data.root={tmp_path}", f"out={out}") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not Path(out).exists() or not (Path(out) / "checkpoint.pt").exists()


def test_kill_minus_9_then_resume_finishes(tmp_path):
    out = tmp_path / "killed"
    args = ["train-supernet", *TINY, "train.epochs=40", "train.checkpoint_every=3", "train.eval_every_epochs=100",
            f"out={out}", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert helpers.run_frozen(tmp_path, "step", 6, args, env) == -signal.SIGKILL  # killed right after step 6
    ck = out / "checkpoint.pt"
    step_before = load_checkpoint(ck)["step"]  # readable: written atomically
    assert step_before == 6
    res = subprocess.run([sys.executable, "-m", "nasbnn", "train-supernet", f"out={out}", "--resume",
                          "--max-steps", str(step_before + 6), "--no-progress"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_checkpoint(ck)["step"] == step_before + 6
    assert not list(out.glob(".*.tmp"))


def test_resume_requires_matching_space(tmp_path):
    cfg = tiny_cfg(tmp_path / "s")
    train_supernet(cfg, progress=False, max_steps=2)
    other = tiny_cfg(tmp_path / "s", "data.synthetic.num_classes=7")
    with pytest.raises(CheckpointError, match=r"was trained on search space 'tiny' \(fingerprint \w+\), not on"):
        train_supernet(other, progress=False, resume=True)
