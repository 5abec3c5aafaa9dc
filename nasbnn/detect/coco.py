"""COCO-format annotation files: parsing, validation at load time, the category-id <-> label map.

Whatever could fail mid-epoch is checked (or cleaned) when the file is read; see :func:`load_coco_split`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..utils.io import missing_file

__all__ = ["CategoryMap", "CocoImage", "CocoSplit", "load_coco_split"]

#: A box narrower or lower than this (in pixels, after clipping to the image) is degenerate.
MIN_BOX_SIDE = 1.0


@dataclass(frozen=True)
class CategoryMap:
    """Contiguous labels ``0..K-1`` for COCO category ids (in increasing id order) and back."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.ids)})

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def label(self, category_id: int) -> int:
        """The contiguous label of a category id (KeyError when unknown)."""
        return self._index[category_id]  # type: ignore[attr-defined]

    def category_id(self, label: int) -> int:
        """The COCO category id of a contiguous label."""
        return self.ids[label]

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._index  # type: ignore[attr-defined]

    def to_list(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n} for i, n in zip(self.ids, self.names)]

    @classmethod
    def from_list(cls, cats: Sequence[dict[str, Any]]) -> CategoryMap:
        ordered = sorted(cats, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in ordered), tuple(str(c.get("name", c["id"])) for c in ordered))


@dataclass(frozen=True)
class CocoImage:
    """One listed image: its id, file and size as declared in the annotation file."""

    id: int
    file_name: str
    width: int
    height: int


@dataclass
class CocoSplit:
    """A validated annotation file with its image folder.

    Attributes:
        images: the usable images (those with files, in file order).
        boxes: per image, float32 [m, 4] training boxes ``x0, y0, x1, y1`` in image pixels (clipped,
            crowd and degenerate boxes removed).
        labels: per image, int64 [m] contiguous labels.
        categories: the id <-> label map.
        coco: the parsed JSON, for the COCO evaluation (ground truth as given).
        stats: counts of what was clipped, dropped, ignored or skipped.
    """

    annotation_file: Path
    image_dir: Path
    images: list[CocoImage]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    categories: CategoryMap
    coco: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.images[i].file_name

    def subset(self, n: int) -> CocoSplit:
        """The first ``n`` images (the ground truth is unchanged; evaluation restricts itself to them)."""
        return CocoSplit(self.annotation_file, self.image_dir, self.images[:n], self.boxes[:n], self.labels[:n],
                         self.categories, self.coco, dict(self.stats))


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _short(values: Sequence[Any], n: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _new_entry_id(path: Path, kind: str, i: int, entry: Any, seen: set[int]) -> int:
    """The integer ``id`` of the ``i``-th ``kind`` entry, added to ``seen``.

    Images and annotations are checked alike: an object, with an integer id not seen before.

    Raises:
        DataError: the entry is not an object, has no integer id, or repeats one.
    """
    if not isinstance(entry, dict):
        raise DataError(f"{str(path)!r}: {kind} entry {i} is not an object")
    eid = _int(entry.get("id"))
    if eid is None:
        raise DataError(f"{str(path)!r}: {kind} entry {i} has no integer 'id'")
    if eid in seen:
        raise DataError(f"{str(path)!r}: {kind} id {eid} is listed twice")
    seen.add(eid)
    return eid


def read_annotation_json(path: Path) -> dict[str, Any]:
    """The parsed annotation file; malformed JSON and non-COCO top levels are one-line :class:`DataError`."""
    if not path.is_file():
        blocker = next((d for d in path.parents if d.exists() and not d.is_dir()), None)
        if blocker is not None:
            raise DataError(f"annotation file {str(path)!r} cannot exist: {str(blocker)!r} is a file, not a folder "
                            "(the dataset folder must hold annotations/ and the image folders)")
        raise DataError(f"{missing_file(path, 'annotation file')} (expected COCO JSON: images, annotations, "
                        "categories)")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
                        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{str(path)!r} is not a COCO annotation file: the top level must be an object with "
                        "'images', 'annotations' and 'categories'")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DataError(f"{str(path)!r} is not a COCO annotation file: {', '.join(repr(k) for k in missing)} "
                        "missing or not a list")
    return data


def _parse_categories(path: Path, raw: list[Any]) -> CategoryMap:
    seen: dict[int, str] = {}
    for i, c in enumerate(raw):
        cid = _int(c.get("id")) if isinstance(c, dict) else None
        if cid is None:
            raise DataError(f"{str(path)!r}: category entry {i} has no integer 'id'")
        if cid in seen:
            raise DataError(f"{str(path)!r}: category id {cid} is listed twice")
        seen[cid] = str(c.get("name", cid))
    if not seen:
        raise DataError(f"{str(path)!r} lists no categories")
    return CategoryMap.from_list([{"id": k, "name": v} for k, v in seen.items()])


