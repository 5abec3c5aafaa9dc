"""Analytic compute cost of an architecture: FLOPs, BOPs and OPs = FLOPs + BOPs / 64.

Counts are multiply-accumulates, kept as raw integers internally and reported in millions
(``mflops``, ``mbops``, ``mops``). Two conventions for the 8-bit stem:

* ``upstream`` (default): as the NAS-BNN code counts it, MACs / (64 / sqrt(8 · 8)) = MACs / 8,
  floored; this reproduces every OPs figure of the paper's code.
* ``standard``: the stem counted as a full-precision conv (MACs), as ReActNet-style papers count
  their first layer. It adds roughly 7–14 M OPs to ImageNet-size members.

Binary convs contribute BOPs only: K²·(C_in/g)·C_in·H_out·W_out for the K×K conv and
(C_in/g_pw)·C_out·H_out·W_out for the 1×1 conv; the classifier contributes classes·(C + 1) FLOPs
(the bias included). BatchNorm, biases, PReLU, shortcuts and pooling are not counted, as upstream.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from .errors import ConfigError
from .space import Arch, BlockArch, SearchSpace, conv_out_size

__all__ = ["BOPS_PER_OP", "CONVENTIONS", "Cost", "LayerCost", "LayerKind", "arch_cost", "layer_costs"]

#: One binary MAC counts as 1/64 of a float MAC (Bi-Real Net / ReActNet / NAS-BNN convention).
BOPS_PER_OP = 64
#: The stem weights are 8-bit and the image is full precision.
STEM_WEIGHT_BITS = 8
#: upstream divides the stem MACs by 64 / sqrt(w_bit * 8).
_UPSTREAM_STEM_DIVISOR = 64 / math.sqrt(STEM_WEIGHT_BITS * 8)

Convention = Literal["upstream", "standard"]
_ARCH_MEMO_SIZE = 256
CONVENTIONS: tuple[str, ...] = ("upstream", "standard")


@dataclass(frozen=True, slots=True)
class Cost:
    """Raw counts; ``m*`` properties give millions."""

    flops: float
    bops: float

    @property
    def ops(self) -> float:
        return self.flops + self.bops / BOPS_PER_OP

    @property
    def mflops(self) -> float:
        return self.flops / 1e6

    @property
    def mbops(self) -> float:
        return self.bops / 1e6

    @property
    def mops(self) -> float:
        return self.ops / 1e6

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bops + other.bops)

    def to_dict(self) -> dict[str, float]:
        return {"mflops": self.mflops, "mbops": self.mbops, "mops": self.mops}


class LayerKind(str, Enum):
    """What a counted or timed layer computes. The value is the text of tables and JSON files.

    A ``str`` subclass: members equal, hash, print and serialise as their value, so files written with
    the plain strings read the same, and ``LayerKind(text)`` rejects a kind that does not exist.
    """

    INT8_CONV = "int8 conv"
    BINARY_CONV = "binary conv"
    FP_CONV = "fp conv"
    FP_LINEAR = "fp linear"

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True, slots=True)
class LayerCost:
    """One counted layer, for tables. ``kind`` may be given as its text; it is stored as a :class:`LayerKind`."""

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel_size: int
    groups: int
    stride: int
    out_resolution: int
    cost: Cost

    def __post_init__(self) -> None:
        if not isinstance(self.kind, LayerKind):
            object.__setattr__(self, "kind", LayerKind(self.kind))


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown OPs convention {convention!r}; valid: {', '.join(CONVENTIONS)}")


def _stem_flops(in_ch: int, block: BlockArch, res_out: int, convention: str) -> float:
    macs = block.kernel_size**2 * (in_ch // block.groups) * block.width * res_out * res_out
    if convention == "upstream":
        return float(math.floor(macs / _UPSTREAM_STEM_DIVISOR))
    return float(macs)


def _block_bops(in_ch: int, block: BlockArch, res_out: int) -> tuple[int, int]:
    kxk = block.kernel_size**2 * (in_ch // block.groups) * in_ch * res_out * res_out
    pw = (in_ch // block.pw_groups) * block.width * res_out * res_out
    return kxk, pw


def layer_costs(arch: Arch, space: SearchSpace, resolution: int | None = None,
                convention: Convention = "upstream") -> list[LayerCost]:
    """Every counted layer of ``arch`` with its cost, in network order."""
    _check_convention(convention)
    rows: list[LayerCost] = []
    for g in space.geometry(arch, resolution):
        b = g.block
        if g.stage == 0:
            kind = LayerKind.INT8_CONV if convention == "upstream" else LayerKind.FP_CONV
            rows.append(LayerCost("stem.conv", kind, g.in_channels, b.width, b.kernel_size, b.groups, g.stride,
                                  g.out_resolution,
                                  Cost(_stem_flops(g.in_channels, b, g.out_resolution, convention), 0.0)))
            continue
        kxk, pw = _block_bops(g.in_channels, b, g.out_resolution)
        prefix = f"stage{g.stage}.block{g.index}"
        rows.append(LayerCost(f"{prefix}.conv{b.kernel_size}x{b.kernel_size}", LayerKind.BINARY_CONV, g.in_channels,
                              g.in_channels, b.kernel_size, b.groups, g.stride, g.out_resolution,
                              Cost(0.0, float(kxk))))
        rows.append(LayerCost(f"{prefix}.conv1x1", LayerKind.BINARY_CONV, g.in_channels, b.width, 1, b.pw_groups, 1,
                              g.out_resolution, Cost(0.0, float(pw))))
    c = arch.final_width
    rows.append(LayerCost("classifier", LayerKind.FP_LINEAR, c, space.num_classes, 1, 1, 1, 1,
                          Cost(float(space.num_classes * (c + 1)), 0.0)))
    return rows


def arch_cost(arch: Arch, space: SearchSpace, resolution: int | None = None,
              convention: Convention = "upstream") -> Cost:
    """Total FLOPs and BOPs of ``arch`` at ``resolution`` (default: the space's). Memoized per space."""
    res = space.resolution if resolution is None else int(resolution)
    key = (arch, res, convention)
    memo = _memo(space)
    hit = memo.archs.get(key)
    if hit is not None:
        return hit
    _check_convention(convention)
    flops = 0.0
    bops = 0
    in_ch = space.in_channels
    stages = space.stages
    block_cache = memo.blocks
    for s, stage in enumerate(arch.stages):
        stride0 = stages[s].stride
        for j, b in enumerate(stage.blocks):
            stride = stride0 if j == 0 else 1
            res_out = conv_out_size(res, stride)
            bkey = (s == 0, in_ch, b, res_out, convention)
            val = block_cache.get(bkey)
            if val is None:
                if s == 0:
                    val = (_stem_flops(in_ch, b, res_out, convention), 0)
                else:
                    kxk, pw = _block_bops(in_ch, b, res_out)
                    val = (0.0, kxk + pw)
                block_cache[bkey] = val
            flops += val[0]
            bops += val[1]
            in_ch = b.width
            res = res_out
    flops += space.num_classes * (in_ch + 1)
    cost = Cost(flops, float(bops))
    if len(memo.archs) >= _ARCH_MEMO_SIZE:
        # A bounded memo: millions of retained architectures would make the garbage collector,
        # not the counting, the bottleneck of sampling loops. Block costs stay memoized.
        memo.archs.clear()
    memo.archs[key] = cost
    return cost


@dataclass
class _CostMemo:
    """Memoized costs of one space: whole architectures (bounded) and blocks (few distinct ones)."""

    archs: dict[tuple[Arch, int, str], Cost] = field(default_factory=dict)
    blocks: dict[tuple[bool, int, BlockArch, int, str], tuple[float, int]] = field(default_factory=dict)


_MEMOS: dict[int, _CostMemo] = {}


def _memo(space: SearchSpace) -> _CostMemo:
    """The memo of ``space``, kept while the space lives (keyed by identity: hashing a space is not free)."""
    memo = _MEMOS.get(id(space))
    if memo is None:
        memo = _MEMOS[id(space)] = _CostMemo()
        weakref.finalize(space, _MEMOS.pop, id(space), None)
    return memo
