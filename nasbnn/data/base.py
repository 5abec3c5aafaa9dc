"""Splits, epoch plans and batch iterators: the contract between datasets and the trainer and search.

An epoch is planned once (shuffle order, global batches, this rank's shard of each); every random
choice is drawn from a generator seeded by ``(seed, epoch[, batch])``, so any suffix of an epoch can be
replayed exactly (``start_batch``) and the ranks' shards always add up to the single-process batch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError
from .augment import Augment, Normalize, derive_seed, draw_params, hflip, random_crop

__all__ = [
    "Batches",
    "DataBundle",
    "EpochPlan",
    "Split",
    "TensorSplit",
    "holdout_split",
    "move_to_device",
    "require_one_batch",
]


# ------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class EpochPlan:
    """Which samples go into which batch and shard in one epoch.

    Attributes:
        order: int64 [n] positions into the split, in epoch order (a permutation when training).
        batch_size: the global batch size.
        num_batches: global batches in the epoch.
        start_batch: first global batch this iteration yields.
        rank: this process' rank.
        world_size: number of ranks.
    """

    order: torch.Tensor
    batch_size: int
    num_batches: int
    start_batch: int
    rank: int
    world_size: int

    @classmethod
    def make(
        cls,
        n: int,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int,
        start_batch: int,
        rank: int,
        world_size: int,
        drop_last: bool | None,
    ) -> EpochPlan:
        """Plans an epoch over ``n`` samples; see :meth:`Split.loader` for the arguments.

        Raises:
            DataError: a batch size, rank or start batch that cannot be honoured.
        """
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1 (got {batch_size})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size) with world_size >= 1 (got rank {rank}, "
                            f"world_size {world_size})")
        if train and batch_size % world_size:
            raise DataError(f"the global training batch size {batch_size} is not divisible by the {world_size} "
                            f"ranks; choose data.batch_size as a multiple of {world_size}")
        if drop_last is None:
            drop_last = train
        if drop_last:
            require_one_batch(n, batch_size)
        num_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
        if not 0 <= start_batch <= num_batches:
            raise DataError(f"start batch {start_batch} is outside this epoch of {num_batches} batches (was the "
                            f"checkpoint made with another batch size or dataset?)")
        if train:
            gen = torch.Generator().manual_seed(derive_seed(seed, "perm", epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        return cls(order, batch_size, num_batches, start_batch, rank, world_size)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def batch_bounds(self, i: int) -> tuple[int, int]:
        """Epoch positions ``[lo, hi)`` of global batch ``i``."""
        lo = i * self.batch_size
        return lo, min(lo + self.batch_size, self.order.numel())

    def shard_bounds(self, i: int) -> tuple[int, int]:
        """Epoch positions ``[lo, hi)`` of this rank's shard of global batch ``i``.

        A batch of ``b`` samples is cut into contiguous shards of ``ceil(b / world_size)`` samples; the
        last ranks get fewer, possibly none (only when ``b`` is not a multiple of ``world_size``).
        """
        lo, hi = self.batch_bounds(i)
        per = math.ceil((hi - lo) / self.world_size)
        return min(lo + self.rank * per, hi), min(lo + (self.rank + 1) * per, hi)


def require_one_batch(n: int, batch_size: int, *, key: str = "the batch size") -> None:
    """Refuses a training split smaller than one batch: its epochs would have no step, and a loop over
    them would spin forever without a word.

    Raises:
        DataError: ``n < batch_size``.
    """
    if n < batch_size:
        raise DataError(f"the training split has {n} images, fewer than one batch of {batch_size}; lower {key}")


def move_to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copies a CPU tensor to ``device`` asynchronously (through pinned memory for CUDA)."""
    if device.type == "cpu":
        return x
    if device.type == "cuda" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def finish_images(
    x: torch.Tensor, norm: Normalize | None, channels_last: bool, cache: dict[tuple[str, int, bool], tuple]
) -> torch.Tensor:
    """Converts a (device) batch to normalised float32, optionally in channels-last memory format."""
    uint8 = x.dtype == torch.uint8
    if uint8 or norm is not None:
        key = (str(x.device), x.shape[1], uint8)
        if key not in cache:
            if norm is None:
                norm = Normalize((0.0,), (1.0,))
            cache[key] = norm.scale_shift(x.shape[1], uint8, x.device)
        scale, shift = cache[key]
        if uint8 and x.device.type == "cpu" and x.dim() == 4:
            x = _normalise_on_cpu(x, scale, shift, cache)
        else:
            x = torch.addcmul(shift, x.float(), scale)
    elif x.dtype != torch.float32:
        x = x.float()
    # Image-folder batches arrive as NHWC buffers viewed as NCHW: the device path keeps whichever layout it got.
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _normalise_on_cpu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, cache: dict) -> torch.Tensor:
    """``addcmul(shift, x.float(), scale)`` of a CPU uint8 batch, bit for bit, through a 256-entry table per
    channel (one pass instead of three; see :mod:`.pixels`)."""
    from .pixels import OutputPool, normalise_uint8, uint8_table

    key = ("cpu-table", x.shape[1], True)  # beside the (device, channels, uint8) entry of scale and shift
    if key not in cache:
        cache[key] = (uint8_table(scale, shift), OutputPool())
    table, pool = cache[key]
    return normalise_uint8(x, table, pool)


