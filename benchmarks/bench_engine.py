"""Binary engine vs PyTorch float on the largest ``imagenet`` member (random weights). Prints JSON.

    python benchmarks/bench_engine.py [--threads 1 2] [--batch 1 8] [--repeats 15] [--resolution 224]

Both sides use the same thread count; the float side runs precomputed ±alpha weights (no weight
standardisation per call). Targets at batch 1: end to end >= 4x, binary convs alone >= 5x.
Speedups use the best run of each side; medians are reported beside them (other processes on the
machine make single runs noisy).
"""

from __future__ import annotations

import argparse
import json

from nasbnn.engine.bench import benchmark, random_static
from nasbnn.presets import create_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="imagenet")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="include the per-layer tables in the output")
    args = ap.parse_args()

    space = create_space(args.space)
    arch = space.largest()
    static = random_static(space, arch, seed=args.seed)
    out: dict = {"space": space.name, "arch": str(arch), "weights": "random", "targets": {
        "end_to_end_speedup": 4.0, "binary_conv_speedup": 5.0}, "runs": {}}
    for threads in args.threads:
        res = benchmark(static, batch_sizes=args.batch, threads=threads, repeats=args.repeats, warmup=args.warmup,
                        resolution=args.resolution, seed=args.seed)
        out["machine"] = {k: v for k, v in res["machine"].items() if k != "threads"}
        summary = {
            "end_to_end_speedup": res["end_to_end_speedup"],
            "binary_conv_speedup": res["binary_conv_speedup"],
            "targets_met": res["end_to_end_speedup"] >= 4.0 and res["binary_conv_speedup"] >= 5.0,
            "batches": {},
        }
        for key, b in res["batches"].items():
            summary["batches"][key] = {
                "engine_ms": b["engine_ms"], "float_ms": b["float_ms"],
                "end_to_end_speedup": b["end_to_end_speedup"],
                "end_to_end_speedup_median": b["end_to_end_speedup_median"],
                "binary_conv": b["binary_conv"], "noise": b["noise"], "agreement": b["agreement"],
            }
            if args.full:
                summary["batches"][key]["layers"] = b["layers"]
        out["runs"][f"threads={threads}"] = summary
        out["packed_bytes"] = res["packed_bytes"]
        out["float_bytes"] = res["float_bytes"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
