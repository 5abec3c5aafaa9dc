"""``nasbnn train-supernet``."""

from __future__ import annotations

import argparse

from .common import add_training_args, check_training_args, config_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = config_parser(sub, "train-supernet", help="train a weight-sharing binary supernet (Bi-Teacher sandwich)",
                      description="Train a supernet. Writes config.yaml, checkpoint.pt, metrics.jsonl and "
                                  "TensorBoard events (tb/) to the run folder (out=...).")
    add_training_args(p)
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from ..config import RunConfig
    from ..runs import run_config
    from ..train.supernet import train_supernet

    check_training_args(args)
    cfg = run_config(RunConfig, args.config, args.overrides, resume=args.resume)
    summary = train_supernet(cfg, resume=args.resume, force=args.force, progress=not args.no_progress,
                             max_steps=args.max_steps)
    print(f"supernet: step {summary['step']}/{summary['total_steps']}, checkpoint {summary['checkpoint']}")
    for k in ("teacher_top1", "largest_top1", "smallest_top1"):
        if k in summary:
            print(f"  {k.replace('_top1', '')} test top-1 (BN recalibrated): {summary[k]:.2f}%")
    return 0
