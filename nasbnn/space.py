"""Architectures as typed values, and the search spaces that sample, check and evolve them.

An :class:`Arch` is a frozen, hashable value: one :class:`StageArch` per stage, each holding exactly as
many :class:`BlockArch` as its depth (no inactive rows, so one network has exactly one encoding).
Stage 0 is the stem (one block; only its width and kernel size matter). A :class:`SearchSpace` knows
which architectures are legal and owns sampling, the largest and smallest members, validation with
named rules, mutation and crossover. Randomness is always injected as a ``random.Random``.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
import reprlib
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from functools import cached_property
from random import Random
from typing import Any, NamedTuple

from .errors import InvalidArch, SpaceError

__all__ = [
    "MAX_BLOCK_OPTIONS",
    "MAX_CLASSES",
    "MAX_DEPTH",
    "MAX_KERNEL",
    "MAX_RESOLUTION",
    "MAX_STAGES",
    "MAX_WEIGHTS",
    "MAX_WIDTH",
    "Arch",
    "BlockArch",
    "BlockGeometry",
    "SearchSpace",
    "StageArch",
    "StageSpec",
    "check_resolution",
    "value_kind",
]

# Limits of a search space: every preset fits them many times over, and no space within them makes a
# command spend minutes tabulating its options or allocate more memory than a machine has.
#: Largest K×K kernel (odd sizes only).
MAX_KERNEL = 11
#: Most blocks in one stage.
MAX_DEPTH = 64
#: Most channels of a block (also the most groups, and the most input channels).
MAX_WIDTH = 8192
#: Most stages, the stem included.
MAX_STAGES = 16
#: Largest input resolution.
MAX_RESOLUTION = 1024
#: Most classifier outputs.
MAX_CLASSES = 100_000
#: Most latent weights of the supernet (2 GB in float32; the ImageNet preset has 66 million).
MAX_WEIGHTS = 500_000_000
#: Most (input width, width, kernel, groups, 1x1 groups) combinations the space tabulates for sampling.
MAX_BLOCK_OPTIONS = 200_000


def _is_int(value: Any) -> bool:
    """True for an integer that is not a boolean (Python and NumPy integers)."""
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def _bounded(key: str, value: Any, limit: int) -> int:
    """``value`` as an int, refused (SpaceError naming ``key``) unless it is an integer from 1 to ``limit``."""
    if not _is_int(value) or not 1 <= value <= limit:
        raise SpaceError(f"{key} must be 1 to {limit}, got {value!r}")
    return int(value)


def check_resolution(value: Any) -> int:
    """An input resolution, refused (SpaceError) unless it is an integer from 1 to :data:`MAX_RESOLUTION`."""
    return _bounded("resolution", value, MAX_RESOLUTION)


def value_kind(value: Any) -> str:
    """What a parsed JSON/YAML value is, in words (``"a list"``, ``"null"``...), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


class BlockArch(NamedTuple):
    """The choices of one block (an immutable, hashable record).

    Attributes:
        width: output channels of the block (for the stem: of the stem conv).
        kernel_size: kernel of the K×K binary conv (for the stem: of the 8-bit conv).
        groups: groups of the K×K conv.
        pw_groups: groups of the 1×1 binary conv.
    """

    width: int
    kernel_size: int = 3
    groups: int = 1
    pw_groups: int = 1

    def __str__(self) -> str:
        return f"c{self.width}k{self.kernel_size}g{self.groups}.{self.pw_groups}"

    def __repr__(self) -> str:
        return f"BlockArch({str(self)!r})"

    def to_dict(self) -> dict[str, int]:
        """The choices by field name, in field order (the JSON form of a block)."""
        return self._asdict()


