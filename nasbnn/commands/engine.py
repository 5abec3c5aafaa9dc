"""``nasbnn bench`` and ``nasbnn latency fit|predict``: the engine's command-line entry points."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import NasbnnError
from .common import add_arch_args, resolve_arch

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency of the bit-packed engine vs PyTorch float, per layer and end to end")
    p.add_argument("--space", default="imagenet", help="preset name or space file (default: %(default)s)")
    add_arch_args(p, required=False)
    p.add_argument("--bundle", metavar="DIR", default=None,
                   help="an exported network (nasbnn export) to time with its trained weights instead")
    p.add_argument("--resolution", type=int, default=None, help="input resolution (default: the space's)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], metavar="N",
                   help="batch sizes; speedups are reported for the first (default: 1 8)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both the engine and PyTorch (default: all cores)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("latency", help="fit or apply a latency model of the engine (ms from BOPs, FLOPs, layers)")
    lsub = p.add_subparsers(dest="latency_command", metavar="ACTION", required=True)
    f = lsub.add_parser("fit", help="measure sampled architectures and fit latency_ms = a·BOPs + b·FLOPs + c·layers")
    f.add_argument("--space", default="fashion-mnist", help="preset name or space file (default: %(default)s)")
    f.add_argument("--samples", type=int, default=30, help="architectures to measure (default: %(default)s)")
    f.add_argument("--out", required=True, metavar="FILE", help="where to write the model (JSON)")
    f.add_argument("--resolution", type=int, default=None, help="input resolution (default: the space's)")
    f.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="engine thread counts, one model each in the same file (default: %(default)s)")
    f.add_argument("--repeats", type=int, default=5, help="timed runs per architecture (default: %(default)s)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--report", metavar="FILE", default=None,
                   help="also write the full report (measurements, correlations) as JSON")
    f.add_argument("--json", action="store_true", help="print the report summary as JSON")
    f.set_defaults(handler=_latency_fit)
    q = lsub.add_parser("predict", help="predicted engine latency of an architecture")
    q.add_argument("--model", required=True, metavar="FILE", help="a model written by 'nasbnn latency fit'")
    q.add_argument("--space", default="fashion-mnist", help="preset name or space file (default: %(default)s)")
    add_arch_args(q)
    q.add_argument("--resolution", type=int, default=None)
    q.add_argument("--threads", type=int, default=None,
                   help="engine threads of the model to use, when the file holds several")
    q.set_defaults(handler=_latency_predict)


def _bench(args: argparse.Namespace) -> int:
    from ..engine.bench import benchmark, format_bench, random_static
    from ..presets import resolve_space
    from .common import print_json

    if args.bundle:
        if args.arch or args.largest or args.smallest or args.upstream_arch or args.arch_json:
            raise NasbnnError("give either --bundle or an architecture (--arch, --largest, ...), not both")
        from ..bundle import load_bundle

        static, weights = load_bundle(args.bundle), f"trained ({args.bundle})"
    else:
        space = resolve_space(args.space)
        arch = resolve_arch(args, space)
        static, weights = random_static(space, arch, seed=args.seed), "random"
    result = benchmark(static, batch_sizes=args.batch, threads=args.threads, repeats=args.repeats,
                       warmup=args.warmup, resolution=args.resolution, seed=args.seed)
    result["weights"] = weights
    if args.json:
        print_json(result)
    else:
        print(format_bench(result))
    return 0


def _latency_fit(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..engine.latency import fit_latency_models, save_models
    from ..presets import resolve_space
    from ..utils.io import atomic_write_text
    from .common import print_json

    space = resolve_space(args.space)
    if len(set(args.threads)) != len(args.threads) or min(args.threads) < 1:
        raise NasbnnError(f"--threads must be distinct positive integers, got {args.threads}")

    show = not args.json and sys.stderr.isatty()

    def progress(i: int, n: int) -> None:
        if show:
            print(f"\rmeasured {i}/{n} architectures", end="", file=sys.stderr, flush=True)

    models, report = fit_latency_models(space, samples=args.samples, threads=args.threads, repeats=args.repeats,
                                        resolution=args.resolution, seed=args.seed, progress=progress)
    if show:
        print(file=sys.stderr)
    save_models(models, args.out)
    if args.report:
        atomic_write_text(Path(args.report), json.dumps(report, indent=2) + "\n")
    per = report["threads"]
    if args.json:
        first = per[str(args.threads[0])]
        print_json({"model": first["model"], "all": first["all"], "held_out": first["held_out"], "out": args.out,
                    "threads": {t: {k: r[k] for k in ("model", "all", "held_out")} for t, r in per.items()},
                    "cross_thread_kendall": report["cross_thread_kendall"]})
        return 0
    for model in models:
        _print_fit(space.name, model, per[str(model.threads)])
    for pair, tau in report["cross_thread_kendall"].items():
        print(f"threads {pair.replace('~', ' vs ')}: measured latencies rank the architectures with Kendall tau "
              f"{tau:.3f}")
    print(f"wrote {args.out}")
    return 0


def _print_fit(space: str, model: Any, rep: dict[str, Any]) -> None:
    a, ho = rep["all"], rep["held_out"]
    print(f"space {space!r}: {a['n']} architectures, threads {model.threads}, batch 1")
    print(f"latency_ms = {model.a_ms_per_gbop:.4g}·GBOPs + {model.b_ms_per_gflop:.4g}·GFLOPs + "
          f"{model.c_ms_per_layer:.4g}·layers   (layer R^2 {model.meta['layer_r2']:.3f})")
    print(f"one binary MAC costs {model.bop_cost_in_flops:.3g} float MACs here (the OPs model assumes 1/64 = 0.0156)")
    print(f"rank correlation with measured latency, all {a['n']}: OPs spearman {a['ops']['spearman']:.3f} "
          f"kendall {a['ops']['kendall']:.3f}; model spearman {a['model']['spearman']:.3f} "
          f"kendall {a['model']['kendall']:.3f}")
    print(f"held-out half ({ho['n']}, model fitted on the other half): OPs spearman {ho['ops']['spearman']:.3f} "
          f"kendall {ho['ops']['kendall']:.3f}; model spearman {ho['model']['spearman']:.3f} "
          f"kendall {ho['model']['kendall']:.3f}, mean |error| {ho['model']['mean_abs_rel_err']:.1%}")


def _latency_predict(args: argparse.Namespace) -> int:
    from ..engine.latency import LatencyModel
    from ..presets import resolve_space

    if args.resolution is not None and args.resolution < 1:
        raise NasbnnError(f"resolution must be positive, got {args.resolution}")
    model = LatencyModel.load(args.model, threads=args.threads)
    space = resolve_space(args.space)
    arch = resolve_arch(args, space)
    print(f"{model.predict(arch, space, args.resolution):.4f} ms")
    return 0
