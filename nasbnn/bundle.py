"""Self-describing bundles of exported networks: safetensors weights plus a JSON description.

A bundle is a folder with ``model.safetensors`` (the :class:`StaticBNN` state dict), ``bundle.json``
(format version, architecture, OPs under both conventions, parameter count, the search space, the
strategy switches it was trained with, the config and provenance) and ``config.yaml``. Loading never
executes code from the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .cost import arch_cost
from .errors import CheckpointError
from .models.static import StaticBNN
from .space import Arch, SearchSpace
from .utils.io import atomic_write_bytes, atomic_write_text, read_json
from .utils.torch_files import first_non_finite

__all__ = ["BUNDLE_FORMAT", "load_bundle", "read_bundle_info", "save_bundle"]

BUNDLE_FORMAT = "nasbnn.bundle"
BUNDLE_VERSION = 1


def bundle_info(net: StaticBNN, *, config: dict[str, Any] | None = None, source: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    from .strategies import strategies_from_record

    space, arch = net.space, net.arch
    # The network itself decides weight_norm; the other two switches only shaped its training.
    strategies = {**strategies_from_record(config), "weight_norm": bool(getattr(net, "weight_norm", True))}
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "nasbnn_version": __version__,
        "arch": str(arch),
        "arch_dict": arch.to_dict(),
        "resolution": space.resolution,
        "cost": {conv: arch_cost(arch, space, convention=conv).to_dict() for conv in ("upstream", "standard")},
        "params": sum(p.numel() for p in net.parameters()),
        "space": space.to_dict(),
        "space_fingerprint": space.fingerprint,
        "strategies": strategies,
        "source": source or {},
        "metrics": metrics or {},
        "config": config or {},
    }


def save_bundle(net: StaticBNN, folder: str | Path, *, config: dict[str, Any] | None = None,
                source: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Writes ``net`` as a bundle in ``folder`` (created if needed); every file is written atomically."""
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = save(state, metadata={"format": BUNDLE_FORMAT, "arch": str(net.arch)})
    info = bundle_info(net, config=config, source=source, metrics=metrics)
    atomic_write_bytes(folder / "model.safetensors", blob)
    atomic_write_text(folder / "bundle.json", json.dumps(info, indent=2) + "\n")
    if config:
        import yaml

        atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return folder


def read_bundle_info(folder: str | Path) -> dict[str, Any]:
    """The parsed ``bundle.json`` of a bundle.

    Raises:
        CheckpointError: not a bundle folder, or another format version.
    """
    p = Path(folder)
    f = p / "bundle.json"
    info = read_json(f, error=CheckpointError,
                     missing=f"{str(p)!r} is not a nasbnn bundle (no bundle.json); export one with `nasbnn export`")
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{str(f)!r} is not a nasbnn bundle description")
    if info.get("format_version") != BUNDLE_VERSION:
        raise CheckpointError(f"{str(p)!r} has bundle format version {info.get('format_version')}; this nasbnn "
                              f"({__version__}) reads version {BUNDLE_VERSION}")
    return info


def load_bundle(folder: str | Path, *, device: torch.device | str = "cpu") -> StaticBNN:
    """The exported network of a bundle, in eval mode.

    Raises:
        CheckpointError: missing/corrupt files, or weights that do not fit the described architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    info = read_bundle_info(folder)
    try:
        space = SearchSpace.from_dict(info["space"])
        arch = space.validate(Arch.parse(info["arch"]), nondecreasing=False)
    except KeyError as exc:
        raise CheckpointError(f"bundle {str(folder)!r}: bundle.json has no {exc}; the file is damaged") from None
    except (TypeError, AttributeError):
        raise CheckpointError(f"bundle {str(folder)!r}: the space or architecture in bundle.json is damaged") from None
    strategies = info.get("strategies") or {}
    if not isinstance(strategies, dict):
        raise CheckpointError(f"bundle {str(folder)!r}: strategies in bundle.json is not a mapping")
    weight_norm = strategies.get("weight_norm", True)
    if not isinstance(weight_norm, bool):
        raise CheckpointError(f"bundle {str(folder)!r}: strategies.weight_norm must be true or false, got "
                              f"{weight_norm!r}")
    net = StaticBNN.build(space, arch, weight_norm=weight_norm)
    wpath = Path(folder) / "model.safetensors"
    if not wpath.is_file():
        raise CheckpointError(f"bundle {str(folder)!r} has no model.safetensors")
    try:
        state = load(wpath.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read {str(wpath)!r}: {str(exc).splitlines()[0]}") from None
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"weights in {str(wpath)!r} do not match architecture {info['arch']!r} "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"weights in {str(wpath)!r}: {k} has shape {list(v.shape)}, the architecture "
                                  f"needs {list(own[k].shape)}")
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"weights in {str(wpath)!r}: {bad} holds NaN or infinite values; the bundle is damaged")
    net.load_state_dict(state)
    return net.to(device).eval()
