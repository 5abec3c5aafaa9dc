"""The weight-sharing binary supernet of a search space.

``SuperBNN(space)`` allocates every layer at its largest size. ``set_arch(arch)`` selects a subnet
(validating it and configuring each layer); ``forward(x)`` then computes that subnet's logits and
nothing else. ``precision(weights="fp")`` scopes the Bi-Teacher's real-valued weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops.elastic import ElasticBinaryConv2d, ElasticLinear, ElasticQConv2d, Precision
from ..ops.layers import RPReLU, RSign, SharedBatchNorm2d
from ..space import Arch, SearchSpace
from .blocks import BinaryBlock, Stem, pool_features
from .static import StaticBNN

__all__ = ["SuperBNN"]


class SuperBNN(nn.Module):
    """Weight-sharing supernet over ``space``.

    Args:
        space: the search space; its largest member is active after construction.
        seed: seeds a private generator for the initial weights (the global RNG is untouched).
        bi_transformation, weight_norm: the strategy switches of the binary convolutions (see
            :class:`~nasbnn.ops.elastic.ElasticBinaryConv2d`); the defaults are the paper's method.

    Example:
        >>> from nasbnn import SuperBNN, create_space
        >>> space = create_space("tiny")
        >>> net = SuperBNN(space).eval()
        >>> net.set_arch(space.smallest())
        >>> net(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 5])
    """

    def __init__(self, space: SearchSpace, *, seed: int = 0, bi_transformation: bool = True,
                 weight_norm: bool = True) -> None:
        super().__init__()
        self.space = space
        self.bi_transformation = bi_transformation
        self.weight_norm = weight_norm
        switches = {"bi_transformation": bi_transformation, "weight_norm": weight_norm}
        gen = torch.Generator().manual_seed(seed)
        self._precision = Precision()
        self.stages = nn.ModuleList()
        for s, spec in enumerate(space.stages):
            stage = nn.ModuleList()
            max_out = max(spec.widths)
            for j in range(max(spec.depths)):
                max_in = space.max_in_channels(s, j)
                stride = spec.stride if j == 0 else 1
                if s == 0:
                    conv = ElasticQConv2d(max_out, max_in, spec.kernel_sizes, spec.groups, stride=stride,
                                          generator=gen)
                    stage.append(Stem(conv, SharedBatchNorm2d(max_out), RPReLU(max_out)))
                    continue
                stage.append(BinaryBlock(
                    rsign1=RSign(max_in),
                    conv_kxk=ElasticBinaryConv2d(max_in, max_in, spec.kernel_sizes, spec.groups,
                                                 stride=stride, precision=self._precision, generator=gen,
                                                 **switches),
                    bn1=SharedBatchNorm2d(max_in),
                    rprelu1=RPReLU(max_in),
                    rsign2=RSign(max_in),
                    conv_1x1=ElasticBinaryConv2d(max_out, max_in, (1,), spec.pw_groups, stride=1,
                                                 precision=self._precision, generator=gen, **switches),
                    bn2=SharedBatchNorm2d(max_out),
                    rprelu2=RPReLU(max_out),
                ))
            self.stages.append(stage)
        self.classifier = ElasticLinear(max(space.stages[-1].widths), space.num_classes, generator=gen)
        self._active: list[nn.Module] = []
        self._arch: Arch = space.largest()
        self.set_arch(self._arch)

    # ------------------------------------------------------------------ architecture
    @property
    def arch(self) -> Arch:
        """The active architecture."""
        return self._arch

    def set_arch(self, arch: Arch | str, *, nondecreasing: bool = True) -> SuperBNN:
        """Selects the subnet ``arch`` (an :class:`Arch` or its string form).

        Args:
            nondecreasing: enforce the non-decreasing-width rule (off to run upstream candidates
                that break it; the network itself handles any width order).

        Raises:
            InvalidArch: ``arch`` is not a member of the space.
        """
        if isinstance(arch, str):
            arch = Arch.parse(arch)
        self.space.validate(arch, nondecreasing=nondecreasing)
        active: list[nn.Module] = []
        in_ch = self.space.in_channels
        for s, j, b in arch.blocks():
            m = self.stages[s][j]
            if s == 0:
                m.conv.configure(out_channels=b.width, kernel_size=b.kernel_size, groups=b.groups)
            else:
                m.conv_kxk.configure(out_channels=in_ch, kernel_size=b.kernel_size, groups=b.groups)
                m.conv_1x1.configure(out_channels=b.width, kernel_size=1, groups=b.pw_groups)
            active.append(m)
            in_ch = b.width
        self._active = active
        self._arch = arch
        return self

    @contextmanager
    def use_arch(self, arch: Arch | str, *, nondecreasing: bool = True) -> Iterator[SuperBNN]:
        """Selects ``arch`` for the duration of the ``with`` block, then restores the previous one."""
        previous = self._arch
        self.set_arch(arch, nondecreasing=nondecreasing)
        try:
            yield self
        finally:
            self.set_arch(previous, nondecreasing=False)

    # ------------------------------------------------------------------ precision
    @property
    def weight_mode(self) -> str:
        return "binary" if self._precision.binary_weights else "fp"

    @contextmanager
    def precision(self, weights: Literal["binary", "fp"] = "binary") -> Iterator[SuperBNN]:
        """Scopes the weight precision: ``"fp"`` is the Bi-Teacher (real-valued standardised weights,
        binary activations, no Bi-Transformation); ``"binary"`` the students."""
        if weights not in ("binary", "fp"):
            raise ConfigError(f"unknown weight precision {weights!r}; valid: binary, fp")
        previous = self._precision.binary_weights
        self._precision.binary_weights = weights == "binary"
        try:
            yield self
        finally:
            self._precision.binary_weights = previous

    # ------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> logits [B, num_classes] of the active architecture."""
        for m in self._active:
            x = m(x)
        return self.classifier(pool_features(x))

    def features(self, x: Tensor) -> list[Tensor]:
        """Output of every stage of the active architecture (the stem first)."""
        outs: list[Tensor] = []
        i = 0
        for stage in self._arch.stages:
            for _ in range(stage.depth):
                x = self._active[i](x)
                i += 1
            outs.append(x)
        return outs

    def weight_distillation_loss(self, scale: float = 0.1) -> Tensor:
        """Sum over the active binary convs of ``scale`` · MSE between normalised binary and real
        weights (the optional weight-distillation term; 0.1 upstream). Independent of the input."""
        total = self.classifier.weight.new_zeros(())
        in_ch = self.space.in_channels
        for (s, _, b), m in zip(self._arch.blocks(), self._active):
            if s > 0:
                total = total + scale * m.conv_kxk.distillation_loss(in_ch)
                total = total + scale * m.conv_1x1.distillation_loss(in_ch)
            in_ch = b.width
        return total

    @torch.no_grad()
    def export(self, arch: Arch | str | None = None) -> StaticBNN:
        """A standalone :class:`StaticBNN` holding this supernet's weights for ``arch`` (default: the active one).

        Each active block (the stem first), then the classifier, builds its exact-size static counterpart
        (``static``): weights are copied after slicing, the kernel transform, group windowing and, for
        binary convs, the Bi-Transformation when the supernet has it. In eval mode the result computes this
        supernet's logits for ``arch``. It is in the supernet's train/eval mode, on its device, and shares no
        storage with it; the supernet's active architecture and weights are unchanged.

        Raises:
            InvalidArch: ``arch`` is not a member of the space (the width order is not enforced).
        """
        with self.use_arch(self._arch if arch is None else arch, nondecreasing=False):
            geo = self.space.geometry(self._arch)
            stem, *blocks = (m.static(g.in_channels) for g, m in zip(geo, self._active))
            net = StaticBNN(self.space, self._arch, stem, blocks, self.classifier.static(self._arch.final_width))
        return net.train(self.training)

    def extra_repr(self) -> str:
        off = [k for k in ("bi_transformation", "weight_norm") if not getattr(self, k)]
        return f"space={self.space.name!r}, arch={str(self._arch)!r}" + "".join(f", {k}=False" for k in off)
