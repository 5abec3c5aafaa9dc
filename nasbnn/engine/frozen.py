"""An inference-only float copy of a StaticBNN: binarised weights computed once, plain torch ops.

:func:`freeze` is the fair PyTorch baseline of the benchmarks (no weight standardisation per call)
and the graph :func:`~nasbnn.engine.onnx_export.export_onnx` traces (``torch.sign`` instead of the
autograd sign functions, which have no ONNX symbolic). It computes what the StaticBNN computes in eval.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FrozenBNN", "FrozenBlock", "FrozenConv", "freeze"]


class FrozenConv(nn.Module):
    """A convolution with fixed float weights (±alpha for binary convs), zero 'same' padding."""

    def __init__(self, weight: Tensor, *, stride: int, groups: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone().float())
        self.stride = stride
        self.groups = groups
        self.padding = (weight.shape[-1] - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding, 1, self.groups)


class _Sign(nn.Module):
    """sign(x + shift), the binary activation (RSign) in inference form."""

    def __init__(self, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.detach().clone().float().reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sign(x + self.shift)


class _RPReLU(nn.Module):
    def __init__(self, src: nn.Module) -> None:
        super().__init__()
        self.register_buffer("shift_in", src.shift_in.detach().clone().float())
        self.register_buffer("slope", src.slope.detach().clone().float())
        self.register_buffer("shift_out", src.shift_out.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x + self.shift_in, self.slope) + self.shift_out


def _shortcut(src: Tensor, residual: Tensor, channels: Tensor | None) -> Tensor:
    """The parameter-free shortcut of ``nasbnn.ops.layers.shortcut_add`` in export-friendly form.

    ``channels`` (src channel -> residual channel, i.e. i mod C_res) replaces tiling and cutting by one
    constant gather; None when the channel counts match.
    """
    if src.shape[2] != residual.shape[2] or src.shape[3] != residual.shape[3]:
        residual = F.avg_pool2d(residual, 2, stride=2, ceil_mode=True)
    if channels is not None:
        residual = residual.index_select(1, channels)
    return src + residual


class FrozenBlock(nn.Module):
    """One binary block with frozen weights; ``units()`` splits it into the engine's two layers."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.sign1 = _Sign(block.rsign1.shift)
        self.conv_kxk = FrozenConv(block.conv_kxk.binary_weight(), stride=block.conv_kxk.stride,
                                   groups=block.conv_kxk.groups)
        self.bn1 = copy.deepcopy(block.bn1).eval()
        self.act1 = _RPReLU(block.rprelu1)
        self.sign2 = _Sign(block.rsign2.shift)
        self.conv_1x1 = FrozenConv(block.conv_1x1.binary_weight(), stride=1, groups=block.conv_1x1.groups)
        self.bn2 = copy.deepcopy(block.bn2).eval()
        self.act2 = _RPReLU(block.rprelu2)
        cin, cout = block.conv_1x1.in_channels, block.conv_1x1.out_channels
        self.register_buffer("res_channels", torch.arange(cout) % cin if cin != cout else None)

    def unit_kxk(self, x: Tensor) -> Tensor:
        return self.act1(_shortcut(self.bn1(self.conv_kxk(self.sign1(x))), x, None))

    def unit_1x1(self, x: Tensor) -> Tensor:
        return self.act2(_shortcut(self.bn2(self.conv_1x1(self.sign2(x))), x, self.res_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.unit_1x1(self.unit_kxk(x))


class FrozenBNN(nn.Module):
    """The whole network with frozen float weights; ``forward`` returns logits."""

    def __init__(self, static: nn.Module) -> None:
        super().__init__()
        stem = static.stem
        self.stem_conv = FrozenConv(stem.conv.quantized_weight(), stride=stem.conv.stride, groups=stem.conv.groups)
        self.stem_bn = copy.deepcopy(stem.bn).eval()
        self.stem_act = _RPReLU(stem.act)
        self.blocks = nn.ModuleList(FrozenBlock(b) for b in static.blocks)
        self.classifier = copy.deepcopy(static.classifier)

    def stem(self, x: Tensor) -> Tensor:
        return self.stem_act(self.stem_bn(self.stem_conv(x)))

    def head(self, x: Tensor) -> Tensor:
        return self.classifier(x.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@torch.no_grad()
def freeze(static: nn.Module, *, channels_last: bool = False) -> FrozenBNN:
    """The eval-mode float network of a :class:`~nasbnn.models.StaticBNN` with precomputed weights.

    With ``channels_last`` the conv weights are stored NHWC (feed NHWC-strided inputs too): oneDNN's
    fastest layout for these convolutions on the machines measured, used by the benchmarks.
    """
    frozen = FrozenBNN(static.cpu().eval()).eval().requires_grad_(False)
    if channels_last:
        for m in frozen.modules():
            if isinstance(m, FrozenConv):
                m.weight = m.weight.contiguous(memory_format=torch.channels_last)
    return frozen
