"""Datasets, splits and deterministic, resumable, shardable batch iterators (no torchvision needed).

``build_data(cfg, resolution=..., seed=...)`` returns a :class:`DataBundle` of :class:`Split` objects;
``split.loader(...)`` gives the :class:`Batches` of one epoch for one rank.
"""

from __future__ import annotations

from .augment import Augment as Augment
from .augment import Normalize as Normalize
from .augment import derive_seed as derive_seed
from .base import Batches as Batches
from .base import DataBundle as DataBundle
from .base import Split as Split
from .base import TensorSplit as TensorSplit
from .build import build_data as build_data
from .imagefolder import FolderSplit as FolderSplit

__all__ = [
    "Augment",
    "Batches",
    "DataBundle",
    "FolderSplit",
    "Normalize",
    "Split",
    "TensorSplit",
    "build_data",
    "derive_seed",
]
