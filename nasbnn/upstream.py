"""Interoperability with the official NAS-BNN code (github.com/VDIGPKU/NAS-BNN).

* The upstream candidate encoding: a [rows, 6] integer matrix flattened to a tuple, one row
  ``[stage, block, width, kernel, groups1, groups2]`` per potential block, inactive rows marked
  ``stage = block = -1`` (132 integers for the ImageNet space).
* Importing an upstream supernet ``checkpoint.pth.tar`` (or a bare state dict, keys optionally
  prefixed ``module.``) into :class:`SuperBNN`.
* Reading an upstream search result ``info.pth.tar`` into architectures with their OPs and accuracy.

Files are read with ``torch.load(..., weights_only=True)``: nothing in them is ever executed.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointError, InvalidArch
from .space import Arch, BlockArch, SearchSpace, StageArch
from .utils.torch_files import first_non_finite, safe_torch_load

__all__ = [
    "UpstreamFamilyMember",
    "UpstreamSearchResult",
    "arch_from_upstream",
    "arch_to_upstream",
    "convert_upstream_state_dict",
    "load_upstream_checkpoint",
    "load_upstream_search",
    "safe_torch_load",
]

COLUMNS = 6


def arch_to_upstream(arch: Arch, space: SearchSpace) -> tuple[int, ...]:
    """The upstream candidate tuple of ``arch`` (``6 · space.num_rows`` integers).

    Inactive rows carry the values of their stage's last active block, a fixed choice that upstream
    ignores everywhere; so the encoding of an architecture is unique.
    """
    space.validate(arch, nondecreasing=False)
    out: list[int] = []
    for s, (stage, max_depth) in enumerate(zip(arch.stages, space.max_depths)):
        for j in range(max_depth):
            if j < stage.depth:
                b = stage.blocks[j]
                out += [s, j, b.width, b.kernel_size, b.groups, b.pw_groups]
            else:
                b = stage.blocks[-1]
                out += [-1, -1, b.width, b.kernel_size, b.groups, b.pw_groups]
    return tuple(out)


def arch_from_upstream(values: Sequence[int] | Tensor, space: SearchSpace, *, nondecreasing: bool = True) -> Arch:
    """Converts an upstream candidate (tuple, list or [rows, 6] tensor) to an :class:`Arch`.

    Values of inactive rows are dropped: they do not change the network.

    Args:
        nondecreasing: also require non-decreasing widths inside each stage (upstream mutation can
            produce candidates that break it; pass False to import those).

    Raises:
        InvalidArch: wrong length, rows out of order, or a member outside ``space``.
    """
    if isinstance(values, Tensor):
        values = values.flatten().tolist()
    try:
        ints = [int(v) for v in values]
    except (TypeError, ValueError):
        raise InvalidArch("an upstream candidate must be a sequence of integers") from None
    expected = COLUMNS * space.num_rows
    if len(ints) != expected:
        raise InvalidArch(
            f"upstream candidate has {len(ints)} integers; space {space.name!r} needs {expected} "
            f"({space.num_rows} rows x {COLUMNS}: stage, block, width, kernel, groups1, groups2)",
            rule="upstream-length",
        )
    rows = [ints[i : i + COLUMNS] for i in range(0, expected, COLUMNS)]
    stages: list[StageArch] = []
    r = 0
    for s, max_depth in enumerate(space.max_depths):
        blocks = []
        ended = False
        for j in range(max_depth):
            st, bl, w, k, g1, g2 = rows[r]
            r += 1
            if st == -1 and bl == -1:
                ended = True
                continue
            if ended or st != s or bl != j:
                raise InvalidArch(
                    f"upstream row {r - 1} is [{st}, {bl}, ...]; expected [{s}, {j}, ...] or [-1, -1, ...] "
                    "(active rows must come first in their stage)",
                    rule="upstream-rows",
                )
            blocks.append(BlockArch(w, k, g1, g2))
        if not blocks:
            raise InvalidArch(f"upstream candidate has no active block in stage {s}", rule="depth")
        stages.append(StageArch(tuple(blocks)))
    arch = Arch(tuple(stages))
    space.validate(arch, nondecreasing=nondecreasing)
    return arch


def parse_upstream_ints(text: str) -> list[int]:
    """Parses ``"0,0,24,3,1,1, 1,0,..."`` (commas, spaces or brackets) into integers."""
    parts = [p for p in re.split(r"[\s,()\[\]]+", text.strip()) if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise InvalidArch("an upstream candidate must be integers separated by commas or spaces",
                          rule="upstream-format") from None


# ---------------------------------------------------------------------------------------------- loading
_STEM_MAP = {
    "conv.weight": "conv.weight",
    "conv.w_scale": "conv.step_size",
    "bn.bn.weight": "bn.weight",
    "bn.bn.bias": "bn.bias",
    "bn.bn.running_mean": "bn.running_mean",
    "bn.bn.running_var": "bn.running_var",
    "bn.bn.num_batches_tracked": "bn.num_batches_tracked",
    "move1.bias": "act.shift_in",
    "relu.prelu.weight": "act.slope",
    "move2.bias": "act.shift_out",
}
_BLOCK_MAP = {
    "move11.bias": "rsign1.shift",
    "binary_conv.weight": "conv_kxk.weight",
    "move12.bias": "rprelu1.shift_in",
    "prelu1.prelu.weight": "rprelu1.slope",
    "move13.bias": "rprelu1.shift_out",
    "move21.bias": "rsign2.shift",
    "binary_conv1x1.weight": "conv_1x1.weight",
    "move22.bias": "rprelu2.shift_in",
    "prelu2.prelu.weight": "rprelu2.slope",
    "move23.bias": "rprelu2.shift_out",
}
for _i in (1, 2):
    for _leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        _BLOCK_MAP[f"bn{_i}.bn.{_leaf}"] = f"bn{_i}.{_leaf}"
# Recomputed or unused upstream entries.
_IGNORED_LEAVES = {"scaling_factor", "w_init_state", "biggest_cand", "smallest_cand"}
_KEY_RE = re.compile(r"^features\.(\d+)\.(\d+)\.(.+)$")
_MATRIX_RE = re.compile(r"^(binary_conv(?:1x1)?|conv)\.matrix_(\d+)to(\d+)$")
_FP2BIN_RE = re.compile(r"^(binary_conv(?:1x1)?)\.fp2bin_(\d+)$")


def _unwrap_state(obj: Any) -> Mapping[str, Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError("not an upstream checkpoint: expected a state dict or a dict with 'state_dict'")
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"not an upstream checkpoint: its state dict entry {k!r} is {_kind(v)}, not a tensor")
    return obj


def convert_upstream_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Renames an upstream supernet state dict to :class:`SuperBNN` keys.

    Returns:
        ``(converted, unknown_keys)``; stems with an uninitialised step (``w_init_state == 0``)
        get their LSQ step initialised from the weights, as upstream's first training step would.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    stem_uninit: set[str] = set()
    for raw_key, value in state.items():
        key = raw_key[len("module."):] if raw_key.startswith("module.") else raw_key
        leaf = key.rsplit(".", 1)[-1]
        if key.startswith("fc."):
            out["classifier." + key[3:]] = value
            continue
        m = _KEY_RE.match(key)
        if m is None:
            if leaf not in _IGNORED_LEAVES:
                unknown.append(raw_key)
            continue
        s, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        prefix = f"stages.{s}.{j}."
        table = _STEM_MAP if s == 0 else _BLOCK_MAP
        if rest in table:
            out[prefix + table[rest]] = value
        elif (mm := _MATRIX_RE.match(rest)) is not None:
            layer = {"binary_conv": "conv_kxk", "binary_conv1x1": "conv_1x1", "conv": "conv"}[mm.group(1)]
            out[f"{prefix}{layer}.transform_{mm.group(2)}to{mm.group(3)}"] = value
        elif (mf := _FP2BIN_RE.match(rest)) is not None:
            layer = {"binary_conv": "conv_kxk", "binary_conv1x1": "conv_1x1"}[mf.group(1)]
            out[f"{prefix}{layer}.fp2bin"] = value
        elif rest == "conv.w_init_state" and s == 0:
            if float(value.flatten()[0]) == 0.0:
                stem_uninit.add(prefix)
        elif leaf not in _IGNORED_LEAVES:
            unknown.append(raw_key)
    if stem_uninit:
        from .ops.layers import lsq_init_step

        for prefix in stem_uninit:
            if prefix + "conv.weight" in out:
                out[prefix + "conv.step_size"] = lsq_init_step(out[prefix + "conv.weight"])
    return out, unknown


def load_upstream_checkpoint(model: torch.nn.Module, source: str | Path | Mapping[str, Any]) -> None:
    """Loads an upstream supernet checkpoint (file or already-loaded dict) into ``model`` in place.

    Raises:
        CheckpointError: unreadable file, or a state dict of another search space (the message names
            the first mismatching tensor).
    """
    obj = safe_torch_load(source) if isinstance(source, (str, Path)) else source
    converted, unknown = convert_upstream_state_dict(_unwrap_state(obj))
    own = model.state_dict()
    space_name = getattr(getattr(model, "space", None), "name", "?")
    if unknown:
        raise CheckpointError(
            f"checkpoint has {len(unknown)} keys that a NAS-BNN supernet does not have (first: {unknown[0]!r}); "
            "is it an upstream NAS-BNN supernet checkpoint?"
        )
    for k, v in converted.items():
        if k not in own:
            raise CheckpointError(
                f"checkpoint is of another search space: it has {k!r}, which space {space_name!r} lacks"
            )
        if tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"checkpoint is of another search space: {k} has shape {list(v.shape)}, space "
                f"{space_name!r} expects {list(own[k].shape)}"
            )
    missing = [k for k in own if k not in converted]
    if missing:
        raise CheckpointError(
            f"checkpoint is of another search space: {len(missing)} tensors of space {space_name!r} are "
            f"missing (first: {missing[0]!r})"
        )
    bad = first_non_finite(converted)
    if bad is not None:
        raise CheckpointError(f"checkpoint holds NaN or infinite values (in {bad!r}); it is damaged, or its training "
                              "diverged")
    model.load_state_dict(converted, strict=True)


@dataclass(frozen=True)
class UpstreamFamilyMember:
    """One entry of an upstream ``pareto_global``: OPs bin -> architecture."""

    bin_mops: int
    arch: Arch
    mops: float | None
    top1: float | None
    nondecreasing: bool


@dataclass(frozen=True)
class UpstreamSearchResult:
    """An upstream ``info.pth.tar`` read into typed values."""

    family: list[UpstreamFamilyMember]
    evaluated: list[tuple[Arch, float | None, float | None]]  # (arch, mops, top1)
    epoch: int | None


def _real(value: Any) -> float | None:
    """A real number from a Python or numpy number or a one-element tensor; None for anything else."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _whole(value: Any) -> int | None:
    """An integer from :func:`_real`'s inputs whose value is whole; None for anything else."""
    x = _real(value)
    return int(x) if x is not None and math.isfinite(x) and x.is_integer() else None