def _parse_images(path: Path, raw: list[Any]) -> list[CocoImage]:
    images = []
    seen: set[int] = set()
    for i, im in enumerate(raw):
        iid = _new_entry_id(path, "image", i, im, seen)
        name = im.get("file_name")
        if not isinstance(name, str) or not name:
            raise DataError(f"{str(path)!r}: image {iid} has no 'file_name'")
        w, h = _int(im.get("width")), _int(im.get("height"))
        if w is None or h is None or w < 1 or h < 1:
            raise DataError(f"{str(path)!r}: image {iid} needs positive integer 'width' and 'height' "
                            f"(got {im.get('width')!r} x {im.get('height')!r})")
        images.append(CocoImage(iid, name, w, h))
    return images


def load_coco_split(annotation_file: str | Path, image_dir: str | Path, *, skip_missing_images: bool = False,
                    check_files: bool = True) -> CocoSplit:
    """Reads and validates a COCO-format annotation file and its image folder.

    Malformed entries, annotations of unknown images or categories and missing image files are
    refused; boxes reaching outside their image are clipped to it and boxes left narrower or lower than
    a pixel are dropped; crowd annotations give no training targets (they stay in ``coco`` for the
    evaluation); images without annotations are kept.

    Args:
        annotation_file: the JSON (``images``, ``annotations``, ``categories``).
        image_dir: the folder holding each image's ``file_name``.
        skip_missing_images: drop listed images without a file instead of refusing the split.
        check_files: look for every image file (off only for cost/metadata uses).

    Raises:
        DataError: malformed JSON or entries, an annotation of an unknown image or category (naming the
            annotation id), duplicate ids, missing image files (unless skipped) or an empty split.
    """
    path = Path(annotation_file)
    image_dir = Path(image_dir)
    data = read_annotation_json(path)
    cats = _parse_categories(path, data["categories"])
    images = _parse_images(path, data["images"])
    index = {im.id: i for i, im in enumerate(images)}
    stats = {"annotations": 0, "crowd": 0, "clipped": 0, "degenerate": 0, "missing_images": 0}
    per_image: list[list[tuple[float, float, float, float, int]]] = [[] for _ in images]
    ann_ids: set[int] = set()
    for i, a in enumerate(data["annotations"]):
        aid = _new_entry_id(path, "annotation", i, a, ann_ids)
        iid = _int(a.get("image_id"))
        if iid is None or iid not in index:
            raise DataError(f"{str(path)!r}: annotation {aid} refers to image_id {a.get('image_id')!r}, which is "
                            "not in 'images'")
        cid = _int(a.get("category_id"))
        if cid is None or cid not in cats:
            raise DataError(f"{str(path)!r}: annotation {aid} has category_id {a.get('category_id')!r}, which is "
                            f"not in 'categories' (valid ids: {_short(cats.ids)})")
        bbox = a.get("bbox")
        ok = (isinstance(bbox, list) and len(bbox) == 4
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))
        if not ok:
            raise DataError(f"{str(path)!r}: annotation {aid} has bbox {bbox!r}; expected [x, y, width, height] "
                            "with finite numbers")
        stats["annotations"] += 1
        if a.get("iscrowd", 0):
            stats["crowd"] += 1
            continue
        im = images[index[iid]]
        x, y, w, h = (float(v) for v in bbox)
        x0, y0 = min(max(x, 0.0), im.width), min(max(y, 0.0), im.height)
        x1, y1 = min(max(x + w, 0.0), im.width), min(max(y + h, 0.0), im.height)
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            stats["clipped"] += 1
        if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
            stats["degenerate"] += 1
            continue
        per_image[index[iid]].append((x0, y0, x1, y1, cats.label(cid)))
    keep = list(range(len(images)))
    if check_files:
        missing = [i for i in keep if not os.path.isfile(image_dir / images[i].file_name)]
        if missing and not skip_missing_images:
            names = [images[i].file_name for i in missing]
            raise DataError(f"{len(missing)} of the {len(images)} images listed in {str(path)!r} are missing from "
                            f"{str(image_dir)!r} (e.g. {_short(names, 3)}); fix the paths or set "
                            "data.skip_missing_images=true")
        stats["missing_images"] = len(missing)
        gone = set(missing)
        keep = [i for i in keep if i not in gone]
    if not keep:
        raise DataError(f"{str(path)!r} lists no usable images")
    boxes, labels = [], []
    for i in keep:
        rows = per_image[i]
        boxes.append(np.array([r[:4] for r in rows], dtype=np.float32).reshape(-1, 4))
        labels.append(np.array([r[4] for r in rows], dtype=np.int64))
    return CocoSplit(path, image_dir, [images[i] for i in keep], boxes, labels, cats, data, stats)