class StageArch(NamedTuple):
    """The blocks of one stage; ``depth == len(blocks)``."""

    blocks: tuple[BlockArch, ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def __str__(self) -> str:
        return ",".join(str(b) for b in self.blocks)

    def __repr__(self) -> str:
        return f"StageArch({str(self)!r})"


_BLOCK_RE = re.compile(r"^c(\d+)k(\d+)(?:g(\d+)(?:\.(\d+))?)?$")
_BLOCK_KEYS = BlockArch._fields
_DICT_FORM = "{'stages': [[{'width': W, 'kernel_size': K, 'groups': G, 'pw_groups': P}, ...], ...]}"


def _block_problem(block: BlockArch) -> str | None:
    """What is wrong with the fields of ``block`` (each must be a positive integer), or ``None``."""
    for name, value in zip(_BLOCK_KEYS, block):
        if not _is_int(value) or value < 1:
            return f"{name} must be a positive integer, got {value!r}"
    return None


class Arch(NamedTuple):
    """A whole network: one :class:`StageArch` per stage, the stem first.

    Immutable and hashable (tuples all the way down, so hashing and equality run in C: architectures
    are dictionary keys in every memo of the search). The string form is
    ``"c24k3g1.1|c48k3g1.1,c48k3g1.1|..."``: stages separated by ``|``, blocks by ``,``, each block
    ``c<width>k<kernel>g<groups>.<pw_groups>`` (``g..`` may be left out when 1).
    ``Arch.parse(str(a)) == a`` and ``Arch.from_dict(a.to_dict()) == a``.
    """

    stages: tuple[StageArch, ...]

    def __str__(self) -> str:
        return "|".join(str(s) for s in self.stages)

    def __repr__(self) -> str:
        return f"Arch({str(self)!r})"

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s.blocks) for s in self.stages)

    def blocks(self) -> Iterator[tuple[int, int, BlockArch]]:
        """Yields ``(stage_index, block_index, block)`` in network order, the stem first."""
        for s, stage in enumerate(self.stages):
            for j, block in enumerate(stage.blocks):
                yield s, j, block

    @property
    def num_blocks(self) -> int:
        return sum(len(s.blocks) for s in self.stages)

    @property
    def final_width(self) -> int:
        return self.stages[-1].blocks[-1].width

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [[b.to_dict() for b in s.blocks] for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arch:
        """Inverse of :meth:`to_dict`.

        Raises:
            InvalidArch: the mapping is not of that form, or a field is not a positive integer.
        """
        if not isinstance(data, Mapping):
            raise InvalidArch(f"an architecture dict must be a mapping, got {value_kind(data)}; expected {_DICT_FORM}")
        if "stages" not in data:
            raise InvalidArch(f"an architecture dict needs 'stages'; expected {_DICT_FORM}")
        stages = data["stages"]
        if not isinstance(stages, (list, tuple)):
            raise InvalidArch(f"'stages' must be a list of stages (lists of blocks), got {value_kind(stages)}; "
                              f"expected {_DICT_FORM}")
        if not stages:
            raise InvalidArch("an architecture needs at least one stage and one block per stage")
        built = []
        for s, stage in enumerate(stages):
            if not isinstance(stage, (list, tuple)):
                raise InvalidArch(f"stage {s} must be a list of blocks, got {value_kind(stage)}")
            if not stage:
                raise InvalidArch("an architecture needs at least one stage and one block per stage")
            blocks = []
            for j, b in enumerate(stage):
                where = f"stage {s} block {j}"
                if not isinstance(b, Mapping):
                    raise InvalidArch(f"{where} must be a mapping with keys {', '.join(_BLOCK_KEYS)}; got "
                                      f"{value_kind(b)}")
                extra = set(b) - set(_BLOCK_KEYS)
                if extra:
                    raise InvalidArch(f"{where}: unknown block keys {sorted(map(str, extra))}; valid: "
                                      f"{', '.join(_BLOCK_KEYS)}")
                if "width" not in b:
                    raise InvalidArch(f"{where}: 'width' is required")
                block = BlockArch(b["width"], b.get("kernel_size", 3), b.get("groups", 1), b.get("pw_groups", 1))
                problem = _block_problem(block)
                if problem is not None:
                    raise InvalidArch(f"{where}: {problem}")
                blocks.append(BlockArch(*(int(v) for v in block)))
            built.append(StageArch(tuple(blocks)))
        return cls(tuple(built))

    @classmethod
    def parse(cls, text: str) -> Arch:
        """Parses the string form (see the class docstring).

        Raises:
            InvalidArch: the text is malformed; the message points at the bad part.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidArch("empty architecture string; expected e.g. 'c24k3g1.1|c48k3g1.1,c48k3g1.1|...'")
        stages = []
        for si, stage_text in enumerate(text.strip().split("|")):
            blocks = []
            for bi, block_text in enumerate(stage_text.strip().split(",")):
                m = _BLOCK_RE.match(block_text.strip())
                if m is None:
                    raise InvalidArch(
                        f"malformed block {block_text.strip()!r} (stage {si}, block {bi}); expected "
                        "c<width>k<kernel>g<groups>.<pw_groups>, e.g. c96k5g2.1"
                    )
                where = f"block {block_text.strip()!r} (stage {si}, block {bi})"
                try:
                    block = BlockArch(*(int(v or 1) for v in m.groups()))
                except ValueError:  # more digits than int() reads
                    raise InvalidArch(f"{where}: a number is too large") from None
                problem = _block_problem(block)
                if problem is not None:
                    raise InvalidArch(f"{where}: {problem}")
                blocks.append(block)
            stages.append(StageArch(tuple(blocks)))
        return cls(tuple(stages))


@dataclass(frozen=True)
class StageSpec:
    """The options of one stage (the same for every block of the stage).

    Attributes:
        widths: output channel options, ascending.
        depths: block-count options, ascending.
        kernel_sizes: K×K kernel options, ascending (odd).
        groups: group options of the K×K conv, ascending.
        pw_groups: group options of the 1×1 conv, ascending.
        stride: stride of the stage's first block (1 or 2).

    Raises:
        SpaceError: an option that is not a list of positive integers, an even kernel size, or a value beyond
            :data:`MAX_WIDTH` (widths and groups), :data:`MAX_DEPTH` or :data:`MAX_KERNEL`.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...] = (1,)
    kernel_sizes: tuple[int, ...] = (3,)
    groups: tuple[int, ...] = (1,)
    pw_groups: tuple[int, ...] = (1,)
    stride: int = 1

    def __post_init__(self) -> None:
        limits = {"widths": MAX_WIDTH, "depths": MAX_DEPTH, "kernel_sizes": MAX_KERNEL, "groups": MAX_WIDTH,
                  "pw_groups": MAX_WIDTH}
        for name, limit in limits.items():
            raw = getattr(self, name)
            if (isinstance(raw, (str, bytes)) or not isinstance(raw, (Sequence, Set))
                    or not all(_is_int(v) for v in raw)):
                raise SpaceError(f"stage option {name} must be a list of integers, got {reprlib.repr(raw)}")
            vals = tuple(sorted({int(v) for v in raw}))
            if not vals or vals[0] < 1:
                raise SpaceError(f"stage option {name} must be a non-empty list of positive integers")
            if vals[-1] > limit:
                raise SpaceError(f"stage option {name} must be at most {limit}, got {vals[-1]}")
            object.__setattr__(self, name, vals)
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise SpaceError(f"kernel sizes must be odd, got {list(self.kernel_sizes)}")
        if not _is_int(self.stride) or self.stride not in (1, 2):
            raise SpaceError(f"stage stride must be 1 or 2, got {self.stride!r}")
        object.__setattr__(self, "stride", int(self.stride))

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "depths": list(self.depths),
            "kernel_sizes": list(self.kernel_sizes),
            "groups": list(self.groups),
            "pw_groups": list(self.pw_groups),
            "stride": self.stride,
        }


