"""What every command builds first from a :class:`RunConfig`: devices, the dataset and the search space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .errors import ConfigError
from .presets import resolve_space
from .space import SearchSpace
from .train.distributed import DistInfo, setup
from .utils.device import autocast, configure_backends


@dataclass
class RunContext:
    cfg: RunConfig
    dist: DistInfo
    device: torch.device
    run_dir: Path

    def autocast(self, mode: str | None = None):  # type: ignore[no-untyped-def]
        """The training passes' numerics (``train.amp``); evaluations take none and run float32."""
        return autocast(self.device, mode or self.cfg.train.amp)

    @property
    def channels_last(self) -> bool:
        cl = self.cfg.train.channels_last
        return self.device.type == "cuda" if cl is None else bool(cl)


def make_context(cfg: RunConfig, run_dir: str | Path | None = None) -> RunContext:
    dist_info, device = setup(cfg.device)
    configure_backends(device, cfg.train.amp)
    return RunContext(cfg, dist_info, device, Path(run_dir or cfg.out))


def base_space(cfg: RunConfig) -> SearchSpace:
    """The configured space before the dataset's class count and channels are applied."""
    return resolve_space(cfg.space.name, resolution=cfg.space.resolution)


def build_data_and_space(cfg: RunConfig, run_dir: Path | None = None) -> tuple[Any, SearchSpace]:
    """The dataset and the space adapted to it (classes and input channels from the data)."""
    from .data import build_data

    space = base_space(cfg)
    data = build_data(cfg.data, resolution=space.resolution, seed=cfg.seed, run_dir=run_dir)
    if cfg.space.num_classes is not None and cfg.space.num_classes != data.num_classes:
        raise ConfigError(f"space.num_classes={cfg.space.num_classes} but dataset {data.name!r} has "
                          f"{data.num_classes} classes; leave space.num_classes unset to use the dataset's")
    space = space.with_overrides(num_classes=data.num_classes, in_channels=data.in_channels)
    return data, space


def move_model(model: torch.nn.Module, ctx: RunContext) -> torch.nn.Module:
    model = model.to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
