"""ImageNet-layout image folders: the reproducible hold-out manifest, and a split decoded by PIL in workers.

``root/train/<class>/*`` and ``root/val/<class>/*``; the search-validation hold-out is drawn from each
class' sorted file list with the run seed and recorded in a JSON manifest that later runs reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig, atomic_write_text
from ..errors import DataError
from .augment import Normalize, center_crop_resize, derive_seed, hflip, random_resized_crop_box
from .base import Batches, DataBundle, EpochPlan, Split, as_index, finish_images, move_to_device

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST_FORMAT", "FolderSplit", "build_imagefolder", "list_class_images"]

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


def _read_manifest(path: Path, root: Path, seed: int, per_class: int) -> SplitManifest:
    fix = f"delete {path} to draw a new split, or point data.manifest elsewhere"
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split manifest {path}: {exc}; {fix}") from None
    keys = ("seed", "holdout_per_class", "classes", "train", "holdout", "hash")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or any(k not in data for k in keys):
        raise DataError(f"{path} is not a {MANIFEST_FORMAT} split manifest; {fix}")
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


def _labels_of(files: Sequence[str], classes: Sequence[str], where: Path) -> torch.Tensor:
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for f in files:
        parts = f.split("/")
        if len(parts) < 3 or parts[1] not in index:
            raise DataError(f"{where} lists {f!r}, which is not under a class folder; delete it to rebuild the split")
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


class _DecodeDataset(Dataset):
    """Decodes ``(file index, epoch position)`` items to uint8 [3, res, res] tensors (runs in workers)."""

    def __init__(self, root: Path, files: list[str], resolution: int, random_crop: bool, seed: int, epoch: int) -> None:
        self.root = root
        self.files = files
        self.resolution = resolution
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor | _Failure:
        from PIL import Image

        file_index, position = item
        path = self.root / self.files[file_index]
        res = self.resolution
        try:
            with Image.open(path) as opened:
                img = opened.convert("RGB")
            if self.random_crop:
                rng = Random(derive_seed(self.seed, "crop", self.epoch, position))
                box = random_resized_crop_box(rng, img.width, img.height)
                img = img.resize((res, res), Image.Resampling.BILINEAR, box=box)
            else:
                img = center_crop_resize(img, res)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return _Failure(str(path), f"{type(exc).__name__}: {exc}")
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _collate(items: list[torch.Tensor | _Failure], resolution: int) -> torch.Tensor | _Failure:
    for it in items:
        if isinstance(it, _Failure):
            return it
    if not items:
        return torch.zeros((0, 3, resolution, resolution), dtype=torch.uint8)
    return torch.stack(items)  # type: ignore[arg-type]


class _Collate:
    def __init__(self, resolution: int) -> None:
        self.resolution = resolution

    def __call__(self, items: list[torch.Tensor | _Failure]) -> torch.Tensor | _Failure:
        return _collate(items, self.resolution)


class _ShardSampler(Sampler):
    """Yields, per global batch from ``start_batch``, this rank's ``(file index, epoch position)`` items."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i in range(self.plan.start_batch, self.plan.num_batches):
            lo, hi = self.plan.shard_bounds(i)
            yield list(zip(self.plan.order[lo:hi].tolist(), range(lo, hi)))