# ------------------------------------------------------------------------------------------ splits
class Batches(ABC):
    """The batches of one epoch for one rank: ``(images, labels)`` pairs on the requested device.

    ``images`` are float32 [B, C, H, W], normalised; ``labels`` are int64 [B]. ``len()`` is the number
    of batches this iteration yields (after ``start_batch``). Evaluation shards may be empty (B = 0) on
    the last ranks, so that every rank yields the same number of batches.

    Attributes:
        plan: the :class:`EpochPlan` (``plan.order`` is the epoch's sample order).
        train, seed, epoch, device, channels_last: the pass' settings, as :meth:`Split.loader` got them
            (``train``: augment).
    """

    def __init__(self, plan: EpochPlan, *, train: bool, seed: int, epoch: int, device: torch.device,
                 channels_last: bool) -> None:
        self.plan = plan
        self.train = train
        self.seed = seed
        self.epoch = epoch
        self.device = device
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.plan)

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class Split(ABC):
    """A fixed, ordered set of labelled images with its transforms (subclasses set ``_labels``)."""

    _labels: torch.Tensor

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N] labels, in split order (no image decoding)."""
        return self._labels

    @abstractmethod
    def subset(self, indices: Sequence[int] | torch.Tensor) -> Split:
        """The samples at ``indices`` (positions in this split), in that order, with the same transforms."""

    def loader(
        self,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        drop_last: bool | None = None,
        workers: int | None = None,
        channels_last: bool = False,
    ) -> Batches:
        """One epoch of batches.

        Args:
            batch_size: the GLOBAL batch size; each rank gets a contiguous shard of every batch.
            train: shuffle (a permutation seeded by ``(seed, epoch)``) and augment (seeded by
                ``(seed, epoch, batch)``); otherwise fixed order and the eval transform.
            seed: the run seed.
            epoch: the epoch number (changes the shuffle and the augmentation).
            start_batch: first global batch to yield; batches ``start_batch..`` equal those of a full pass.
            rank: this process' rank.
            world_size: number of ranks. Training needs ``batch_size % world_size == 0``; for eval
                nothing is padded: every batch is cut into shards of ``ceil(b / world_size)`` samples, so
                the last ranks may get smaller or empty (B = 0) shards, and all ranks yield the same count.
            device: where the batches go (copied with ``non_blocking=True``; augmentation runs there).
            drop_last: drop a final partial batch; default: True when training, else False.
            workers: decoding worker processes (image folders only; in-memory sets never use any); None: the
                split's own setting (``data.workers``).
            channels_last: return images in ``torch.channels_last`` memory format.

        Returns:
            The batches of this rank.

        Raises:
            DataError: a training batch size not divisible by ``world_size``, a bad rank, or a
                ``start_batch`` past the end of the epoch.
        """
        plan = EpochPlan.make(len(self), batch_size=batch_size, train=train, seed=seed, epoch=epoch,
                              start_batch=start_batch, rank=rank, world_size=world_size, drop_last=drop_last)
        return self._batches(plan, train=train, seed=seed, epoch=epoch, device=torch.device(device),
                             workers=workers, channels_last=channels_last)

    @abstractmethod
    def _batches(self, plan: EpochPlan, *, train: bool, seed: int, epoch: int, device: torch.device,
                 workers: int | None, channels_last: bool) -> Batches:
        """The batches of ``plan`` (the arguments as :meth:`loader` got them)."""


def as_index(indices: Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
    """``indices`` as an int64 tensor, checked to lie in ``[0, n)``."""
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"subset indices must lie in [0, {n}); got [{int(idx.min())}, {int(idx.max())}]")
    return idx


class TensorSplit(Split):
    """A split held in memory: batches are built by indexing, with batched augmentation on the device.

    Args:
        images: [N, C, H, W] uint8 (scaled by 1/255 before normalising) or float32 (normalised as is).
        labels: int64 [N].
        norm: per-channel normalisation, or None for data that is already normalised (float only).
        augment: the training augmentation (None or inactive: shuffling only).
        index: positions into ``images`` that make up this split (None: all, in order). Subsets share
            the image storage through it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        norm: Normalize | None = None,
        augment: Augment | None = None,
        index: torch.Tensor | None = None,
    ) -> None:
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images [N, C, H, W] and labels [N] expected, got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        self._images = images
        self._all_labels = labels.to(torch.int64)
        self._index = index
        self._labels = self._all_labels if index is None else self._all_labels[index]
        self.norm = norm
        self.augment = augment if augment is not None and augment.active else None
        self._norm_cache: dict[tuple[str, int, bool], tuple] = {}

    def __repr__(self) -> str:
        c, h, w = self._images.shape[1:]
        return f"TensorSplit({len(self)} images, {c}x{h}x{w}, augment={self.augment})"

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TensorSplit:
        idx = as_index(indices, len(self))
        base = idx if self._index is None else self._index[idx]
        return TensorSplit(self._images, self._all_labels, norm=self.norm, augment=self.augment, index=base)

    def _batches(self, plan: EpochPlan, *, train: bool, seed: int, epoch: int, device: torch.device,
                 workers: int | None, channels_last: bool) -> Batches:
        return _TensorBatches(self, plan, train=train, seed=seed, epoch=epoch, device=device,
                              channels_last=channels_last)

    def take(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (untransformed, CPU) images and labels at ``positions`` of this split."""
        base = positions if self._index is None else self._index[positions]
        return self._images.index_select(0, base), self._labels.index_select(0, positions)


class _TensorBatches(Batches):
    def __init__(self, split: TensorSplit, plan: EpochPlan, **settings: Any) -> None:
        super().__init__(plan, **settings)
        self.split = split

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.plan.start_batch, self.plan.num_batches):
            yield self.batch(i)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's shard of global batch ``i``."""
        plan, split = self.plan, self.split
        lo, hi = plan.shard_bounds(i)
        x, y = split.take(plan.order[lo:hi])
        x = move_to_device(x, self.device)
        y = move_to_device(y, self.device)
        aug = split.augment
        if self.train and aug is not None:
            glo, ghi = plan.batch_bounds(i)
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "aug", self.epoch, i))
            offsets, flips = draw_params(gen, ghi - glo, aug)
            if offsets is not None:
                x = random_crop(x, offsets[lo - glo : hi - glo], aug.crop_pad)
            if flips is not None:
                x = hflip(x, flips[lo - glo : hi - glo])
        return finish_images(x, split.norm, self.channels_last, split._norm_cache), y


