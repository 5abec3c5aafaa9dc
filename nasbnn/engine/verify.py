"""Checks the engine against the simulated network (StaticBNN in eval mode) and explains divergences.

A binary network amplifies float rounding: when an RSign argument ``x + shift`` lies within rounding
distance of zero, two correct float32 implementations may binarise it differently, and the logits of
that image then differ by far more than rounding. :func:`compare` separates such sign ties from
real mismatches by locating, layer by layer, the first binarisation that differs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["compare", "consumer_shifts", "explain_divergence", "reference_units"]


@torch.no_grad()
def reference_units(static: Any, x: torch.Tensor) -> list[np.ndarray]:
    """Float outputs [B, H, W, C] of the stem and of every binary conv unit, as the StaticBNN computes them."""
    from ..ops.layers import shortcut_add

    h = static.stem(x)
    outs = [h]
    for blk in static.blocks:
        o1 = blk.rprelu1(shortcut_add(blk.bn1(blk.conv_kxk(blk.rsign1(h))), h))
        h = blk.rprelu2(shortcut_add(blk.bn2(blk.conv_1x1(blk.rsign2(o1))), o1))
        outs += [o1, h]
    return [o.permute(0, 2, 3, 1).numpy() for o in outs]


def consumer_shifts(static: Any) -> list[np.ndarray]:
    """The RSign shift the next binary conv applies to the output of the stem and of each unit."""
    out = []
    for blk in static.blocks:
        out += [blk.rsign1.shift.detach().reshape(-1).numpy(), blk.rsign2.shift.detach().reshape(-1).numpy()]
    return out


def explain_divergence(static: Any, engine: Any, x: torch.Tensor, *, unit_tol: float = 1e-5,
                       tie_tol: float = 1e-5) -> dict[str, Any]:
    """Where one image's engine result first departs from the StaticBNN, and whether it is a sign tie.

    Walks the layers in order. While the binarised inputs agree, each layer's float output must agree
    to ``unit_tol`` (relative L2). The first layer whose output is binarised differently is a sign tie
    when at every differing position the StaticBNN's ``|x + shift|`` is at most ``tie_tol`` times the
    largest ``|x|`` of that layer (float32 rounding of values of that size).

    Returns:
        ``{"kind": "sign_tie" | "mismatch" | "none", "layer": name, ...}`` with the number of flipped
        binarisations and their largest ``|x + shift|`` relative to the layer's scale.
    """
    from ..cost import layer_costs

    names = [lc.name for lc in layer_costs(static.arch, static.space)][:-1]
    refs = reference_units(static, x)
    got: list[np.ndarray] = []
    engine.run(x, trace=lambda name, f: got.append(f.copy()))
    shifts: list[np.ndarray | None] = [*consumer_shifts(static), None]
    for j, (r, e, s) in enumerate(zip(refs, got, shifts)):
        rel = float(np.linalg.norm(e - r) / max(np.linalg.norm(r), 1e-30))
        if rel > unit_tol:
            return {"kind": "mismatch", "layer": names[j], "rel_err": rel,
                    "detail": "the layer output differs although its binary input agreed"}
        if s is None:
            break
        ar, ae = r + s, e + s
        flips = np.sign(ar) != np.sign(ae)
        if flips.any():
            scale = float(np.abs(r).max())
            margin = float(np.abs(ar[flips]).max()) / max(scale, 1e-30)
            kind = "sign_tie" if margin <= tie_tol else "mismatch"
            return {"kind": kind, "layer": names[j], "flips": int(flips.sum()), "relative_margin": margin}
    return {"kind": "none"}


def compare(static: Any, engine: Any, x: Any, *, tol: float = 1e-4) -> dict[str, Any]:
    """Engine logits vs the StaticBNN's on a batch; diverging images are explained per image.

    An image agrees when its relative L2 error is at most ``tol`` and the top-1 class is the same.

    Returns:
        ``images``, ``agree``, ``sign_ties`` (diverging through a binarisation of a value within float
        rounding of zero), ``unexplained``, ``max_rel_err`` over the agreeing images, and per diverging
        image its explanation (see :func:`explain_divergence`).
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    static = static.cpu().eval()
    with torch.no_grad():
        ref = static(xt)
    out = torch.from_numpy(engine(xt))
    err = ((out - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)).tolist()
    same = (out.argmax(1) == ref.argmax(1)).tolist()
    diverging = []
    for i, (e, s) in enumerate(zip(err, same)):
        if e > tol or not s:
            diverging.append({"image": i, "rel_err": e, "same_top1": bool(s),
                              **explain_divergence(static, engine, xt[i:i + 1])})
    ok = [e for i, e in enumerate(err) if e <= tol and same[i]]
    return {
        "images": len(err),
        "agree": len(ok),
        "sign_ties": sum(d["kind"] == "sign_tie" for d in diverging),
        "unexplained": sum(d["kind"] != "sign_tie" for d in diverging),
        "max_rel_err": max(ok) if ok else None,
        "diverging": diverging,
    }
