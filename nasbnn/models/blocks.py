"""The NAS-BNN building blocks, written once for both the supernet and exported networks.

Blocks receive their layers as arguments: elastic (weight-sharing) layers in the supernet, plain
exact-size layers in an exported network. The computation is the same code either way.
"""

from __future__ import annotations

from enum import Enum

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.fused import block_tail
from ..ops.layers import shortcut_add

__all__ = ["BinaryBlock", "Fusion", "Stem", "pool_features", "set_fused"]


class Fusion(str, Enum):
    """How a block runs its element-wise tails as one region."""

    COMPILED = "compiled"  # torch.compile kernels
    EAGER = "eager"  # the same code, uncompiled


class Stem(nn.Module):
    """8-bit conv on the image -> BN -> RPReLU. No sign, no shortcut."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def static(self, in_channels: int) -> Stem:
        """This stem's active configuration as exact-size static layers for ``in_channels`` inputs.

        Each layer builds its own static counterpart (the supernet's elastic and shared layers define
        ``static``); the BN and activation take the conv's active output width.
        """
        conv = self.conv.static(in_channels)
        width = conv.out_channels
        return Stem(conv, self.bn.static(width), self.act.static(width))


class BinaryBlock(nn.Module):
    """ReActNet-style block with a grouped K×K binary conv and a 1×1 binary conv.

    RSign -> K×K conv (C_in -> C_in, stride, groups) -> BN -> + x -> RPReLU ->
    RSign -> 1×1 conv (C_in -> C_out) -> BN -> + previous -> RPReLU. Shortcuts have no parameters:
    average pooling on stride 2, channel tiling when widening.
    """

    def __init__(self, *, rsign1: nn.Module, conv_kxk: nn.Module, bn1: nn.Module, rprelu1: nn.Module,
                 rsign2: nn.Module, conv_1x1: nn.Module, bn2: nn.Module, rprelu2: nn.Module) -> None:
        super().__init__()
        self.rsign1 = rsign1
        self.conv_kxk = conv_kxk
        self.bn1 = bn1
        self.rprelu1 = rprelu1
        self.rsign2 = rsign2
        self.conv_1x1 = conv_1x1
        self.bn2 = bn2
        self.rprelu2 = rprelu2
        #: None (module by module), or how to run the element-wise tails (BN, shortcut, RPReLU, next
        #: RSign) as one region.
        self.fused: Fusion | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            compiled = self.fused is Fusion.COMPILED
            out1, signed = block_tail(self.conv_kxk(self.rsign1(x)), x, self.bn1, self.rprelu1, self.rsign2,
                                      compiled=compiled)
            out2, _ = block_tail(self.conv_1x1(signed), out1, self.bn2, self.rprelu2, None, compiled=compiled)
            return out2
        out1 = self.rprelu1(shortcut_add(self.bn1(self.conv_kxk(self.rsign1(x))), x))
        return self.rprelu2(shortcut_add(self.bn2(self.conv_1x1(self.rsign2(out1))), out1))

    def static(self, in_channels: int) -> BinaryBlock:
        """This block's active configuration as exact-size static layers for ``in_channels`` inputs.

        Each layer builds its own static counterpart (the supernet's elastic and shared layers define
        ``static``): the K×K half keeps ``in_channels``, the 1×1 half ends at the 1×1 conv's active
        width. The copy runs module by module (no fusion), whatever this block's ``fused`` is.
        """
        c = in_channels
        conv_1x1 = self.conv_1x1.static(c)
        width = conv_1x1.out_channels
        return BinaryBlock(
            rsign1=self.rsign1.static(c),
            conv_kxk=self.conv_kxk.static(c),
            bn1=self.bn1.static(c),
            rprelu1=self.rprelu1.static(c),
            rsign2=self.rsign2.static(c),
            conv_1x1=conv_1x1,
            bn2=self.bn2.static(width),
            rprelu2=self.rprelu2.static(width),
        )


def pool_features(x: Tensor) -> Tensor:
    """Global average pool: [B, C, H, W] -> [B, C]."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def set_fused(model: nn.Module, mode: Fusion | str | None = Fusion.COMPILED) -> nn.Module:
    """Sets how every :class:`BinaryBlock` of ``model`` runs its element-wise tails: a :class:`Fusion` (or its
    name) or ``None`` (the plain module-by-module path).

    Raises:
        ValueError: an unknown mode; the message lists the valid ones.
    """
    try:
        fusion = None if mode is None else Fusion(mode)
    except ValueError:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {', '.join(f.value for f in Fusion)}, None") from None
    for m in model.modules():
        if isinstance(m, BinaryBlock):
            m.fused = fusion
    return model