# ------------------------------------------------------------------------------------------ bundle
@dataclass
class DataBundle:
    """A dataset ready for training and search.

    Attributes:
        name: the dataset name (``DataConfig.name``).
        num_classes: number of classes.
        in_channels: image channels.
        resolution: the image size models receive (height = width).
        train: training images, without the search-validation hold-out (and limited by ``limit_train``).
        search_val: ``holdout_per_class`` images per class moved out of the training set (may be empty).
        test: the official test / validation split.
    """

    name: str
    num_classes: int
    in_channels: int
    resolution: int
    train: Split
    search_val: Split
    test: Split


def holdout_split(
    labels: torch.Tensor, num_classes: int, per_class: int, seed: int, *, dataset: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moves ``per_class`` samples of every class out of a training set, reproducibly.

    For each class in turn, the held-out samples are drawn from that class' indices (in file order) by a
    permutation from one generator seeded with ``seed``.

    Args:
        labels: int64 [N] training labels in file order.
        num_classes: number of classes.
        per_class: samples held out per class (0: none).
        seed: the run seed.
        dataset: dataset name, for messages.

    Returns:
        ``(train, holdout)``: int64 index tensors, each in increasing (file) order.

    Raises:
        DataError: a class without more than ``per_class`` images.
    """
    n = labels.shape[0]
    if per_class == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    gen = torch.Generator().manual_seed(derive_seed(seed, "holdout"))
    keep = torch.ones(n, dtype=torch.bool)
    counts = torch.bincount(labels, minlength=num_classes)
    smallest = int(counts.min())
    if smallest <= per_class:
        cls = int(counts.argmin())
        raise DataError(f"class {cls} of {dataset} has {smallest} training images, too few to hold out "
                        f"{per_class} for search validation and still train on it; set data.holdout_per_class "
                        f"to at most {max(smallest - 1, 0)}")
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        chosen = members[torch.randperm(members.numel(), generator=gen)[:per_class]]
        keep[chosen] = False
    return torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
