"""``nasbnn train-arch``: one architecture trained from scratch (stand-alone accuracy)."""

from __future__ import annotations

import argparse

from .common import add_training_args, check_training_args, config_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = config_parser(sub, "train-arch", help="train one architecture of the space from scratch (stand-alone)",
                      description="Train one static binary network from scratch with the supernet recipe "
                                  "(train.* knobs). Writes config.yaml, checkpoint.pt, metrics.jsonl, "
                                  "standalone_summary.json and bundle/ to the run folder (out=...).")
    p.add_argument("--arch", required=True, metavar="STR", help="architecture string (a member of the space)")
    add_training_args(p)
    p.set_defaults(handler=_train_arch)


def _train_arch(args: argparse.Namespace) -> int:
    from ..config import RunConfig
    from ..runs import run_config
    from ..train.standalone import train_arch

    check_training_args(args)
    cfg = run_config(RunConfig, args.config, args.overrides, resume=args.resume)
    summary = train_arch(cfg, args.arch, resume=args.resume, force=args.force, progress=not args.no_progress,
                         max_steps=args.max_steps)
    print(f"train-arch: step {summary['step']}/{summary['total_steps']}, bundle {summary['bundle']}")
    if "test_top1" in summary:
        print(f"  test top-1: {summary['test_top1']:.2f}%")
    return 0
