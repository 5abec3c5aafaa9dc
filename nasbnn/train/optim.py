"""Optimizer and learning-rate schedule of supernet training and fine-tuning."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv kernels (4-D) and the classifier weight only, as upstream.

    BatchNorm, shifts, PReLU slopes, LSQ steps, kernel-transform and Bi-Transformation matrices and
    the classifier bias get none.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if (p.ndim == 4 and name.endswith("weight")) or name in ("classifier.weight",):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Adam with L2 weight decay added to the gradient (not AdamW), as the official recipe."""
    return torch.optim.Adam(param_groups(model, weight_decay), lr=lr, betas=betas)


def cosine_lambda(total_steps: int, warmup_steps: int = 0, *, start_factor: float = 0.01,
                  min_factor: float = 0.0):  # type: ignore[no-untyped-def]
    """Linear warm-up from ``start_factor`` then cosine decay to ``min_factor``, per step."""
    total = max(1, total_steps)
    warm = max(0, min(warmup_steps, total - 1))

    def fn(step: int) -> float:
        if step < warm:
            return start_factor + (1 - start_factor) * step / warm
        t = (step - warm) / max(1, total - warm)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return fn


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                    start_factor: float = 0.01, min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    base = optimizer.param_groups[0]["lr"]
    fn = cosine_lambda(total_steps, warmup_steps, start_factor=start_factor,
                       min_factor=(min_lr / base) if base > 0 else 0.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
