"""Image transforms: batched tensor augmentation (crop, flip, normalise) and the per-image PIL crops of imagefolder.

Random parameters are always drawn on the CPU from an explicit generator and then applied on whatever
device the batch lives on, so a batch is identical on every device and never touches a global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import Random
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..utils.seeding import derive_seed

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "Augment",
    "Normalize",
    "center_crop_resize",
    "derive_seed",
    "draw_params",
    "hflip",
    "random_crop",
    "random_resized_crop_box",
    "resize_images",
]

#: Scale and aspect-ratio ranges of the standard RandomResizedCrop.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
#: Eval images are resized so that the centre crop keeps this fraction of the shorter side.
EVAL_CROP_FRACTION = 0.875


@dataclass(frozen=True, slots=True)
class Augment:
    """The batched training augmentation of an in-memory dataset.

    Attributes:
        crop_pad: random crop of the original size from the image zero-padded by this many pixels on
            each side, with an independent offset per sample (0: no crop).
        flip: random horizontal flip with probability 1/2 per sample.
    """

    crop_pad: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip


@dataclass(frozen=True, slots=True)
class Normalize:
    """Per-channel ``(x / 255 - mean) / std`` for uint8 images, ``(x - mean) / std`` for float ones."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def scale_shift(self, channels: int, uint8: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map as ``x * scale + shift`` tensors of shape [1, C, 1, 1] on ``device``."""
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        if mean.numel() == 1:
            mean, std = mean.expand(channels), std.expand(channels)
        scale = 1.0 / (std * (255.0 if uint8 else 1.0))
        shift = -mean / std
        shape = (1, channels, 1, 1)
        return (scale.to(torch.float32).reshape(shape).to(device), shift.to(torch.float32).reshape(shape).to(device))


def draw_params(generator: torch.Generator, n: int, aug: Augment) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Draws the augmentation parameters of ``n`` samples (a whole global batch), always in the same order.

    Args:
        generator: a CPU generator seeded for this batch.
        n: number of samples.
        aug: which augmentations.

    Returns:
        ``(offsets, flips)``: int64 [n, 2] crop offsets (row, column) in ``[0, 2 * crop_pad]`` or None,
        and bool [n] flip flags or None.
    """
    offsets = flips = None
    if aug.crop_pad > 0:
        offsets = torch.randint(0, 2 * aug.crop_pad + 1, (n, 2), generator=generator)
    if aug.flip:
        flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample crop of the original size from ``x`` zero-padded by ``pad`` pixels (batched, any device).

    Args:
        x: images [B, C, H, W] (any dtype).
        offsets: int64 [B, 2] top-left corners in the padded image, each in ``[0, 2 * pad]``.
        pad: the padding.

    Returns:
        A new tensor [B, C, H, W].
    """
    b, c, h, w = x.shape
    if b == 0:
        return x.clone()
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = offsets.to(x.device, non_blocking=True)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [B, W]
    wp = w + 2 * pad
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def hflip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirrors the samples of ``x`` [B, C, H, W] whose flag in ``flips`` [B] is set."""
    if x.shape[0] == 0:
        return x
    mask = flips.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resizes a whole image tensor to ``size`` × ``size`` (bilinear, antialiased), keeping its dtype.

    Args:
        images: [N, C, H, W] uint8 or float.
        size: the output height and width.
        chunk: images converted to float at a time (bounds the memory used).

    Returns:
        [N, C, size, size], uint8 values rounded and clamped to 0..255 when the input is uint8.
    """
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=images.dtype)
    for lo in range(0, images.shape[0], chunk):
        part = images[lo : lo + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if images.dtype == torch.uint8:
            part = part.round_().clamp_(0, 255)
        out[lo : lo + chunk] = part.to(images.dtype)
    return out


def random_resized_crop_box(rng: Random, width: int, height: int) -> tuple[int, int, int, int]:
    """The standard RandomResizedCrop window (scale 0.08–1, ratio 3/4–4/3, 10 tries, centre-crop fallback).

    Args:
        rng: a private generator seeded for this sample.
        width: image width.
        height: image height.

    Returns:
        ``(left, top, right, bottom)``, a box for ``PIL.Image.resize(..., box=...)``.
    """
    area = width * height
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < RRC_RATIO[0]:
        w, h = width, round(width / RRC_RATIO[0])
    elif ratio > RRC_RATIO[1]:
        w, h = round(height * RRC_RATIO[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Eval transform: resize the shorter side to ``round(size / 0.875)`` (bilinear), then centre-crop ``size``."""
    from PIL import Image

    nw, nh, left, top = center_crop_geometry(*img.size, size)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    return img.crop((left, top, left + size, top + size))


def center_crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(resized width, resized height, left, top)`` of :func:`center_crop_resize` on a ``width`` x ``height``
    image: the whole image is resized, then ``size`` x ``size`` is cut at ``(left, top)``."""
    short = round(size / EVAL_CROP_FRACTION)
    if width <= height:
        nw, nh = short, max(short, int(short * height / width))
    else:
        nw, nh = max(short, int(short * width / height)), short
    return nw, nh, round((nw - size) / 2), round((nh - size) / 2)