@dataclass(frozen=True, slots=True)
class BlockGeometry:
    """Where a block sits and what it sees: derived from an arch and the space."""

    stage: int
    index: int
    block: BlockArch
    in_channels: int
    stride: int
    in_resolution: int
    out_resolution: int


def _capacity(b: BlockArch) -> tuple[int, int, int]:
    """Orders block options by compute: larger kernels, then fewer groups, are bigger."""
    return (b.kernel_size, -b.groups, -b.pw_groups)


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a 'same'-padded odd-kernel conv; equals ``size // stride`` for even sizes."""
    return (size - 1) // stride + 1


class SearchSpace:
    """A NAS-BNN search space: the stem stage followed by ReActNet-style binary stages.

    Args:
        name: the preset or file name (not part of the fingerprint).
        stages: stage 0 is the stem (depth 1, 8-bit conv); the others hold binary blocks.
        in_channels: channels of the input image.
        num_classes: classifier outputs.
        resolution: default input resolution (the models do not bake it in).

    Raises:
        SpaceError: the stage table is inconsistent, or the space is beyond the limits of this module
            (``MAX_*``: stages, resolution, classes, block options, supernet weights); the message names the
            problem and the limit.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[StageSpec],
        *,
        in_channels: int = 3,
        num_classes: int = 1000,
        resolution: int = 224,
    ) -> None:
        self.name = name
        self.stages: tuple[StageSpec, ...] = tuple(stages)
        self.in_channels = _bounded("in_channels", in_channels, MAX_WIDTH)
        self.num_classes = _bounded("num_classes", num_classes, MAX_CLASSES)
        self.resolution = check_resolution(resolution)
        if len(self.stages) < 2:
            raise SpaceError("a search space needs the stem stage and at least one block stage")
        if len(self.stages) > MAX_STAGES:
            raise SpaceError(f"a search space has at most {MAX_STAGES} stages (the stem included), got "
                             f"{len(self.stages)}")
        if self.stages[0].depths != (1,):
            raise SpaceError(f"the stem stage (stage 0) must have depth options [1], got "
                              f"{list(self.stages[0].depths)}")
        options = self._block_options()
        if options > MAX_BLOCK_OPTIONS:
            raise SpaceError(f"search space {name!r} has {options} block options (input width x width x kernel x "
                             f"groups x 1x1 groups, summed over stages); at most {MAX_BLOCK_OPTIONS}: give the "
                             "stages fewer options")
        weights = self.num_weights()
        if weights > MAX_WEIGHTS:
            raise SpaceError(f"the supernet of search space {name!r} would hold about {weights:,} weights; at most "
                             f"{MAX_WEIGHTS:,}: use fewer or narrower blocks, or smaller kernels")
        self._block_tables = self._build_tables()
        # stage -> input width -> per width option: the legal blocks (fast path of ``sample``).
        self._sample_tables: list[dict[int, tuple[tuple[BlockArch, ...], ...]]] = [
            {in_ch: tuple(self._block_tables[(s, in_ch, w)] for w in spec.widths)
             for (s2, in_ch, _w) in self._block_tables if s2 == s}
            for s, spec in enumerate(self.stages)
        ]
        largest, smallest = self.largest(), self.smallest()
        for label, arch in (("largest", largest), ("smallest", smallest)):
            problems = self.check(arch)
            if problems:
                raise SpaceError(f"search space {name!r}: its {label} member is invalid: {problems[0][1]}")

    # ------------------------------------------------------------------ description
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Builds a space from :meth:`to_dict` output (e.g. read from a config file).

        Raises:
            SpaceError: missing or unknown keys, values of the wrong type, or sizes beyond the limits of this
                module (the message names the key and what is valid).
        """
        if not isinstance(data, Mapping):
            raise SpaceError(f"a search-space definition must be a mapping, got {value_kind(data)}")
        allowed = {"name", "in_channels", "num_classes", "resolution", "stages"}
        extra = set(data) - allowed
        if extra:
            raise SpaceError(f"unknown search-space keys {sorted(map(str, extra))}; valid: {sorted(allowed)}")
        if "stages" not in data:
            raise SpaceError("a search-space definition needs 'stages'")
        stage_keys = {"widths", "depths", "kernel_sizes", "groups", "pw_groups", "stride"}
        raw_stages = data["stages"]
        if not isinstance(raw_stages, (list, tuple)):
            raise SpaceError(f"'stages' must be a list of stage mappings (keys {sorted(stage_keys)}), got "
                             f"{value_kind(raw_stages)}")
        if len(raw_stages) > MAX_STAGES:
            raise SpaceError(f"a search space has at most {MAX_STAGES} stages (the stem included), got "
                             f"{len(raw_stages)}")
        stages = []
        for i, st in enumerate(raw_stages):
            if not isinstance(st, Mapping):
                raise SpaceError(f"stage {i} must be a mapping with keys {sorted(stage_keys)}")
            bad = set(st) - stage_keys
            if bad:
                raise SpaceError(f"stage {i}: unknown keys {sorted(map(str, bad))}; valid: {sorted(stage_keys)}")
            if "widths" not in st:
                raise SpaceError(f"stage {i}: 'widths' is required")
            try:
                stages.append(StageSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in st.items()}))
            except SpaceError as exc:
                raise SpaceError(f"stage {i}: {exc}") from None
        name = data.get("name", "custom")
        if not isinstance(name, str):
            raise SpaceError(f"'name' must be a string, got {value_kind(name)}")
        sizes = {"in_channels": (3, MAX_WIDTH), "num_classes": (1000, MAX_CLASSES),
                 "resolution": (224, MAX_RESOLUTION)}
        for key, (default, limit) in sizes.items():
            value = data.get(key, default)
            if not _is_int(value):
                raise SpaceError(f"'{key}' must be an integer from 1 to {limit}, got {reprlib.repr(value)}")
        return cls(
            name,
            stages,
            in_channels=int(data.get("in_channels", 3)),
            num_classes=int(data.get("num_classes", 1000)),
            resolution=int(data.get("resolution", 224)),
        )

    @cached_property
    def fingerprint(self) -> str:
        """Hash of everything that shapes the supernet's parameters (not the name or resolution)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("resolution")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SearchSpace)
            and self.fingerprint == other.fingerprint
            and self.resolution == other.resolution
        )

    def __hash__(self) -> int:
        return hash((self.fingerprint, self.resolution))

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, stages={len(self.stages)}, resolution={self.resolution})"

    def with_overrides(self, *, num_classes: int | None = None, resolution: int | None = None,
                       in_channels: int | None = None, name: str | None = None) -> SearchSpace:
        """A copy with other class count, resolution or input channels."""
        return SearchSpace(
            name or self.name,
            self.stages,
            in_channels=self.in_channels if in_channels is None else in_channels,
            num_classes=self.num_classes if num_classes is None else num_classes,
            resolution=self.resolution if resolution is None else resolution,
        )

    def _block_options(self) -> int:
        """How many entries :meth:`_build_tables` considers (before the groups that do not divide are left out)."""
        total = 0
        for s, spec in enumerate(self.stages):
            ins = set(spec.widths) | ({self.in_channels} if s == 0 else set(self.stages[s - 1].widths))
            total += (len(ins) * len(spec.widths) * len(spec.kernel_sizes) * len(spec.groups)
                      * len(spec.pw_groups))
        return total

    def num_weights(self) -> int:
        """The latent weights of the supernet of this space (its convolutions, kernel transforms and
        classifier): what training allocates, several times over with gradients and optimizer state."""
        total = 0
        for s, spec in enumerate(self.stages):
            k = max(spec.kernel_sizes)
            transforms = sum(small**4 for small in spec.kernel_sizes[:-1]) + k**4
            for j in range(max(spec.depths)):
                max_in = self.max_in_channels(s, j)
                if s == 0:
                    total += max(spec.widths) * (max_in // min(spec.groups)) * k * k
                    continue
                total += max_in * (max_in // min(spec.groups)) * k * k + transforms
                total += max(spec.widths) * (max_in // min(spec.pw_groups))
        return total + max(self.stages[-1].widths) * self.num_classes

    @property
    def max_depths(self) -> tuple[int, ...]:
        return tuple(max(s.depths) for s in self.stages)

    @property
    def num_rows(self) -> int:
        """Rows of the upstream candidate matrix (the sum of the maximum depths)."""
        return sum(self.max_depths)

    def max_in_channels(self, stage: int, index: int) -> int:
        """Largest input width a block can see (its weights are allocated for it)."""
        if stage == 0:
            return self.in_channels
        if index == 0:
            return max(self.stages[stage - 1].widths)
        return max(self.stages[stage].widths)

    # ------------------------------------------------------------------ geometry
    def geometry(self, arch: Arch, resolution: int | None = None) -> list[BlockGeometry]:
        """Per block: input channels, stride and resolutions, in network order."""
        res = self.resolution if resolution is None else int(resolution)
        out: list[BlockGeometry] = []
        in_ch = self.in_channels
        for s, stage in enumerate(arch.stages):
            spec = self.stages[s]
            for j, block in enumerate(stage.blocks):
                stride = spec.stride if j == 0 else 1
                res_out = conv_out_size(res, stride)
                out.append(BlockGeometry(s, j, block, in_ch, stride, res, res_out))
                in_ch = block.width
                res = res_out
        return out

    # ------------------------------------------------------------------ tables for fast sampling
    def _valid_combos(self, stage: int, in_ch: int, width: int) -> tuple[tuple[int, int, int], ...]:
        spec = self.stages[stage]
        combos = []
        for k in spec.kernel_sizes:
            for g in spec.groups:
                if in_ch % g:
                    continue
                for pg in spec.pw_groups:
                    if in_ch % pg or width % pg:
                        continue
                    combos.append((k, g, pg))
        return tuple(combos)

    def _build_tables(self) -> dict[tuple[int, int, int], tuple[BlockArch, ...]]:
        """(stage, in_width, width) -> every legal BlockArch, interned so sampling allocates nothing."""
        tables: dict[tuple[int, int, int], tuple[BlockArch, ...]] = {}
        for s, spec in enumerate(self.stages):
            ins: set[int] = set(spec.widths)
            ins |= {self.in_channels} if s == 0 else set(self.stages[s - 1].widths)
            for in_ch in sorted(ins):
                for w in spec.widths:
                    tables[(s, in_ch, w)] = tuple(
                        BlockArch(w, k, g, pg) for (k, g, pg) in self._valid_combos(s, in_ch, w)
                    )
        return tables

    def _choices(self, stage: int, in_ch: int, width: int) -> tuple[BlockArch, ...]:
        return self._block_tables.get((stage, in_ch, width), ())

    # ------------------------------------------------------------------ members
    def sample(self, rng: Random) -> Arch:
        """A random member, drawn as upstream draws it.

        Per stage a depth is drawn uniformly; per block a width uniformly among the options not
        below the previous block's width (so widths never decrease inside a stage), then kernel
        size and groups uniformly among those that divide the channels. Later blocks lean wider,
        as in the upstream sampler.
        """
        rand = rng.random
        stages = []
        in_ch = self.in_channels
        for s, spec in enumerate(self.stages):
            by_width = self._sample_tables[s][in_ch]
            nw = len(by_width)
            depths = spec.depths
            depth = depths[int(rand() * len(depths))]
            lo = 0
            blocks = []
            for _ in range(depth):
                wi = lo + int(rand() * (nw - lo))
                lo = wi
                choices = by_width[wi]
                if not choices:
                    raise SpaceError(f"stage {s}: no kernel/groups option divides {in_ch} channels")
                block = choices[int(rand() * len(choices))]
                blocks.append(block)
                in_ch = block.width
                by_width = self._sample_tables[s][in_ch]
            stages.append(StageArch(tuple(blocks)))
        return Arch(tuple(stages))

    def _extreme(self, big: bool) -> Arch:
        stages = []
        in_ch = self.in_channels
        for s, spec in enumerate(self.stages):
            depth = max(spec.depths) if big else min(spec.depths)
            width = max(spec.widths) if big else min(spec.widths)
            blocks = []
            for _ in range(depth):
                choices = self._choices(s, in_ch, width)
                if not choices:
                    raise SpaceError(f"stage {s}: no groups option divides {in_ch} channels")
                # Capacity order: larger kernels and *fewer* groups mean more compute.
                blocks.append(max(choices, key=_capacity) if big else min(choices, key=_capacity))
                in_ch = width
            stages.append(StageArch(tuple(blocks)))
        return Arch(tuple(stages))

    def largest(self) -> Arch:
        """Most compute: deepest, widest, largest kernels, fewest groups."""
        return self._extreme(True)

    def smallest(self) -> Arch:
        """Least compute: shallowest, narrowest, smallest kernels, most groups."""
        return self._extreme(False)

    # ------------------------------------------------------------------ validation
    def check(self, arch: Arch, *, nondecreasing: bool = True) -> list[tuple[str, str]]:
        """Every violated rule as ``(rule, message)``; empty when ``arch`` is a member."""
        problems: list[tuple[str, str]] = []
        if not isinstance(arch, Arch):
            return [("type", f"expected an Arch, got {type(arch).__name__}")]
        if len(arch.stages) != len(self.stages):
            return [("stage-count", f"architecture has {len(arch.stages)} stages; space {self.name!r} "
                                    f"has {len(self.stages)}")]
        in_ch = self.in_channels
        for s, (spec, stage) in enumerate(zip(self.stages, arch.stages)):
            if stage.depth not in spec.depths:
                problems.append(("depth", f"stage {s}: depth {stage.depth} out of range; valid: "
                                          f"{list(spec.depths)}"))
            prev_w = 0
            for j, b in enumerate(stage.blocks):
                where = f"stage {s} block {j}"
                problem = _block_problem(b)
                if problem is not None:  # the channel arithmetic below needs positive integers
                    problems.append(("format", f"{where}: {problem}"))
                    return problems
                if b.width not in spec.widths:
                    problems.append(("width", f"{where}: unknown width {b.width}; valid: {list(spec.widths)}"))
                if b.kernel_size not in spec.kernel_sizes:
                    problems.append(("kernel-size", f"{where}: unknown kernel size {b.kernel_size}; valid: "
                                                    f"{list(spec.kernel_sizes)}"))
                if b.groups not in spec.groups:
                    problems.append(("groups", f"{where}: unknown groups {b.groups}; valid: "
                                               f"{list(spec.groups)}"))
                if b.pw_groups not in spec.pw_groups:
                    problems.append(("pw-groups", f"{where}: unknown 1x1 groups {b.pw_groups}; valid: "
                                                  f"{list(spec.pw_groups)}"))
                if in_ch % b.groups:
                    problems.append(("groups-divide", f"{where}: groups {b.groups} do not divide its "
                                                      f"{in_ch} input channels"))
                if in_ch % b.pw_groups or b.width % b.pw_groups:
                    problems.append(("groups-divide", f"{where}: 1x1 groups {b.pw_groups} do not divide "
                                                      f"{in_ch} -> {b.width} channels"))
                if nondecreasing and b.width < prev_w:
                    problems.append(("non-decreasing-width", f"{where}: width {b.width} is below the "
                                                             f"previous block's {prev_w} (widths may not "
                                                             "decrease inside a stage)"))
                prev_w = b.width
                in_ch = b.width
        return problems

    def validate(self, arch: Arch, *, nondecreasing: bool = True) -> Arch:
        """Returns ``arch`` if it is a member, else raises.

        Raises:
            InvalidArch: naming the first violated rule (``err.rule``) and what is valid.
        """
        problems = self.check(arch, nondecreasing=nondecreasing)
        if problems:
            rule, msg = problems[0]
            raise InvalidArch(f"invalid architecture for space {self.name!r}: {msg}", rule=rule)
        return arch

    def contains(self, arch: Arch) -> bool:
        return not self.check(arch)

    def parse(self, text: str) -> Arch:
        """Parses an arch string and validates it against this space."""
        return self.validate(Arch.parse(text))

    # ------------------------------------------------------------------ evolution operators
    def _random_block(self, rng: Random, stage: int, in_ch: int, lo: int, hi: int) -> BlockArch:
        widths = [w for w in self.stages[stage].widths if lo <= w <= hi]
        width = widths[int(rng.random() * len(widths))]
        choices = self._choices(stage, in_ch, width)
        return choices[int(rng.random() * len(choices))]

    def mutate(self, arch: Arch, prob: float, rng: Random) -> Arch:
        """Upstream mutation with the non-decreasing-width rule kept.

        Per stage, with probability ``prob`` the depth is redrawn (new blocks start as copies of the
        stage's last block, as upstream re-activates stored rows). Then per block, with probability
        ``prob``, width, kernel size and groups are redrawn together, the width drawn between the
        previous and the next block's widths (upstream only bounds it from below).
        """
        stages = []
        for spec, stage in zip(self.stages, arch.stages):
            blocks = list(stage.blocks)
            if rng.random() < prob:
                depth = spec.depths[int(rng.random() * len(spec.depths))]
                if depth < len(blocks):
                    blocks = blocks[:depth]
                else:
                    blocks += [blocks[-1]] * (depth - len(blocks))
            stages.append(blocks)
        in_ch = self.in_channels
        out = []
        for s, blocks in enumerate(stages):
            for j in range(len(blocks)):
                if rng.random() < prob:
                    lo = blocks[j - 1].width if j > 0 else 0
                    hi = blocks[j + 1].width if j + 1 < len(blocks) else 1 << 30
                    blocks[j] = self._random_block(rng, s, in_ch, lo, hi)
                elif not self._valid_block(s, in_ch, blocks[j]):
                    # The input width changed under this block: keep its width, redraw groups.
                    choices = self._choices(s, in_ch, blocks[j].width)
                    blocks[j] = choices[int(rng.random() * len(choices))]
                in_ch = blocks[j].width
            out.append(StageArch(tuple(blocks)))
        return Arch(tuple(out))

    def _valid_block(self, stage: int, in_ch: int, block: BlockArch) -> bool:
        return block in self._choices(stage, in_ch, block.width)

    def crossover(self, a: Arch, b: Arch, rng: Random, *, max_tries: int = 64) -> Arch:
        """Upstream crossover: each stage's depth from one parent, every field from either.

        Fields are mixed element-wise (a parent lacking a block position contributes its last
        block, as its stored upstream row would). A child whose widths decrease inside a stage is
        redrawn, as upstream rejects it; after ``max_tries`` the widths are sorted instead.
        """
        depths = [pa.depth if rng.random() < 0.5 else pb.depth for pa, pb in zip(a.stages, b.stages)]
        child: list[list[list[int]]] = []
        for _ in range(max_tries):
            child = []
            ok = True
            for s, (pa, pb) in enumerate(zip(a.stages, b.stages)):
                rows = []
                for j in range(depths[s]):
                    ba = pa.blocks[min(j, pa.depth - 1)]
                    bb = pb.blocks[min(j, pb.depth - 1)]
                    va = (ba.width, ba.kernel_size, ba.groups, ba.pw_groups)
                    vb = (bb.width, bb.kernel_size, bb.groups, bb.pw_groups)
                    rows.append([x if rng.random() < 0.5 else y for x, y in zip(va, vb)])
                if any(rows[j][0] < rows[j - 1][0] for j in range(1, len(rows))):
                    ok = False
                child.append(rows)
            if ok:
                break
        else:
            for rows in child:
                widths = sorted(r[0] for r in rows)
                for r, w in zip(rows, widths):
                    r[0] = w
        # Groups must divide the (possibly new) input widths; redraw the ones that no longer do.
        in_ch = self.in_channels
        out = []
        for s, rows in enumerate(child):
            blocks = []
            for w, k, g, pg in rows:
                block = BlockArch(w, k, g, pg)
                if not self._valid_block(s, in_ch, block):
                    choices = self._choices(s, in_ch, w)
                    block = choices[int(rng.random() * len(choices))]
                blocks.append(block)
                in_ch = w
            out.append(StageArch(tuple(blocks)))
        return Arch(tuple(out))
