"""Self-describing training checkpoints, written atomically and read without unpickling code.

A checkpoint holds the model, optimizer and scheduler states, the step, RNG state, the search
space (dict and fingerprint), the resolved config and the package version.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError
from ..space import SearchSpace
from ..utils.io import atomic_write_bytes

FORMAT = "nasbnn.checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, *, kind: str, model_state: dict[str, torch.Tensor], space: SearchSpace,
                    config: dict[str, Any], step: int, optimizer: dict | None = None,
                    scheduler: dict | None = None, extra: dict[str, Any] | None = None) -> None:
    """Writes the checkpoint to a temporary file beside ``path``, then renames it into place.

    A process killed at any moment leaves either the previous complete checkpoint or the new one.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "nasbnn_version": __version__,
        "step": int(step),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "space": space.to_dict(),
        "space_fingerprint": space.fingerprint,
        "config": config,
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: str | Path, *, kind: str | None = None, space: SearchSpace | None = None) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (``weights_only``: no code runs).

    Raises:
        CheckpointError: missing, unreadable, of another kind or format version, or of another
            search space than ``space`` (the message names both fingerprints).
    """
    from ..utils.torch_files import safe_torch_load

    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {str(p)!r}")
    data = safe_torch_load(p)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a nasbnn checkpoint (for official NAS-BNN checkpoints use "
                              "the upstream importer: nasbnn.load_upstream_checkpoint)")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(p)!r} has checkpoint format version {data.get('format_version')}; this "
                              f"nasbnn ({__version__}) reads version {FORMAT_VERSION}")
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"{str(p)!r} is a {data.get('kind')!r} checkpoint, expected {kind!r}")
    if space is not None and data.get("space_fingerprint") != space.fingerprint:
        raise CheckpointError(
            f"{str(p)!r} was trained on search space {data['space'].get('name')!r} "
            f"(fingerprint {data.get('space_fingerprint')}), not on {space.name!r} ({space.fingerprint})"
        )
    return data


def space_from_checkpoint(data: dict[str, Any]) -> SearchSpace:
    return SearchSpace.from_dict(data["space"])


def remove_stale_temporaries(folder: str | Path) -> None:
    """Deletes temporary files a killed writer left behind (``.<name>.*.tmp``)."""
    for f in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            os.unlink(f)
