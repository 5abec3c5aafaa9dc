"""Test helpers."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every parameter and BN statistic a non-trivial value (BN stats, shifts, slopes, matrices)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("fp2bin",)) or "transform_" in name:
            p.copy_(torch.eye(p.shape[0]) + 0.05 * torch.randn(p.shape, generator=g))
        elif name.endswith("slope"):
            p.copy_(0.25 + 0.05 * torch.randn(p.shape, generator=g))
        elif name.endswith("step_size"):
            p.copy_(p * (0.8 + 0.4 * torch.rand(p.shape, generator=g)))
        elif p.ndim >= 2:
            continue  # keep the initialised conv/linear weights
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("bn1.weight") else 0.0))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
