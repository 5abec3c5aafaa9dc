"""Backbone sources of a detector: an architecture exported from a supernet checkpoint, a bundle, or a
randomly initialised member of a search space (so the demo runs without a prior search)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..models.static import StaticBNN
from ..space import Arch, SearchSpace
from ..utils.seeding import derive_seed
from .config import BackboneConfig, DetectRunConfig

__all__ = ["backbone_geometry", "build_backbone", "choose_backbone", "zero_init_residuals"]

_logger = logging.getLogger(__name__)


def _arch_of(space: SearchSpace, spec: str) -> Arch:
    if spec == "largest":
        return space.largest()
    if spec == "smallest":
        return space.smallest()
    return space.validate(Arch.parse(spec), nondecreasing=False)


def _random_space(cfg: BackboneConfig) -> SearchSpace:
    from ..presets import resolve_space

    return resolve_space(cfg.space, in_channels=cfg.in_channels)


def choose_backbone(cfg: DetectRunConfig, *, checkpoint: str | None = None, bundle: str | None = None,
                    arch: str | None = None, space: str | None = None, canvas: int | None = None) -> DetectRunConfig:
    """``cfg`` with the backbone taken from a supernet ``checkpoint`` or a ``bundle`` (each replaces the
    other), another ``arch`` or ``space``, and another input side ``canvas``; what is not given is kept."""
    update: dict[str, Any] = {}
    if checkpoint:
        update.update(checkpoint=checkpoint, bundle=None)
    if bundle:
        update.update(bundle=bundle, checkpoint=None)
    if arch:
        update["arch"] = arch
    if space:
        update["space"] = space
    if update:
        cfg.backbone = cfg.backbone.model_copy(update=update)
    if canvas:
        cfg.data = cfg.data.model_copy(update={"canvas": canvas})
    return cfg


def backbone_geometry(cfg: BackboneConfig) -> tuple[SearchSpace, Arch]:
    """The search space and architecture ``cfg`` selects, without building any weights."""
    if cfg.bundle is not None:
        from ..bundle import read_bundle_info

        info = read_bundle_info(cfg.bundle)
        space = SearchSpace.from_dict(info["space"])
        return space, space.validate(Arch.parse(info["arch"]), nondecreasing=False)
    if cfg.checkpoint is not None:
        from ..train.checkpoint import load_checkpoint, space_from_checkpoint

        space = space_from_checkpoint(load_checkpoint(cfg.checkpoint, kind="supernet"))
        return space, _arch_of(space, cfg.arch)
    space = _random_space(cfg)
    return space, _arch_of(space, cfg.arch)


def build_backbone(cfg: BackboneConfig, *, seed: int = 0) -> tuple[StaticBNN, dict[str, Any]]:
    """The backbone network ``cfg`` selects and a description of where it came from.

    * ``bundle``: the bundle's network (its weights and BN statistics as exported);
    * ``checkpoint``: ``export_subnet`` of ``arch`` from the trained supernet;
    * neither: ``arch`` exported from a supernet of ``space`` freshly initialised from ``seed``.

    Raises:
        CheckpointError: an unreadable bundle or checkpoint.
        InvalidArch: ``arch`` is not a member of the space.
    """
    from ..export import export_subnet

    if cfg.bundle is not None:
        from ..bundle import load_bundle

        net = load_bundle(cfg.bundle)
        return net, {"kind": "bundle", "bundle": str(cfg.bundle), "arch": str(net.arch), "space": net.space.name}
    if cfg.checkpoint is not None:
        from ..runs import load_supernet

        supernet, _ = load_supernet(cfg.checkpoint)
        arch = _arch_of(supernet.space, cfg.arch)
        net = export_subnet(supernet, arch)
        return net, {"kind": "supernet", "checkpoint": str(cfg.checkpoint), "arch": str(arch),
                     "space": supernet.space.name}
    from ..models.supernet import SuperBNN

    space = _random_space(cfg)
    arch = _arch_of(space, cfg.arch)
    _logger.warning("no backbone checkpoint or bundle given: the backbone is a randomly initialised %s (%s) of "
                    "space %r", cfg.arch if cfg.arch in ("largest", "smallest") else "member", arch, space.name)
    net = export_subnet(SuperBNN(space, seed=derive_seed(seed, "detect-backbone")), arch)
    if cfg.zero_init_residual:
        zero_init_residuals(net)
    return net, {"kind": "random", "arch": str(arch), "space": space.name}


@torch.no_grad()
def zero_init_residuals(net: StaticBNN) -> StaticBNN:
    """Zeroes the scale of the BatchNorm closing each binary branch, so every block starts as its shortcut.

    The untrained backbone then hands the stem's features (pooled and tiled by the shortcuts) to the
    neck, and the binary convolutions grow from zero contribution, as with zero-initialised residual
    branches in full-precision networks (Goyal et al., 2017). Their gradients still flow through the
    BatchNorm scales, which learn from the first step.
    """
    for block in net.blocks:
        block.bn1.weight.zero_()
        block.bn2.weight.zero_()
    return net
