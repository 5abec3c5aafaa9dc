"""``nasbnn bench`` and ``nasbnn latency fit|predict``: the engine's command-line entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import (
    add_arch_args,
    arch_spec,
    check_output_file,
    distinct_outputs,
    print_json,
    print_report,
    resolve_arch,
)

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
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images, 0 to 2**63-1")
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
    f.add_argument("--seed", type=int, default=0, help="seed of the samples and random weights, 0 to 2**63-1")
    f.add_argument("--report", metavar="FILE", default=None,
                   help="also write the full report (measurements, correlations) as JSON (not the --out file)")
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
    from ..engine.bench import bench_network, format_bench
    from ..presets import resolve_space

    if args.bundle and arch_spec(args) is not None:
        raise ConfigError("give either --bundle or an architecture (--arch, --largest, ...), not both")
    space = None if args.bundle else resolve_space(args.space)
    arch = None if space is None else resolve_arch(args, space)
    result = bench_network(bundle=args.bundle, space=space, arch=arch, seed=args.seed, batch_sizes=args.batch,
                           threads=args.threads, repeats=args.repeats, warmup=args.warmup, resolution=args.resolution)
    print_report(result, as_json=args.json, text=format_bench)
    return 0


def _latency_fit(args: argparse.Namespace) -> int:
    from ..engine.latency import fit_summary, format_fit, save_fit
    from ..presets import resolve_space

    space = resolve_space(args.space)
    if len(set(args.threads)) != len(args.threads) or min(args.threads) < 1:
        raise ConfigError(f"--threads must be distinct positive integers, got {args.threads}")
    distinct_outputs(("--out", args.out), ("--report", args.report))
    space_file = [args.space] if Path(args.space).is_file() else []
    check_output_file(args.out, option="--out", inputs=space_file)
    if args.report:
        check_output_file(args.report, option="--report", inputs=space_file)
    models, report = _measured_fit(space, args)
    save_fit(models, report, args.out, args.report)
    if args.json:
        print_json(fit_summary(report, args.out))
    else:
        print(format_fit(space.name, models, report, args.out))
    return 0


def _measured_fit(space: Any, args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The latency models and report of ``latency fit``, counting the measured architectures on stderr when it
    is a terminal (and the output is not JSON)."""
    from ..engine.latency import fit_latency_models

    show = not args.json and sys.stderr.isatty()
    fitted = fit_latency_models(space, samples=args.samples, threads=args.threads, repeats=args.repeats,
                                resolution=args.resolution, seed=args.seed, progress=_counter(show))
    if show:
        print(file=sys.stderr)
    return fitted


def _counter(show: bool) -> Callable[[int, int], None]:
    """A progress callback that rewrites one stderr line with the count so far (nothing unless ``show``)."""

    def progress(i: int, n: int) -> None:
        if show:
            print(f"\rmeasured {i}/{n} architectures", end="", file=sys.stderr, flush=True)

    return progress


def _latency_predict(args: argparse.Namespace) -> int:
    from ..engine.latency import LatencyModel
    from ..presets import resolve_space
    from ..space import check_resolution

    if args.resolution is not None:
        check_resolution(args.resolution)
    model = LatencyModel.load(args.model, threads=args.threads)
    space = resolve_space(args.space)
    arch = resolve_arch(args, space)
    print(f"{model.predict(arch, space, args.resolution):.4f} ms")
    return 0
