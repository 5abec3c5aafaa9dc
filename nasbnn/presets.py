"""Registered search-space presets, and loading user-defined spaces from YAML/JSON files.

``imagenet`` is exactly the upstream NAS-BNN stage table; ``cifar`` adapts its stem to 32×32 inputs;
``fashion-mnist`` is small enough to train on two CPU cores in minutes; ``tiny`` is for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import SpaceError
from .registry import Registry
from .space import SearchSpace, StageSpec, value_kind
from .utils.io import missing_file

__all__ = ["create_space", "list_spaces", "load_space_file", "register_space", "resolve_space"]

_SPACES: Registry[SearchSpace] = Registry("search space", error=SpaceError)


def register_space(name: str):  # type: ignore[no-untyped-def]
    """Decorator registering a zero-argument factory returning a :class:`SearchSpace`."""
    return _SPACES.register(name)


def list_spaces() -> list[str]:
    return _SPACES.names()


def create_space(name: str, *, num_classes: int | None = None, resolution: int | None = None,
                 in_channels: int | None = None) -> SearchSpace:
    """The preset ``name``, optionally with another class count, resolution or input channels.

    Raises:
        SpaceError: unknown name (the message lists the presets).
    """
    space = _SPACES.create(name)
    if num_classes is None and resolution is None and in_channels is None:
        return space
    return space.with_overrides(num_classes=num_classes, resolution=resolution, in_channels=in_channels)


def load_space_file(path: str | Path) -> SearchSpace:
    """Reads a space definition (the dict form of :meth:`SearchSpace.to_dict`) from YAML or JSON.

    Raises:
        SpaceError: a missing or unreadable file, or a definition that is not a valid space (the message names
            the file and the problem, with the size limits of :mod:`nasbnn.space`).
    """
    from omegaconf import OmegaConf

    p = Path(path)
    if not p.is_file():
        raise SpaceError(missing_file(p, "search-space file"))
    try:
        data: Any = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    except Exception as exc:  # yaml errors carry several lines; keep the first
        raise SpaceError(f"cannot read search-space file {str(p)!r}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"search-space file {str(p)!r} must hold a mapping, not {value_kind(data)}")
    data.setdefault("name", p.stem)
    try:
        return SearchSpace.from_dict(data)
    except SpaceError as exc:
        raise SpaceError(f"search-space file {str(p)!r}: {exc}") from None


def resolve_space(spec: str | dict[str, Any] | SearchSpace, **overrides: Any) -> SearchSpace:
    """A space from a preset name, a file path, a dict, or a space."""
    if isinstance(spec, SearchSpace):
        space = spec
    elif isinstance(spec, dict):
        space = SearchSpace.from_dict(spec)
    elif spec in _SPACES:
        space = _SPACES.create(spec)
    elif spec and (spec.endswith((".yaml", ".yml", ".json")) or "/" in spec or Path(spec).exists()):
        space = load_space_file(spec)  # a path: its own messages for a folder, or a file that is not a space
    else:
        _SPACES.get(spec)  # raises the "unknown ... valid: ..." error
        raise AssertionError  # pragma: no cover
    ov = {k: v for k, v in overrides.items() if v is not None}
    return space.with_overrides(**ov) if ov else space


@register_space("imagenet")
def _imagenet() -> SearchSpace:
    """The upstream table (superbnn.py): 224×224 inputs, 1000 classes, 22 potential blocks."""
    return SearchSpace(
        "imagenet",
        [
            StageSpec(widths=(24, 32, 48), depths=(1,), kernel_sizes=(3,), groups=(1,), stride=2),
            StageSpec(widths=(48, 64, 96), depths=(2, 3), kernel_sizes=(3,), groups=(1,), stride=1),
            StageSpec(widths=(96, 128, 192), depths=(2, 3), kernel_sizes=(3, 5), groups=(1, 2), stride=2),
            StageSpec(widths=(192, 256, 384), depths=(2, 3), kernel_sizes=(3, 5), groups=(2, 4), stride=2),
            StageSpec(widths=(384, 512, 768), depths=(8, 9), kernel_sizes=(3, 5), groups=(4, 8), stride=2),
            StageSpec(widths=(768, 1024, 1536), depths=(2, 3), kernel_sizes=(3, 5), groups=(8, 16), stride=2),
        ],
        in_channels=3,
        num_classes=1000,
        resolution=224,
    )


@register_space("cifar")
def _cifar() -> SearchSpace:
    """The ImageNet table with a stride-1 stem, for 32×32 inputs (32→32→16→8→4→2)."""
    base = _imagenet()
    stem = base.stages[0]
    stages = [StageSpec(stem.widths, stem.depths, stem.kernel_sizes, stem.groups, stem.pw_groups, 1)]
    stages += list(base.stages[1:])
    return SearchSpace("cifar", stages, in_channels=3, num_classes=10, resolution=32)


@register_space("fashion-mnist")
def _fashion_mnist() -> SearchSpace:
    """28×28 grey images: stem to 14×14, then 14→7→4; trains on two CPU cores in minutes."""
    return SearchSpace(
        "fashion-mnist",
        [
            StageSpec(widths=(8, 12, 16), depths=(1,), kernel_sizes=(3,), groups=(1,), stride=2),
            StageSpec(widths=(16, 24, 32), depths=(1, 2), kernel_sizes=(3,), groups=(1,), stride=1),
            StageSpec(widths=(32, 48, 64), depths=(1, 2), kernel_sizes=(3, 5), groups=(1, 2), stride=2),
            StageSpec(widths=(64, 96, 128), depths=(1, 2, 3), kernel_sizes=(3, 5), groups=(2, 4), stride=2),
        ],
        in_channels=1,
        num_classes=10,
        resolution=28,
    )


@register_space("tiny")
def _tiny() -> SearchSpace:
    """A few thousand parameters at 16×16, with every searchable dimension present; for tests."""
    return SearchSpace(
        "tiny",
        [
            StageSpec(widths=(4, 8), depths=(1,), kernel_sizes=(3,), groups=(1,), stride=2),
            StageSpec(widths=(8, 16), depths=(1, 2), kernel_sizes=(3,), groups=(1,), stride=1),
            StageSpec(widths=(16, 32), depths=(1, 2), kernel_sizes=(3, 5), groups=(1, 2), pw_groups=(1, 2),
                      stride=2),
        ],
        in_channels=3,
        num_classes=5,
        resolution=16,
    )
