"""ImageNet-layout image folders: the reproducible hold-out manifest, and a split decoded by PIL in workers.

``root/train/<class>/*`` and ``root/val/<class>/*``; the search-validation hold-out is drawn from each
class' sorted file list with the run seed and recorded in a JSON manifest that later runs reuse.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from random import Random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..config import DataConfig
from ..errors import DataError
from ..utils.io import JSONTextError, atomic_write_text, parse_json
from .augment import Normalize, center_crop_geometry, center_crop_resize, derive_seed, random_resized_crop_box
from .base import Batches, DataBundle, EpochPlan, Split, as_index, finish_images, move_to_device
from .jpeg import jpeg_array, jpeg_size
from .jpeg import prepare as prepare_jpeg
from .resample import resize_box
from .workers import check_workers

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST_FORMAT", "FolderSplit", "build_imagefolder", "decode_eval", "decode_train",
           "list_class_images"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST_FORMAT = "nasbnn-split/1"
#: Images are mapped to [-1, 1], as the official NAS-BNN code does.
FOLDER_NORM = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# ---------------------------------------------------------------------------------------- listing
def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; data.root must hold train/<class>/ and val/<class>/ "
                        f"subfolders (ImageNet layout)")
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"{folder} has no class subfolders; expected {folder}/<class>/<image files>")
    if len(names) == 1:
        raise DataError(f"{folder} has one class subfolder ({names[0]!r}); a classifier needs two classes or more")
    return names


def _images_under(root: Path, folder: Path) -> list[str]:
    found: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        with os.scandir(current) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    pending.append(Path(entry.path))
                elif entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(Path(entry.path).relative_to(root).as_posix())
    return sorted(found)


def list_class_images(
    root: Path, split: str, classes: Sequence[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Lists ``root/<split>/<class>/**/<image>`` as sorted POSIX paths relative to ``root``, per class.

    Args:
        root: the dataset folder.
        split: ``"train"`` or ``"val"``.
        classes: the expected class folder names (None: whatever ``root/<split>`` holds).

    Returns:
        ``(classes, files)`` with ``files[c]`` the sorted images of class ``c``.

    Raises:
        DataError: a missing folder, class folders that differ from ``classes``, or a class without images.
    """
    folder = root / split
    names = _class_folders(folder)
    if classes is not None and names != list(classes):
        missing = sorted(set(classes) - set(names))
        extra = sorted(set(names) - set(classes))
        raise DataError(f"{folder} must have the same class folders as {root / 'train'}: "
                        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                        f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    files = [_images_under(root, folder / name) for name in names]
    for name, fs in zip(names, files):
        if not fs:
            raise DataError(f"class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return names, files


# --------------------------------------------------------------------------------------- manifest
def _files_hash(classes: Sequence[str], train: Sequence[str], holdout: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (classes, train, holdout):
        h.update("\n".join(part).encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class SplitManifest:
    """The train / hold-out file lists of an image folder (paths relative to its root)."""

    classes: list[str]
    train: list[str]
    holdout: list[str]
    seed: int
    holdout_per_class: int

    def to_json(self, root: Path) -> str:
        return json.dumps({
            "format": MANIFEST_FORMAT,
            "root": str(root),
            "seed": self.seed,
            "holdout_per_class": self.holdout_per_class,
            "classes": self.classes,
            "hash": _files_hash(self.classes, self.train, self.holdout),
            "train": self.train,
            "holdout": self.holdout,
        }, indent=0) + "\n"


def _make_manifest(root: Path, seed: int, per_class: int) -> SplitManifest:
    classes, files = list_class_images(root, "train")
    gen = torch.Generator().manual_seed(derive_seed(seed, "holdout"))
    train: list[str] = []
    holdout: list[str] = []
    for name, fs in zip(classes, files):
        if len(fs) <= per_class:
            raise DataError(f"class {name!r} has {len(fs)} training images, too few to hold out {per_class} for "
                            f"search validation and still train on it; set data.holdout_per_class to at most "
                            f"{max(len(fs) - 1, 0)}")
        chosen = set(torch.randperm(len(fs), generator=gen)[:per_class].tolist())
        train.extend(f for i, f in enumerate(fs) if i not in chosen)
        holdout.extend(f for i, f in enumerate(fs) if i in chosen)
    return SplitManifest(classes, train, holdout, seed, per_class)


def _manifest_fix(path: Path) -> str:
    """How to get past a manifest that cannot be used: remove that one file, or use another."""
    return f"delete the manifest file {str(path)!r} to draw a new split, or point data.manifest elsewhere"


def _read_manifest(path: Path, root: Path, seed: int, per_class: int) -> SplitManifest:
    if path.is_dir():
        raise DataError(f"split manifest {str(path)!r} is a folder, not a file; set data.manifest to a file path "
                        f"(e.g. {str(path / 'split.json')!r})")
    fix = _manifest_fix(path)
    if not path.is_file():
        raise DataError(f"cannot read split manifest {path}: it is not a regular file; {fix}")
    try:
        data: Any = parse_json(path.read_bytes())
    except (OSError, JSONTextError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DataError(f"cannot read split manifest {path}: {reason}; {fix}") from None
    keys = ("seed", "holdout_per_class", "classes", "train", "holdout", "hash")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or any(k not in data for k in keys):
        raise DataError(f"{path} is not a {MANIFEST_FORMAT} split manifest; {fix}")
    for key in ("classes", "train", "holdout"):
        entries = data[key]
        if not isinstance(entries, list):
            raise DataError(f"split manifest {path}: {key!r} is {json.dumps(entries)[:40]}, not a list; {fix}")
        bad = next((i for i, e in enumerate(entries) if not isinstance(e, str)), None)
        if bad is not None:
            raise DataError(f"split manifest {path}: {key!r} entry {bad} is {json.dumps(entries[bad])[:40]}, not a "
                            f"{'class name' if key == 'classes' else 'file name'}; {fix}")
    for key in ("seed", "holdout_per_class"):
        if isinstance(data[key], bool) or not isinstance(data[key], int):
            raise DataError(f"split manifest {path}: {key!r} is {json.dumps(data[key])[:40]}, not an integer; {fix}")
    if not isinstance(data["hash"], str):
        raise DataError(f"split manifest {path}: 'hash' is not a string; {fix}")
    # The official split (``origin``: see upstream_split.py) does not depend on the seed or a hold-out count.
    official = data.get("origin") is not None
    if data["seed"] != seed and not official:
        raise DataError(f"split manifest {path} was made with seed {data['seed']}, this run uses seed {seed}; "
                        f"{fix} (or run with seed={data['seed']})")
    if data["holdout_per_class"] != per_class and not official:
        raise DataError(f"split manifest {path} holds out {data['holdout_per_class']} images per class, this run "
                        f"asks for data.holdout_per_class={per_class}; {fix}")
    if data["hash"] != _files_hash(data["classes"], data["train"], data["holdout"]):
        raise DataError(f"split manifest {path} was modified (its file lists do not match its hash); {fix}")
    classes = _class_folders(root / "train")
    if classes != data["classes"]:
        raise DataError(f"split manifest {path} lists {len(data['classes'])} classes that differ from the "
                        f"{len(classes)} class folders of {root / 'train'}; {fix}")
    return SplitManifest(list(data["classes"]), list(data["train"]), list(data["holdout"]), seed, per_class)


def _labels_of(files: Sequence[str], classes: Sequence[str], manifest: Path | None) -> torch.Tensor:
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for f in files:
        parts = f.split("/")
        if len(parts) < 3 or parts[1] not in index:
            where = f"split manifest {manifest}" if manifest is not None else "the split"
            fix = f"; {_manifest_fix(manifest)}" if manifest is not None else ""
            raise DataError(f"{where} lists {f!r}, which is not under a class folder{fix}")
        labels.append(index[parts[1]])
    return torch.tensor(labels, dtype=torch.int64)


def _round_robin_first(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the first ``n`` samples taken one per class in turn (kept in their original order)."""
    order = torch.argsort(labels, stable=True)
    rank_in_class = torch.empty_like(labels)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class[order] = torch.arange(labels.numel()) - starts[labels[order]]
    key = rank_in_class * (int(labels.max()) + 1) + labels
    chosen = torch.argsort(key, stable=True)[:n]
    return chosen.sort().values


# ------------------------------------------------------------------------------------------ split
@dataclass
class _Failure:
    path: str
    reason: str


def _draft_target(size: tuple[int, int], box: tuple[int, int, int, int], resolution: int) -> tuple[int, int] | None:
    """The decoded size to ask a JPEG decoder for so that the crop ``box`` of an image of ``size`` stays at
    least ``resolution`` wide and high, when a 1/2 scale or less reaches it; None when only the full decode does."""
    left, top, right, bottom = box
    w, h = size
    want = (math.ceil(w * resolution / (right - left)), math.ceil(h * resolution / (bottom - top)))
    if 2 * want[0] > w or 2 * want[1] > h:
        return None
    return want


def _draft_for_crop(img: Any, box: tuple[int, int, int, int], resolution: int) -> tuple[float, float, float, float]:
    """Asks the JPEG decoder for a 1/2, 1/4 or 1/8 scale that keeps the crop at least ``resolution`` wide and
    high, and returns the same crop region in the drafted image's coordinates.

    libjpeg scales in the DCT domain, skipping most of the inverse transform, so a large photo costs less to
    decode; the crop covers the same part of the picture and is still only ever downscaled.
    """
    width = img.size[0]
    want = _draft_target(img.size, box, resolution)
    if want is None:
        return box  # no reduction possible: leave the decoder alone (the exact full decode)
    drafted = img.draft("RGB", want)
    if drafted is None:  # not a JPEG
        return box
    scale = width / drafted[1][2]
    left, top, right, bottom = box
    return left / scale, top / scale, right / scale, bottom / scale


def decode_train(path: Path, resolution: int, rng: Random, *, flip: bool, draft: bool,
                 out: np.ndarray | None = None) -> np.ndarray:
    """One training view: RandomResizedCrop (box drawn from ``rng`` on the file's size), optional mirror.

    A baseline JPEG decoded in full goes through :mod:`.jpeg` and :mod:`.resample` (Pillow's pixels, for
    less CPU); drafted JPEGs and other files through Pillow.

    Args:
        out: uint8 [resolution, resolution, 3] to write the view into (default: a new array).

    Returns:
        uint8 [resolution, resolution, 3] (``out`` when given).
    """
    from PIL import Image

    data = path.read_bytes()
    size = jpeg_size(data)
    crop: tuple[int, int, int, int] | None = None
    if size is not None:
        crop = random_resized_crop_box(rng, *size)
        if not (draft and _draft_target(size, crop, resolution)):
            pixels = jpeg_array(data)
            if pixels is not None:
                return resize_box(pixels, crop, (resolution, resolution), flip=flip, out=out)
    with Image.open(io.BytesIO(data)) as opened:
        if crop is None:
            crop = random_resized_crop_box(rng, *opened.size)
        box = _draft_for_crop(opened, crop, resolution) if draft else crop
        img = opened if opened.mode == "RGB" else opened.convert("RGB")
        view = img.resize((resolution, resolution), Image.Resampling.BILINEAR, box=box)
    if flip:  # PIL mirrors whole pixels; copying a negative-stride numpy view moves single bytes (3x slower)
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if out is None:
        return np.asarray(view)
    out[:] = np.asarray(view)
    return out


def decode_eval(path: Path, resolution: int, out: np.ndarray | None = None) -> np.ndarray:
    """The evaluation view (full decode; shorter side to ``resolution / 0.875``, centre crop): uint8 [H, W, 3]
    (``out`` when given)."""
    from PIL import Image

    data = path.read_bytes()
    pixels = jpeg_array(data) if jpeg_size(data) is not None else None
    if pixels is not None:
        nw, nh, left, top = center_crop_geometry(pixels.shape[1], pixels.shape[0], resolution)
        view = resize_box(pixels, (0, 0, pixels.shape[1], pixels.shape[0]), (nw, nh))
        view = view[top : top + resolution, left : left + resolution]
    else:
        with Image.open(io.BytesIO(data)) as opened:
            img = opened if opened.mode == "RGB" else opened.convert("RGB")
            view = np.asarray(center_crop_resize(img, resolution))
    if out is None:
        return np.ascontiguousarray(view)
    out[:] = view
    return out


#: An item of a loader: (file index, epoch, position in the epoch, mirror, batch ordinal in this pass).
_Item = tuple[int, int, int, bool, int]


@dataclass(frozen=True)
class _Slot:
    """A batch that a worker wrote into slot ``ordinal % slots`` of the loader's shared ring."""

    ordinal: int
    size: int


class _BatchRing:
    """Shared-memory batch buffers that loader workers fill in place, reused batch after batch.

    Handing a fresh tensor from a worker to the training process costs a shared-memory segment per batch
    (created and faulted in) and a file descriptor passed over a socket: about 0.3 ms of the worker's CPU
    per 224x224 image, 15 % of its decoding work. With a ring made before the workers start (forked
    workers inherit it), a worker writes batch ``k`` into slot ``k % slots`` and sends back two integers.

    Safety: a DataLoader keeps at most ``prefetch * workers`` batches requested but not yet handed out, and
    requests the next one only when it hands one out, after the training process has finished reading
    the one before (the batch is normalised into a new tensor, or copied to the device, before the loop
    asks for the next). So ``prefetch * workers + 2`` slots are never overwritten while in use; every slot
    also carries the ordinal of the batch written last, checked when the batch is taken.
    """

    def __init__(self, slots: int, capacity: int, resolution: int) -> None:
        need = slots * capacity * resolution * resolution * 3
        shm = Path("/dev/shm")
        free = shutil.disk_usage(shm).free if shm.is_dir() else need
        if free < need:
            raise DataError(f"the loader's workers need {_size(need)} of shared memory for their batches, "
                            f"but {shm} has {_size(free)} free; lower data.workers or the batch size, or "
                            f"give the machine (a container: --shm-size) more shared memory")
        self.pixels = torch.empty((slots, capacity, resolution, resolution, 3), dtype=torch.uint8).share_memory_()
        self.stamps = torch.full((slots,), -1, dtype=torch.int64).share_memory_()

    def _index(self, ordinal: int) -> int:
        return ordinal % self.pixels.shape[0]

    def slot(self, ordinal: int, size: int) -> np.ndarray:
        """uint8 [size, res, res, 3]: where a worker writes batch ``ordinal`` (then :meth:`stamp` it)."""
        return self.pixels[self._index(ordinal), :size].numpy()

    def stamp(self, ordinal: int, size: int) -> _Slot:
        """Marks batch ``ordinal`` as written, once all its images are in its slot."""
        self.stamps[self._index(ordinal)] = ordinal
        return _Slot(ordinal, size)

    def take(self, item: _Slot) -> torch.Tensor:
        """uint8 [n, 3, res, res] (an NHWC view) of a batch a worker put, valid until the next batch is asked for."""
        self.check(item)
        return self.pixels[self._index(item.ordinal), : item.size].permute(0, 3, 1, 2)

    def check(self, item: _Slot) -> None:
        """Raises when ``item``'s slot holds another batch (taken, or used, after a worker reused the slot)."""
        slot = self._index(item.ordinal)
        if int(self.stamps[slot]) != item.ordinal:
            raise RuntimeError(f"loader batch {item.ordinal} was overwritten in its shared buffer (slot {slot} holds "
                               f"batch {int(self.stamps[slot])}); the ring has too few slots")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


@dataclass
class _DecodeDataset(Dataset):
    """Decodes ``(file index, epoch, epoch position, flip, ordinal)`` items to uint8 [res, res, 3] arrays.

    Everything random about an item travels with it (the crop from ``(seed, epoch, position)``, the flip
    drawn in the main process), so a batch does not depend on which worker, or how many, decoded it. In
    workers a whole batch goes into ``ring`` (see :class:`_BatchRing`).
    """

    root: Path
    files: list[str]
    resolution: int
    random_crop: bool
    seed: int
    draft: bool
    ring: _BatchRing | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: _Item) -> np.ndarray | _Failure:
        return self._decode(item, None)

    def _decode(self, item: _Item, out: np.ndarray | None) -> np.ndarray | _Failure:
        from PIL import Image

        file_index, epoch, position, flip = item[:4]
        path = self.root / self.files[file_index]
        try:
            if self.random_crop:
                rng = Random(derive_seed(self.seed, "crop", epoch, position))
                return decode_train(path, self.resolution, rng, flip=flip, draft=self.draft, out=out)
            return decode_eval(path, self.resolution, out=out)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return _Failure(str(path), f"{type(exc).__name__}: {exc}")

    def __getitems__(self, items: list[_Item]) -> list[np.ndarray | _Failure] | _Slot | _Failure:
        ring = self.ring
        if ring is None or not items or get_worker_info() is None:
            return [self._decode(item, None) for item in items]
        ordinal = items[0][4]
        view = ring.slot(ordinal, len(items))
        for i, item in enumerate(items):  # decoded straight into the shared buffer
            decoded = self._decode(item, view[i])
            if isinstance(decoded, _Failure):
                return decoded
        return ring.stamp(ordinal, len(items))


def _collate(items: list[np.ndarray | _Failure] | _Slot | _Failure, resolution: int) -> torch.Tensor | _Slot | _Failure:
    """Stacks decoded images into one uint8 [B, 3, res, res] tensor; a batch already in the ring stays there.

    The buffer is NHWC, as PIL decodes, viewed as NCHW (channels-last strides): the normalisation that
    follows reads either layout, so nothing is spent on a transpose.
    """
    if isinstance(items, (_Slot, _Failure)):
        return items
    for it in items:
        if isinstance(it, _Failure):
            return it
    out = torch.empty((len(items), resolution, resolution, 3), dtype=torch.uint8)
    view = out.numpy()
    for i, a in enumerate(items):
        view[i] = a
    return out.permute(0, 3, 1, 2)


@dataclass
class _ShardSampler(Sampler):
    """Yields, per global batch from ``start_batch``, this rank's ``(file index, epoch, position, flip, ordinal)``
    items (``ordinal``: the batch's number in this pass, from 0).

    ``plan`` and ``epoch`` are reassigned before each pass, so one loader (and its persistent workers)
    serves every epoch.
    """

    plan: EpochPlan
    epoch: int
    seed: int
    flip: bool

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[list[_Item]]:
        plan, epoch = self.plan, self.epoch
        for i in range(plan.start_batch, plan.num_batches):
            lo, hi = plan.shard_bounds(i)
            if self.flip:  # one draw per global batch, so the ranks' shards add up to the 1-process batch
                glo, ghi = plan.batch_bounds(i)
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "flip", epoch, i))
                flips = (torch.rand(ghi - glo, generator=gen) < 0.5)[lo - glo : hi - glo].tolist()
            else:
                flips = [False] * (hi - lo)
            ordinal = [i - plan.start_batch] * (hi - lo)
            yield list(zip(plan.order[lo:hi].tolist(), [epoch] * (hi - lo), range(lo, hi), flips, ordinal))


class FolderSplit(Split):
    """Image files decoded by PIL (in DataLoader workers), a fixed size, RGB, mapped to [-1, 1].

    Training: RandomResizedCrop to ``resolution`` per image (randomness from ``(seed, epoch, position in
    epoch)``) and a random horizontal flip (from ``(seed, epoch, batch)``), both in the workers; JPEGs whose
    crop is at least twice ``resolution`` are decoded at a reduced DCT scale first (``draft``). Eval (and
    training without augmentation): full decode, shorter side resized to ``round(resolution / 0.875)``,
    centre crop ``resolution``. Unreadable images raise a :class:`DataError` naming the file when their
    batch is built.

    Args:
        root: the dataset folder.
        files: image paths relative to ``root``.
        labels: int64 [N].
        resolution: output height and width.
        augment: use the training augmentation when a loader has ``train=True``.
        workers: decoding worker processes of loaders that do not ask for a number (``data.workers``).
        draft: JPEG draft-mode decoding for training crops (``data.jpeg_draft``).
    """

    def __init__(self, root: Path, files: Sequence[str], labels: torch.Tensor, *, resolution: int,
                 augment: bool = True, workers: int = 0, draft: bool = True) -> None:
        if len(files) != labels.numel():
            raise ValueError(f"{len(files)} files but {labels.numel()} labels")
        self.root = Path(root)
        self.files = list(files)
        self._labels = labels.to(torch.int64)
        self.resolution = resolution
        self.augment = augment
        self.workers = workers
        self.draft = draft
        self.norm = FOLDER_NORM
        self._norm_cache: dict[tuple[str, int, bool], tuple] = {}
        self._kept: _KeptLoader | None = None

    def __repr__(self) -> str:
        return f"FolderSplit({len(self)} images under {self.root}, {self.resolution}px, augment={self.augment})"

    def subset(self, indices: Sequence[int] | torch.Tensor) -> FolderSplit:
        idx = as_index(indices, len(self))
        return FolderSplit(self.root, [self.files[i] for i in idx.tolist()], self._labels[idx],
                           resolution=self.resolution, augment=self.augment, workers=self.workers, draft=self.draft)

    def _batches(self, plan: EpochPlan, *, train: bool, seed: int, epoch: int, device: torch.device,
                 workers: int | None, channels_last: bool) -> Batches:
        n = self.workers if workers is None else workers
        return _FolderBatches(self, plan, train=train and self.augment, seed=seed, epoch=epoch, device=device,
                              workers=check_workers(n), channels_last=channels_last, persistent=train and n > 0)

    def _loader_for(self, sampler: _ShardSampler, *, augment: bool, workers: int, cuda: bool,
                    keep: bool) -> tuple[DataLoader, _KeptLoader | None]:
        """A DataLoader over ``sampler``'s items; with ``keep``, the one kept from the last pass when it has the
        same settings and is idle, so its persistent workers carry over from epoch to epoch."""
        plan = sampler.plan
        capacity = min(math.ceil(plan.batch_size / plan.world_size), len(self.files))
        key = (augment, sampler.seed, workers, cuda, capacity)
        kept = self._kept
        if keep and kept is not None and kept.busy:
            keep = False  # another pass is still running on the kept loader: this one gets its own, not kept
        if keep and kept is not None and kept.key == key:
            kept.sampler.plan, kept.sampler.epoch = sampler.plan, sampler.epoch
            return kept.loader, kept
        if workers > 0:
            prepare_jpeg()
        ahead = _prefetch(workers, capacity * self.resolution * self.resolution * 3)
        ring = _BatchRing(ahead * workers + 2, capacity, self.resolution) if workers > 0 else None
        dataset = _DecodeDataset(self.root, self.files, self.resolution, augment, sampler.seed, self.draft, ring)
        extra: dict[str, Any] = {"persistent_workers": keep, "prefetch_factor": ahead} if workers > 0 else {}
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                            collate_fn=partial(_collate, resolution=self.resolution),
                            # Batches in the ring are copied to pinned memory as they are taken (move_to_device).
                            pin_memory=cuda and ring is None,
                            # An explicit generator keeps the loader from drawing its base seed from the global RNG.
                            generator=torch.Generator().manual_seed(0), **extra)
        if not keep:
            return loader, None
        self._kept = _KeptLoader(key, loader, sampler)  # replaces (and so shuts down) the previous one
        return loader, self._kept


@dataclass
class _KeptLoader:
    key: tuple[bool, int, int, bool, int]
    loader: DataLoader
    sampler: _ShardSampler
    busy: bool = False


def _one_ahead(items: Iterator[Any]) -> Iterator[Any]:
    """Yields ``items``, pulling each one before the previous is handed out (overlaps host-to-device copies)."""
    pending = next(items, _END)
    while pending is not _END:
        following = next(items, _END)
        yield pending
        pending = following


_END = object()
#: Batches each loader worker may have requested ahead of the training loop, at most.
_PREFETCH = 4
#: Shared memory a loader's ring may take beyond its minimum (one batch per worker, plus two).
_RING_BUDGET = 1 << 30


def _prefetch(workers: int, batch_bytes: int) -> int:
    """Batches requested ahead per worker: up to :data:`_PREFETCH`, fewer when the ring of
    ``prefetch * workers + 2`` batches would pass :data:`_RING_BUDGET` (large evaluation or calibration
    batches), never fewer than one."""
    if workers <= 0:
        return 0
    fits = (_RING_BUDGET // max(batch_bytes, 1) - 2) // workers
    return max(1, min(_PREFETCH, fits))


class _FolderBatches(Batches):
    def __init__(self, split: FolderSplit, plan: EpochPlan, *, workers: int, persistent: bool,
                 **settings: Any) -> None:
        super().__init__(plan, **settings)
        self.split = split
        self.workers = workers
        self.persistent = persistent

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        split, plan = self.split, self.plan
        cuda = self.device.type == "cuda" and torch.cuda.is_available()
        sampler = _ShardSampler(plan, self.epoch, self.seed, self.train)
        # Shuffled passes come back every epoch: keep their loader, and its workers, alive between them.
        loader, kept = split._loader_for(sampler, augment=self.train, workers=self.workers, cuda=cuda,
                                         keep=self.persistent)
        if kept is not None:
            kept.busy = True
        finished = False
        try:
            moved = self._moved(loader)
            for x, y in _one_ahead(moved) if cuda else moved:
                yield finish_images(x, split.norm, self.channels_last, split._norm_cache), y
            finished = True
        finally:
            if kept is not None:
                kept.busy = False
                if not finished and split._kept is kept:
                    # A pass left early (a few calibration batches, the last training step): its workers would
                    # only sit idle, so let them go.
                    split._kept = None

    def _moved(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The loader's batches on the device. A batch in the shared ring is read (normalised on the CPU, or
        copied to pinned memory for CUDA) before the next one is asked for, which is what frees its slot."""
        split, plan = self.split, self.plan
        ring = loader.dataset.ring  # type: ignore[attr-defined]
        used: _Slot | None = None
        batches = iter(loader)
        for i in range(plan.start_batch, plan.num_batches):
            if used is not None:
                ring.check(used)  # still intact after its use, before the next request lets a worker reuse slots
            item = next(batches, None)
            if item is None:
                return
            if isinstance(item, _Failure):
                raise DataError(f"cannot decode image {item.path} ({item.reason}); remove or replace the file")
            if isinstance(item, _Slot):
                used, item = item, ring.take(item)
            lo, hi = plan.shard_bounds(i)
            yield move_to_device(item, self.device), move_to_device(split.labels[plan.order[lo:hi]], self.device)


# ------------------------------------------------------------------------------------------ build
def build_imagefolder(cfg: DataConfig, *, resolution: int, seed: int, run_dir: str | Path | None) -> DataBundle:
    """The train / search-validation / val splits of an ImageNet-layout folder.

    The hold-out manifest goes to ``cfg.manifest`` or ``run_dir/split.json`` (not written when both are
    unset); an existing one is reused when it was made with the same seed and ``holdout_per_class``.

    Args:
        cfg: the data section (``root``, ``holdout_per_class``, ``manifest``, ``limit_train``, ``augment``,
            ``resolution``).
        resolution: crop size when ``cfg.resolution`` is unset.
        seed: the run seed (draws the hold-out).
        run_dir: the run folder, for the default manifest location.

    Returns:
        The bundle; ``limit_train`` keeps the first images taken one class at a time (so a small limit
        still covers every class).

    Raises:
        DataError: missing folders, class folders that differ between train and val, too few images for
            the hold-out, or a manifest that does not match this run.
    """
    if cfg.root is None:
        raise DataError("data.name=imagefolder needs data.root, a folder with train/<class>/ and val/<class>/ "
                        "subfolders of images")
    root = Path(cfg.root).expanduser().resolve()
    res = cfg.resolution or resolution
    per_class = cfg.holdout_per_class
    if cfg.manifest is not None:
        manifest_path: Path | None = Path(cfg.manifest).expanduser()
    else:
        manifest_path = Path(run_dir) / "split.json" if run_dir is not None else None
    if manifest_path is not None and manifest_path.exists():
        manifest = _read_manifest(manifest_path, root, seed, per_class)
        log.info("reusing split manifest %s", manifest_path)
    else:
        manifest = _make_manifest(root, seed, per_class)
        if manifest_path is not None:
            atomic_write_text(manifest_path, manifest.to_json(root))
            log.info("wrote split manifest %s", manifest_path)
    classes = manifest.classes
    train_labels = _labels_of(manifest.train, classes, manifest_path)
    train = FolderSplit(root, manifest.train, train_labels, resolution=res, augment=cfg.augment,
                        workers=cfg.workers, draft=cfg.jpeg_draft)
    if cfg.limit_train is not None and cfg.limit_train < len(train):
        train = train.subset(_round_robin_first(train_labels, cfg.limit_train))
    holdout_labels = _labels_of(manifest.holdout, classes, manifest_path)
    search_val = FolderSplit(root, manifest.holdout, holdout_labels, resolution=res, augment=cfg.augment,
                             workers=cfg.workers, draft=cfg.jpeg_draft)
    _, val_files = list_class_images(root, "val", classes)
    val_paths = [f for fs in val_files for f in fs]
    val_labels = torch.tensor([c for c, fs in enumerate(val_files) for _ in fs], dtype=torch.int64)
    test = FolderSplit(root, val_paths, val_labels, resolution=res, augment=cfg.augment, workers=cfg.workers,
                       draft=cfg.jpeg_draft)
    return DataBundle("imagefolder", len(classes), 3, res, train, search_val, test)
