"""Fitness of a subnet: BN recalibration on fixed cached batches, then top-1 on held-out images.

Calibration and validation batches are drawn once and kept (on the device), not re-loaded per
candidate; calibration runs in one process over all of them, so a score does not depend on how many
GPUs evaluate (upstream calibrates per GPU on different shards). Scores are cached by architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from ..models import SuperBNN
from ..space import Arch
from ..train.bn import evaluate_top1, preserved_bn_state, recalibrate_bn

__all__ = ["SupernetEvaluator"]


class SupernetEvaluator:
    """``evaluator(archs) -> [top1, ...]`` for a trained supernet.

    Args:
        model: the supernet (eval mode is set per call; its weights and BN buffers are left as found).
        calib: calibration image batches (training augmentation), fixed.
        val: (images, labels) batches of the search-validation split, fixed.
        autocast: mixed-precision context for the forward passes.
    """

    def __init__(self, model: SuperBNN, calib: Sequence[Tensor], val: Sequence[tuple[Tensor, Tensor]], *,
                 autocast: AbstractContextManager | None = None) -> None:
        self.model = model
        self.calib = list(calib)
        self.val = list(val)
        self.autocast = autocast
        self.cache: dict[Arch, float] = {}

    def score(self, arch: Arch) -> float:
        hit = self.cache.get(arch)
        if hit is not None:
            return hit
        model = self.model
        with torch.inference_mode(), preserved_bn_state(model), model.use_arch(arch, nondecreasing=False), \
                model.precision("binary"):
            recalibrate_bn(model, self.calib, autocast=self.autocast)
            top1 = evaluate_top1(model, self.val, autocast=self.autocast, topk=(1,))["top1"]
        self.cache[arch] = top1
        return top1

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        return [self.score(a) for a in archs]
