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

import sys

import numba
import numpy as np
import torch

__all__ = ["OutputPool", "normalise_uint8", "uint8_table"]


def _references_in_a_scan() -> int:
    """What ``sys.getrefcount`` reports for an array held only by a list, inside a loop over that list."""
    held = [np.empty(0)]
    for a in held:
        return sys.getrefcount(a)
    raise AssertionError


class OutputPool:
    """float32 batch buffers handed out as tensors and reused once no tensor or view refers to them.

    A new output per batch (19 MB at 32 x 3 x 224 x 224) is faulted in page by page when the
    normalisation first writes it: a quarter of that pass's time in a training process. A buffer goes
    out through ``torch.from_numpy``, so every tensor and view made from it keeps the numpy array
    referenced; an array that only the pool still refers to is free to be written again.

    Args:
        keep: buffers kept for reuse (a training loop holds one batch while the next one is made).
    """

    _BASELINE = _references_in_a_scan()

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._arrays: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 tensor of ``shape`` (contents undefined)."""
        for a in self._arrays:
            if a.shape == shape and sys.getrefcount(a) == self._BASELINE:
                return torch.from_numpy(a)
        a = np.empty(shape, dtype=np.float32)
        if len(self._arrays) >= self.keep:
            self._arrays.pop(0)
        self._arrays.append(a)
        return torch.from_numpy(a)


def uint8_table(scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """float32 [C, 256]: ``shift[c] + v * scale[c]`` for every uint8 value ``v``, as ``torch.addcmul`` rounds it.

    Args:
        scale: float32 with C elements (any shape, e.g. [1, C, 1, 1]).
        shift: float32 with C elements.
    """
    c = scale.numel()
    values = torch.arange(256, dtype=torch.float32).expand(c, 256)
    return torch.addcmul(shift.reshape(c, 1).cpu(), values, scale.reshape(c, 1).cpu()).contiguous()


def normalise_uint8(x: torch.Tensor, table: torch.Tensor, pool: OutputPool | None = None) -> torch.Tensor:
    """float32 NCHW (contiguous) ``table[c, x[n, c, h, w]]`` of a CPU uint8 [N, C, H, W] batch.

    ``x`` may be contiguous or channels-last (an NHWC buffer viewed as NCHW); any other layout is made
    contiguous first. With ``pool``, the output is one of its buffers.
    """
    n, c, h, w = x.shape
    out = pool.take((n, c, h, w)) if pool is not None else torch.empty((n, c, h, w), dtype=torch.float32)
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
