import itertools

import torch
import torch.nn.functional as F

from nasbnn.ops.functions import approx_sign, grad_scale, round_ste, ste_sign
from nasbnn.ops.layers import lsq_quantize_weight, shortcut_add
from nasbnn.ops.slicing import center_crop_range, group_windows, select_filter, transform_kernel


def _reference_select(weight, inp, oup, ks, groups, ks_list, mats):
    """The upstream selection written out with chunk/cat, as a reference."""
    kmax = max(ks_list)
    a, b = center_crop_range(kmax, ks)
    filters = weight[:oup, :inp, a:b, a:b]
    if ks < kmax:
        cur = weight[:oup, :inp]
        for i in range(len(ks_list) - 1, 0, -1):
            src, dst = ks_list[i], ks_list[i - 1]
            if src <= ks:
                break
            s, e = center_crop_range(src, dst)
            flat = cur[:, :, s:e, s:e].contiguous().view(-1, dst * dst)
            cur = (flat @ mats[src].t()).view(filters.size(0), filters.size(1), dst, dst)
        filters = cur
    sub = inp // groups
    ratio = filters.size(1) // sub
    return torch.cat([c[:, (i % ratio) * sub:(i % ratio) * sub + sub] for i, c in enumerate(filters.chunk(groups))])


def test_select_filter_matches_reference():
    g = torch.Generator().manual_seed(0)
    for max_in, gmin, ks_list in [(768, 8, (3, 5)), (384, 2, (3, 5)), (96, 1, (3, 5)), (64, 1, (3, 5, 7))]:
        w = torch.randn(max_in, max_in // gmin, max(ks_list), max(ks_list), generator=g)
        mats = {k: torch.randn(j * j, j * j, generator=g) for j, k in itertools.pairwise(ks_list)}
        for inp in (max_in // 2, max_in):
            for groups in (gmin, 2 * gmin):
                for k in ks_list:
                    ref = _reference_select(w, inp, inp, k, groups, ks_list, mats)
                    out = select_filter(w, in_channels=inp, out_channels=inp, kernel_size=k, groups=groups,
                                        kernel_sizes=ks_list, matrices=mats)
                    assert out.is_contiguous()
                    assert torch.equal(out, ref)


def test_group_windows_cycle():
    w = torch.arange(8 * 4).float().view(8, 4, 1, 1)  # 4 shared input columns
    out = group_windows(w, in_channels=8, groups=4)  # windows of 2 columns, ratio 2
    assert out.shape == (8, 2, 1, 1)
    assert out[0, :, 0, 0].tolist() == [0, 1]  # group 0 -> window 0
    assert out[2, :, 0, 0].tolist() == [10, 11]  # group 1 -> window 1 (columns 2..3)
    assert out[4, :, 0, 0].tolist() == [16, 17]  # group 2 -> window 0 again


def test_identity_transform_is_center_crop():
    w = torch.randn(4, 3, 5, 5)
    out = transform_kernel(w, (3, 5), 3, {5: torch.eye(9)})
    assert torch.equal(out, w[:, :, 1:4, 1:4])


def test_sign_gradients_match_closed_forms():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.5], requires_grad=True)
    approx_sign(x).sum().backward()
    expected = torch.where(x.abs() <= 1, 2 - 2 * x.abs(), torch.zeros_like(x))
    assert torch.equal(x.grad, expected.detach())
    assert approx_sign(x).tolist() == [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]
    y = x.detach().clone().requires_grad_(True)
    ste_sign(y).sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_helpers():
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    s = torch.tensor(2.0, requires_grad=True)
    y = grad_scale(s, 0.25)
    assert float(y.detach()) == 2.0
    y.backward()
    assert float(s.grad) == 0.25
    w = torch.randn(4, 3, 3, 3)
    step = torch.full((4,), 0.01)
    q = lsq_quantize_weight(w, step)
    levels = q / 0.01
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.max() <= 127 and levels.min() >= -128


def test_shortcut_tiles_pools_and_cuts():
    res = torch.arange(2 * 3 * 4 * 4).float().view(2, 3, 4, 4)
    src = torch.zeros(2, 5, 2, 2)
    out = shortcut_add(src, res)
    pooled = F.avg_pool2d(res, 2)
    assert torch.equal(out[:, :3], pooled)
    assert torch.equal(out[:, 3:], pooled[:, :2])  # channel i gets residual channel i mod 3
    narrow = shortcut_add(torch.zeros(2, 2, 4, 4), res)
    assert torch.equal(narrow, res[:, :2])
    odd = shortcut_add(torch.zeros(1, 3, 3, 3), torch.ones(1, 3, 5, 5))
    assert torch.equal(odd, torch.ones(1, 3, 3, 3))  # ceil-mode border windows average the pixels inside
