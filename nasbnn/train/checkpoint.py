"""Self-describing training checkpoints, written atomically and read without unpickling code.

A checkpoint holds the model, optimizer and scheduler states, the step, RNG state, the search
space (dict and fingerprint), the resolved config and the package version.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError, NasbnnError
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
    _check_structure(data, p)
    if space is not None and data.get("space_fingerprint") != space.fingerprint:
        raise CheckpointError(
            f"{str(p)!r} was trained on search space {data['space'].get('name')!r} "
            f"(fingerprint {data.get('space_fingerprint')}), not on {space.name!r} ({space.fingerprint})"
        )
    return data


def _check_structure(data: dict[str, Any], p: Path) -> None:
    """Refuses a checkpoint whose entries are not of the types :func:`save_checkpoint` writes (a damaged or
    hand-made file): the model's tensors, the space, the config and the extras as mappings, the step an integer."""
    model = data.get("model")
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise CheckpointError(f"{str(p)!r} is damaged: its 'model' entry is not a mapping of names to tensors")
    for key in ("space", "config", "extra"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise CheckpointError(f"{str(p)!r} is damaged: its {key!r} entry is not a mapping")
    if not isinstance(data.get("space"), dict):
        raise CheckpointError(f"{str(p)!r} is damaged: it has no 'space' entry")
    step = data.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{str(p)!r} is damaged: its step is {step!r}")


def space_from_checkpoint(data: dict[str, Any]) -> SearchSpace:
    return SearchSpace.from_dict(data["space"])


@contextlib.contextmanager
def restoring(path: str | Path, what: str = "the network") -> Iterator[None]:
    """Turns the errors of loading a checkpoint's states into modules (shapes or keys that do not fit, an
    optimizer state of another layout) into one :class:`CheckpointError` naming ``path``."""
    try:
        yield
    except NasbnnError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch says "Error(s) in loading state_dict for X:" and then what: keep the first "what"
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise CheckpointError(f"{str(path)!r} does not fit {what}: {detail}") from None


def remove_stale_temporaries(folder: str | Path) -> None:
    """Deletes temporary files a killed writer left behind (``.<name>.*.tmp``)."""
    for f in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            os.unlink(f)
