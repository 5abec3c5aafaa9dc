"""Detection batches from a validated COCO split: decoding, letterboxing, flips and the epoch plan,
reproducible with any number of loader workers and resumable at any batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.augment import Normalize
from ..data.base import EpochPlan, finish_images, move_to_device
from ..data.workers import check_workers
from ..errors import DataError
from ..utils.seeding import derive_rng
from .coco import CocoSplit
from .transforms import Letterbox, flip_boxes, letterbox

__all__ = ["DetectionBatch", "DetectionDataset", "ImageMeta", "detection_batches", "flip_draws"]


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """What maps one sample's canvas back to its image: the split position, id, placement and flip."""

    index: int
    image_id: int
    box: Letterbox
    flipped: bool


@dataclass
class DetectionBatch:
    """One batch (or one rank's shard of it).

    Attributes:
        images: float32 [B, C, S, S], normalised, on the target device.
        boxes: per image, float32 [m, 4] canvas ``x0, y0, x1, y1`` (on the target device).
        labels: per image, int64 [m] contiguous labels (on the target device).
        metas: per image, the :class:`ImageMeta`.
    """

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    metas: list[ImageMeta]

    def __len__(self) -> int:
        return len(self.metas)


class DetectionDataset(Dataset):
    """Items ``(split position, flip)`` -> ``(uint8 canvas [C, S, S], boxes, labels, meta)``.

    The flip is decided by the caller (:func:`detection_batches` draws it from ``(seed, epoch, image)``),
    so workers only apply it. The canvas is padded with ``fill``, the mean colour, which is zero after
    normalisation.

    Args:
        split: the validated COCO split.
        canvas: side of the square canvas.
        in_channels: 3 (RGB) or 1 (grey).
        fill: the padding colour, one uint8 value per channel.
    """

    def __init__(self, split: CocoSplit, *, canvas: int, in_channels: int, fill: tuple[int, ...]) -> None:
        if in_channels not in (1, 3):
            raise DataError(f"detection images have 1 or 3 channels; the backbone wants {in_channels}")
        self.split = split
        self.canvas = canvas
        self.in_channels = in_channels
        self.fill = fill

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[Tensor, np.ndarray, np.ndarray, ImageMeta]:
        from PIL import Image, UnidentifiedImageError

        i, flip = key
        im = self.split.images[i]
        box = letterbox(im.width, im.height, self.canvas)
        path = self.split.image_path(i)
        mode = "RGB" if self.in_channels == 3 else "L"
        try:
            with Image.open(path) as pil:
                pil.draft(mode, (box.new_width, box.new_height))  # JPEG: decode at a reduced size when possible
                pil = pil.convert(mode)
                # The declared size defines the box coordinates; the file is mapped onto it.
                if pil.size != (box.new_width, box.new_height):
                    pil = pil.resize((box.new_width, box.new_height), Image.Resampling.BILINEAR)
                if flip:
                    pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                pixels = np.array(pil, dtype=np.uint8)  # a writable copy
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot decode image {str(path)!r}: {exc}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        out = torch.empty((self.in_channels, self.canvas, self.canvas), dtype=torch.uint8)
        out[:] = torch.tensor(self.fill, dtype=torch.uint8).view(-1, 1, 1)
        out[:, : box.new_height, : box.new_width] = torch.from_numpy(pixels).permute(2, 0, 1)
        boxes = box.to_canvas(self.split.boxes[i])
        if flip:
            boxes = flip_boxes(boxes, box.new_width)
        return out, boxes, self.split.labels[i], ImageMeta(i, im.id, box, flip)


def _collate(items: list[tuple[Tensor, np.ndarray, np.ndarray, ImageMeta]]) -> tuple[Any, ...]:
    if not items:
        return torch.zeros(0, dtype=torch.uint8), [], [], []
    images = torch.stack([it[0] for it in items])
    return (images, [torch.from_numpy(np.ascontiguousarray(it[1])) for it in items],
            [torch.from_numpy(it[2]) for it in items], [it[3] for it in items])


def flip_draws(seed: int, epoch: int, positions: Tensor) -> list[bool]:
    """Per training sample, whether it is flipped: a fair coin seeded by ``(seed, epoch, position)``."""
    return [derive_rng(seed, "detect-flip", epoch, int(p)).random() < 0.5 for p in positions.tolist()]


def detection_batches(dataset: DetectionDataset, *, batch_size: int, train: bool, flip: bool, seed: int,
                      epoch: int = 0, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                      device: torch.device | str = "cpu", workers: int = 0,
                      norm: Normalize | None = None) -> Iterator[DetectionBatch]:
    """One epoch of batches for this rank (see :meth:`nasbnn.data.base.Split.loader` for the plan).

    Args:
        batch_size: the global batch size; each rank gets a contiguous shard of every batch.
        train: shuffle with ``(seed, epoch)``, drop the last partial batch and flip (when ``flip``).
        start_batch: resume an epoch at this global batch.
        norm: the normalisation applied on ``device`` (default: none, values in 0..255).
    """
    device = torch.device(device)
    plan = EpochPlan.make(len(dataset), batch_size=batch_size, train=train, seed=seed, epoch=epoch,
                          start_batch=start_batch, rank=rank, world_size=world_size, drop_last=None)
    keys: list[list[tuple[int, bool]]] = []
    for b in range(plan.start_batch, plan.num_batches):
        lo, hi = plan.shard_bounds(b)
        positions = plan.order[lo:hi]
        flips = flip_draws(seed, epoch, positions) if (train and flip) else [False] * (hi - lo)
        keys.append(list(zip(positions.tolist(), flips)))
    cuda = device.type == "cuda" and torch.cuda.is_available()
    extra: dict[str, Any] = {"prefetch_factor": 4} if check_workers(workers) > 0 else {}
    loader = DataLoader(dataset, batch_sampler=keys, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, pin_memory=cuda, **extra)
    cache: dict[tuple[str, int, bool], tuple] = {}
    for images, boxes, labels, metas in loader:
        if not metas:
            yield DetectionBatch(torch.zeros(0, dataset.in_channels, dataset.canvas, dataset.canvas, device=device),
                                 [], [], [])
            continue
        x = finish_images(move_to_device(images, device), norm, False, cache)
        yield DetectionBatch(x, [move_to_device(b, device) for b in boxes], [move_to_device(t, device) for t in labels],
                             metas)
