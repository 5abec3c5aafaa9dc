"""``build_data``: from a :class:`DataConfig` to the train / search-validation / test splits of a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..registry import Registry
from .augment import Augment, Normalize, resize_images
from .base import DataBundle, TensorSplit, holdout_split

log = logging.getLogger(__name__)

__all__ = ["CLASS_NAMES", "DATASETS", "IN_MEMORY_SPECS", "build_data", "preprocess_info"]

#: Normalisation and training augmentation of the in-memory datasets.
IN_MEMORY_SPECS: dict[str, tuple[Normalize, Augment]] = {
    "fashion-mnist": (Normalize((0.2860,), (0.3530,)), Augment(crop_pad=2, flip=True)),
    "mnist": (Normalize((0.1307,), (0.3081,)), Augment(crop_pad=2, flip=False)),
    "cifar10": (Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), Augment(crop_pad=4, flip=True)),
    "cifar100": (Normalize((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), Augment(crop_pad=4, flip=True)),
}
_SYNTHETIC_AUGMENT = Augment(flip=True)

#: Label names of the built-in datasets, in label order (recorded in packed models for ``nasbnn infer``).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(d) for d in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def preprocess_info(dataset: str) -> dict[str, object]:
    """How images of ``dataset`` become network inputs (mean/std of pixels in [0, 1], class names), as a
    packed model records it; generated data have no pixel form, so only the name is known."""
    out: dict[str, object] = {"dataset": dataset}
    norm = IN_MEMORY_SPECS[dataset][0] if dataset in IN_MEMORY_SPECS else None
    if dataset == "imagefolder":
        from .imagefolder import FOLDER_NORM

        norm = FOLDER_NORM
    if norm is not None:
        out["mean"], out["std"] = list(norm.mean), list(norm.std)
    if dataset in CLASS_NAMES:
        out["class_names"] = list(CLASS_NAMES[dataset])
    return out


def _fit(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-2:] == (resolution, resolution):
        return images
    return resize_images(images, resolution)


def build_data(cfg: DataConfig, *, resolution: int, seed: int, run_dir: str | Path | None = None) -> DataBundle:
    """Loads (or generates) the dataset of ``cfg`` and makes its splits.

    In-memory datasets (fashion-mnist, mnist, cifar10, cifar100, synthetic) whose native size differs from
    ``resolution`` are resized once, here (bilinear, antialiased). Their search-validation split is
    ``cfg.holdout_per_class`` images per class drawn with ``seed`` from the training set (synthetic: generated
    separately); ``cfg.limit_train`` then keeps the first training images in file order. Image folders are
    described in :func:`nasbnn.data.imagefolder.build_imagefolder`.

    Args:
        cfg: the data section of the run config.
        resolution: the image size the model expects (imagefolder: the crop size unless ``cfg.resolution``).
        seed: the run seed (hold-out, synthetic data).
        run_dir: the run folder (imagefolder writes its split manifest there by default).

    Returns:
        The dataset's splits and its shape.

    Raises:
        DataError: a missing or malformed dataset, a hold-out larger than a class allows, or
            ``data.resolution`` set for a dataset other than imagefolder (to another size).
    """
    if cfg.name != "imagefolder" and cfg.resolution is not None and cfg.resolution != resolution:
        raise DataError(f"data.resolution={cfg.resolution} applies to imagefolder only; {cfg.name} images are "
                        f"resized to the model resolution {resolution} (set space.resolution instead)")
    return DATASETS.get(cfg.name)(cfg, resolution=resolution, seed=seed, run_dir=run_dir)


#: Dataset name -> builder ``(cfg, *, resolution, seed, run_dir) -> DataBundle``.
DATASETS: Registry[DataBundle] = Registry("dataset", error=ConfigError)


@DATASETS.register("imagefolder")
def _build_imagefolder(cfg: DataConfig, *, resolution: int, seed: int, run_dir: str | Path | None) -> DataBundle:
    from .imagefolder import build_imagefolder

    return build_imagefolder(cfg, resolution=resolution, seed=seed, run_dir=run_dir)


@DATASETS.register("fashion-mnist")
@DATASETS.register("mnist")
def _build_idx(cfg: DataConfig, *, resolution: int, seed: int, run_dir: str | Path | None) -> DataBundle:
    from .idx import load_idx_dataset

    return _build_in_memory(cfg, load_idx_dataset(cfg.name, cfg.root), resolution=resolution, seed=seed)


@DATASETS.register("cifar10")
@DATASETS.register("cifar100")
def _build_cifar(cfg: DataConfig, *, resolution: int, seed: int, run_dir: str | Path | None) -> DataBundle:
    from .cifar import load_cifar

    return _build_in_memory(cfg, load_cifar(cfg.name, cfg.root), resolution=resolution, seed=seed)


def _build_in_memory(cfg: DataConfig, ds: Any, *, resolution: int, seed: int) -> DataBundle:
    """The splits of a dataset held in memory: hold-out per class, ``limit_train``, resizing, augmentation."""
    norm, augment = IN_MEMORY_SPECS[cfg.name]
    if cfg.crop_padding is not None or cfg.flip is not None:
        augment = Augment(crop_pad=augment.crop_pad if cfg.crop_padding is None else cfg.crop_padding,
                          flip=augment.flip if cfg.flip is None else cfg.flip)
    aug = augment if cfg.augment else None
    train_x = _fit(ds.train_images, resolution)
    test_x = _fit(ds.test_images, resolution)
    full = TensorSplit(train_x, ds.train_labels, norm=norm, augment=aug)
    train_idx, hold_idx = holdout_split(ds.train_labels, ds.num_classes, cfg.holdout_per_class, seed, dataset=cfg.name)
    if cfg.limit_train is not None:
        train_idx = train_idx[: cfg.limit_train]
    return DataBundle(
        name=cfg.name,
        num_classes=ds.num_classes,
        in_channels=int(train_x.shape[1]),
        resolution=resolution,
        train=full.subset(train_idx),
        search_val=full.subset(hold_idx),
        test=TensorSplit(test_x, ds.test_labels, norm=norm, augment=aug),
    )


@DATASETS.register("synthetic")
def _build_synthetic(cfg: DataConfig, *, resolution: int, seed: int, run_dir: str | Path | None = None) -> DataBundle:
    from .synthetic import make_synthetic

    if cfg.root is not None:
        log.warning("data.root=%s is not read: data.name=synthetic generates its images (set data.name to read "
                    "a dataset there)", cfg.root)
    s = cfg.synthetic
    (tx, ty), (vx, vy), (ex, ey) = make_synthetic(s, cfg.holdout_per_class, seed)
    aug = _SYNTHETIC_AUGMENT if cfg.augment else None
    train = TensorSplit(_fit(tx, resolution), ty, augment=aug)
    if cfg.limit_train is not None:
        train = train.subset(torch.arange(min(cfg.limit_train, len(train))))
    return DataBundle(
        name="synthetic",
        num_classes=s.num_classes,
        in_channels=s.channels,
        resolution=resolution,
        train=train,
        search_val=TensorSplit(_fit(vx, resolution), vy, augment=aug),
        test=TensorSplit(_fit(ex, resolution), ey, augment=aug),
    )
