"""Latency benchmark of the binary engine against the same network in PyTorch float, per layer and end to end.

:func:`benchmark` returns a plain dict (JSON-ready); :func:`format_bench` renders it as tables. Both
sides run with the same thread count; the float side uses precomputed binarised weights
(:func:`~nasbnn.engine.frozen.freeze`), so neither pays for weight standardisation per call.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from ..errors import EngineError
from ..space import check_resolution

#: Seeds are 0 to ``SEED_LIMIT - 1`` (what ``torch.Generator.manual_seed`` takes as a non-negative int64).
SEED_LIMIT = 2**63
#: The largest batch bench times: beyond it a run takes minutes per call on small networks and says nothing
#: that a smaller batch does not.
MAX_BATCH = 1024

#: Seconds of untimed calls of a side before its timed calls (see _interleaved): about three calls of the
#: largest `imagenet` member's engine on two threads, one of its float network.
SETTLE_SECONDS = 0.05

__all__ = ["SEED_LIMIT", "activation_bytes", "available_memory", "bench_network", "benchmark", "benchmark_threads",
           "check_memory", "check_seed", "format_bench", "machine_info", "random_static"]


#: The most timed (or warm-up) calls per measurement: at the largest networks' seconds per call, a day.
MAX_REPEATS = 10_000


def check_seed(seed: int) -> int:
    """``seed``, refused (EngineError) outside 0 to ``SEED_LIMIT - 1``."""
    if not 0 <= int(seed) < SEED_LIMIT:
        raise EngineError(f"the seed must be between 0 and {SEED_LIMIT - 1} (2**63-1), got {seed}")
    return int(seed)


def check_threads(threads: Sequence[int]) -> list[int]:
    """The thread counts to measure, each from 1 to what numba can use here (EngineError otherwise): a figure
    recorded for more threads than ran would be false."""
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    tlist = [int(t) for t in threads]
    if not tlist or min(tlist) < 1:
        raise EngineError(f"threads must be >= 1, got {list(threads)}")
    if max(tlist) > limit:
        raise EngineError(f"threads={max(tlist)} exceeds the {limit} threads numba can use on this machine")
    return tlist


def check_repeats(repeats: int, warmup: int) -> None:
    """Refuses (EngineError) timed repeats outside 1 to MAX_REPEATS and warm-up calls outside 0 to MAX_REPEATS."""
    if not (1 <= repeats <= MAX_REPEATS and 0 <= warmup <= MAX_REPEATS):
        raise EngineError(f"repeats must be 1 to {MAX_REPEATS} and warmup 0 to {MAX_REPEATS}, "
                          f"got {repeats} and {warmup}")


def activation_bytes(space: Any, arch: Any, resolution: int, batch: int) -> int:
    """A lower bound of the memory timing ``batch`` images of ``arch`` at ``resolution`` needs: the float32
    images (kept twice: as drawn and channels-last) and the largest layer's input and output together."""
    from ..cost import layer_costs

    largest = 0
    for lc in layer_costs(arch, space, resolution, "standard"):
        in_side = lc.out_resolution * lc.stride
        largest = max(largest, lc.in_channels * in_side**2 + lc.out_channels * lc.out_resolution**2)
    return 4 * int(batch) * (2 * space.in_channels * int(resolution) ** 2 + largest)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: ``MemAvailable`` of /proc/meminfo, else the physical
    memory; ``None`` when neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(space: Any, arch: Any, resolution: int, batch: int) -> None:
    """Refuses (EngineError) a batch and resolution whose activations cannot fit in the available memory."""
    need, have = activation_bytes(space, arch, resolution, batch), available_memory()
    if have is not None and need > have:
        raise EngineError(f"batch {batch} at resolution {resolution} needs at least {need / 2**30:.1f} GiB for the "
                          f"images and activations, but {have / 2**30:.1f} GiB of memory is available; lower the "
                          "batch size or the resolution")


def _cpuinfo() -> dict[str, str]:
    """The first value of each key of /proc/cpuinfo (empty where it does not exist)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, val = line.partition(":")
                if sep and key.strip() not in out:
                    out[key.strip()] = val.strip()
    except OSError:
        pass
    return out


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, the SIMD flags that matter, core and thread counts, library versions, date (UTC)."""
    import numba

    from . import kernels

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        layer = numba.config.THREADING_LAYER
    out = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "flags": {name: name in flags for name in ("popcnt", "avx2", "avx512f", "avx512_vpopcntdq")},
        "logical_cpus": os.cpu_count(),
        "numba": numba.__version__,
        "numba_threading_layer": layer,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "vector_lanes": kernels.LANES,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if threads is not None:
        out["threads"] = threads
    return out


