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
