"""A split manifest from the folder upstream's ``split_imagenet.py`` produced.

That script fills ``<split>/train/<class>/`` with one symbolic link per ImageNet-train image and moves
50 links per class to ``<split>/val/<class>/``. The links store the source path as it was typed, so
with relative paths they dangle. Only the link *names* are trusted here: each one is resolved to
``<data.root>/train/<class>/<name>``, the image it was made from. The result is an ordinary
``nasbnn-split/1`` manifest marked ``"origin": "split_imagenet.py"``, so training, search and
export use exactly the official train / search-validation partition.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ..config import atomic_write_text
from ..errors import DataError
from .imagefolder import IMAGE_EXTENSIONS, MANIFEST_FORMAT, _class_folders, _files_hash

__all__ = ["UPSTREAM_ORIGIN", "is_upstream_manifest", "manifest_from_upstream_split", "write_upstream_manifest"]

UPSTREAM_ORIGIN = "split_imagenet.py"


def _link_names(folder: Path) -> list[str]:
    """Image entry names in ``folder``: files and links, dangling or not (only the name is used)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
                      and not e.is_dir())


def _resolve(split_dir: Path, part: str, root: Path, classes: list[str]) -> tuple[list[str], list[str]]:
    """``(found, missing)``: ``train/<class>/<name>`` for each entry of ``split_dir/part/<class>/``."""
    found: list[str] = []
    missing: list[str] = []
    for name in classes:
        folder = split_dir / part / name
        if not folder.is_dir():
            raise DataError(f"split folder {split_dir} has no {part}/{name}/, but {root / 'train'} has class {name!r}; "
                            "is it the output of split_imagenet.py for this dataset?")
        for f in _link_names(folder):
            rel = f"train/{name}/{f}"
            (found if (root / rel).is_file() else missing).append(rel)
    return found, missing


def manifest_from_upstream_split(split_dir: str | Path, root: str | Path, *, seed: int) -> dict:
    """The manifest (a JSON-ready dict) of the official split in ``split_dir`` over the images in ``root``.

    Args:
        split_dir: the folder split_imagenet.py wrote (``train/<class>/`` and ``val/<class>/`` of links).
        root: the ImageNet folder (``train/<class>/<images>`` and ``val/<class>/``), i.e. ``data.root``.
        seed: recorded for information only; the partition does not depend on it.

    Raises:
        DataError: missing folders, class folders that differ, entries whose image cannot be found in
            ``root/train`` (dangling links are fine as long as the name is there), an image in both parts.
    """
    split_dir, root = Path(split_dir).expanduser().resolve(), Path(root).expanduser().resolve()
    if not (split_dir / "val").is_dir() or not (split_dir / "train").is_dir():
        raise DataError(f"{split_dir} is not a split_imagenet.py output: it needs train/<class>/ and val/<class>/")
    classes = _class_folders(root / "train")
    for part in ("train", "val"):
        theirs = _class_folders(split_dir / part)
        if theirs != classes:
            extra = sorted(set(theirs) - set(classes))[:3]
            missing = sorted(set(classes) - set(theirs))[:3]
            which = f"not in the dataset: {extra}" if extra else f"missing there: {missing}"
            raise DataError(f"split folder {split_dir / part} has {len(theirs)} class folders, {root / 'train'} has "
                            f"{len(classes)} (classes {which}); the split must come from this dataset")
    train, miss_t = _resolve(split_dir, "train", root, classes)
    holdout, miss_v = _resolve(split_dir, "val", root, classes)
    missing = miss_v + miss_t
    if missing:
        raise DataError(f"{len(missing)} entries of split folder {split_dir} name no image under {root / 'train'} "
                        f"(first: {missing[0]!r}); its links are only resolved by file name, so data.root must be "
                        "the ImageNet folder the split was made from")
    if not holdout:
        raise DataError(f"split folder {split_dir}/val holds no images")
    both = set(train) & set(holdout)
    if both:
        raise DataError(f"split folder {split_dir}: {len(both)} images are in both train/ and val/ "
                        f"(first: {sorted(both)[0]!r})")
    counts = Counter(h.split("/")[1] for h in holdout)
    sizes = set(counts.values())
    per_class = sizes.pop() if len(counts) == len(classes) and len(sizes) == 1 else 0  # 0: uneven
    return {"format": MANIFEST_FORMAT, "origin": UPSTREAM_ORIGIN, "root": str(root), "split_folder": str(split_dir),
            "seed": seed, "holdout_per_class": per_class, "classes": classes,
            "hash": _files_hash(classes, train, holdout), "train": train, "holdout": holdout}


def write_upstream_manifest(split_dir: str | Path, root: str | Path, out: str | Path, *, seed: int) -> dict:
    """Builds the manifest of :func:`manifest_from_upstream_split` and writes it to ``out`` atomically."""
    doc = manifest_from_upstream_split(split_dir, root, seed=seed)
    atomic_write_text(Path(out), json.dumps(doc, indent=0) + "\n")
    return doc


def is_upstream_manifest(path: str | Path) -> bool:
    """Whether ``path`` is a manifest of the official split (False when missing or unreadable)."""
    try:
        return json.loads(Path(path).read_text()).get("origin") == UPSTREAM_ORIGIN
    except (OSError, ValueError, AttributeError):
        return False
