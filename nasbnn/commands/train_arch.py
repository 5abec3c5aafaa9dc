"""``nasbnn train-arch``: one architecture trained from scratch (stand-alone accuracy)."""

from __future__ import annotations

import argparse

from .common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-arch", help="train one architecture of the space from scratch (stand-alone)",
                       description="Train one static binary network from scratch with the supernet recipe "
                                   "(train.* knobs). Writes config.yaml, checkpoint.pt, metrics.jsonl, "
                                   "standalone_summary.json and bundle/ to the run folder (out=...).")
    add_config_args(p)
    p.add_argument("--arch", required=True, metavar="STR", help="architecture string (a member of the space)")
    p.add_argument("--resume", action="store_true", help="continue the run in out=... from its last checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (the schedule is unchanged)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train_arch)


def _train_arch(args: argparse.Namespace) -> int:
    from ..train.standalone import train_arch
    from .train import load_run_config

    cfg = load_run_config(args)
    summary = train_arch(cfg, args.arch, resume=args.resume, progress=not args.no_progress,
                         max_steps=args.max_steps)
    print(f"train-arch: step {summary['step']}/{summary['total_steps']}, bundle {summary['bundle']}")
    if "test_top1" in summary:
        print(f"  test top-1: {summary['test_top1']:.2f}%")
    return 0
