import random

import pytest
import torch
from helpers import randomize_

from nasbnn.models import SuperBNN
from nasbnn.space import Arch


def _batch(space, n=4, res=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = res or space.resolution
    return torch.randn(n, space.in_channels, r, r, generator=g)


def test_construction_is_seeded_and_leaves_global_rng_alone(tiny_space):
    state = torch.random.get_rng_state()
    a, b = SuperBNN(tiny_space, seed=3), SuperBNN(tiny_space, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    c = SuperBNN(tiny_space, seed=4)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


@pytest.mark.parametrize("res", [16, 24, 19])
def test_resolution_is_not_baked_in(tiny_space, res):
    net = SuperBNN(tiny_space).eval()
    rng = random.Random(0)
    for _ in range(5):
        net.set_arch(tiny_space.sample(rng))
        assert net(_batch(tiny_space, 2, res)).shape == (2, tiny_space.num_classes)


def test_forward_is_pure_in_eval_and_only_touches_bn_in_train(tiny_space):
    net = randomize_(SuperBNN(tiny_space)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(_batch(tiny_space))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    net.train()
    net.set_arch(tiny_space.smallest())
    net(_batch(tiny_space))
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.rsplit(".", 1)[-1] in {"running_mean", "running_var", "num_batches_tracked"}
                           for k in changed)


def test_largest_arch_gives_every_parameter_a_gradient(tiny_space):
    net = randomize_(SuperBNN(tiny_space)).train()
    net.set_arch(tiny_space.largest())
    x = _batch(tiny_space, 8)
    net(x).logsumexp(1).mean().backward()
    for name, p in net.named_parameters():
        if "transform_" in name:
            # Kernel-transform matrices serve only smaller kernels; the largest arch uses none.
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # ... and a smaller kernel trains them.
    net.zero_grad()
    net.set_arch(Arch.parse(str(tiny_space.largest()).replace("c32k5g1.1,c32k5g1.1", "c32k3g1.1,c32k3g1.1")))
    net(x).logsumexp(1).mean().backward()
    for name, p in net.named_parameters():
        if "transform_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_teacher_mode_trains_no_bi_transformation(tiny_space):
    net = randomize_(SuperBNN(tiny_space)).train()
    with net.precision("fp"):
        net(_batch(tiny_space)).logsumexp(1).mean().backward()
    for name, p in net.named_parameters():
        if name.endswith("fp2bin"):
            assert p.grad is None or not p.grad.any(), name
    assert net.weight_mode == "binary"


def _active_region(net, arch):
    """name -> index tuple of the slice a subnet may touch (None: the whole tensor is untouched)."""
    space = net.space
    region = {}
    geo = space.geometry(arch)
    active = {(g.stage, g.index): g for g in geo}
    for s, stage in enumerate(net.stages):
        for j, block in enumerate(stage):
            g = active.get((s, j))
            for name, p in block.named_parameters():
                full = f"stages.{s}.{j}.{name}"
                if g is None:
                    region[full] = None
                    continue
                c_in, c_out = g.in_channels, g.block.width
                if s == 0:
                    c = c_out
                elif name.startswith(("rsign1", "bn1", "rprelu1", "rsign2", "conv_kxk")):
                    c = c_in
                else:
                    c = c_out
                if name.endswith(("conv_kxk.weight", "conv_1x1.weight", "conv.weight")):
                    region[full] = (slice(0, c), slice(0, c_in))
                elif "transform_" in name or name.endswith("fp2bin"):
                    region[full] = "any"  # used or not depending on the kernel size
                elif p.ndim == 4:  # shifts [1, C, 1, 1]
                    region[full] = (slice(None), slice(0, c))
                else:
                    region[full] = (slice(0, c),)
    region["classifier.weight"] = (slice(None), slice(0, arch.final_width))
    region["classifier.bias"] = (slice(None),)
    return region


def test_smaller_arch_leaves_inactive_slices_without_gradient(tiny_space):
    net = randomize_(SuperBNN(tiny_space)).train()
    rng = random.Random(11)
    for _ in range(4):
        arch = tiny_space.sample(rng)
        net.zero_grad(set_to_none=True)
        net.set_arch(arch)
        net(_batch(tiny_space, 6)).logsumexp(1).mean().backward()
        region = _active_region(net, arch)
        for name, p in net.named_parameters():
            idx = region[name]
            g = p.grad
            if idx == "any":
                continue
            if idx is None:
                assert g is None or not g.any(), name
                continue
            assert g is not None, name
            outside = g.clone()
            outside[idx] = 0
            assert not outside.any(), name


def test_precision_switch_changes_output_and_restores(tiny_space):
    net = randomize_(SuperBNN(tiny_space)).eval()
    x = _batch(tiny_space)
    y_bin = net(x)
    with net.precision("fp"):
        assert net.weight_mode == "fp"
        y_fp = net(x)
    assert net.weight_mode == "binary"
    assert not torch.allclose(y_bin, y_fp)
    assert torch.equal(net(x), y_bin)
    with pytest.raises(ValueError, match="valid: binary, fp"), net.precision("int4"):
        pass


def test_weight_distillation_loss_formula_and_gradient(tiny_space):
    from nasbnn.ops.layers import binarize_weight, normalize_weight

    net = randomize_(SuperBNN(tiny_space)).train()
    arch = tiny_space.smallest()
    net.set_arch(arch)
    loss = net.weight_distillation_loss(scale=0.1)
    # Recompute by hand from the exported latent filters.
    expected = 0.0
    in_ch = tiny_space.in_channels
    for (s, j, b) in arch.blocks():
        if s > 0:
            blk = net.stages[s][j]
            for conv in (blk.conv_kxk, blk.conv_1x1):
                wn = normalize_weight(conv.latent_filter(in_ch, binary=True)).detach()
                wb = binarize_weight(wn)
                bt = wb / wb.pow(2).mean(dim=(1, 2, 3), keepdim=True)
                ft = wn / wn.pow(2).mean(dim=(1, 2, 3), keepdim=True)
                expected += 0.1 * float(((bt - ft) ** 2).mean())
        in_ch = b.width
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert net.stages[1][0].conv_kxk.weight.grad is not None


def test_use_arch_restores_previous(tiny_space):
    net = SuperBNN(tiny_space)
    net.set_arch(tiny_space.smallest())
    with net.use_arch(tiny_space.largest()):
        assert net.arch == tiny_space.largest()
    assert net.arch == tiny_space.smallest()
    net.set_arch(str(tiny_space.largest()))
    assert net.arch == tiny_space.largest()
