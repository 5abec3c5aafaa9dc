"""``nasbnn export``, ``nasbnn eval`` and ``nasbnn finetune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_checkpoint_arg, arch_spec, config_parser, space_override


def register(sub: argparse._SubParsersAction) -> None:
    p = config_parser(sub, "export", help="export architectures of a supernet as standalone bundles (or ONNX/packed)",
                      description="Export a static network from a trained supernet. BN statistics are "
                                  "recalibrated on training images unless --no-recalibrate.")
    add_checkpoint_arg(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--arch", metavar="STR", help="architecture string, or pareto.json@BUCKET")
    g.add_argument("--largest", action="store_true")
    g.add_argument("--smallest", action="store_true")
    g.add_argument("--upstream-arch", metavar="INTS")
    g.add_argument("--family", metavar="PARETO", help="every family member of a search's pareto.json")
    p.add_argument("--to", dest="dest", default=None, metavar="DIR",
                   help="output folder (default: <out>/export/<name>)")
    p.add_argument("--format", choices=("bundle", "onnx", "packed"), default=None,
                   help="bundle only, or a bundle plus model.onnx / model.nbp (default: the config's export.format, "
                        "bundle)")
    p.add_argument("--no-recalibrate", action="store_true", help="keep the supernet's shared BN statistics")
    p.add_argument("--evaluate", action="store_true", help="also evaluate each export on the test split")
    p.set_defaults(handler=_export)

    p = config_parser(sub, "eval", help="evaluate a bundle, or a supernet architecture, on the test split; writes JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", metavar="DIR")
    src.add_argument("--checkpoint", metavar="PATH", help="supernet checkpoint (with --arch/--largest/--smallest)")
    p.add_argument("--arch", metavar="STR")
    p.add_argument("--largest", action="store_true")
    p.add_argument("--smallest", action="store_true")
    p.add_argument("--recalibrate", action="store_true", help="recalibrate a bundle's BN before evaluating")
    p.add_argument("--json-out", default=None, metavar="FILE", help="where to write the JSON (default: print)")
    p.set_defaults(handler=_eval)

    p = config_parser(sub, "finetune", help="fine-tune an exported bundle (Adam, lr 1e-5, 25 epochs by default)")
    p.add_argument("--bundle", required=True, metavar="DIR")
    p.add_argument("--to", dest="dest", default=None, metavar="DIR", help="run folder (default: <bundle>-finetuned)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_finetune)


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..config import RunConfig, load_config

    return load_config(RunConfig, args.config, args.overrides)


def _export(args: argparse.Namespace) -> int:
    from ..deploy import export_from_checkpoint

    cfg = _config(args)
    done = export_from_checkpoint(cfg, checkpoint=args.checkpoint or Path(cfg.out) / "checkpoint.pt",
                                  spec=arch_spec(args) or "", dest=args.dest, fmt=args.format or cfg.export.format,
                                  recalibrate=not args.no_recalibrate, evaluate=args.evaluate,
                                  expect_space=space_override(args))
    for d in done:
        acc = f", test top-1 {d['metrics']['test_top1']:.2f}%" if "test_top1" in d["metrics"] else ""
        print(f"{d['name']}: {d['arch']} -> {d['folder']}{' + ' + d['files'] if d['files'] else ''}{acc}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..deploy import evaluate_spec
    from ..utils.io import atomic_write_text

    out = evaluate_spec(_config(args), bundle=args.bundle, checkpoint=args.checkpoint, spec=arch_spec(args),
                        recalibrate=args.recalibrate, expect_space=space_override(args))
    if args.json_out:
        atomic_write_text(Path(args.json_out), json.dumps(out, indent=2) + "\n")
        print(f"top-1 {out['top1']:.2f}%  top-5 {out['top5']:.2f}%  ({int(out['images'])} images) -> {args.json_out}")
    else:
        print(json.dumps(out, indent=2))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from ..train.finetune import finetune

    cfg = _config(args)
    dest = args.dest or f"{str(args.bundle).rstrip('/')}-finetuned"
    res = finetune(cfg, bundle=args.bundle, run_dir=dest, resume=args.resume, progress=not args.no_progress,
                   max_steps=args.max_steps)
    acc = f", test top-1 {res['test_top1']:.2f}%" if "test_top1" in res else ""
    print(f"finetuned {res['step']}/{res['total_steps']} steps{acc}; bundle: {res['bundle']}")
    return 0
