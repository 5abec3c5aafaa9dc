"""CIFAR-10 / CIFAR-100 from the python-pickle folders, read by an unpickler that can only build arrays.

The files are pickles; loading one must never run code from it, so the unpickler resolves only the
few numpy globals an array needs and refuses every other global with a :class:`DataError`.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

__all__ = ["CifarDataset", "load_cifar", "safe_unpickle"]


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    classes: int
    pretty: str


_CIFAR = {
    "cifar10": _CifarSpec("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                          "labels", 10, "CIFAR-10"),
    "cifar100": _CifarSpec("cifar-100-python", ("train",), ("test",), "fine_labels", 100, "CIFAR-100"),
}
_PIXELS = 3 * 32 * 32


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); nothing else is allowed.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise pickle.UnpicklingError("only latin-1 encoding of a string is allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.empty(0).__reduce__()[0]  # numpy's ndarray reconstructor, wherever it lives
    frombuffer = np.empty(0).__reduce_ex__(5)[0]  # protocol-5 array constructor
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(f"{self._path} refers to {module}.{name}, which a CIFAR file never needs; refusing to "
                            f"load it (it may run code). Use the original files from "
                            f"https://www.cs.toronto.edu/~kriz/cifar.html") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._path} uses persistent ids, which a CIFAR file never does; refusing to load it")


def safe_unpickle(path: Path) -> Any:
    """Loads a pickle that may only contain containers, strings, numbers and numpy arrays.

    Args:
        path: the file.

    Returns:
        The unpickled object (byte-string keys stay bytes, as in the original Python 2 files).

    Raises:
        DataError: the file refers to any other global (it is never imported or called), or is not a
            readable pickle.
    """
    try:
        with open(path, "rb") as f:
            return _ArrayOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle fails with any error type (KeyError, struct.error...)
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc} (the file is damaged; replace it)") from None


@dataclass
class CifarDataset:
    """uint8 images [N, 3, 32, 32] and int64 labels [N] per split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def _resolve_folder(name: str, root: str | Path | None) -> Path:
    spec = _CIFAR[name]
    hint = (f"download the python version from https://www.cs.toronto.edu/~kriz/cifar.html, extract it and set "
            f"data.root to the {spec.folder} folder or its parent")
    if root is None:
        raise DataError(f"{spec.pretty} needs data.root; {hint}")
    base = Path(root).expanduser()
    for folder in (base, base / spec.folder):
        if (folder / spec.test[0]).is_file():
            return folder
    raise DataError(f"{spec.pretty} not found in {base} (no {spec.test[0]} there or in "
                    f"{spec.folder}/); {hint}")


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"missing {path}; the CIFAR folder is incomplete (re-extract the archive)")
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dictionary of a CIFAR batch")
    entries = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in entries or label_key not in entries:
        raise DataError(f"{path} lacks the 'data' or '{label_key}' entry of a CIFAR batch "
                        f"(has: {', '.join(map(str, entries))})")
    data, labels = entries["data"], np.asarray(entries[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array N x {_PIXELS}, got {type(data).__name__} {shape} "
                        f"{getattr(data, 'dtype', '')}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: '{label_key}' must hold {data.shape[0]} integer labels, got shape {labels.shape} "
                        f"of {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return data, labels


def _read_split(
    folder: Path, files: Sequence[str], label_key: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(folder / f, label_key, num_classes) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar(name: str, root: str | Path | None) -> CifarDataset:
    """Loads CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``; fine labels).

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.

    Returns:
        The train and test splits.

    Raises:
        DataError: missing root or files, a malformed batch, or a pickle referring to anything but arrays.
    """
    spec = _CIFAR[name]
    folder = _resolve_folder(name, root)
    train_x, train_y = _read_split(folder, spec.train, spec.label_key, spec.classes)
    test_x, test_y = _read_split(folder, spec.test, spec.label_key, spec.classes)
    return CifarDataset(train_x, train_y, test_x, test_y, spec.classes)
