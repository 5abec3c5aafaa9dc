"""``nasbnn detect synth|train|eval|cost``: binary detectors on searched backbones."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_cost_output_args,
    add_training_args,
    arch_spec,
    check_training_args,
    config_parser,
    print_json,
)

DEFAULT_CONFIG = "detect-synthetic"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="binary object detectors (FCOS) on NAS-BNN backbones, COCO-format data",
                       description="Train, evaluate and cost binary detectors; generate a synthetic COCO dataset.")
    dsub = p.add_subparsers(dest="detect_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    q = dsub.add_parser("synth", help="write a synthetic shapes dataset in COCO format (train and val splits)")
    q.add_argument("--out", required=True, metavar="DIR", help="dataset folder (annotations/, train/, val/)")
    q.add_argument("--images", type=int, default=400, metavar="N", help="training images (default: %(default)s)")
    q.add_argument("--val-images", type=int, default=None, metavar="M", help="evaluation images (default: N/4)")
    q.add_argument("--size", type=int, default=128, metavar="S", help="image side in pixels (default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, metavar="K")
    q.add_argument("--classes", type=int, default=3, help="shape kinds, 1-4 (default: %(default)s)")
    q.add_argument("--max-objects", type=int, default=4, help="objects per image at most (default: %(default)s)")
    q.set_defaults(handler=_synth)

    q = _backbone_parser(dsub, "train", help="train a detector (writes config.yaml, checkpoint.pt, metrics, eval.json)",
                         description="Train an FCOS detector on a NAS-BNN backbone. Without a backbone checkpoint "
                                     "or bundle, a randomly initialised member of backbone.space is used.")
    add_training_args(q)
    q.set_defaults(handler=_train)

    q = config_parser(dsub, "eval", help="COCO mAP of a trained detector on its evaluation split; writes JSON",
                      description="Evaluate a detector checkpoint with pycocotools' COCOeval (bbox). The run's "
                                  "config.yaml is used, with KEY=VALUE overrides (e.g. data.root=...).")
    q.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="detector checkpoint or run folder (default: <out>/checkpoint.pt)")
    q.add_argument("--json-out", default=None, metavar="FILE",
                   help="metrics file (default: <run>/eval.json; the detections go beside it as "
                        "<name>_detections.json); never one of the inputs")
    q.set_defaults(handler=_eval)

    q = _backbone_parser(dsub, "cost", help="FLOPs, BOPs and OPs of a detector, per layer and in total",
                         description="The analytic cost table of a detector (backbone rows as `nasbnn cost`, then "
                                     "the neck and head); the backbone total is shown beside the detector total.")
    q.add_argument("--checkpoint", default=None, metavar="PATH", help="cost of a trained detector's checkpoint")
    q.add_argument("--space", default=None, help="search space of the backbone (sets backbone.space)")
    q.add_argument("--canvas", type=int, default=None, help="input side in pixels, 16 to 8192 (sets data.canvas)")
    q.add_argument("--num-classes", type=int, default=None, help="default: from the config's data")
    add_cost_output_args(q)
    q.set_defaults(handler=_cost)


def _backbone_parser(dsub: argparse._SubParsersAction, name: str, *, help: str, description: str,
                     ) -> argparse.ArgumentParser:
    """A detector subcommand on the demo config by default, whose backbone the command line may choose."""
    q = config_parser(dsub, name, help=help, description=description, default_config=DEFAULT_CONFIG)
    _add_backbone_args(q)
    return q


def _add_backbone_args(q: argparse.ArgumentParser) -> None:
    src = q.add_mutually_exclusive_group()
    src.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                     help="supernet checkpoint (or run folder) to export the backbone from")
    src.add_argument("--backbone-bundle", default=None, metavar="DIR", help="exported bundle to use as backbone")
    arch = q.add_mutually_exclusive_group()
    arch.add_argument("--arch", default=None, metavar="STR", help="backbone architecture string")
    arch.add_argument("--largest", action="store_true", help="the space's largest member")
    arch.add_argument("--smallest", action="store_true", help="the space's smallest member")


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The config of a command (on --resume: the run's saved config), with the backbone flags applied."""
    from ..detect.backbone import choose_backbone
    from ..detect.config import DetectRunConfig
    from ..errors import ConfigError
    from ..runs import config_changes, run_config

    resume = getattr(args, "resume", False)
    # --config has a default here: on --resume only a config the user names is compared with the run's own
    path = None if resume and args.config == DEFAULT_CONFIG else args.config
    cfg = run_config(DetectRunConfig, path, args.overrides, resume=resume)
    before = cfg.model_dump(mode="json")
    cfg = choose_backbone(cfg, checkpoint=args.backbone_checkpoint, bundle=args.backbone_bundle, arch=arch_spec(args),
                          space=getattr(args, "space", None), canvas=getattr(args, "canvas", None))
    changes = config_changes(before, cfg.model_dump(mode="json")) if resume else []
    if changes:  # the resumed detector's backbone is the one in its checkpoint
        key, was, now = changes[0]
        raise ConfigError(f"--resume continues the run with its saved settings; the backbone option would change {key} "
                          f"from {was!r} to {now!r}: drop it, or start over with --force")
    return cfg


