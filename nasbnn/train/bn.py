"""BatchNorm recalibration: statistics of one architecture from a fixed set of batches.

Weight-sharing BN statistics are updated by every subnet during training, so they fit none; before a
subnet is evaluated its statistics are recomputed as cumulative averages over calibration batches
(upstream: 10 batches of 2048 training images with training augmentation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..ops.layers import SharedBatchNorm2d

_BN_TYPES = (SharedBatchNorm2d, nn.BatchNorm2d)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BN_TYPES)]


@contextmanager
def preserved_bn_state(model: nn.Module) -> Iterator[None]:
    """Restores every BN buffer, momentum and the train/eval mode on exit."""
    layers = bn_layers(model)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in layers]
    was_training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, n, mom) in zip(layers, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)
                m.momentum = mom
        model.train(was_training)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor], *, autocast=None) -> int:  # type: ignore[no-untyped-def]
    """Resets BN statistics and re-estimates them over ``batches`` (cumulative averages).

    Leaves the model in eval mode. Returns the number of images seen.
    """
    from contextlib import nullcontext

    layers = bn_layers(model)
    moms = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    ctx = autocast if autocast is not None else nullcontext()
    for x in batches:
        with ctx:
            model(x)
        seen += x.shape[0]
    for m, mom in zip(layers, moms):
        m.momentum = mom
    model.eval()
    return seen


@torch.no_grad()
def evaluate_top1(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, autocast=None,  # type: ignore[no-untyped-def]
                  topk: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (%) over ``batches`` of (images, labels), in eval mode. Counts are exact sums."""
    from contextlib import nullcontext

    model.eval()
    ctx = autocast if autocast is not None else nullcontext()
    correct: dict[int, Tensor | int] = {k: 0 for k in topk}
    n = 0
    for x, y in batches:
        if y.shape[0] == 0:
            continue
        with ctx:
            logits = model(x)
        kmax = min(max(topk), logits.shape[1])
        pred = logits.float().topk(kmax, dim=1).indices
        hit = pred.eq(y.view(-1, 1))
        for k in topk:
            correct[k] = correct[k] + hit[:, : min(k, kmax)].any(dim=1).sum()  # stays on the device
        n += y.shape[0]
    out = {f"top{k}": (100.0 * int(correct[k]) / n if n else 0.0) for k in topk}
    out["images"] = float(n)
    return out
