"""MNIST-style idx files (``.gz`` or raw): parsing with checks, and the Fashion-MNIST / MNIST loaders.

Fashion-MNIST defaults to the Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

__all__ = ["IDX_DEFAULT_ROOTS", "IdxDataset", "load_idx_dataset", "read_idx"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08

#: Where each idx dataset is looked for when ``data.root`` is not set.
IDX_DEFAULT_ROOTS: dict[str, str] = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
_PRETTY = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}
_INSTALL_HINT = {
    "fashion-mnist": "install it with `sudo apt-get install dataset-fashion-mnist` or set data.root to a folder "
    "with the four idx files",
    "mnist": "set data.root to a folder with the four MNIST idx files (train/t10k images-idx3 and labels-idx1)",
}
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10


@dataclass
class IdxDataset:
    """A parsed idx dataset: uint8 images [N, 1, H, W] and int64 labels [N] per split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int = NUM_CLASSES


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Reads one unsigned-byte idx file (gzip-compressed when its name ends in ``.gz``).

    Args:
        path: the file.
        magic: the expected magic number (2051 for images, 2049 for labels).

    Returns:
        A uint8 array whose shape is the file's dimensions.

    Raises:
        DataError: unreadable, truncated or malformed file (the message names it).
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc} (the file is damaged; replace it)") from None
    if len(raw) < 4:
        raise DataError(f"{path} is not an idx file: only {len(raw)} bytes")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path} has magic number {got}, expected {magic} (idx {kind} of unsigned bytes); "
                        f"the file is damaged or not an idx {kind} file")
    if raw[2] != _UBYTE:  # pragma: no cover - implied by the magic check
        raise DataError(f"{path} does not hold unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header is incomplete")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataError(f"{path} is {state}: the header announces {'x'.join(map(str, dims))} = {expected} bytes "
                        f"of data, the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str, name: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{_PRETTY[name]} not found in {root} (missing {stem}.gz); {_INSTALL_HINT[name]}")


def _load_pair(root: Path, images_stem: str, labels_stem: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_path = _find(root, images_stem, name)
    lab_path = _find(root, labels_stem, name)
    images = read_idx(img_path, magic=IMAGES_MAGIC)
    labels = read_idx(lab_path, magic=LABELS_MAGIC)
    if images.ndim != 3 or images.shape[0] == 0 or min(images.shape[1:]) < 1:
        raise DataError(f"{img_path} has dimensions {images.shape}; expected N x height x width with N >= 1")
    if labels.ndim != 1:
        raise DataError(f"{lab_path} has dimensions {labels.shape}; expected one dimension (N labels)")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{img_path} holds {images.shape[0]} images but {lab_path} holds {labels.shape[0]} labels")
    if int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{lab_path} has label {int(labels.max())}; {_PRETTY[name]} labels are 0..{NUM_CLASSES - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_idx_dataset(name: str, root: str | Path | None) -> IdxDataset:
    """Loads Fashion-MNIST or MNIST from a folder with the four idx files.

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"``.
        root: the folder; None for the default location (:data:`IDX_DEFAULT_ROOTS`).

    Returns:
        The train and test splits (any consistent sizes are accepted; the standard sets have 60000 / 10000).

    Raises:
        DataError: a missing folder or file, or a malformed file.
    """
    folder = Path(root if root is not None else IDX_DEFAULT_ROOTS[name]).expanduser()
    if not folder.is_dir():
        raise DataError(f"{_PRETTY[name]} not found in {folder} (no such folder); {_INSTALL_HINT[name]}")
    train_x, train_y = _load_pair(folder, _FILES["train_images"], _FILES["train_labels"], name)
    test_x, test_y = _load_pair(folder, _FILES["test_images"], _FILES["test_labels"], name)
    if train_x.shape[2:] != test_x.shape[2:]:
        raise DataError(f"{_PRETTY[name]} in {folder}: train images are {tuple(train_x.shape[2:])} but test images "
                        f"are {tuple(test_x.shape[2:])}")
    return IdxDataset(train_x, train_y, test_x, test_y)
