"""Rank statistics for comparing orderings (search protocols, cost models against measured latency)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["kendall_tau", "spearman_rho"]


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    sv = v[order]
    i = 0
    while i < len(v):  # ties share their mean rank
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties get mean ranks)."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else 0.0


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    dx = np.sign(a[:, None] - a[None, :])
    dy = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    sx, sy = dx[iu], dy[iu]
    num = float((sx * sy).sum())
    den = float(np.sqrt((sx != 0).sum() * (sy != 0).sum()))
    return num / den if den > 0 else 0.0
