"""The three strategy switches: closed-form forward passes, export, packed engine, bundles, resume, errors."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_

from nasbnn.bundle import load_bundle, read_bundle_info, save_bundle
from nasbnn.cli import main
from nasbnn.config import RunConfig, load_config
from nasbnn.engine import BinaryEngine, pack_model
from nasbnn.engine.frozen import freeze
from nasbnn.errors import CheckpointError, ConfigError
from nasbnn.export import export_subnet
from nasbnn.models import SuperBNN
from nasbnn.ops.elastic import ElasticBinaryConv2d
from nasbnn.presets import create_space
from nasbnn.runs import load_supernet
from nasbnn.train.checkpoint import load_checkpoint
from nasbnn.train.losses import smooth_cross_entropy
from nasbnn.train.optim import build_optimizer, build_scheduler
from nasbnn.train.sampler import SandwichSampler
from nasbnn.train.supernet import SupernetTrainer, train_supernet

TINY = [*helpers.TINY, "train.epochs=1", "train.log_every=1", "train.checkpoint_every=2", "train.eval_images=32",
        "train.lr=0.005"]
ALL_OFF = ["train.bi_teacher=false", "model.bi_transformation=false", "model.weight_norm=false"]


def tiny_cfg(out: Path, *extra: str) -> RunConfig:
    return load_config(RunConfig, None, [*TINY, f"out={out}", *extra])


# ------------------------------------------------------------------------------ closed form on one conv
def _conv(**switches: bool) -> ElasticBinaryConv2d:
    """A 3x3 conv, 2 filters of 2 inputs, with a non-trivial weight whose filter means are far from 0."""
    conv = ElasticBinaryConv2d(2, 2, (3,), (1,), generator=torch.Generator().manual_seed(0), **switches)
    with torch.no_grad():
        w = torch.linspace(-1.0, 2.0, conv.weight.numel()).view_as(conv.weight)
        conv.weight.copy_(w + torch.tensor([0.9, -0.7]).view(2, 1, 1, 1))  # offsets shift some signs
    return conv


def _alpha_sign(w: torch.Tensor) -> torch.Tensor:
    return w.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.sign(w)


def _standardise(w: torch.Tensor) -> torch.Tensor:
    return (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)


X = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(3))


def test_weight_norm_off_binarises_the_raw_weight():
    on, off = _conv(bi_transformation=False), _conv(bi_transformation=False, weight_norm=False)
    w = on.weight.detach()
    want_on = F.conv2d(X, _alpha_sign(_standardise(w)), padding=1)
    want_off = F.conv2d(X, _alpha_sign(w), padding=1)
    torch.testing.assert_close(on(X), want_on)
    torch.testing.assert_close(off(X), want_off)
    # The two differ in sign (the filter offsets) and in scale (mean|w| of raw vs standardised weights).
    assert not torch.equal(torch.sign(w), torch.sign(_standardise(w)))
    assert (off(X) - on(X)).abs().max() > 0.1


def test_weight_norm_off_teacher_uses_the_raw_weight():
    off = _conv(weight_norm=False)
    off.precision.binary_weights = False
    torch.testing.assert_close(off(X), F.conv2d(X, off.weight.detach(), padding=1))
    on = _conv()
    on.precision.binary_weights = False
    torch.testing.assert_close(on(X), F.conv2d(X, _standardise(on.weight.detach()), padding=1))


def test_bi_transformation_matrix_and_its_absence():
    on, off = _conv(), _conv(bi_transformation=False)
    assert on.fp2bin is not None and off.fp2bin is None
    assert "fp2bin" not in dict(off.named_parameters())
    m = torch.eye(9) + 0.3 * torch.randn(9, 9, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        on.fp2bin.copy_(m)
    w = on.weight.detach()
    transformed = (w.reshape(4, 9) @ m.T).view_as(w)  # each filter's K² taps mixed by the matrix
    torch.testing.assert_close(on(X), F.conv2d(X, _alpha_sign(_standardise(transformed)), padding=1))
    torch.testing.assert_close(off(X), F.conv2d(X, _alpha_sign(_standardise(w)), padding=1))


# ------------------------------------------------------------------------------ the teacher of the step
@pytest.mark.parametrize("bi_teacher", [True, False])
def test_teacher_precision_follows_bi_teacher(tmp_path, bi_teacher):
    cfg = tiny_cfg(tmp_path, f"train.bi_teacher={str(bi_teacher).lower()}", "train.label_smoothing=0.1")
    space = create_space("tiny")
    model = randomize_(SuperBNN(space, seed=0), seed=1)
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 5
    model.train()
    expected = {}
    for mode in ("fp", "binary"):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with model.use_arch(space.largest()), model.precision(mode), torch.no_grad():
            expected[mode] = float(smooth_cross_entropy(model(images), labels, 0.1))
        model.load_state_dict(state)  # undo the BN running-statistics update
    assert abs(expected["fp"] - expected["binary"]) > 1e-3
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    trainer = SupernetTrainer(model, cfg.train, SandwichSampler(space, num_random=1, seed=0), opt,
                              build_scheduler(opt, total_steps=4))
    out = trainer.step(images, labels, 0)
    assert float(out["loss_teacher"]) == pytest.approx(expected["fp" if bi_teacher else "binary"], abs=1e-5)


# ------------------------------------------------------------------------------ export, engine, bundle
def test_export_engine_and_bundle_honour_the_switches(tmp_path):
    space = create_space("tiny")
    sup = randomize_(SuperBNN(space, seed=1, bi_transformation=False, weight_norm=False), seed=2).eval()
    assert not any(n.endswith("fp2bin") for n, _ in sup.named_parameters())
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    arch = space.largest()
    static = export_subnet(sup, arch).eval()
    assert static.weight_norm is False
    with torch.no_grad(), sup.use_arch(arch):
        torch.testing.assert_close(static(x), sup(x))
    # The packed engine takes sign and scale of the raw weight: it agrees with the network...
    want = static(x).detach()
    with torch.no_grad():  # the inference graph (PyTorch baseline, traced by the ONNX export)
        torch.testing.assert_close(freeze(static)(x), want, rtol=1e-4, atol=1e-4)
    got = torch.from_numpy(BinaryEngine(pack_model(static))(x.numpy()))
    assert float((got - want).norm() / want.norm()) < 1e-4
    # ...and standardising instead (the default) would change the logits.
    for b in static.blocks:
        b.conv_kxk.weight_norm = b.conv_1x1.weight_norm = True
    wrong = torch.from_numpy(BinaryEngine(pack_model(static))(x.numpy()))
    assert float((wrong - want).norm() / want.norm()) > 1e-2
    for b in static.blocks:
        b.conv_kxk.weight_norm = b.conv_1x1.weight_norm = False
    cfg = tiny_cfg(tmp_path, *ALL_OFF)
    save_bundle(static, tmp_path / "b", config=cfg.model_dump(mode="json"))
    info = read_bundle_info(tmp_path / "b")
    assert info["strategies"] == {"bi_teacher": False, "bi_transformation": False, "weight_norm": False}
    loaded = load_bundle(tmp_path / "b")
    assert loaded.weight_norm is False
    torch.testing.assert_close(loaded(x), want)


def test_default_bundle_records_the_paper_method(tmp_path):
    space = create_space("tiny")
    static = export_subnet(randomize_(SuperBNN(space, seed=1), seed=2).eval(), space.smallest())
    save_bundle(static, tmp_path / "b")
    assert read_bundle_info(tmp_path / "b")["strategies"] == dict.fromkeys(
        ("bi_teacher", "bi_transformation", "weight_norm"), True)
    assert load_bundle(tmp_path / "b").weight_norm is True


# ------------------------------------------------------------------------------ checkpoints and resume
def test_ablation_run_resumes_exactly_and_search_loads_its_switches(tmp_path):
    full = tiny_cfg(tmp_path / "full", *ALL_OFF)
    train_supernet(full, progress=False, max_steps=6)
    part = tiny_cfg(tmp_path / "part", *ALL_OFF)
    train_supernet(part, progress=False, max_steps=2)
    train_supernet(part, progress=False, resume=True, max_steps=6)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and not any(k.endswith("fp2bin") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    model, _ = load_supernet(tmp_path / "full")
    assert model.weight_norm is False and model.bi_transformation is False
    # A config with the paper's method refuses the checkpoint, naming each switch that differs.
    with pytest.raises(CheckpointError) as err:
        load_supernet(tmp_path / "full", expect=tiny_cfg(tmp_path / "x"))
    msg = str(err.value)
    assert "\n" not in msg
    for key in ("train.bi_teacher", "model.bi_transformation", "model.weight_norm"):
        assert f"{key}: checkpoint false, config true" in msg
    with pytest.raises(CheckpointError, match=r"model\.weight_norm: checkpoint false, config true"):
        train_supernet(tiny_cfg(tmp_path / "part", "train.bi_teacher=false", "model.bi_transformation=false"),
                       progress=False, resume=True, max_steps=8)


def test_unknown_switch_value_and_cli_disagreement(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"model\.weight_norm"):
        load_config(RunConfig, None, ["model.weight_norm=sometimes"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.bi_transform'"):
        load_config(RunConfig, None, ["model.bi_transform=false"])
    out = tmp_path / "run"
    train_supernet(tiny_cfg(out, "model.weight_norm=false"), progress=False, max_steps=2)
    rc = main(["search", "--config", "tiny", "--checkpoint", str(out), f"out={tmp_path / 's'}", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "model.weight_norm: checkpoint false, config true" in err
