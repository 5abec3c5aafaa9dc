"""``nasbnn search``."""

from __future__ import annotations

import argparse

from .common import add_config_args, space_override


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="evolutionary search for a model family on a trained supernet",
                       description="Search a trained supernet; writes <out>/search/{history.jsonl, pareto.json, "
                                   "family.csv, pareto.png}.")
    add_config_args(p)
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="supernet checkpoint or run folder (default: <out>/checkpoint.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search in <out>/search")
    p.add_argument("--force", action="store_true", help="start over, replacing existing search results")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_search)


def _search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import RunConfig, load_config
    from ..search.run import run_search
    from ..utils.table import format_table

    cfg = load_config(RunConfig, args.config, args.overrides)
    ckpt = args.checkpoint or str(Path(cfg.out) / "checkpoint.pt")
    res = run_search(cfg, checkpoint=ckpt, resume=args.resume, force=args.force, progress=not args.no_progress,
                     expect_space=space_override(args))
    rows = [[f["bucket"], f["mops"], f["top1"], f["arch"]] for f in res["family"]]
    print(format_table(["bucket", "MOPs", "top-1 %", "arch"], rows))
    print(f"evaluated {res['evaluated']} architectures ({res['newly_evaluated']} in this run)")
    print(f"results: {res['pareto']}  plot: {res['plot']}")
    return 0