def _candidate(value: Any) -> tuple[int, ...] | str:
    """An upstream candidate (tuple, list or tensor of whole numbers) as a tuple, or why it is not one."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            return f"is {_kind(value)}, not integers"
        items: list[Any] = value.flatten().tolist()
    elif isinstance(value, (tuple, list)):
        items = list(value)
    else:
        return f"is {_kind(value)}, not a sequence of integers"
    ints = []
    for v in items:
        i = _whole(v)
        if i is None:
            return f"holds {_shown(v)} ({_kind(v)}), not only integers"
        ints.append(i)
    return tuple(ints)


_KINDS = {"str": "a string", "int": "an integer", "NoneType": "None", "dict": "a dict", "list": "a list",
          "tuple": "a tuple", "float": "a float", "bool": "a bool"}


def _kind(value: Any) -> str:
    """What ``value`` is, for a message: ``a string``, ``a torch.float32 tensor of shape [22, 6]``..."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    name = type(value).__name__
    return _KINDS.get(name, f"a {name}")


def load_upstream_search(path: str | Path, space: SearchSpace) -> UpstreamSearchResult:
    """Reads an upstream search result (``info.pth.tar``).

    Members that break the non-decreasing-width rule (upstream mutation can produce them) are
    kept, flagged ``nondecreasing=False``.

    Raises:
        CheckpointError: unreadable file, not of that format, or fields of the wrong type.
        InvalidArch: an architecture outside ``space``.
    """
    info = safe_torch_load(path, numpy_scalars=True)
    if not isinstance(info, Mapping) or "pareto_global" not in info:
        raise CheckpointError(f"{str(path)!r} is not an upstream search result (no 'pareto_global')")

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{str(path)!r} is not a valid upstream search result: {what}")

    pareto, vis = info["pareto_global"], info.get("vis_dict") or {}
    if not isinstance(pareto, Mapping):
        raise bad(f"'pareto_global' is {_kind(pareto)}, not a dict of OPs bucket -> candidate")
    if not isinstance(vis, Mapping):
        raise bad(f"'vis_dict' is {_kind(vis)}, not a dict of candidate -> {{'ops', 'acc'}}")
    records: dict[tuple[int, ...], tuple[float | None, float | None]] = {}
    for key, entry in vis.items():
        t = _candidate(key)
        if isinstance(t, str):
            continue  # not a candidate key: nothing refers to it
        if not isinstance(entry, Mapping):
            raise bad(f"the 'vis_dict' entry of candidate {_short(t)} is {_kind(entry)}, not a dict")
        values = []
        for field in ("ops", "acc"):
            raw = entry.get(field)
            x = None if raw is None else _real(raw)
            if raw is not None and x is None:
                raise bad(f"the 'vis_dict' entry of candidate {_short(t)} has {field!r} = {_kind(raw)}, not a number")
            values.append(x)
        records[t] = (values[0], values[1])
    members = []
    for key, value in pareto.items():
        bucket = _whole(key)
        if bucket is None:
            raise bad(f"'pareto_global' has the key {_shown(key)} ({_kind(key)}); OPs buckets are whole numbers")
        t = _candidate(value)
        if isinstance(t, str):
            raise bad(f"'pareto_global'[{bucket}] {t}; a candidate is {COLUMNS * space.num_rows} integers")
        members.append((bucket, t))
    family = []
    for bucket, t in sorted(members):
        arch = arch_from_upstream(t, space, nondecreasing=False)
        mops, top1 = records.get(t, (None, None))
        family.append(UpstreamFamilyMember(bucket, arch, mops, top1, space.contains(arch)))
    evaluated = []
    for t, (mops, top1) in records.items():
        try:
            arch = arch_from_upstream(t, space, nondecreasing=False)
        except InvalidArch:
            continue
        evaluated.append((arch, mops, top1))
    raw_epoch = info.get("epoch")
    epoch = None if raw_epoch is None else _whole(raw_epoch)
    if raw_epoch is not None and epoch is None:
        raise bad(f"'epoch' is {_kind(raw_epoch)}, not a whole number")
    return UpstreamSearchResult(family, evaluated, epoch)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(t: tuple[int, ...]) -> str:
    return f"({', '.join(str(v) for v in t[:6])}, ...)" if len(t) > 6 else str(t)
