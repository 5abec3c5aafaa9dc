"""``nasbnn import-upstream`` and ``nasbnn upstream-split``: the official artifacts as nasbnn files."""

from __future__ import annotations

import argparse

from ..utils.io import check_outside
from .common import check_output_file, config_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = config_parser(sub, "import-upstream", default_config="imagenet",
                      help="turn the official checkpoint.pth.tar / info.pth.tar into a run folder",
                      description="Write a run folder from the official NAS-BNN supernet (and search result): "
                                  "<to>/checkpoint.pt of the imagenet space, <to>/search/pareto.json with the "
                                  "official family. export, eval, search, finetune and detect then use it with "
                                  "out=<to>. Nothing in the files is executed.")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="official supernet (checkpoint.pth.tar)")
    p.add_argument("--search", default=None, metavar="FILE", help="official search result (info.pth.tar)")
    p.add_argument("--split", default=None, metavar="DIR",
                   help="the folder split_imagenet.py made (needs data.root): validate on the official hold-out")
    p.add_argument("--to", dest="dest", required=True, metavar="DIR", help="new run folder (must not exist)")
    p.set_defaults(handler=_import)

    p = config_parser(sub, "upstream-split", default_config="imagenet",
                      help="a split manifest from the folder upstream's split_imagenet.py made",
                      description="Resolve the train/val entries of a split_imagenet.py folder by file name "
                                  "against data.root/train (its links may dangle) and write a split manifest "
                                  "for data.manifest=...")
    p.add_argument("--split", required=True, metavar="DIR", help="the split_imagenet.py output folder")
    p.add_argument("--to", dest="dest", required=True, metavar="FILE", help="manifest to write (JSON)")
    p.set_defaults(handler=_split)


def _import(args: argparse.Namespace) -> int:
    from ..config import RunConfig, load_config
    from ..upstream_import import import_upstream

    cfg = load_config(RunConfig, args.config, args.overrides)
    res = import_upstream(cfg, checkpoint=args.checkpoint, dest=args.dest, search=args.search, split=args.split)
    epoch = res["upstream_epoch"]
    print(f"supernet{'' if epoch is None else f' (upstream epoch {epoch})'} -> {res['folder']}/checkpoint.pt")
    for f in res["family"]:
        print(f"  bucket {f['bucket']:g}: {f['mops']:.2f} MOPs, upstream top-1 {f['top1']:.2f}%  {f['arch']}")
    if res["family"]:
        print(f"family of {len(res['family'])} -> {res['folder']}/search/pareto.json")
    return 0


def _split(args: argparse.Namespace) -> int:
    from ..config import RunConfig, load_config
    from ..data.upstream_split import write_upstream_manifest
    from ..errors import DataError

    cfg = load_config(RunConfig, args.config, args.overrides)
    if cfg.data.root is None:
        raise DataError("give data.root=<the ImageNet folder the split was made from>")
    check_outside(args.dest, [cfg.data.root, args.split], option="--to", what="dataset or split")
    check_output_file(args.dest, option="--to")
    doc = write_upstream_manifest(args.split, cfg.data.root, args.dest, seed=cfg.seed)
    print(f"{len(doc['train'])} training and {len(doc['holdout'])} held-out images of {len(doc['classes'])} classes "
          f"-> {args.dest} (use data.manifest={args.dest})")
    return 0
