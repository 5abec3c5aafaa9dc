"""A learnable random dataset generated from a seed: smooth class templates plus shifts and noise.

Used by tests and smoke runs; the images are generated already normalised (about zero mean, unit variance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import SyntheticDataConfig
from .augment import derive_seed

__all__ = ["NOISE_STD", "make_synthetic"]

#: Pixel noise relative to the (unit-variance) class templates.
NOISE_STD = 1.0


def _templates(gen: torch.Generator, classes: int, channels: int, resolution: int) -> torch.Tensor:
    coarse = max(2, resolution // 4)
    t = torch.randn(classes, channels, coarse, coarse, generator=gen)
    t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False)
    t = 0.5 * (t + t.flip(3))  # mirror-symmetric, so the flip augmentation keeps the class
    t = t - t.mean(dim=(1, 2, 3), keepdim=True)
    return t / t.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _samples(gen: torch.Generator, templates: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    n = labels.numel()
    resolution = templates.shape[-1]
    reach = max(1, resolution // 8)
    x = templates[labels].clone()
    shifts = torch.randint(-reach, reach + 1, (n, 2), generator=gen)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        x[i] = torch.roll(x[i], shifts=(dy, dx), dims=(1, 2))
    x += NOISE_STD * torch.randn(x.shape, generator=gen)
    return x / math.sqrt(1.0 + NOISE_STD**2)


def _balanced_labels(gen: torch.Generator, n: int, classes: int) -> torch.Tensor:
    labels = torch.arange(n) % classes
    return labels[torch.randperm(n, generator=gen)]


def make_synthetic(
    cfg: SyntheticDataConfig, holdout_per_class: int, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Generates the train, search-validation and test sets.

    Every class has a random smooth, mirror-symmetric template; a sample is its class template, circularly
    shifted by up to ``resolution // 8`` pixels, plus Gaussian noise. The training set has ``cfg.num_train``
    images and the search-validation set exactly ``holdout_per_class`` per class (generated separately,
    so the training set keeps its size); labels are balanced.

    Args:
        cfg: sizes.
        holdout_per_class: search-validation images per class.
        seed: the run seed; the same seed always gives the same data.

    Returns:
        ``((train_x, train_y), (search_val_x, search_val_y), (test_x, test_y))``, float32 images
        [N, C, R, R] and int64 labels.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "synthetic"))
    k = cfg.num_classes
    templates = _templates(gen, k, cfg.channels, cfg.resolution)
    train_y = _balanced_labels(gen, cfg.num_train, k)
    val_y = torch.arange(k).repeat_interleave(holdout_per_class)
    test_y = _balanced_labels(gen, cfg.num_test, k)
    return (
        (_samples(gen, templates, train_y), train_y),
        (_samples(gen, templates, val_y), val_y),
        (_samples(gen, templates, test_y), test_y),
    )