def _synth(args: argparse.Namespace) -> int:
    import json

    from ..detect.synthetic import generate_synthetic_coco

    paths = generate_synthetic_coco(args.out, images=args.images, val_images=args.val_images, size=args.size,
                                    seed=args.seed, classes=args.classes, max_objects=args.max_objects)
    for split, path in paths.items():
        info = json.loads(path.read_text())
        print(f"{split}: {len(info['images'])} images, {len(info['annotations'])} boxes -> {path}")
    print(f"train with: nasbnn detect train data.root={args.out} data.train=train data.val=val "
          f"data.canvas={args.size} data.synthetic=null")
    return 0


def _train(args: argparse.Namespace) -> int:
    import logging

    from ..detect.train import train_detector

    check_training_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _load(args)
    summary = train_detector(cfg, resume=args.resume, force=args.force, progress=not args.no_progress,
                             max_steps=args.max_steps)
    print(f"detector: step {summary['step']}/{summary['total_steps']}, checkpoint {summary['checkpoint']}")
    src = summary["backbone"]
    print(f"  backbone: {src.get('kind')} {src.get('arch')} (space {src.get('space')!r})")
    if "mAP" in summary:
        print(f"  {cfg.data.val}: mAP {summary['mAP']:.4f}, AP50 {summary['AP50']:.4f}, AP75 {summary['AP75']:.4f} "
              f"(COCOeval bbox; {Path(cfg.out) / 'eval.json'})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..detect.train import eval_config, evaluate_run
    from ..utils.table import format_table

    ckpt, cfg = eval_config(args.checkpoint, args.config, args.overrides, default_config=DEFAULT_CONFIG)
    res = evaluate_run(ckpt, cfg, json_out=args.json_out,
                       inputs=[args.config] if args.config and Path(args.config).is_file() else [])
    print(f"{res['images']} images, checkpoint {res['checkpoint']} (step {res['step']})")
    print(format_table(["metric", "value"], [[k, round(v, 4)] for k, v in res["metrics"].items()]))
    print(f"written: {res['json']}")
    return 0


def _cost(args: argparse.Namespace) -> int:
    from ..detect.cost import check_canvas, config_geometry, detector_cost_report, detector_cost_text

    if args.canvas is not None:
        check_canvas(args.canvas)
    if args.checkpoint is not None:
        from ..detect.train import checkpoint_geometry

        geometry = checkpoint_geometry(args.checkpoint, canvas=args.canvas, num_classes=args.num_classes)
    else:
        geometry = config_geometry(_load(args), num_classes=args.num_classes)
    if args.json:
        print_json(detector_cost_report(geometry, args.convention))
    else:
        print(detector_cost_text(geometry, args.convention))
    return 0
