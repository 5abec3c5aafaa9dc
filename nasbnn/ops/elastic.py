"""Weight-sharing (elastic) layers: one max-size weight, a sub-filter per architecture.

The active configuration of each layer is set from outside (by ``SuperBNN.set_arch``) through
``configure``; ``forward`` only reads it. Input channels always come from the input tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    BinaryConv2d,
    QConv2d,
    binarize_weight,
    lsq_init_step,
    lsq_quantize_weight,
    prepare_weight,
    weight_distillation_term,
)
from .slicing import select_filter

__all__ = ["ElasticBinaryConv2d", "ElasticLinear", "ElasticQConv2d", "Precision"]


class Precision:
    """The shared, scoped weight-precision switch of one supernet (see ``SuperBNN.precision``)."""

    __slots__ = ("binary_weights",)

    def __init__(self) -> None:
        self.binary_weights = True


class _ElasticConvBase(nn.Module):
    def __init__(self, max_out: int, max_in: int, kernel_sizes: tuple[int, ...], groups: tuple[int, ...],
                 *, stride: int = 1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.groups_options = tuple(sorted(set(groups)))
        self.max_kernel = self.kernel_sizes[-1]
        self.max_in = max_in
        self.max_out = max_out
        self.stride = stride
        w = torch.empty(max_out, max_in // self.groups_options[0], self.max_kernel, self.max_kernel)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
        self.weight = nn.Parameter(w)
        # One learnable k_small² x k_small² matrix per kernel-size step, identity at init.
        for big, small in zip(self.kernel_sizes[1:], self.kernel_sizes[:-1]):
            self.register_parameter(f"transform_{big}to{small}", nn.Parameter(torch.eye(small * small)))
        self.out_channels = max_out
        self.kernel_size = self.max_kernel
        self.groups = self.groups_options[0]

    def configure(self, *, out_channels: int, kernel_size: int, groups: int) -> None:
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.groups = groups

    def _matrices(self) -> dict[int, Tensor]:
        return {big: getattr(self, f"transform_{big}to{small}")
                for big, small in zip(self.kernel_sizes[1:], self.kernel_sizes[:-1])}

    def active_filter(self, in_channels: int) -> Tensor:
        """[out, in/groups, k, k]: prefix slice, kernel transform, group windows."""
        return select_filter(self.weight, in_channels=in_channels, out_channels=self.out_channels,
                             kernel_size=self.kernel_size, groups=self.groups,
                             kernel_sizes=self.kernel_sizes, matrices=self._matrices())

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, self.stride, (self.kernel_size - 1) // 2, 1, self.groups)


class ElasticBinaryConv2d(_ElasticConvBase):
    """Binary conv with Weight Normalization and the Bi-Transformation.

    Binary mode: latent filter -> (Bi-Transformation, only at the largest kernel > 1) -> per-filter
    standardisation -> alpha·sign. Real-valued mode (the Bi-Teacher): the standardised filter is used
    as is, with no Bi-Transformation.

    Ablations: ``bi_transformation=False`` allocates no K²×K² matrix (the binary path uses the latent
    filter directly); ``weight_norm=False`` skips the standardisation, so the sign, the scale alpha
    and the real-valued teacher all use the raw latent filter.
    """

    def __init__(self, max_out: int, max_in: int, kernel_sizes: tuple[int, ...], groups: tuple[int, ...],
                 *, stride: int = 1, precision: Precision | None = None,
                 generator: torch.Generator | None = None, bi_transformation: bool = True,
                 weight_norm: bool = True) -> None:
        super().__init__(max_out, max_in, kernel_sizes, groups, stride=stride, generator=generator)
        self.weight_norm = weight_norm
        self.fp2bin: nn.Parameter | None
        if self.max_kernel > 1 and bi_transformation:
            self.fp2bin = nn.Parameter(torch.eye(self.max_kernel**2))
        else:
            self.register_parameter("fp2bin", None)
        self.precision = precision if precision is not None else Precision()

    def bi_transform(self, w: Tensor) -> Tensor:
        """Applies the learnable K²×K² matrix to each filter when at the largest kernel size."""
        k = w.shape[-1]
        if self.fp2bin is None or k != self.max_kernel:
            return w
        o, i = w.shape[0], w.shape[1]
        return F.linear(w.reshape(o * i, k * k), self.fp2bin).view(o, i, k, k).contiguous()

    def latent_filter(self, in_channels: int, *, binary: bool) -> Tensor:
        w = self.active_filter(in_channels)
        return self.bi_transform(w) if binary else w

    def forward(self, x: Tensor) -> Tensor:
        binary = self.precision.binary_weights
        w = prepare_weight(self.latent_filter(x.shape[1], binary=binary), self.weight_norm)
        if binary:
            w = binarize_weight(w)
        return self._conv(x, w)

    def distillation_loss(self, in_channels: int) -> Tensor:
        """Weight-distillation term of the current configuration (binary vs real weights)."""
        w_norm = prepare_weight(self.latent_filter(in_channels, binary=True), self.weight_norm)
        return weight_distillation_term(w_norm, binarize_weight(w_norm))

    @torch.no_grad()
    def static(self, in_channels: int) -> BinaryConv2d:
        """The active configuration as a :class:`BinaryConv2d` for ``in_channels`` inputs.

        Its weight is a copy of the binary path's latent filter, the Bi-Transformation already applied,
        so the static conv computes the students' weights with no K²×K² matrix; it keeps this conv's
        stride, groups and Weight Normalization switch. The copy is in the contiguous layout whatever
        the supernet's memory format.
        """
        w = self.latent_filter(in_channels, binary=True).contiguous()
        return BinaryConv2d(w, stride=self.stride, groups=self.groups, weight_norm=self.weight_norm)


class ElasticQConv2d(_ElasticConvBase):
    """8-bit LSQ conv on a full-precision input (the stem), with per-filter learnable steps."""

    def __init__(self, max_out: int, max_in: int, kernel_sizes: tuple[int, ...], groups: tuple[int, ...],
                 *, stride: int = 1, generator: torch.Generator | None = None) -> None:
        super().__init__(max_out, max_in, kernel_sizes, groups, stride=stride, generator=generator)
        # Upstream initialises the steps at the first training forward of the largest subnet, i.e.
        # from the initial weights; doing it here keeps forward free of buffer writes.
        self.step_size = nn.Parameter(lsq_init_step(self.weight))

    def forward(self, x: Tensor) -> Tensor:
        w = self.active_filter(x.shape[1])
        return self._conv(x, lsq_quantize_weight(w, self.step_size[: w.shape[0]]))

    @torch.no_grad()
    def static(self, in_channels: int) -> QConv2d:
        """The active configuration as a :class:`QConv2d` for ``in_channels`` inputs: copies of the
        active filter (contiguous, whatever the supernet's memory format) and of its filters' step sizes,
        with this conv's stride and groups."""
        w = self.active_filter(in_channels).contiguous()
        return QConv2d(w, self.step_size[: self.out_channels], stride=self.stride, groups=self.groups)


class ElasticLinear(nn.Module):
    """Full-precision classifier reading the first C input features."""

    def __init__(self, max_in: int, out_features: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        w = torch.empty(out_features, max_in)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(max_in)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(nn.init.uniform_(torch.empty(out_features), -bound, bound, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight[:, : x.shape[1]].contiguous(), self.bias)

    @torch.no_grad()
    def static(self, in_features: int) -> nn.Linear:
        """A plain ``nn.Linear`` on the first ``in_features`` features, on this layer's device.

        It is allocated uninitialised and then copied into, so building it draws nothing from the global
        RNG (``nn.Linear``'s own initialisation would).
        """
        out = nn.Linear(in_features, self.weight.shape[0], device="meta").to_empty(device=self.weight.device)
        out.weight.copy_(self.weight[:, :in_features])
        out.bias.copy_(self.bias)
        return out
