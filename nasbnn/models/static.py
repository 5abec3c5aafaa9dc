"""A standalone binary network of one architecture, built from plain exact-size layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.layers import BinaryConv2d, QConv2d, RPReLU, RSign
from ..space import Arch, SearchSpace
from .blocks import BinaryBlock, Stem, pool_features

__all__ = ["StaticBNN"]


class StaticBNN(nn.Module):
    """A fixed binary network: the stem, ``arch.num_blocks - 1`` binary blocks, the classifier.

    Use :func:`nasbnn.export_subnet` to obtain one with a supernet's weights, or :meth:`build` for an
    uninitialised one of the right shapes (to load a bundle into).
    """

    def __init__(self, space: SearchSpace, arch: Arch, stem: Stem, blocks: list[BinaryBlock],
                 classifier: nn.Linear) -> None:
        super().__init__()
        #: Whether the binary convs standardise their filters (False: the Weight Normalization ablation).
        self.weight_norm = all(b.conv_kxk.weight_norm and b.conv_1x1.weight_norm for b in blocks)
        self.space = space
        self.arch = arch
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier

    @classmethod
    def build(cls, space: SearchSpace, arch: Arch, *, weight_norm: bool = True) -> StaticBNN:
        """Allocates a network of ``arch``'s exact shapes, to load weights into.

        ``weight_norm=False`` builds binary convs that take the sign and scale of the raw weight.

        Placeholder values are deterministic (the global RNG is not used): binary latent weights
        alternate in sign so that their standardisation is defined, the classifier is zero.
        """
        geo = space.geometry(arch)
        g0 = geo[0]
        b0 = g0.block
        stem = Stem(
            QConv2d(torch.zeros(b0.width, g0.in_channels // b0.groups, b0.kernel_size, b0.kernel_size),
                    torch.ones(b0.width), stride=g0.stride, groups=b0.groups),
            nn.BatchNorm2d(b0.width),
            RPReLU(b0.width),
        )
        blocks = []
        for g in geo[1:]:
            b, c = g.block, g.in_channels
            blocks.append(BinaryBlock(
                rsign1=RSign(c),
                conv_kxk=BinaryConv2d(torch.zeros(c, c // b.groups, b.kernel_size, b.kernel_size),
                                      stride=g.stride, groups=b.groups, weight_norm=weight_norm),
                bn1=nn.BatchNorm2d(c),
                rprelu1=RPReLU(c),
                rsign2=RSign(c),
                conv_1x1=BinaryConv2d(torch.zeros(b.width, c // b.pw_groups, 1, 1), groups=b.pw_groups,
                                      weight_norm=weight_norm),
                bn2=nn.BatchNorm2d(b.width),
                rprelu2=RPReLU(b.width),
            ))
        classifier = nn.Linear(arch.final_width, space.num_classes, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            classifier.weight.zero_()
            classifier.bias.zero_()
            for block in blocks:
                for conv in (block.conv_kxk, block.conv_1x1):
                    w = conv.weight
                    w.copy_((torch.arange(w.numel()).remainder(2) * 2 - 1).view_as(w).float())
        return cls(space, arch, stem, blocks, classifier)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> logits [B, num_classes]."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(pool_features(x))

    def features(self, x: Tensor) -> list[Tensor]:
        """Output of every stage (the stem first), e.g. for detection necks."""
        outs = []
        x = self.stem(x)
        outs.append(x)
        i = 0
        for stage in self.arch.stages[1:]:
            for _ in range(stage.depth):
                x = self.blocks[i](x)
                i += 1
            outs.append(x)
        return outs

    def extra_repr(self) -> str:
        return f"space={self.space.name!r}, arch={str(self.arch)!r}"
