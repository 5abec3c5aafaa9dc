"""Reading torch files without running code from them: tensors and plain containers only."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .io import missing_file

__all__ = ["first_non_finite", "safe_torch_load"]


def first_non_finite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor of ``tensors`` holding a NaN or an infinity, or ``None``:
    what a damaged file, or weights of a diverged training, hold."""
    import torch

    return next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())),
                None)


def _numpy_scalar_globals() -> list[Any]:
    """What pickled numpy scalars (an accuracy stored as ``np.float64``) need: the scalar rebuilder and
    the dtypes. Rebuilding them copies bytes into a number; no code from the file runs."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    return [scalar, np.dtype, *dtypes]


def safe_torch_load(path: str | Path, *, numpy_scalars: bool = False) -> Any:
    """``torch.load`` restricted to tensors and plain containers (never executes code).

    Args:
        numpy_scalars: also accept numpy scalars (search results may record accuracies as numpy floats).

    Raises:
        CheckpointError: missing file, or content that would need arbitrary unpickling.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(missing_file(p))
    try:
        # torch warns about pickle protocols it did not write before it refuses or reads them: the outcome
        # (below) is what the user needs, not the warning's lines.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            if numpy_scalars:
                with torch.serialization.safe_globals(_numpy_scalar_globals()):
                    return torch.load(p, map_location="cpu", weights_only=True)
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        # torch words it "Unsupported global: GLOBAL x.y", or "unsupported GLOBAL x.y whose module x is blocked"
        m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", msg)
        if m is not None:
            raise CheckpointError(
                f"refusing to load {str(p)!r}: it holds a {m.group(1)} object, and loading it would run code "
                "from the file; only tensors and plain containers are read (re-save its state_dict)"
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+?)\n", msg)
        reason = detail.group(1).strip() if detail else "not a torch file"
        raise CheckpointError(f"cannot read {str(p)!r} as a torch file ({reason})") from None
    except Exception as exc:  # the restricted unpickler fails on garbage with any error type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        kind = type(exc).__name__
        known = isinstance(exc, (RuntimeError, EOFError, OSError, ValueError)) and first
        detail = first[:200] if known else f"the file is damaged or not a torch file ({kind})"
        if isinstance(exc, OSError) and exc.errno is not None:  # the zip reader's view of a cut file
            detail = f"the file is damaged or truncated ({exc.strerror or kind})"
        elif "PytorchStreamReader" in first:
            detail = "the file is damaged or truncated (its zip archive is incomplete)"
        raise CheckpointError(f"cannot read {str(p)!r} as a torch file: {detail}") from None
