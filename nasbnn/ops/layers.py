"""Layers shared by the supernet and the exported static networks.

The per-channel modules (:class:`RSign`, :class:`RPReLU`) and :class:`SharedBatchNorm2d` take the
first ``C`` entries of their parameters for a ``C``-channel input, so a max-size instance serves
every subnet (weight sharing by prefix slicing) and an exact-size instance is a plain static layer.

References:
    RSign / RPReLU: Liu et al., "ReActNet", ECCV 2020.
    Weight normalisation before the sign and the mean-|w| scale: NAS-BNN (Lin et al., 2024), XNOR-Net.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functions import approx_sign, grad_scale, round_ste, ste_sign

__all__ = [
    "BinaryConv2d",
    "QConv2d",
    "RPReLU",
    "RSign",
    "SharedBatchNorm2d",
    "binarize_weight",
    "lsq_quantize_weight",
    "match_residual",
    "normalize_weight",
    "prepare_weight",
    "shortcut_add",
]

#: Stem weights are quantised to signed 8 bit: levels -128..127.
INT8_MIN, INT8_MAX = -128, 127


class RSign(nn.Module):
    """Learnable per-channel shift followed by the binary activation: sign(x + b)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return approx_sign(x + self.shift[:, : x.shape[1]])

    @torch.no_grad()
    def static(self, channels: int) -> RSign:
        """An exact-size copy for ``channels`` channels: the first shifts, on this layer's device."""
        out = RSign(channels).to(self.shift.device)
        out.shift.copy_(self.shift[:, :channels])
        return out


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift, per-channel PReLU (slope 0.25 at init), shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))
        self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.prelu(x + self.shift_in[:, :c], self.slope[:c])
        return x + self.shift_out[:, :c]

    @torch.no_grad()
    def static(self, channels: int) -> RPReLU:
        """An exact-size copy for ``channels`` channels: the first shifts and slopes, on this layer's device."""
        out = RPReLU(channels).to(self.slope.device)
        out.shift_in.copy_(self.shift_in[:, :channels])
        out.slope.copy_(self.slope[:channels])
        out.shift_out.copy_(self.shift_out[:, :channels])
        return out


class SharedBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are shared by prefix slicing.

    ``momentum=None`` gives a cumulative average over the batches since the last
    :meth:`reset_running_stats` (used for BN recalibration), as in ``nn.BatchNorm2d``.
    """

    def __init__(self, channels: int, *, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self, channels: int | None = None) -> None:
        c = self.running_mean.shape[0] if channels is None else channels
        self.running_mean[:c].zero_()
        self.running_var[:c].fill_(1.0)
        self.num_batches_tracked.zero_()

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training, factor, self.eps,
        )

    @torch.no_grad()
    def static(self, channels: int) -> nn.BatchNorm2d:
        """A plain ``nn.BatchNorm2d`` of ``channels`` channels: the first affine parameters and running
        statistics, the same eps, on this layer's device, with no batches counted.

        A cumulative average (``momentum=None``, as set for BN recalibration) becomes ``nn.BatchNorm2d``'s
        default momentum of 0.1, so training the static network keeps a moving average.
        """
        momentum = 0.1 if self.momentum is None else self.momentum
        out = nn.BatchNorm2d(channels, eps=self.eps, momentum=momentum, device=self.weight.device)
        out.weight.copy_(self.weight[:channels])
        out.bias.copy_(self.bias[:channels])
        out.running_mean.copy_(self.running_mean[:channels])
        out.running_var.copy_(self.running_var[:channels])
        return out


def match_residual(residual: Tensor, like: Tensor) -> Tensor:
    """The parameter-free shortcut: ``residual`` brought to the shape of ``like``.

    Spatially it is average-pooled 2×2/2 when ``like`` is half its size (ceil mode, so odd sizes
    average the elements inside the image). Along channels it is tiled when ``like`` is wider
    (channel i receives residual channel i mod C_res) and cut when ``like`` is narrower.
    """
    if like.shape[2] != residual.shape[2] or like.shape[3] != residual.shape[3]:
        residual = F.avg_pool2d(residual, 2, stride=2, ceil_mode=True)
        if like.shape[2:] != residual.shape[2:]:
            raise ValueError(f"shortcut cannot match {tuple(residual.shape)} to {tuple(like.shape)}")
    cs, cr = like.shape[1], residual.shape[1]
    if cs == cr:
        return residual
    if cs > cr:
        residual = residual.repeat(1, -(-cs // cr), 1, 1)
    return residual[:, :cs]


def shortcut_add(src: Tensor, residual: Tensor) -> Tensor:
    """``src + match_residual(residual, src)``."""
    return src + match_residual(residual, src)


def normalize_weight(w: Tensor) -> Tensor:
    """Per-filter standardisation (unbiased std, no eps) of a [O, I, K, K] weight."""
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    std = w.std(dim=(1, 2, 3), keepdim=True)
    return (w - mean) / std


def prepare_weight(w: Tensor, weight_norm: bool = True) -> Tensor:
    """The weight the sign and the scale are taken of: standardised (Weight Normalization) or raw."""
    return normalize_weight(w) if weight_norm else w


def binarize_weight(w_norm: Tensor) -> Tensor:
    """alpha · sign(w) with alpha = mean|w| per filter, detached (no gradient through alpha)."""
    alpha = w_norm.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    return alpha * ste_sign(w_norm)


def weight_distillation_term(w_norm: Tensor, w_bin: Tensor) -> Tensor:
    """MSE between the binary and real weights, each divided by its per-filter mean square.

    The real-valued side is a fixed target (no gradient), as in the upstream weight distillation.
    """
    b = w_bin / w_bin.pow(2).mean(dim=(1, 2, 3), keepdim=True)
    with torch.no_grad():
        f = w_norm / w_norm.pow(2).mean(dim=(1, 2, 3), keepdim=True)
    return F.mse_loss(b, f)


def lsq_quantize_weight(w: Tensor, step: Tensor) -> Tensor:
    """8-bit LSQ fake quantisation of a [O, I, K, K] weight with per-filter step sizes ``step`` [O].

    The step is clamped to float32 eps in value (gradient passes straight through, as the upstream
    in-place clamp does) and its gradient is scaled by 1/sqrt(numel · 127).
    """
    eps = torch.finfo(torch.float32).eps
    s = step + (step.clamp(min=eps) - step).detach()
    s = grad_scale(s, 1.0 / math.sqrt(w.numel() * INT8_MAX)).view(-1, 1, 1, 1)
    return round_ste(w / s).clamp(INT8_MIN, INT8_MAX) * s


def lsq_init_step(w: Tensor) -> Tensor:
    """Initial per-filter step: max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^7 over each filter."""
    w = w.detach()
    mu = w.mean(dim=(1, 2, 3))
    sd = w.std(dim=(1, 2, 3))
    return torch.maximum((mu - 3 * sd).abs(), (mu + 3 * sd).abs()) / 2 ** (8 - 1)


class _StaticConv2d(nn.Module):
    """A convolution of a fixed-size latent weight with "same" zero padding.

    The geometry, the forward and the shape part of the repr are common to the static layers; each
    subclass says through :meth:`effective_weight` what its latent weight becomes before the conv.
    """

    def __init__(self, weight: Tensor, *, stride: int, groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.stride = stride
        self.groups = groups
        self.kernel_size = weight.shape[-1]
        self.in_channels = weight.shape[1] * groups
        self.out_channels = weight.shape[0]

    def effective_weight(self) -> Tensor:
        """The weight the convolution uses."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), None, self.stride, (self.kernel_size - 1) // 2, 1,
                        self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups}")


class BinaryConv2d(_StaticConv2d):
    """A static binary convolution: latent weight -> normalise -> alpha·sign -> conv.

    Args:
        weight: latent weight [O, I/groups, K, K], already sliced and transformed by export.
        stride, groups: of the convolution; padding is (K - 1) / 2 with zeros.
        weight_norm: standardise each filter before the sign and the scale (off: both come from
            the raw latent weight, the Weight Normalization ablation).
    """

    def __init__(self, weight: Tensor, *, stride: int = 1, groups: int = 1, weight_norm: bool = True) -> None:
        super().__init__(weight, stride=stride, groups=groups)
        self.weight_norm = weight_norm

    def prepared_weight(self) -> Tensor:
        """What the sign and the per-filter scale are taken of (standardised, or raw without weight norm)."""
        return prepare_weight(self.weight, self.weight_norm)

    def binary_weight(self) -> Tensor:
        return binarize_weight(self.prepared_weight())

    def effective_weight(self) -> Tensor:
        """The binary weight, alpha·sign of the prepared one."""
        return self.binary_weight()

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.weight_norm else ", weight_norm=False")


class QConv2d(_StaticConv2d):
    """A static 8-bit (LSQ) convolution on a full-precision input: the stem."""

    def __init__(self, weight: Tensor, step_size: Tensor, *, stride: int = 1, groups: int = 1) -> None:
        super().__init__(weight, stride=stride, groups=groups)
        self.step_size = nn.Parameter(step_size.detach().clone())

    def quantized_weight(self) -> Tensor:
        return lsq_quantize_weight(self.weight, self.step_size)

    def effective_weight(self) -> Tensor:
        """The fake-quantised 8-bit weight."""
        return self.quantized_weight()

    def extra_repr(self) -> str:
        return super().extra_repr() + ", bits=8"
