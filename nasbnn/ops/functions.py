"""Autograd functions of binary and quantised networks: sign estimators and LSQ helpers.

References:
    ApproxSign: Liu et al., "Bi-Real Net", ECCV 2018 (the piecewise-quadratic sign gradient).
    Clipped STE: Hubara et al., "Binarized Neural Networks", NeurIPS 2016.
    LSQ: Esser et al., "Learned Step Size Quantization", ICLR 2020 (gradient scale 1/sqrt(N·Qp)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["approx_sign", "grad_scale", "round_ste", "ste_sign"]


class _Sign(torch.autograd.Function):
    """sign(x) forward, keeping ``x`` for the backward; ``sign(0) = 0`` as in torch.

    The two sign estimators differ only in their backward, which each subclass defines.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)


class _ApproxSign(_Sign):
    """sign(x) forward; (2 - 2|x|)·1[|x| <= 1] backward."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        # 2 - 2|x| is negative exactly where |x| > 1, so clamping at 0 is the indicator; in place
        # to keep this element-wise chain to three passes over memory.
        g = x.abs().mul_(-2.0).add_(2.0).clamp_(min=0.0)
        return g.mul_(grad)


class _SteSign(_Sign):
    """sign(x) forward; clipped straight-through 1[|x| <= 1] backward."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def approx_sign(x: Tensor) -> Tensor:
    """Binary activation with the Bi-Real ApproxSign gradient."""
    return _ApproxSign.apply(x)


def ste_sign(x: Tensor) -> Tensor:
    """Binary weight with the clipped straight-through gradient."""
    return _SteSign.apply(x)


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward."""
    return x + (x.round() - x).detach()


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """x forward, ``scale`` times the gradient backward (LSQ step-size gradient scaling)."""
    y = x * scale
    return (x - y).detach() + y
