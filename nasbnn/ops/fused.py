"""The element-wise tail of a binary block as one compiled region.

After each binary conv a block runs BN -> shortcut add -> RPReLU (-> the next RSign): at large feature
maps these memory-bound passes, not the convolutions, dominate a training step. With fusion on, the
tail is compiled by ``torch.compile(dynamic=True)`` (Triton kernels on CUDA, vectorised C++ on CPU),
once per shortcut variant rather than per architecture, since only tensor shapes change between
subnets. The eager path computes the same values and is used when fusion is off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functions import approx_sign
from .layers import match_residual

__all__ = ["block_tail", "compiled_tail_works", "tail_impl"]


def tail_impl(y: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
              training: bool, momentum: float, eps: float, shift_in: Tensor, slope: Tensor, shift_out: Tensor,
              next_shift: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """BN, the shortcut add (``residual`` already of ``y``'s shape), RPReLU and, when ``next_shift`` is
    given, the next block's RSign."""
    y = F.batch_norm(y, running_mean, running_var, weight, bias, training, momentum, eps)
    out = F.prelu(y + residual + shift_in, slope) + shift_out
    if next_shift is None:
        return out, None
    return out, approx_sign(out + next_shift)


_compiled: Callable[..., Any] | None = None
_VARIANTS = 32


def _compiled_tail() -> Callable[..., Any]:
    global _compiled
    if _compiled is None:
        import torch._dynamo.config as dynamo_config

        # One graph per (grad mode, train/eval, with/without the next RSign, parameters or plain
        # tensors): more variants than dynamo's default of 8 per function, after which it would
        # silently run the rest eagerly.
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, _VARIANTS)
        _compiled = torch.compile(tail_impl, dynamic=True)
    return _compiled


def compiled_tail_works(device: torch.device | str = "cpu") -> str | None:
    """Compiles and runs the tail once on ``device``; returns ``None`` when that works, else the reason.

    ``torch.compile`` needs a C++ compiler on the CPU and Triton on CUDA; a machine without them
    should train eagerly rather than fail mid-run.
    """
    try:
        g = torch.Generator().manual_seed(0)
        y = torch.randn(2, 4, 3, 3, generator=g).to(device)
        ones, zeros = torch.ones(4, device=device), torch.zeros(4, device=device)
        shift = torch.zeros(1, 4, 1, 1, device=device)
        got, _ = _compiled_tail()(y, y, ones, zeros, zeros.clone(), ones.clone(), True, 0.1, 1e-5, shift,
                                  ones, shift, shift)
        want, _ = tail_impl(y, y, ones, zeros, zeros.clone(), ones.clone(), True, 0.1, 1e-5, shift, ones, shift,
                            shift)
        if not torch.allclose(got, want, atol=1e-5):
            return "the compiled tail disagrees with the eager one"
    except Exception as exc:  # any compiler failure means: run eagerly
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def block_tail(y: Tensor, residual: Tensor, bn: nn.Module, act: nn.Module, next_sign: nn.Module | None, *,
               compiled: bool) -> tuple[Tensor, Tensor | None]:
    """Runs ``bn``, the shortcut, ``act`` (RPReLU) and ``next_sign`` (RSign) on a conv output.

    Parameters are taken by prefix slices, so elastic (max-size) and exact-size modules both work.
    BatchNorm with ``momentum=None`` (recalibration) always runs eagerly.
    """
    c = y.shape[1]
    if residual.shape != y.shape:
        # Pooling/tiling outside the compiled region keeps it to one variant per (training, sign).
        residual = match_residual(residual, y)
    momentum = bn.momentum
    if bn.training:
        bn.num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    args = (y, residual, bn.weight[:c], bn.bias[:c], bn.running_mean[:c], bn.running_var[:c], bn.training,
            0.0 if momentum is None else float(momentum), float(bn.eps), act.shift_in[:, :c], act.slope[:c],
            act.shift_out[:, :c], None if next_sign is None else next_sign.shift[:, :c])
    fn = _compiled_tail() if compiled and bn.momentum is not None else tail_impl
    return fn(*args)
