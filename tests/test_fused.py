"""The fused block tail computes what the module-by-module path computes (values and gradients)."""

import random

import pytest
import torch
from helpers import randomize_

from nasbnn.models import SuperBNN
from nasbnn.models.blocks import set_fused
from nasbnn.presets import create_space


def _run(net, x, arch):
    net.zero_grad(set_to_none=True)
    net.set_arch(arch)
    y = net(x)
    y.logsumexp(1).mean().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    return y.detach(), grads, {k: b.clone() for k, b in net.named_buffers()}


@pytest.mark.parametrize("mode", ["eager", pytest.param("compiled", marks=pytest.mark.slow)])
def test_fused_tail_matches_plain_path(mode):
    space = create_space("tiny")
    rng = random.Random(0)
    archs = [space.largest(), space.smallest(), space.sample(rng)]
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = randomize_(SuperBNN(space)).train()
    b = randomize_(SuperBNN(space)).train()
    set_fused(b, mode)
    for arch in archs:
        ya, ga, ba = _run(a, x, arch)
        yb, gb, bb = _run(b, x, arch)
        assert torch.allclose(ya, yb, rtol=1e-4, atol=1e-4)
        assert ga.keys() == gb.keys()
        for k in ga:
            assert torch.allclose(ga[k], gb[k], rtol=1e-3, atol=1e-5), k
        for k in ba:
            assert torch.allclose(ba[k].float(), bb[k].float(), rtol=1e-5, atol=1e-6), k


def test_unknown_fusion_mode():
    with pytest.raises(ValueError, match="valid: compiled, eager"):
        set_fused(SuperBNN(create_space("tiny")), "triton")


def test_training_falls_back_to_eager_when_compile_is_unusable(monkeypatch, tmp_path, caplog):
    from nasbnn.config import RunConfig, load_config
    from nasbnn.ops import fused
    from nasbnn.train import supernet

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(fused, "_compiled", broken)
    assert fused.compiled_tail_works("cpu") == "RuntimeError: no C++ compiler found"
    seen = []
    monkeypatch.setattr(supernet, "set_fused", lambda model, mode: seen.append(mode))
    cfg = load_config(RunConfig, None, ["space.name=tiny", "data.name=synthetic", "data.batch_size=16",
                                        "data.synthetic.num_train=64", "data.synthetic.num_test=32",
                                        "data.holdout_per_class=2", "train.compile=true", "train.eval_images=16",
                                        f"out={tmp_path}"])
    with caplog.at_level("WARNING"):
        supernet.train_supernet(cfg, progress=False, max_steps=1)
    assert seen == [] and "training without fusion" in caplog.text
