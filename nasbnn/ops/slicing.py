"""Pure weight-sharing helpers: kernel cropping, the learnable kernel transform and group windows.

These implement the upstream NAS-BNN (and once-for-all) selection of a sub-filter from a shared
max-size weight; each is unit-tested against a direct reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["center_crop_range", "group_windows", "select_filter", "transform_kernel"]


def center_crop_range(kernel_size: int, sub_kernel_size: int) -> tuple[int, int]:
    """``[start, end)`` of the centred ``sub_kernel_size`` window inside ``kernel_size``."""
    center, half = kernel_size // 2, sub_kernel_size // 2
    return center - half, center + half + 1


def transform_kernel(weight: Tensor, kernel_sizes: tuple[int, ...], target: int,
                     matrices: dict[int, Tensor]) -> Tensor:
    """Shrinks ``weight`` ([O, I, Kmax, Kmax]) to ``target`` through each smaller kernel size.

    At every step the centre ``k_small × k_small`` window is cropped and each flattened kernel is
    multiplied by the learnable ``k_small² × k_small²`` matrix (``x @ M.T``), as in once-for-all's
    kernel transformation. ``matrices`` maps the *source* size of a step to its matrix.
    """
    sizes = sorted(kernel_sizes)
    out = weight
    for i in range(len(sizes) - 1, 0, -1):
        src, dst = sizes[i], sizes[i - 1]
        if src <= target:
            break
        a, b = center_crop_range(src, dst)
        o, c = out.shape[0], out.shape[1]
        crop = out[:, :, a:b, a:b].reshape(o * c, dst * dst)
        out = F.linear(crop, matrices[src]).view(o, c, dst, dst)
    return out


def group_windows(weight: Tensor, in_channels: int, groups: int) -> Tensor:
    """Selects each group's input-channel window from a shared weight.

    ``weight`` is [O, W, K, K] with W shared input columns. Output filters are split into ``groups``
    equal chunks; chunk ``i`` reads columns ``[(i mod r)·s, (i mod r + 1)·s)`` with
    ``s = in_channels / groups`` and ``r = W // s``, so more groups cycle through different windows
    of the shared weight instead of always reading the first.
    """
    sub = in_channels // groups
    ratio = weight.shape[1] // sub
    if ratio == 1 or groups == 1:
        return weight[:, :sub]
    o, k = weight.shape[0], weight.shape[2]
    w = weight[:, : ratio * sub].reshape(groups, o // groups, ratio, sub, k, k)
    sel = torch.arange(groups, device=weight.device) % ratio
    picked = w[torch.arange(groups, device=weight.device), :, sel]  # [G, O/G, sub, K, K]
    return picked.reshape(o, sub, k, k)


def select_filter(weight: Tensor, *, in_channels: int, out_channels: int, kernel_size: int,
                  groups: int, kernel_sizes: tuple[int, ...], matrices: dict[int, Tensor]) -> Tensor:
    """The active filter [out, in/groups, k, k] of a shared weight: prefix slice, kernel, groups."""
    kmax = weight.shape[-1]
    w = weight[:out_channels, :in_channels]
    if kernel_size < kmax:
        w = transform_kernel(w, kernel_sizes, kernel_size, matrices)
    # Contiguous, as upstream's concatenation leaves it: reductions over it (the per-filter
    # statistics) then round exactly as upstream's do.
    return group_windows(w, in_channels, groups).contiguous()
