"""Binary engine vs PyTorch float at several thread counts, interleaved (random weights). Prints JSON.

    python benchmarks/bench_engine.py --threads 1 2 --batch 1 8              # largest imagenet member
    python benchmarks/bench_engine.py --space imagenet --smallest --threads 1 2 --batch 1
    python benchmarks/bench_engine.py --space cifar --largest --threads 1 2 --batch 1

Both sides use the same thread count; the float side runs precomputed ±alpha weights (no weight
standardisation per call). Every repeat runs all thread counts in turn, so that they see the same
machine load. Reported per thread count and batch: engine and float ms (best and median), the end-to-
end and binary-conv speedups, and the engine's and float's thread scaling (time at the first thread
count / time at this one: best runs, medians, median of the per-repeat ratios). Targets at batch 1,
the largest imagenet member: the second thread >= 1.7x, end to end >= 10x and binary convs >= 12x
with all threads; other networks: more threads not slower.
"""

from __future__ import annotations

import argparse
import json

from nasbnn.engine.bench import SETTLE_SECONDS, benchmark_threads, random_static
from nasbnn.presets import create_space


def _targets(out: dict, threads: list[int], largest_imagenet: bool) -> dict:
    """Each target with its measured value (medians; scaling: median of the paired per-repeat ratios)."""
    if "1" not in out["batches"]:
        return {}
    b1 = out["batches"]["1"]
    top = b1[f"threads={max(threads)}"]
    res: dict = {}
    if len(threads) > 1:
        scale = out["scaling"]["1"][f"{threads[0]}->{max(threads)}"]["engine"]["median_of_paired_ratios"]
        need = 1.7 if largest_imagenet and threads[0] == 1 and max(threads) == 2 else 1.0
        res["engine_thread_scaling"] = {"value": scale, "target": need, "met": scale >= need}
    if largest_imagenet:
        e2e, conv = top["end_to_end_speedup_median"], top["binary_conv_speedup_median"]
        res["end_to_end_speedup_all_threads"] = {"value": e2e, "target": 10.0, "met": e2e >= 10.0}
        res["binary_conv_speedup_all_threads"] = {"value": conv, "target": 12.0, "met": conv >= 12.0}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="imagenet")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--largest", action="store_true", help="the space's largest member (the default)")
    which.add_argument("--smallest", action="store_true", help="the space's smallest member")
    which.add_argument("--arch", default=None, help="an architecture string of the space")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="include the per-layer tables in the output")
    ap.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                    help="seconds of untimed calls of a side before its timed calls (0: each side right after the "
                         "other)")
    args = ap.parse_args()

    space = create_space(args.space)
    arch = space.parse(args.arch) if args.arch else space.smallest() if args.smallest else space.largest()
    static = random_static(space, arch, seed=args.seed)
    res = benchmark_threads(static, batch_sizes=args.batch, threads=args.threads, repeats=args.repeats,
                            warmup=args.warmup, resolution=args.resolution, seed=args.seed, settle=args.settle)
    first = res["results"][str(args.threads[0])]
    out: dict = {"space": space.name, "arch": str(arch), "resolution": first["resolution"], "weights": "random",
                 "repeats": args.repeats, "settle_seconds": args.settle,
                 "machine": {k: v for k, v in first["machine"].items() if k != "threads"},
                 "packed_bytes": first["packed_bytes"], "float_bytes": first["float_bytes"], "batches": {},
                 "scaling": res["scaling"]}
    for bs in args.batch:
        rows = {}
        for t in args.threads:
            b = res["results"][str(t)]["batches"][str(bs)]
            rows[f"threads={t}"] = {
                "engine_ms": b["engine_ms"], "float_ms": b["float_ms"], "engine_cpu_ms": b["engine_cpu_ms"],
                "end_to_end_speedup": b["end_to_end_speedup"],
                "end_to_end_speedup_median": b["end_to_end_speedup_median"],
                "binary_conv_speedup": b["binary_conv"]["speedup"],
                "binary_conv_speedup_median": b["binary_conv"]["speedup_median"],
                "binary_conv": b["binary_conv"], "noise": b["noise"], "agreement": b["agreement"],
                "engine_ms_per_image_median": b["engine_ms"]["median"] / bs,
            }
            if args.full:
                rows[f"threads={t}"]["layers"] = b["layers"]
        out["batches"][str(bs)] = rows
    largest_imagenet = space.name == "imagenet" and arch == space.largest() and first["resolution"] == 224
    out["targets"] = _targets(out, args.threads, largest_imagenet)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
