"""A seeded synthetic detection dataset in COCO format: coloured shapes on textured, noisy backgrounds."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, OutputError
from ..utils.io import JSONTextError, atomic_write_bytes, atomic_write_text, ensure_dir, parse_json
from ..utils.seeding import derive_seed

__all__ = ["MAX_IMAGES", "MAX_OBJECTS", "MAX_SIZE", "SHAPES", "generate_split", "generate_synthetic_coco"]

SHAPES = ("rectangle", "ellipse", "triangle", "diamond")
CATEGORY_IDS = (1, 3, 5, 7)
#: Largest IoU allowed between two objects of one image.
MAX_OVERLAP = 0.15
EMPTY_FRACTION = 0.05


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image

    coarse = rng.uniform(30, 225, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 24)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    field += rng.uniform(5, 25) * stripes[..., None]
    field += rng.normal(0, rng.uniform(6, 16), size=field.shape)
    return field


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _draw(img: Any, kind: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    from PIL import ImageDraw

    x0, y0, x1, y1 = box  # exclusive right/bottom edges
    d = ImageDraw.Draw(img)
    xm, ym = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    if kind == "rectangle":
        d.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif kind == "ellipse":
        d.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif kind == "triangle":
        d.polygon([(xm, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
    else:
        d.polygon([(xm, y0), (x1 - 1, ym), (xm, y1 - 1), (x0, ym)], fill=colour)


def _tight_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    changed = np.any(before != after, axis=2)
    ys, xs = np.nonzero(changed)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _image(seed: int, index: int, size: int, classes: int, max_objects: int
           ) -> tuple[bytes, list[tuple[int, tuple[int, int, int, int]]]]:
    from PIL import Image

    rng = np.random.default_rng(derive_seed(seed, "synthetic-detect", index))
    canvas = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8))
    n = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, max_objects + 1))
    placed: list[tuple[int, int, int, int]] = []
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    lo, hi = max(6, size // 10), max(8, int(size * 0.45))
    for _ in range(n):
        for _try in range(30):
            w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_iou(box, p) <= MAX_OVERLAP for p in placed):
                break
        else:
            continue
        label = int(rng.integers(0, classes))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        before = np.asarray(canvas.crop(box))  # a shape only ever changes pixels inside its box
        _draw(canvas, SHAPES[label], box, colour)  # type: ignore[arg-type]
        tight = _tight_box(before, np.asarray(canvas.crop(box)))
        if tight is None:  # same colour as the background everywhere: nothing visible
            continue
        placed.append(box)
        left, top = box[0], box[1]
        objects.append((label, (left + tight[0], top + tight[1], left + tight[2], top + tight[3])))
    # Noise over objects and background alike, so colour edges are not perfectly clean.
    pixels = np.asarray(canvas).astype(np.float32) + rng.normal(0, 6, size=(size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), objects


#: Most objects one image may hold, images one split may have, and the largest image side.
MAX_OBJECTS = 100
MAX_IMAGES = 100_000
MAX_SIZE = 1024


def _check_settings(split: str, *, images: int, size: int, classes: int, max_objects: int) -> None:
    """Raises DataError for settings no synthetic split can have, or that would take hours to generate."""
    if not 1 <= classes <= len(SHAPES):
        raise DataError(f"synthetic detection data has 1 to {len(SHAPES)} classes, got {classes}")
    if size < 16:
        raise DataError(f"synthetic images must be at least 16 pixels wide, got {size}")
    if size > MAX_SIZE:
        raise DataError(f"synthetic images are at most {MAX_SIZE} pixels wide, got {size}")
    if not 1 <= images <= MAX_IMAGES:
        raise DataError(f"a synthetic {split} split needs at least 1 image and at most {MAX_IMAGES}, got {images}")
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise DataError(f"synthetic images hold 1 to {MAX_OBJECTS} objects each, got max_objects={max_objects}")


def _dataset_folder(out: Path) -> Path:
    """``out`` as a dataset folder, created if missing.

    Raises:
        DataError: ``out`` or a folder above it is a file.
        OutputError: it cannot be created (read-only file system, no permission).
    """
    for part in (out, *out.parents):
        if part.exists() and not part.is_dir():
            raise DataError(f"dataset folder {str(out)!r} cannot be used: {str(part)!r} is a file, not a folder")
    return ensure_dir(out, what="dataset folder")


def generate_split(out: str | Path, split: str, *, images: int, size: int = 128, seed: int = 0, classes: int = 3,
                   max_objects: int = 4, first_image_id: int = 1) -> Path:
    """Writes ``out/<split>/*.png`` and ``out/annotations/instances_<split>.json``; returns the JSON path.

    Each image has a smooth random colour field with stripes and pixel noise as background and up to
    ``max_objects`` shapes (rectangle, ellipse, triangle, diamond) of random colour and size, placed so
    that no two overlap by more than IoU 0.15; about one image in twenty is empty. Category ids are
    deliberately not contiguous (1, 3, 5, 7), so the id <-> label mapping is exercised end to end.
    Boxes are the drawn extent of each shape ``[x, y, w, h]`` (whole pixels); the JSON is written last
    (atomically), so its presence means the split is complete.
    """
    _check_settings(split, images=images, size=size, classes=classes, max_objects=max_objects)
    out = _dataset_folder(Path(out))
    img_dir = ensure_dir(out / split, what="image folder")
    split_seed = derive_seed(seed, "split", split)
    coco: dict[str, Any] = {
        "info": {"description": f"nasbnn synthetic shapes ({split})",
                 "settings": {"seed": seed, "size": size, "classes": classes, "max_objects": max_objects,
                              "images": images}},
        "images": [], "annotations": [],
        "categories": [{"id": CATEGORY_IDS[k], "name": SHAPES[k], "supercategory": "shape"} for k in range(classes)],
    }
    ann_id = 1
    for i in range(images):
        png, objects = _image(split_seed, i, size, classes, max_objects)
        image_id = first_image_id + i
        name = f"{image_id:06d}.png"
        atomic_write_bytes(img_dir / name, png)
        coco["images"].append({"id": image_id, "file_name": name, "width": size, "height": size})
        for label, (x0, y0, x1, y1) in objects:
            w, h = x1 - x0, y1 - y0
            coco["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[label],
                                        "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
            ann_id += 1
    ann = out / "annotations" / f"instances_{split}.json"
    atomic_write_text(ann, json.dumps(coco) + "\n")
    # images of an earlier, larger synthetic split of the same folder are not part of this one
    keep = {im["file_name"] for im in coco["images"]}
    for old in img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return ann


def _check_replaceable_dataset(out: Path) -> None:
    """Refuses to write over a dataset that is not a synthetic one (a real COCO folder has the same layout)."""
    for split in ("train", "val"):
        ann = out / "annotations" / f"instances_{split}.json"
        if not ann.exists():
            continue
        try:
            info = parse_json(ann.read_bytes()).get("info", {})
            ours = str(info.get("description", "")).startswith("nasbnn synthetic")
        except (OSError, JSONTextError, AttributeError):
            ours = False
        if not ours:
            raise OutputError(f"{str(ann)!r} is not a synthetic dataset's; detect synth does not write over another "
                              "dataset: choose another --out")


def generate_synthetic_coco(out: str | Path, *, images: int, val_images: int | None = None, size: int = 128,
                            seed: int = 0, classes: int = 3, max_objects: int = 4) -> dict[str, Path]:
    """A ``train`` and a ``val`` split in the COCO layout under ``out``; returns their annotation files.

    ``val_images`` defaults to a quarter of ``images`` (at least one). Image ids of the two splits do
    not overlap, and each split is drawn from its own seed.
    """
    val_n = max(1, images // 4) if val_images is None else val_images
    for split, n in (("train", images), ("val", val_n)):  # both checked before anything is written
        _check_settings(split, images=n, size=size, classes=classes, max_objects=max_objects)
    _check_replaceable_dataset(Path(out))
    ensure_dir(out, what="dataset folder")
    train = generate_split(out, "train", images=images, size=size, seed=seed, classes=classes,
                           max_objects=max_objects, first_image_id=1)
    val = generate_split(out, "val", images=val_n, size=size, seed=seed, classes=classes, max_objects=max_objects,
                         first_image_id=images + 1)
    return {"train": train, "val": val}
