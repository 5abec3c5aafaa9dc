"""The binary detector: an exported NAS-BNN network (classifier removed, binary layers kept) as backbone,
an FPN-lite neck and a shared FCOS head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.static import StaticBNN
from ..ops.layers import BinaryConv2d, RPReLU, RSign
from ..space import Arch, SearchSpace, conv_out_size
from ..utils.seeding import derive_generator
from .config import DetectConfig

__all__ = ["BinaryDetector", "HeadOutput", "LevelSpec", "level_specs"]


@dataclass(frozen=True, slots=True)
class LevelSpec:
    """One pyramid level: its stride (input pixels per cell), side on the canvas and source.

    ``stage`` is the backbone stage whose output feeds the level, or -1 for an extra level.
    """

    name: str
    stride: int
    size: int
    stage: int
    in_channels: int


def level_specs(space: SearchSpace, arch: Arch, cfg: DetectConfig, canvas: int) -> list[LevelSpec]:
    """The pyramid levels of a detector over ``arch`` of ``space`` at a ``canvas × canvas`` input.

    Raises:
        ConfigError: more levels than block stages, or two levels of the same stride.
    """
    n_stages = len(arch.stages)
    if cfg.num_levels > n_stages - 1:
        raise ConfigError(f"detect.num_levels={cfg.num_levels} but space {space.name!r} has only "
                          f"{n_stages - 1} block stages; valid: 1..{n_stages - 1}")
    stride, size = 1, canvas
    per_stage = []
    for s, stage in enumerate(arch.stages):
        st = space.stages[s].stride
        stride *= st
        size = conv_out_size(size, st)
        per_stage.append((stride, size, stage.blocks[-1].width))
    levels = []
    for s in range(n_stages - cfg.num_levels, n_stages):
        st, sz, ch = per_stage[s]
        levels.append(LevelSpec(f"P{s}", st, sz, s, ch))
    for e in range(cfg.extra_levels):
        prev = levels[-1]
        levels.append(LevelSpec(f"P{n_stages + e}", prev.stride * 2, conv_out_size(prev.size, 2), -1,
                                cfg.neck_width))
    strides = [lv.stride for lv in levels]
    if len(set(strides)) != len(strides):
        raise ConfigError(f"pyramid levels {[lv.name for lv in levels]} of space {space.name!r} repeat strides "
                          f"{strides}; lower detect.num_levels so every level has its own stride")
    return levels


@dataclass
class HeadOutput:
    """Raw head outputs over all levels, locations concatenated level after level (row-major cells).

    Attributes:
        cls_logits: [B, N, K].
        box_ltrb: [B, N, 4] distances (pixels) from each location to the box's left, top, right, bottom.
        centerness_logits: [B, N].
        sizes: per level, the ``(height, width)`` of its grid.
    """

    cls_logits: Tensor
    box_ltrb: Tensor
    centerness_logits: Tensor
    sizes: list[tuple[int, int]]


def _norm(cfg: DetectConfig, channels: int) -> nn.Module:
    if cfg.norm == "group":
        return nn.GroupNorm(cfg.gn_groups, channels)
    return nn.BatchNorm2d(channels)


class _FPTowerLayer(nn.Module):
    """3×3 conv -> norm -> ReLU (full precision)."""

    def __init__(self, cfg: DetectConfig, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = _norm(cfg, width)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class _BinaryTowerLayer(nn.Module):
    """RSign -> binary 3×3 conv -> norm -> + x -> RPReLU (the first half of a ReActNet block)."""

    def __init__(self, cfg: DetectConfig, width: int, generator: torch.Generator) -> None:
        super().__init__()
        self.rsign = RSign(width)
        self.conv = BinaryConv2d(torch.randn(width, width, 3, 3, generator=generator) * 0.01)
        self.norm = _norm(cfg, width)
        self.act = RPReLU(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(self.rsign(x))) + x)


class FPNLite(nn.Module):
    """1×1 lateral convs to ``width``, nearest-neighbour top-down sum, 3×3 smoothing; extra stride-2 levels."""

    def __init__(self, levels: list[LevelSpec], width: int) -> None:
        super().__init__()
        src = [lv for lv in levels if lv.stage >= 0]
        self.lateral = nn.ModuleList(nn.Conv2d(lv.in_channels, width, 1) for lv in src)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in src)
        self.extra = nn.ModuleList(nn.Conv2d(width, width, 3, stride=2, padding=1)
                                   for lv in levels if lv.stage < 0)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        inner = self.lateral[-1](feats[-1])
        outs = [self.smooth[-1](inner)]
        for i in range(len(feats) - 2, -1, -1):
            inner = self.lateral[i](feats[i]) + F.interpolate(inner, size=feats[i].shape[-2:], mode="nearest")
            outs.insert(0, self.smooth[i](inner))
        x = outs[-1]
        for j, conv in enumerate(self.extra):
            x = conv(x if j == 0 else F.relu(x))
            outs.append(x)
        return outs


class FCOSHead(nn.Module):
    """Shared across levels: a classification tower and a box tower, then 3×3 predictions.

    Box distances are ``exp(s_l · t) · stride_l`` with a learnable scale ``s_l`` per level; centerness
    is predicted from the box tower.
    """

    def __init__(self, cfg: DetectConfig, num_classes: int, levels: list[LevelSpec],
                 generator: torch.Generator) -> None:
        super().__init__()
        w = cfg.neck_width

        def tower() -> nn.Sequential:
            if cfg.binary_towers:
                return nn.Sequential(*(_BinaryTowerLayer(cfg, w, generator) for _ in range(cfg.head_convs)))
            return nn.Sequential(*(_FPTowerLayer(cfg, w) for _ in range(cfg.head_convs)))

        self.cls_tower = tower()
        self.box_tower = tower()
        self.cls_pred = nn.Conv2d(w, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(w, 4, 3, padding=1)
        self.ctr_pred = nn.Conv2d(w, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(levels)))
        self.register_buffer("strides", torch.tensor([float(lv.stride) for lv in levels]), persistent=False)
        self.prior_bias = -math.log((1 - cfg.prior_prob) / cfg.prior_prob)

    def forward(self, feats: list[Tensor]) -> HeadOutput:
        cls, box, ctr, sizes = [], [], [], []
        for i, f in enumerate(feats):
            sizes.append((f.shape[-2], f.shape[-1]))
            c = self.cls_tower(f)
            b = self.box_tower(f)
            n = f.shape[0]
            cls.append(self.cls_pred(c).flatten(2).transpose(1, 2))
            t = self.box_pred(b).float() * self.scales[i]
            box.append((t.clamp(max=12.0).exp() * self.strides[i]).flatten(2).transpose(1, 2))
            ctr.append(self.ctr_pred(b).reshape(n, -1))
        return HeadOutput(torch.cat(cls, 1), torch.cat(box, 1), torch.cat(ctr, 1), sizes)


class BinaryDetector(nn.Module):
    """Backbone (a classifier-less :class:`StaticBNN`) -> FPN-lite -> FCOS head.

    The pyramid levels are the outputs of the backbone's last ``cfg.num_levels`` stages plus
    ``cfg.extra_levels`` stride-2 levels. Neck and head are full precision, except the head towers'
    3×3 convs with ``cfg.binary_towers`` (binary ReActNet-style units).

    Args:
        backbone: the exported network; its classifier is removed (the module is used in place).
        num_classes: object categories.
        cfg: the ``detect`` config section.
        canvas: input side (fixes the level geometry used for cost tables and locations).
        seed: seeds the neck/head initialisation (the global RNG is not used).
    """

    def __init__(self, backbone: StaticBNN, num_classes: int, cfg: DetectConfig, canvas: int, *,
                 seed: int = 0) -> None:
        super().__init__()
        if hasattr(backbone, "classifier"):
            del backbone.classifier
        self.backbone = backbone
        self.cfg = cfg
        self.num_classes = num_classes
        self.canvas = canvas
        self.levels = level_specs(backbone.space, backbone.arch, cfg, canvas)
        gen = derive_generator(seed, "detect-init")
        self.neck = FPNLite(self.levels, cfg.neck_width)
        self.head = FCOSHead(cfg, num_classes, self.levels, gen)
        self._init_weights(gen)
        self._first_stage = self.levels[0].stage
        self.backbone_frozen = False

    def freeze_backbone(self) -> BinaryDetector:
        """Fixes the backbone: no gradients, and BN statistics kept (eval mode) even while training."""
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        return self

    def train(self, mode: bool = True) -> BinaryDetector:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    @torch.no_grad()
    def _init_weights(self, gen: torch.Generator) -> None:
        for m in self.neck.modules():
            if isinstance(m, nn.Conv2d):
                # Kaiming-uniform with a = 1 (the usual FPN init), drawn from the private generator.
                bound = math.sqrt(3.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]))
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.zero_()
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, 0.01, generator=gen)
                m.bias.zero_()
        self.head.cls_pred.bias.fill_(self.head.prior_bias)

    @property
    def strides(self) -> list[int]:
        return [lv.stride for lv in self.levels]

    def backbone_features(self, x: Tensor) -> list[Tensor]:
        """The backbone outputs feeding the pyramid (its last ``num_levels`` stages)."""
        return self.backbone.features(x)[self._first_stage:]

    def forward(self, x: Tensor) -> HeadOutput:
        """[B, C, S, S] images (S = canvas) -> raw head outputs over every level."""
        return self.head(self.neck(self.backbone_features(x)))

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, canvas={self.canvas}, levels={[lv.name for lv in self.levels]}"