class FolderSplit(Split):
    """Image files decoded by PIL (in DataLoader workers), a fixed size, RGB, mapped to [-1, 1].

    Training: RandomResizedCrop to ``resolution`` per image (randomness from ``(seed, epoch, position in
    epoch)``) in the workers, then a random horizontal flip on the device. Eval (and training without
    augmentation): resize the shorter side to ``round(resolution / 0.875)``, centre-crop ``resolution``.
    Unreadable images raise a :class:`DataError` naming the file when their batch is built.

    Args:
        root: the dataset folder.
        files: image paths relative to ``root``.
        labels: int64 [N].
        resolution: output height and width.
        augment: use the training augmentation when a loader has ``train=True``.
    """

    def __init__(self, root: Path, files: Sequence[str], labels: torch.Tensor, *, resolution: int,
                 augment: bool = True) -> None:
        if len(files) != labels.numel():
            raise ValueError(f"{len(files)} files but {labels.numel()} labels")
        self.root = Path(root)
        self.files = list(files)
        self._labels = labels.to(torch.int64)
        self.resolution = resolution
        self.augment = augment
        self.norm = FOLDER_NORM
        self._norm_cache: dict[tuple[str, int, bool], tuple] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"FolderSplit({len(self)} images under {self.root}, {self.resolution}px, augment={self.augment})"

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    def subset(self, indices: Sequence[int] | torch.Tensor) -> FolderSplit:
        idx = as_index(indices, len(self))
        return FolderSplit(self.root, [self.files[i] for i in idx.tolist()], self._labels[idx],
                           resolution=self.resolution, augment=self.augment)

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
        workers: int = 0,
        channels_last: bool = False,
    ) -> Batches:
        plan = EpochPlan.make(len(self), batch_size=batch_size, train=train, seed=seed, epoch=epoch,
                              start_batch=start_batch, rank=rank, world_size=world_size, drop_last=drop_last)
        return _FolderBatches(self, plan, train=train and self.augment, seed=seed, epoch=epoch,
                              device=torch.device(device), workers=workers, channels_last=channels_last)


class _FolderBatches(Batches):
    def __init__(self, split: FolderSplit, plan: EpochPlan, *, train: bool, seed: int, epoch: int,
                 device: torch.device, workers: int, channels_last: bool) -> None:
        super().__init__(plan)
        self.split = split
        self.augment = train
        self.seed = seed
        self.epoch = epoch
        self.device = device
        self.workers = workers
        self.channels_last = channels_last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        split, plan = self.split, self.plan
        dataset = _DecodeDataset(split.root, split.files, split.resolution, self.augment, self.seed, self.epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=_ShardSampler(plan),
            num_workers=self.workers,
            collate_fn=_Collate(split.resolution),
            pin_memory=self.device.type == "cuda" and torch.cuda.is_available(),
            # An explicit generator keeps the loader from drawing its base seed from the global RNG.
            generator=torch.Generator().manual_seed(0),
        )
        for i, item in zip(range(plan.start_batch, plan.num_batches), loader):
            if isinstance(item, _Failure):
                raise DataError(f"cannot decode image {item.path} ({item.reason}); remove or replace the file")
            lo, hi = plan.shard_bounds(i)
            x = move_to_device(item, self.device)
            y = move_to_device(split.labels[plan.order[lo:hi]], self.device)
            if self.augment:
                glo, ghi = plan.batch_bounds(i)
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "flip", self.epoch, i))
                flips = torch.rand(ghi - glo, generator=gen) < 0.5
                x = hflip(x, flips[lo - glo : hi - glo])
            yield finish_images(x, split.norm, self.channels_last, split._norm_cache), y


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
    where = manifest_path or root
    classes = manifest.classes
    train_labels = _labels_of(manifest.train, classes, where)
    train = FolderSplit(root, manifest.train, train_labels, resolution=res, augment=cfg.augment)
    if cfg.limit_train is not None and cfg.limit_train < len(train):
        train = train.subset(_round_robin_first(train_labels, cfg.limit_train))
    search_val = FolderSplit(root, manifest.holdout, _labels_of(manifest.holdout, classes, where), resolution=res,
                             augment=cfg.augment)
    _, val_files = list_class_images(root, "val", classes)
    val_paths = [f for fs in val_files for f in fs]
    val_labels = torch.tensor([c for c, fs in enumerate(val_files) for _ in fs], dtype=torch.int64)
    test = FolderSplit(root, val_paths, val_labels, resolution=res, augment=cfg.augment)
    return DataBundle("imagefolder", len(classes), 3, res, train, search_val, test)
