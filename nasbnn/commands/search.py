"""``nasbnn search``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_checkpoint_arg, config_parser, space_override


def register(sub: argparse._SubParsersAction) -> None:
    p = config_parser(sub, "search", help="evolutionary search for a model family on a trained supernet",
                      description="Search a trained supernet; writes <out>/search/{history.jsonl, pareto.json, "
                                  "family.csv, pareto.png}.")
    add_checkpoint_arg(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted search in <out>/search")
    p.add_argument("--force", action="store_true", help="start over, replacing existing search results")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_search)


def _search(args: argparse.Namespace) -> int:
    from ..config import RunConfig, load_config
    from ..search.run import format_search_summary, run_search

    cfg = load_config(RunConfig, args.config, args.overrides)
    ckpt = args.checkpoint or str(Path(cfg.out) / "checkpoint.pt")
    res = run_search(cfg, checkpoint=ckpt, resume=args.resume, force=args.force, progress=not args.no_progress,
                     expect_space=space_override(args))
    print(format_search_summary(res))
    return 0
