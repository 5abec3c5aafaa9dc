"""``nasbnn run``: the whole pipeline on the embedded default data (or a given config)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole NAS-BNN pipeline (default: Fashion-MNIST, about 20 min on 2 CPU cores)",
                       description="Train a supernet, search it, export the family and evaluate it against random "
                                   "architectures, fine-tune the largest member, pack every member and time it on "
                                   "the binary engine against PyTorch float. Without arguments: Fashion-MNIST in "
                                   "./nasbnn-run.")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML config (default: the built-in Fashion-MNIST one)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: ./nasbnn-run)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..pipeline import default_config, format_summary, run_pipeline

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = default_config(overrides, args.config)
    summary = run_pipeline(cfg, progress=not args.no_progress)
    print(format_summary(summary))
    return 0
