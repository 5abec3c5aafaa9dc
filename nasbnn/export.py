"""Export of one architecture from a supernet to a standalone network.

The supernet is left untouched: weights are copied (sliced, kernel-transformed, group-windowed and,
for binary convs, passed through the Bi-Transformation when the supernet has it) into the plain layers
of a :class:`StaticBNN`.
In eval mode the exported network computes the supernet's logits for that architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from .models.static import StaticBNN
from .models.supernet import SuperBNN
from .ops.layers import SharedBatchNorm2d
from .space import Arch

__all__ = ["export_subnet"]


def _copy_bn(dst: nn.BatchNorm2d, src: SharedBatchNorm2d, c: int) -> None:
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.eps = src.eps
    dst.momentum = 0.1 if src.momentum is None else src.momentum


def _copy_prefix(dst: nn.Module, src: nn.Module) -> None:
    """Copies the first entries of every parameter of ``src`` into the same-named ``dst`` ones."""
    for name, p in dst.named_parameters():
        s = src.get_parameter(name)
        p.copy_(s[tuple(slice(0, n) for n in p.shape)])


@torch.no_grad()
def export_subnet(supernet: SuperBNN, arch: Arch | str) -> StaticBNN:
    """A :class:`StaticBNN` holding ``supernet``'s weights for ``arch``.

    The returned network is in the supernet's train/eval mode, on its device, and shares no storage
    with it. The supernet's active architecture and weights are unchanged.

    Raises:
        InvalidArch: ``arch`` is not a member of the supernet's space.
    """
    space = supernet.space
    if isinstance(arch, str):
        arch = Arch.parse(arch)
    space.validate(arch, nondecreasing=False)
    net = StaticBNN.build(space, arch, weight_norm=supernet.weight_norm)
    with supernet.use_arch(arch, nondecreasing=False):
        geo = space.geometry(arch)
        sup_stem = supernet.stages[0][0]
        c0 = geo[0].block.width
        w = sup_stem.conv.active_filter(geo[0].in_channels)
        net.stem.conv.weight.copy_(w)
        net.stem.conv.step_size.copy_(sup_stem.conv.step_size[:c0])
        _copy_bn(net.stem.bn, sup_stem.bn, c0)
        _copy_prefix(net.stem.act, sup_stem.act)
        for g, block in zip(geo[1:], net.blocks):
            src = supernet.stages[g.stage][g.index]
            c, width = g.in_channels, g.block.width
            block.conv_kxk.weight.copy_(src.conv_kxk.latent_filter(c, binary=True))
            block.conv_1x1.weight.copy_(src.conv_1x1.latent_filter(c, binary=True))
            _copy_bn(block.bn1, src.bn1, c)
            _copy_bn(block.bn2, src.bn2, width)
            for name in ("rsign1", "rprelu1", "rsign2", "rprelu2"):
                _copy_prefix(getattr(block, name), getattr(src, name))
        net.classifier.weight.copy_(supernet.classifier.weight[:, : arch.final_width])
        net.classifier.bias.copy_(supernet.classifier.bias)
    device = supernet.classifier.weight.device
    return net.to(device).train(supernet.training)
