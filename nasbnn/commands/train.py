"""``nasbnn train-supernet``."""

from __future__ import annotations

import argparse

from .common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-supernet", help="train a weight-sharing binary supernet (Bi-Teacher sandwich)",
                       description="Train a supernet. Writes config.yaml, checkpoint.pt, metrics.jsonl and "
                                   "TensorBoard events (tb/) to the run folder (out=...).")
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in out=... from its last checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (the schedule is unchanged)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)


def load_run_config(args: argparse.Namespace, schema=None, config=None):  # type: ignore[no-untyped-def]
    """The config of a command (``schema``, default ``RunConfig``): on --resume the run folder's saved
    config, then the overrides."""
    from pathlib import Path

    from ..config import RunConfig, load_config
    from ..errors import NasbnnError

    schema = schema or RunConfig
    cfg = load_config(schema, config if config is not None else args.config, args.overrides)
    if getattr(args, "resume", False):
        saved = Path(cfg.out) / "config.yaml"
        if not saved.is_file():
            raise NasbnnError(f"cannot resume: {str(saved)!r} does not exist (is out={cfg.out} a run folder?)")
        overrides = [o for o in args.overrides if not o.startswith("out=")]
        cfg = load_config(schema, saved, [*overrides, f"out={cfg.out}"])
    return cfg


def _train(args: argparse.Namespace) -> int:
    from ..train.supernet import train_supernet

    cfg = load_run_config(args)
    summary = train_supernet(cfg, resume=args.resume, progress=not args.no_progress, max_steps=args.max_steps)
    print(f"supernet: step {summary['step']}/{summary['total_steps']}, checkpoint {summary['checkpoint']}")
    for k in ("teacher_top1", "largest_top1", "smallest_top1"):
        if k in summary:
            print(f"  {k.replace('_top1', '')} test top-1 (BN recalibrated): {summary[k]:.2f}%")
    return 0
