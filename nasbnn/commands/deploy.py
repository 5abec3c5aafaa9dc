"""``nasbnn export``, ``nasbnn eval`` and ``nasbnn finetune``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..utils.io import check_outside
from .common import (
    add_checkpoint_arg,
    add_training_args,
    arch_spec,
    check_output_file,
    check_training_args,
    config_parser,
    space_override,
)


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
                   help="output folder (default: <out>/export/<name>); a bundle already there is replaced, a "
                        "folder that holds a training run (checkpoint.pt, or config.yaml without bundle.json) is "
                        "refused")
    p.add_argument("--format", choices=("bundle", "onnx", "packed"), default=None,
                   help="bundle only, or a bundle plus model.onnx / model.nbp (default: the config's export.format, "
                        "bundle)")
    p.add_argument("--no-recalibrate", action="store_true", help="keep the supernet's shared BN statistics")
    p.add_argument("--evaluate", action="store_true", help="also evaluate each export on the test split")
    p.set_defaults(handler=_export)

    p = config_parser(sub, "eval", help="evaluate a bundle, or a supernet architecture, on the test split; writes JSON",
                      description="Evaluate a bundle on the data split its run used (KEY=VALUE overrides may say "
                                  "where the data is: data.*, and eval.* with --recalibrate), or one architecture "
                                  "of a supernet checkpoint.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", metavar="DIR")
    src.add_argument("--checkpoint", metavar="PATH", help="supernet checkpoint (with --arch/--largest/--smallest)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--arch", metavar="STR", help="with --checkpoint: architecture string, or pareto.json@BUCKET")
    which.add_argument("--largest", action="store_true", help="with --checkpoint: the space's largest member")
    which.add_argument("--smallest", action="store_true", help="with --checkpoint: the space's smallest member")
    p.add_argument("--recalibrate", action="store_true", help="recalibrate a bundle's BN before evaluating")
    p.add_argument("--json-out", default=None, metavar="FILE",
                   help="where to write the JSON (default: print); never one of the inputs")
    p.set_defaults(handler=_eval)

    p = config_parser(sub, "finetune", help="fine-tune an exported bundle (Adam, lr 1e-5, 25 epochs by default)")
    p.add_argument("--bundle", required=True, metavar="DIR")
    p.add_argument("--to", dest="dest", default=None, metavar="DIR", help="run folder (default: <bundle>-finetuned)")
    add_training_args(p, folder="--to")
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
    from ..deploy import EXPORT_FILES, evaluate_spec
    from ..utils.io import atomic_write_text

    if args.bundle is not None:
        _check_bundle_options(args)
    cfg = _config(args)
    if args.json_out:
        check_outside(args.json_out, [cfg.data.root], option="--json-out")
        check_output_file(args.json_out, option="--json-out", inputs=[*_eval_inputs(args), *_manifests(args, cfg)],
                          bundles=[args.bundle],
                          bundle_files=EXPORT_FILES)
    out = evaluate_spec(cfg, bundle=args.bundle, checkpoint=args.checkpoint, spec=arch_spec(args),
                        recalibrate=args.recalibrate, expect_space=space_override(args))
    if args.json_out:
        atomic_write_text(Path(args.json_out), json.dumps(out, indent=2) + "\n")
        print(f"top-1 {out['top1']:.2f}%  top-5 {out['top5']:.2f}%  ({int(out['images'])} images) -> {args.json_out}")
    else:
        print(json.dumps(out, indent=2))
    return 0


def _check_bundle_options(args: argparse.Namespace) -> None:
    """Refuses the options that choose another network (ConfigError), and warns on stderr about each override
    that a bundle's evaluation ignores.

    A bundle holds one network and records the data split its run used (:data:`nasbnn.runs.CARRIED_DATA_KEYS`
    and the seed); what applies is where the data is and how it is read (``data.*``), and ``eval.*`` with
    ``--recalibrate``. Other overrides are ignored with a warning rather than refused, so that one set of
    overrides can serve a whole sequence of commands.
    """
    from ..bundle import read_bundle_info
    from ..runs import CARRIED_DATA_KEYS

    for option in ("arch", "largest", "smallest"):
        if getattr(args, option):
            raise ConfigError(f"--{option} does not apply to --bundle (a bundle holds one network); use it with "
                              "--checkpoint")
    saved: dict[str, Any] = read_bundle_info(args.bundle).get("config") or {}
    saved_data = saved.get("data") or {}
    for item in args.overrides or ():
        parts = item.split("=", 1)[0].strip().split(".")
        if parts[0] == "data" and (len(parts) == 1 or parts[1] not in CARRIED_DATA_KEYS or parts[1] not in saved_data):
            continue
        if parts[0] == "eval" and args.recalibrate:
            continue
        if parts[0] == "seed" and "seed" not in saved:
            continue
        if parts[0] == "data":
            why = f"the bundle's split uses the data.{parts[1]} its run was trained with"
        elif parts[0] == "eval":
            why = "eval.* applies only with --recalibrate"
        elif parts[0] == "seed":
            why = "the bundle's split uses the seed its run was trained with"
        elif parts[0] == "device":
            why = "a bundle is evaluated on the CPU"
        else:
            why = "a bundle is evaluated with its own network; data.* and eval.* (with --recalibrate) apply"
        print(f"nasbnn eval: warning: {item!r} does not apply to --bundle ({why}); ignored", file=sys.stderr)


def _manifests(args: argparse.Namespace, cfg: Any) -> list[Path]:
    """The split manifests an evaluation may read: the configured one and those of the run folders involved."""
    folders = [Path(cfg.out)]
    if args.checkpoint is not None:
        ck = Path(args.checkpoint)
        folders.append(ck if ck.is_dir() else ck.parent)
    out = [folder / "split.json" for folder in folders]
    return [*out, Path(cfg.data.manifest)] if cfg.data.manifest else out


def _eval_inputs(args: argparse.Namespace) -> list[Path]:
    """The files ``nasbnn eval`` reads, other than a bundle's: the checkpoint, the config file, an architecture file."""
    from ..config import resolve_config_path

    files: list[Path] = []
    if args.checkpoint is not None:
        ck = Path(args.checkpoint)
        files += [ck / "checkpoint.pt", ck / "config.yaml"] if ck.is_dir() else [ck]
    if args.config is not None:
        files.append(resolve_config_path(args.config))
    if args.arch:
        files.append(Path(args.arch.rsplit("@", 1)[0]))
    return files


def _finetune(args: argparse.Namespace) -> int:
    from ..train.finetune import finetune

    check_training_args(args)
    cfg = _config(args)
    dest = args.dest or f"{str(args.bundle).rstrip('/')}-finetuned"
    res = finetune(cfg, bundle=args.bundle, run_dir=dest, resume=args.resume, force=args.force,
                   progress=not args.no_progress, max_steps=args.max_steps)
    acc = f", test top-1 {res['test_top1']:.2f}%" if "test_top1" in res else ""
    print(f"finetuned {res['step']}/{res['total_steps']} steps{acc}; bundle: {res['bundle']}")
    return 0