@torch.no_grad()
def random_static(space: Any, arch: Any, *, seed: int = 0) -> Any:
    """A :class:`~nasbnn.models.StaticBNN` of ``arch`` with random weights and BN statistics.

    For speed measurements without trained weights: latent weights are normal, the stem step is the
    LSQ initial step, BN statistics, shifts and slopes are near their usual values.
    """
    from ..models.static import StaticBNN
    from ..ops.layers import lsq_init_step

    check_seed(seed)
    net = StaticBNN.build(space, arch)
    g = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if name.endswith("step_size"):
            continue
        if p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if name.startswith("classifier") else 1.0))
        elif name.endswith("slope"):
            p.copy_(0.25 + 0.05 * torch.randn(p.shape, generator=g))
        elif name.endswith("bn1.weight") or name.endswith("bn2.weight") or name.endswith("bn.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    net.stem.conv.step_size.copy_(lsq_init_step(net.stem.conv.weight))
    for name, b in net.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return net.eval()


def _float_units(frozen: Any) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    units: list[Callable[[torch.Tensor], torch.Tensor]] = [frozen.stem]
    for block in frozen.blocks:
        units += [block.unit_kxk, block.unit_1x1]
    units.append(frozen.head)
    return units


@torch.no_grad()
def _time_float_layers(units: Sequence[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> list[float]:
    out = []
    clock = time.perf_counter
    for unit in units:
        t0 = clock()
        x = unit(x)
        out.append(clock() - t0)
    return out


def _stats(values: Sequence[float]) -> dict[str, float]:
    """min and median in milliseconds."""
    return {"min": 1e3 * min(values), "median": 1e3 * statistics.median(values)}


def benchmark(static: Any, *, batch_sizes: Sequence[int] = (1, 8), threads: int | None = None, repeats: int = 10,
              warmup: int = 2, resolution: int | None = None, seed: int = 0,
              settle: float = SETTLE_SECONDS) -> dict[str, Any]:
    """Times the packed engine and the frozen float network on random images.

    Args:
        static: a :class:`~nasbnn.models.StaticBNN` (its eval-mode semantics are benchmarked).
        batch_sizes: batch sizes to time; the speedups of the result are those of the first.
        threads: threads for both engines (default: every core numba sees).
        repeats: timed runs per measurement; both the best (min) and the median are reported.
        warmup: untimed runs first (the engine's first call also compiles or loads its kernels).
        resolution: input size (default: the space's).
        seed: of the random images, 0 to ``SEED_LIMIT - 1``.
        settle: seconds of untimed calls of the same side (at least one) before each side's timed calls:
            the steady state of a loop over images. 0 times each side right after the other (see
            :func:`_interleaved`).

    Returns:
        A JSON-ready dict: ``machine``, ``threads``, sizes, ``batches`` (per batch size: end-to-end and
        per-layer times, OPs per layer, speedups), ``end_to_end_speedup`` and ``binary_conv_speedup``
        (float time / engine time at the first batch size, from the best runs; the binary conv figure sums
        the binary conv layers only), ``agreement`` (engine vs StaticBNN logits, see
        :func:`~nasbnn.engine.verify.compare`).

    Raises:
        EngineError: bad arguments, or a batch and resolution that cannot fit in memory.
    """
    import numba

    n_threads = numba.config.NUMBA_NUM_THREADS if threads is None else int(threads)
    return benchmark_threads(static, batch_sizes=batch_sizes, threads=(n_threads,), repeats=repeats, warmup=warmup,
                             resolution=resolution, seed=seed, settle=settle)["results"][str(n_threads)]


def bench_network(*, bundle: str | None = None, space: Any = None, arch: Any = None, seed: int = 0,
                  **options: Any) -> dict[str, Any]:
    """:func:`benchmark` of an exported ``bundle`` with its trained weights, or else of ``arch`` of ``space``
    with random weights drawn from ``seed``; ``weights`` in the result says which. ``options`` are
    :func:`benchmark`'s."""
    if bundle:
        from ..bundle import load_bundle

        static, weights = load_bundle(bundle), f"trained ({bundle})"
    else:
        static, weights = random_static(space, arch, seed=seed), "random"
    result = benchmark(static, seed=seed, **options)
    result["weights"] = weights
    return result


def benchmark_threads(static: Any, *, batch_sizes: Sequence[int] = (1, 8), threads: Sequence[int] = (1, 2),
                      repeats: int = 10, warmup: int = 2, resolution: int | None = None,
                      seed: int = 0, settle: float = SETTLE_SECONDS) -> dict[str, Any]:
    """:func:`benchmark` at several thread counts, interleaved, and how each side scales with threads.

    Every repeat runs each thread count in turn (the engine end to end and layer by layer, then the float
    network the same way, each after ``settle`` seconds of untimed calls of its own), so that all
    thread counts see the same machine load; on a shared machine this is what makes their ratio
    meaningful. Returns ``results`` (per thread count, the dict :func:`benchmark` returns) and
    ``scaling`` (per batch size and thread count: the time at the first thread count over the time at
    this one, for the engine and the float network, from the best runs, the medians, and the median of
    the per-repeat ratios).
    """

    from .frozen import freeze
    from .packed import float_model_bytes, pack_model
    from .runtime import BinaryEngine

    check_repeats(repeats, warmup)
    check_seed(seed)
    if not batch_sizes or any(not 1 <= int(b) <= MAX_BATCH for b in batch_sizes):
        raise EngineError(f"batch sizes must be integers from 1 to {MAX_BATCH}, got {list(batch_sizes)}")
    tlist = check_threads(threads)
    space = static.space
    res = space.resolution if resolution is None else check_resolution(int(resolution))
    check_memory(space, static.arch, res, max(int(b) for b in batch_sizes))
    static = static.cpu().eval()
    packed = pack_model(static)
    engine = BinaryEngine(packed)
    frozen = freeze(static, channels_last=True)
    engine(torch.zeros(1, space.in_channels, res, res).numpy())  # compiles or loads the kernels
    results: dict[str, Any] = {}
    for t in tlist:
        results[str(t)] = {
            "machine": machine_info(t), "threads": t, "torch_threads": t, "space": space.name,
            "arch": str(static.arch), "resolution": res, "repeats": repeats, "warmup": warmup,
            "packed_bytes": packed.nbytes, "float_bytes": float_model_bytes(static),
            "timing": "wall clock (time.perf_counter); 'min' is the best of the repeats, 'median' their median; "
                      "speedups use the best runs; thread counts interleaved within every repeat; "
                      + (f"each side's timed calls follow {settle:g} s of untimed calls of the same side (steady "
                         "state)" if settle > 0
                         else "each side's timed calls follow the other side's (caches and cores as it left them)"),
            "settle_seconds": settle,
            "batches": {},
        }
    scaling: dict[str, Any] = {}
    prev_threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(seed)
    try:
        for bs in (int(b) for b in batch_sizes):
            x = torch.randn(bs, space.in_channels, res, res, generator=gen)
            runs = _interleaved(static, engine, frozen, x, tlist, repeats, warmup, settle)
            for t in tlist:
                results[str(t)]["batches"][str(bs)] = _summary(static, res, bs, runs[t])
            scaling[str(bs)] = _scaling(runs, tlist)
    finally:
        torch.set_num_threads(prev_threads)
    for r in results.values():
        first = r["batches"][str(int(batch_sizes[0]))]
        r["end_to_end_speedup"] = first["end_to_end_speedup"]
        r["binary_conv_speedup"] = first["binary_conv"]["speedup"]
        r["agreement"] = first["agreement"]
    return {"threads": tlist, "results": results, "scaling": scaling}


def _settle(call: Callable[[], Any], seconds: float) -> None:
    """Untimed calls until ``seconds`` have passed (at least one)."""
    end = time.perf_counter() + seconds
    call()
    while time.perf_counter() < end:
        call()


def _interleaved(static: Any, engine: Any, frozen: Any, x: torch.Tensor, tlist: Sequence[int], repeats: int,
                 warmup: int, settle: float) -> dict[int, dict[str, Any]]:
    """Raw timings per thread count: end to end and per layer, engine and float, all repeats.

    Within a repeat the engine runs (end to end, then layer by layer), then the float network. With
    ``settle`` > 0 each side's timed calls follow that many seconds of untimed calls of the same side
    (at least one), so that they measure the steady state a loop over images sees. Right after the float
    network the engine is slower for a few calls: the float network's idle OpenMP threads keep spinning
    on the cores for the first milliseconds, and its hundreds of MB have evicted the engine's weights and
    buffers from the caches (largest `imagenet` member, two threads, Xeon: 19.9, 16.1, 15.3, 14.9, 14.8
    ms for the first five calls after it). ``settle=0`` times each side right after the other.
    """
    from .verify import compare

    xn = x.numpy()
    xf = x.contiguous(memory_format=torch.channels_last)  # the float side's fastest layout
    units = _float_units(frozen)
    runs: dict[int, dict[str, Any]] = {}
    for t in tlist:
        engine.threads = t
        check = compare(static, engine, x)
        runs[t] = {"agreement": {k: check[k] for k in ("images", "agree", "sign_ties", "unexplained", "max_rel_err")},
                   "e2e_engine": [], "e2e_float": [], "cpu_engine": [], "lay_engine": [], "lay_float": [],
                   "names": [], "spans": []}
    def time_engine(t: int) -> tuple[float, float]:
        c0 = time.process_time()  # CPU time of all the process's threads: work plus waiting cost
        t0 = time.perf_counter()
        engine(xn, threads=t)
        return time.perf_counter() - t0, time.process_time() - c0

    @torch.no_grad()
    def time_float(t: int) -> float:
        torch.set_num_threads(t)  # an OpenMP threading layer of numba can change PyTorch's: re-pin it
        t0 = time.perf_counter()
        frozen(xf)
        return time.perf_counter() - t0

    for i in range(warmup + repeats):
        for t in tlist:
            r = runs[t]
            timings: list[Any] = []
            if settle > 0:  # engine: untimed, end to end, per layer; float: the same
                _settle(partial(engine, xn, threads=t), settle)
                te, ce = time_engine(t)
                engine.run(xn, threads=t, timings=timings)
                _settle(partial(time_float, t), settle)
                tf = time_float(t)
                lf = _time_float_layers(units, xf)
            else:  # each side right after the other
                te, ce = time_engine(t)
                tf = time_float(t)
                engine.run(xn, threads=t, timings=timings)
                torch.set_num_threads(t)
                lf = _time_float_layers(units, xf)
            if i >= warmup:
                r["e2e_engine"].append(te)
                r["cpu_engine"].append(ce)
                r["e2e_float"].append(tf)
                r["lay_engine"].append([v.seconds for v in timings])
                r["lay_float"].append(lf)
                r["names"] = [v.name for v in timings]
                r["spans"] = [v.layers for v in timings]
    return runs


def _summary(static: Any, res: int, bs: int, run: dict[str, Any]) -> dict[str, Any]:
    """One batch size at one thread count: end to end, binary convs and per layer (see :func:`benchmark`)."""
    from ..cost import LayerKind, layer_costs

    layers = []
    bin_e = bin_f = bin_em = bin_fm = 0.0
    costs = layer_costs(static.arch, static.space, res)
    pos = 0
    for i, span in enumerate(run["spans"]):  # one row per engine launch: a layer, or a block run in one pass
        group = costs[pos:pos + span]
        es = _stats([row[i] for row in run["lay_engine"]])
        fs = _stats([sum(row[pos:pos + span]) for row in run["lay_float"]])
        pos += span
        lc, last = group[0], group[-1]
        name = lc.name if span == 1 else "+".join([lc.name, *(c.name.rsplit(".", 1)[1] for c in group[1:])])
        layers.append({
            "name": name, "engine_layer": run["names"][i], "layers": [c.name for c in group], "kind": lc.kind.value,
            "in_channels": lc.in_channels, "out_channels": last.out_channels, "kernel_size": lc.kernel_size,
            "groups": lc.groups, "stride": lc.stride, "out_resolution": last.out_resolution,
            "mflops": sum(c.cost.mflops for c in group), "mbops": sum(c.cost.mbops for c in group),
            "mops": sum(c.cost.mops for c in group), "engine_ms": es, "float_ms": fs, "speedup": fs["min"] / es["min"],
        })
        if lc.kind is LayerKind.BINARY_CONV:
            bin_e += es["min"]
            bin_f += fs["min"]
            bin_em += es["median"]
            bin_fm += fs["median"]
    ee, fe = _stats(run["e2e_engine"]), _stats(run["e2e_float"])
    return {
        "batch": bs,
        "engine_ms": ee,
        "engine_cpu_ms": _stats(run["cpu_engine"]),
        "float_ms": fe,
        "end_to_end_speedup": fe["min"] / ee["min"],
        "end_to_end_speedup_median": fe["median"] / ee["median"],
        "binary_conv": {"engine_ms": bin_e, "float_ms": bin_f, "speedup": bin_f / bin_e if bin_e else None,
                        "engine_ms_median": bin_em, "float_ms_median": bin_fm,
                        "speedup_median": bin_fm / bin_em if bin_em else None},
        "noise": {"engine_median_over_min": ee["median"] / ee["min"],
                  "float_median_over_min": fe["median"] / fe["min"]},
        "agreement": run["agreement"],
        "layers": layers,
    }


def _scaling(runs: dict[int, dict[str, Any]], tlist: Sequence[int]) -> dict[str, Any]:
    """Time at the first thread count over the time at each other one (engine and float).

    ``engine_cpu_efficiency``: the engine's CPU time (all threads) at the first count over that at the
    other, medians: below 1 by the work the split adds (duplicated gathers, jobs, idle spinning). Unlike
    wall time it hardly depends on other processes, so it says on a loaded machine what a quiet one would
    gain: at most ``threads × efficiency`` (less by any imbalance between the threads).
    """
    base = runs[tlist[0]]
    out: dict[str, Any] = {}
    for t in tlist[1:]:
        row: dict[str, Any] = {}
        for side in ("engine", "float"):
            a, b = base[f"e2e_{side}"], runs[t][f"e2e_{side}"]
            row[side] = {"best": min(a) / min(b), "median": statistics.median(a) / statistics.median(b),
                         "median_of_paired_ratios": statistics.median(x / y for x, y in zip(a, b))}
        row["engine_cpu_efficiency"] = statistics.median(base["cpu_engine"]) / statistics.median(runs[t]["cpu_engine"])
        out[f"{tlist[0]}->{t}"] = row
    return out


def format_bench(result: dict[str, Any]) -> str:
    """The benchmark result as text: machine, per-batch layer tables and the speedups."""
    from ..utils.table import format_table

    m = result["machine"]
    flags = ", ".join(k for k, v in m["flags"].items() if v) or "none"
    lines = [
        f"machine: {m['cpu']} ({m['logical_cpus']} logical CPUs; {flags}); numba {m['numba']}, torch {m['torch']}; "
        f"{m['date']}",
        f"space {result['space']!r}, resolution {result['resolution']}, threads {result['threads']} (both engines), "
        f"{result['repeats']} timed runs after {result['warmup']} warm-up",
        f"arch {result['arch']}",
        f"packed model {result['packed_bytes'] / 1e6:.3f} MB vs float {result['float_bytes'] / 1e6:.3f} MB "
        f"({result['float_bytes'] / max(result['packed_bytes'], 1):.1f}x smaller)",
    ]
    for key, b in result["batches"].items():
        rows = []
        for lay in b["layers"]:
            rows.append([lay["name"], lay["kind"], f"{lay['in_channels']}->{lay['out_channels']}", lay["kernel_size"],
                         lay["groups"], lay["stride"], lay["out_resolution"], lay["mops"], lay["engine_ms"]["min"],
                         lay["float_ms"]["min"], lay["speedup"]])
        lines.append("")
        lines.append(f"batch {key}: best-of-{result['repeats']} per layer (ms)")
        lines.append(format_table(["layer", "kind", "channels", "k", "groups", "stride", "out_res", "MOPs",
                                   "engine ms", "float ms", "speedup"], rows, align="lllrrrrrrrr"))
        bc = b["binary_conv"]
        lines.append(f"binary convs (sum of the per-layer bests): engine {bc['engine_ms']:.3f} ms, float "
                     f"{bc['float_ms']:.3f} ms, speedup {bc['speedup']:.2f}x (sums of medians: "
                     f"{bc['speedup_median']:.2f}x)")
        lines.append(f"end to end: engine {b['engine_ms']['min']:.3f} ms (median {b['engine_ms']['median']:.3f}), "
                     f"float {b['float_ms']['min']:.3f} ms (median {b['float_ms']['median']:.3f}), "
                     f"speedup {b['end_to_end_speedup']:.2f}x (median {b['end_to_end_speedup_median']:.2f}x)")
        a = b["agreement"]
        err = f"{a['max_rel_err']:.1e}" if a["max_rel_err"] is not None else "n/a"
        lines.append(f"engine vs StaticBNN: {a['agree']}/{a['images']} images agree (relative error <= 1e-4, max "
                     f"{err}, same top-1); {a['sign_ties']} differ through a sign tie (a binarised value within "
                     f"float rounding of 0), {a['unexplained']} otherwise")
    lines.append("")
    lines.append(f"end_to_end_speedup {result['end_to_end_speedup']:.2f}x, "
                 f"binary_conv_speedup {result['binary_conv_speedup']:.2f}x (batch {next(iter(result['batches']))})")
    return "\n".join(lines)
