"""uint8 images to normalised float32 on the CPU in one pass, through a per-channel table of 256 values.

A uint8 pixel has 256 possible values, so the normalised value of each is computed once per channel, with
the same ``torch.addcmul`` that the device path uses, and a batch is then a table lookup. That gives the
same bits as ``addcmul(shift, x.float(), scale)`` by construction, in one read of the bytes and one write of
the floats instead of a conversion pass, a broadcast multiply-add and a temporary (0.05 instead of 0.63 ms
of one core per 224x224 RGB image, measured in benchmarks/RESULTS.md's loader section). The lookup also
reads channels-last (NHWC) batches, as image-folder workers hand them over, and writes NCHW, so the
workers need not transpose. A numba loop does the lookup:
numpy's fancy indexing would widen every byte to a 64-bit index first.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["normalise_uint8", "uint8_table"]


def uint8_table(scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """float32 [C, 256]: ``shift[c] + v * scale[c]`` for every uint8 value ``v``, as ``torch.addcmul`` rounds it.

    Args:
        scale: float32 with C elements (any shape, e.g. [1, C, 1, 1]).
        shift: float32 with C elements.
    """
    c = scale.numel()
    values = torch.arange(256, dtype=torch.float32).expand(c, 256)
    return torch.addcmul(shift.reshape(c, 1).cpu(), values, scale.reshape(c, 1).cpu()).contiguous()


def normalise_uint8(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """float32 NCHW (contiguous) ``table[c, x[n, c, h, w]]`` of a CPU uint8 [N, C, H, W] batch.

    ``x`` may be contiguous or channels-last (an NHWC buffer viewed as NCHW); any other layout is made
    contiguous first.
    """
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=torch.float32)
    if x.numel() == 0:
        return out
    lut = table.numpy()
    dst = out.numpy().reshape(n, c, h * w)
    if not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous()
    _lookup(x.numpy().reshape(n, c, h * w), lut, dst)  # a view for both layouts: H and W stay adjacent
    return out


@numba.njit(cache=True, nogil=True)
def _lookup(src: np.ndarray, lut: np.ndarray, dst: np.ndarray) -> None:
    """``dst[i, c, k] = lut[c, src[i, c, k]]``; ``src`` may be strided (an NHWC buffer seen as [N, C, H*W])."""
    for i in range(src.shape[0]):
        for ch in range(src.shape[1]):
            row = lut[ch]
            for k in range(src.shape[2]):
                dst[i, ch, k] = row[src[i, ch, k]]
