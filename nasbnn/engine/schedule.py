"""How a conv layer's work is split among threads: pixel runs × output-channel ranges, chosen by a cost model.

At batch 1 the late stages of an ImageNet network have 7×7 or 14×14 maps: splitting them by pixels
alone gives a few uneven jobs (five runs of 48 pixels for 196 pixels: one thread does three, the other
two) and every job reads all of the layer's weights. Splitting the output channels as well (whole
groups, or ranges of a group) gives every thread the same share and only its own weights. The plan is
chosen once per layer, input size and thread count by estimating each job's cost in popcount words
and the time of the busiest thread under numba's static schedule (each thread gets one contiguous run
of jobs); a layer too small to repay waking the pool runs on the calling thread.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from . import kernels as K

__all__ = ["Plan", "channel_bounds", "plan_layer"]

#: Estimated costs in popcount-word units (one word ≈ 0.05 ns of one core at 20 G words/s).
EPILOGUE_WORDS = 8  # per output value: output transform, shortcut, RPReLU, store, packing
GATHER_WORDS = 2  # per gathered word (load + store of the im2col)
JOB_WORDS = 20_000  # per job: work buffers, coordinates, the loop set-up (about 1 µs)
LAUNCH_WORDS = {"tbb": 60_000, "omp": 60_000, "workqueue": 400_000}  # waking the pool and joining it
PARTIAL_ROW_FACTOR = 1.5  # pixels outside whole blocks of BLOCK go through single-row tiles
#: Popcounts cost this much more when a job's weights exceed half of a core's L2 cache: every block of
#: pixels streams them again from L3 (splitting channels gives each thread only its part).
WEIGHT_SPILL_FACTOR = 1.25
L2_WEIGHT_BYTES = 512 * 1024


@dataclass(frozen=True)
class Plan:
    """Pixels per job, the channel ranges, whether the layer uses the thread pool, and for how many threads."""

    pix_per_job: int
    cranges: np.ndarray  # [chunks, 2] int64, see kernels.bconv_forward
    parallel: bool
    jobs: int
    threads: int = 1  # the pool's threads when parallel

    def prefetch_flags(self) -> np.ndarray:
        """[jobs] bool: the jobs that prefetch their channel range's weights (see kernels._prefetch_weights).

        numba's static schedule gives each of ``threads`` threads one contiguous run of the jobs (sizes
        as ``np.array_split``; jobs are pixel runs outer, channel ranges inner). A job prefetches when its
        channel range is new to its run, so that every thread asks once for the weights it will read.
        """
        nch = len(self.cranges)
        flags = np.zeros(self.jobs, np.bool_)
        for run in np.array_split(np.arange(self.jobs), self.threads if self.parallel else 1):
            seen: set[int] = set()
            for j in run.tolist():
                if j % nch not in seen:
                    seen.add(j % nch)
                    flags[j] = True
        return flags


def channel_bounds(cout: int, cog: int, next_cg: int | None) -> list[int]:
    """Channels where a job's range may start: kernel-legal and, with packing, at a next-layer word.

    Inside a group a range must start at a multiple of FLOAT_LANES (vector epilogue, weight vectors);
    when the layer packs for a next conv the start must also be the first channel of one of that
    conv's packed words, so that two jobs never write the same word.
    """
    lanes = K.FLOAT_LANES
    out = []
    for c in range(1, cout):
        within = c % cog
        if within and (cog % lanes or within % lanes):
            continue
        if next_cg is not None and (c % next_cg) % 64:
            continue
        out.append(c)
    return out


def _chunkings(cout: int, bounds: list[int], most: int) -> list[np.ndarray]:
    """Up to ``most`` near-equal channel splits from the legal bounds (always including the whole range)."""
    out, seen = [np.array([[0, cout]], np.int64)], {(0, cout)}
    arr = np.asarray(bounds, np.int64)
    for n in range(2, most + 1):
        if not len(arr):
            break
        cuts = sorted({int(arr[np.abs(arr - round(i * cout / n)).argmin()]) for i in range(1, n)})
        edges = tuple([0, *cuts, cout])
        if edges in seen:
            continue
        seen.add(edges)
        out.append(np.array([[a, b] for a, b in itertools.pairwise(edges)], np.int64))
    return out


def _chunk_cost(cr: np.ndarray, cog: int, kw: int, gathered: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per channel range: popcount words per pixel (padded to weight vectors) and gather words per pixel."""
    pop, gat = [], []
    for lo, hi in cr:
        words = groups = 0
        for g in range(lo // cog, (hi - 1) // cog + 1):
            span = min(hi, g * cog + cog) - max(lo, g * cog)
            words += -(-span // K.TILE_N) * K.TILE_N * kw
            groups += 1
        spill = WEIGHT_SPILL_FACTOR if 8 * words > L2_WEIGHT_BYTES else 1.0
        pop.append(words * spill + EPILOGUE_WORDS * (hi - lo))
        gat.append(GATHER_WORDS * kw * groups if gathered else 0)
    return np.asarray(pop, np.float64), np.asarray(gat, np.float64)


def _makespan(costs: np.ndarray, threads: int) -> float:
    """The busiest thread's work when ``threads`` get near-equal contiguous runs of the jobs."""
    n = len(costs)
    edges = [(t * n) // threads for t in range(threads + 1)]
    csum = np.concatenate([[0.0], np.cumsum(costs)])
    return float(max(csum[b] - csum[a] for a, b in itertools.pairwise(edges)))


def _job_costs(npix: int, ppj: int, pop: np.ndarray, gat: np.ndarray) -> np.ndarray:
    """Estimated cost of every job (pixel runs outer, channel ranges inner)."""
    npx = np.full(-(-npix // ppj), float(ppj))
    npx[-1] = npix - ppj * (len(npx) - 1)
    eff = np.floor(npx / K.BLOCK) * K.BLOCK + PARTIAL_ROW_FACTOR * np.mod(npx, K.BLOCK)
    return (eff[:, None] * pop[None, :] + npx[:, None] * gat[None, :] + JOB_WORDS).reshape(-1)


def plan_layer(npix: int, cout: int, cog: int, kw: int, *, threads: int, cap: int, serial_ppj: int,
               next_cg: int | None, gathered: bool, layer: str, split_channels: bool = True) -> Plan:
    """The cheapest split of one layer for ``threads`` (see the module docstring).

    Args:
        npix: output pixels (batch × height × width); ``cout``/``cog``: output channels, per group.
        kw: words per pixel and output channel (gathered row length).
        cap: most pixels per job (the gathered rows must stay in L1); ``serial_ppj``: pixels per job
            on one thread.
        next_cg: input channels per group of the conv this layer packs for (None: no packing).
        gathered: whether jobs gather (im2col) their words; ``layer``: numba's threading layer.
    """
    whole = np.array([[0, cout]], np.int64)
    pop1, gat1 = _chunk_cost(whole, cog, kw, gathered)
    serial = float(_job_costs(npix, serial_ppj, pop1, gat1).sum())
    serial_plan = Plan(serial_ppj, whole, False, -(-npix // serial_ppj))
    if threads <= 1:
        return serial_plan
    best, best_cost = serial_plan, serial
    chunkings = _chunkings(cout, channel_bounds(cout, cog, next_cg), 4 * threads) if split_channels else [whole]
    ppjs = range(K.BLOCK, max(cap, K.BLOCK) + 1, K.BLOCK)
    launch = LAUNCH_WORDS.get(layer, LAUNCH_WORDS["workqueue"])
    for cr in chunkings:
        pop, gat = _chunk_cost(cr, cog, kw, gathered)
        for ppj in ppjs:
            if ppj > K.BLOCK and -(-npix // (ppj - K.BLOCK)) == -(-npix // ppj):
                continue  # the same number of runs with smaller jobs: only the last run changes
            if -(-npix // ppj) * len(cr) > 64 * threads and ppj < cap:
                continue  # many jobs already: balance is no issue, only their overhead grows
            costs = _job_costs(npix, ppj, pop, gat)
            total = _makespan(costs, threads) + launch
            if total < best_cost:
                best, best_cost = Plan(ppj, cr, True, len(costs), threads), total
    return best
