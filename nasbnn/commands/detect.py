"""``nasbnn detect synth|train|eval|cost``: binary detectors on searched backbones."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import NasbnnError
from .common import add_config_args

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

    q = dsub.add_parser("train", help="train a detector (writes config.yaml, checkpoint.pt, metrics, eval.json)",
                        description="Train an FCOS detector on a NAS-BNN backbone. Without a backbone checkpoint "
                                    "or bundle, a randomly initialised member of backbone.space is used.")
    add_config_args(q, default_config=DEFAULT_CONFIG)
    _add_backbone_args(q)
    q.add_argument("--resume", action="store_true", help="continue the run in out=... from its last checkpoint")
    q.add_argument("--max-steps", type=int, default=None, help="stop after this step (the schedule is unchanged)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(handler=_train)

    q = dsub.add_parser("eval", help="COCO mAP of a trained detector on its evaluation split; writes JSON",
                        description="Evaluate a detector checkpoint with pycocotools' COCOeval (bbox). The run's "
                                    "config.yaml is used, with KEY=VALUE overrides (e.g. data.root=...).")
    add_config_args(q, default_config=None)
    q.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="detector checkpoint or run folder (default: <out>/checkpoint.pt)")
    q.add_argument("--json-out", default=None, metavar="FILE", help="metrics file (default: <run>/eval.json)")
    q.set_defaults(handler=_eval)

    q = dsub.add_parser("cost", help="FLOPs, BOPs and OPs of a detector, per layer and in total",
                        description="The analytic cost table of a detector (backbone rows as `nasbnn cost`, then "
                                    "the neck and head); the backbone total is shown beside the detector total.")
    add_config_args(q, default_config=DEFAULT_CONFIG)
    _add_backbone_args(q)
    q.add_argument("--checkpoint", default=None, metavar="PATH", help="cost of a trained detector's checkpoint")
    q.add_argument("--space", default=None, help="search space of the backbone (sets backbone.space)")
    q.add_argument("--canvas", type=int, default=None, help="input side (sets data.canvas)")
    q.add_argument("--num-classes", type=int, default=None, help="default: from the config's data")
    q.add_argument("--convention", choices=("upstream", "standard"), default="upstream",
                   help="how the 8-bit stem is counted (default: %(default)s)")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    q.set_defaults(handler=_cost)


def _add_backbone_args(q: argparse.ArgumentParser) -> None:
    src = q.add_mutually_exclusive_group()
    src.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                     help="supernet checkpoint (or run folder) to export the backbone from")
    src.add_argument("--backbone-bundle", default=None, metavar="DIR", help="exported bundle to use as backbone")
    arch = q.add_mutually_exclusive_group()
    arch.add_argument("--arch", default=None, metavar="STR", help="backbone architecture string")
    arch.add_argument("--largest", action="store_true", help="the space's largest member")
    arch.add_argument("--smallest", action="store_true", help="the space's smallest member")


def _load(args: argparse.Namespace, config: str | Path | None = None):  # type: ignore[no-untyped-def]
    """The config of a command (on --resume: the run's saved config), with the backbone flags applied."""
    from ..detect.config import DetectRunConfig
    from .train import load_run_config

    cfg = load_run_config(args, DetectRunConfig, config)
    update: dict[str, Any] = {}
    if getattr(args, "backbone_checkpoint", None):
        update.update(checkpoint=args.backbone_checkpoint, bundle=None)
    if getattr(args, "backbone_bundle", None):
        update.update(bundle=args.backbone_bundle, checkpoint=None)
    if getattr(args, "arch", None):
        update["arch"] = args.arch
    elif getattr(args, "largest", False):
        update["arch"] = "largest"
    elif getattr(args, "smallest", False):
        update["arch"] = "smallest"
    if getattr(args, "space", None):
        update["space"] = args.space
    if update:
        cfg.backbone = cfg.backbone.model_copy(update=update)
    if getattr(args, "canvas", None):
        cfg.data = cfg.data.model_copy(update={"canvas": args.canvas})
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

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _load(args)
    summary = train_detector(cfg, resume=args.resume, progress=not args.no_progress, max_steps=args.max_steps)
    print(f"detector: step {summary['step']}/{summary['total_steps']}, checkpoint {summary['checkpoint']}")
    src = summary["backbone"]
    print(f"  backbone: {src.get('kind')} {src.get('arch')} (space {src.get('space')!r})")
    if "mAP" in summary:
        print(f"  {cfg.data.val}: mAP {summary['mAP']:.4f}, AP50 {summary['AP50']:.4f}, AP75 {summary['AP75']:.4f} "
              f"(COCOeval bbox; {Path(cfg.out) / 'eval.json'})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..detect.config import DetectRunConfig
    from ..detect.train import evaluate_run
    from ..utils.table import format_table

    if args.checkpoint is not None:
        ckpt = Path(args.checkpoint)
    else:
        ckpt = Path(load_config(DetectRunConfig, args.config or DEFAULT_CONFIG, args.overrides).out)
    run = ckpt if ckpt.is_dir() else ckpt.parent
    if (run / "config.yaml").is_file():
        cfg = load_config(DetectRunConfig, run / "config.yaml", args.overrides)
    elif args.config is not None:
        cfg = load_config(DetectRunConfig, args.config, args.overrides)
    elif args.overrides:
        raise NasbnnError(f"no config.yaml in {str(run)!r} to apply the overrides to; pass --config FILE")
    else:
        cfg = None
    res = evaluate_run(ckpt, cfg, json_out=args.json_out)
    print(f"{res['images']} images, checkpoint {res['checkpoint']} (step {res['step']})")
    print(format_table(["metric", "value"], [[k, round(v, 4)] for k, v in res["metrics"].items()]))
    print(f"written: {res['json']}")
    return 0


def _cost(args: argparse.Namespace) -> int:
    from ..detect.cost import detector_cost, detector_cost_table, detector_layer_costs
    from .common import print_json

    if args.checkpoint is not None:
        from ..detect.train import CHECKPOINT_KIND, config_of_checkpoint
        from ..space import Arch
        from ..train.checkpoint import load_checkpoint, space_from_checkpoint

        state = load_checkpoint(args.checkpoint, kind=CHECKPOINT_KIND)
        cfg = config_of_checkpoint(state, args.checkpoint)
        space, arch = space_from_checkpoint(state), Arch.parse(state["extra"]["arch"])
        num_classes = len(state["extra"]["categories"])
        canvas = args.canvas or cfg.data.canvas
    else:
        from ..detect.backbone import backbone_geometry

        cfg = _load(args)
        space, arch = backbone_geometry(cfg.backbone)
        canvas = cfg.data.canvas
        num_classes = args.num_classes or _num_classes(cfg)
    if args.num_classes:
        num_classes = args.num_classes
    if args.json:
        total = detector_cost(space, arch, cfg.detect, num_classes, canvas, args.convention)
        print_json({
            "space": space.name, "arch": str(arch), "canvas": canvas, "num_classes": num_classes,
            "convention": args.convention, **total.to_dict(),
            "layers": [{"name": lc.name, "kind": lc.kind, **lc.cost.to_dict()}
                       for lc in detector_layer_costs(space, arch, cfg.detect, num_classes, canvas, args.convention)],
        })
        return 0
    table = detector_cost_table(space, arch, cfg.detect, num_classes, canvas, args.convention)
    towers = "binary" if cfg.detect.binary_towers else "full-precision"
    print(f"detector on space {space.name!r}, canvas {canvas}x{canvas}, {num_classes} classes, "
          f"OPs = FLOPs + BOPs/64, stem convention: {args.convention}; neck full precision, {towers} head towers")
    print(f"backbone arch {arch}")
    print(table)
    return 0


def _num_classes(cfg) -> int:  # type: ignore[no-untyped-def]
    if cfg.data.synthetic is not None:
        return cfg.data.synthetic.classes
    from ..detect.coco import read_annotation_json

    for split in ("val", "train"):
        ann, _ = cfg.data.split_paths(split)
        if ann.is_file():
            return len(read_annotation_json(ann)["categories"])
    raise NasbnnError("cannot tell the number of classes (no annotation file found); pass --num-classes")
