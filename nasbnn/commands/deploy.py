"""``nasbnn export``, ``nasbnn eval`` and ``nasbnn finetune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import NasbnnError
from .common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export architectures of a supernet as standalone bundles (or ONNX/packed)",
                       description="Export a static network from a trained supernet. BN statistics are "
                                   "recalibrated on training images unless --no-recalibrate.")
    add_config_args(p)
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="supernet checkpoint or run folder (default: <out>/checkpoint.pt)")
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

    p = sub.add_parser("eval", help="evaluate a bundle, or a supernet architecture, on the test split; writes JSON")
    add_config_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", metavar="DIR")
    src.add_argument("--checkpoint", metavar="PATH", help="supernet checkpoint (with --arch/--largest/--smallest)")
    p.add_argument("--arch", metavar="STR")
    p.add_argument("--largest", action="store_true")
    p.add_argument("--smallest", action="store_true")
    p.add_argument("--recalibrate", action="store_true", help="recalibrate a bundle's BN before evaluating")
    p.add_argument("--json-out", default=None, metavar="FILE", help="where to write the JSON (default: print)")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("finetune", help="fine-tune an exported bundle (Adam, lr 1e-5, 25 epochs by default)")
    add_config_args(p)
    p.add_argument("--bundle", required=True, metavar="DIR")
    p.add_argument("--to", dest="dest", default=None, metavar="DIR", help="run folder (default: <bundle>-finetuned)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_finetune)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..config import RunConfig, load_config
    from ..runs import load_supernet

    cfg = load_config(RunConfig, args.config, args.overrides)
    ckpt = args.checkpoint or str(Path(cfg.out) / "checkpoint.pt")
    from ..utils.device import resolve_device

    model, state = load_supernet(ckpt, resolve_device(cfg.device))
    return cfg, ckpt, model, state


def _data(cfg, state, space):  # type: ignore[no-untyped-def]
    from ..data import build_data
    from ..runs import trained_data_config

    dcfg, seed = trained_data_config(cfg, state)
    return build_data(dcfg.data, resolution=space.resolution, seed=seed, run_dir=Path(cfg.out)), seed


def _targets(space, *, largest: bool = False, smallest: bool = False, upstream_arch: str | None = None,  # type: ignore[no-untyped-def]
             family: str | None = None, arch: str | None = None) -> list[tuple[str, Any]]:
    """(name, Arch) pairs selected by the export/eval options, all validated before anything runs."""
    from ..deploy import parse_family_spec, read_family
    from ..space import Arch
    from ..upstream import arch_from_upstream, parse_upstream_ints

    if largest:
        return [("largest", space.largest())]
    if smallest:
        return [("smallest", space.smallest())]
    if upstream_arch:
        return [("upstream", arch_from_upstream(parse_upstream_ints(upstream_arch), space, nondecreasing=False))]
    if family or (arch and ("@" in arch or arch.endswith(".json"))):
        path, bucket = parse_family_spec(family or arch or "")
        fam = read_family(path)
        if bucket is not None:
            fam = [f for f in fam if abs(float(f["bucket"]) - bucket) < 1e-9]
            if not fam:
                raise NasbnnError(f"no family member in bucket {bucket:g}; buckets: "
                                  + ", ".join(f"{float(f['bucket']):g}" for f in read_family(path)))
        return [(f"mops_{float(f['bucket']):g}", space.validate(Arch.parse(f["arch"]), nondecreasing=False))
                for f in fam]
    if not arch:
        raise NasbnnError("give --arch, --largest, --smallest, --upstream-arch or --family")
    return [("arch", space.parse(arch))]


def _export(args: argparse.Namespace) -> int:
    from ..deploy import export_arch
    from ..runs import calibration_batches

    cfg, ckpt, model, state = _load(args)
    space = model.space
    targets = _targets(space, largest=args.largest, smallest=args.smallest, upstream_arch=args.upstream_arch,
                       family=args.family, arch=args.arch)  # validated before anything is written
    root = Path(args.dest) if args.dest else Path(cfg.out) / "export"
    calib, test = None, None
    device = next(model.parameters()).device
    if not args.no_recalibrate or args.evaluate:
        data, seed = _data(cfg, state, space)
        if not args.no_recalibrate:
            calib = calibration_batches(data, cfg, device, seed=seed)
        if args.evaluate:
            test = list(data.test.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=device))
    from ..config import config_to_dict

    fmt = args.format or cfg.export.format
    for name, arch in targets:
        folder = root if len(targets) == 1 and args.dest else root / name
        net, metrics = export_arch(model, arch, folder, calib=calib, config=config_to_dict(cfg),
                                   source={"checkpoint": str(ckpt), "step": int(state.get("step", 0))}, test=test)
        extra = "" if fmt == "bundle" else " + " + _write_other_format(net, folder, fmt, dataset=cfg.data.name)
        acc = f", test top-1 {metrics['test_top1']:.2f}%" if "test_top1" in metrics else ""
        print(f"{name}: {arch} -> {folder}{extra}{acc}")
    return 0


def _write_other_format(net, folder: Path, fmt: str, *, dataset: str) -> str:  # type: ignore[no-untyped-def]
    if fmt == "onnx":
        from ..engine.onnx_export import export_onnx

        path = folder / "model.onnx"
        export_onnx(net, path)
        return str(path)
    from ..data.build import preprocess_info
    from ..engine.packed import pack_model

    path = folder / "model.nbp"
    packed = pack_model(net, preprocess=preprocess_info(dataset))
    packed.save(path)
    return f"{path} ({packed.nbytes / 1e6:.2f} MB packed vs {packed.float_bytes / 1e6:.2f} MB float)"


def _eval(args: argparse.Namespace) -> int:
    from ..config import RunConfig, load_config
    from ..deploy import evaluate_network
    from ..export import export_subnet
    from ..runs import calibration_batches
    from ..utils.io import atomic_write_text

    if args.bundle:
        from ..bundle import load_bundle, read_bundle_info
        from ..data import build_data

        cfg = load_config(RunConfig, args.config, args.overrides)
        info = read_bundle_info(args.bundle)
        net = load_bundle(args.bundle)
        trained = info.get("config", {}) or {}
        seed = int(trained.get("seed", cfg.seed))
        dcfg = cfg.data
        if trained.get("data"):
            dcfg = dcfg.model_copy(update={k: trained["data"][k] for k in ("name", "holdout_per_class")
                                           if k in trained["data"]})
        data = build_data(dcfg, resolution=net.space.resolution, seed=seed, run_dir=None)
        calib = calibration_batches(data, cfg, "cpu", seed=seed) if args.recalibrate else None
        source = {"bundle": args.bundle}
    else:
        cfg, ckpt, model, state = _load(args)
        if not (args.largest or args.smallest or args.arch):
            raise NasbnnError("with --checkpoint, give --arch, --largest or --smallest")
        _, arch = _targets(model.space, largest=args.largest, smallest=args.smallest, arch=args.arch)[0]
        data, seed = _data(cfg, state, model.space)
        net = export_subnet(model, arch)
        calib = calibration_batches(data, cfg, next(model.parameters()).device, seed=seed)
        source = {"checkpoint": ckpt, "arch": str(arch)}
    device = next(net.parameters()).device
    test = list(data.test.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=device))
    res = evaluate_network(net, test, calib=calib)
    from ..cost import arch_cost

    c = arch_cost(net.arch, net.space)
    out = {**source, "arch": str(net.arch), "mflops": c.mflops, "mbops": c.mbops, "mops": c.mops,
           "bn_recalibrated": bool(calib), **res}
    text = json.dumps(out, indent=2)
    if args.json_out:
        atomic_write_text(Path(args.json_out), text + "\n")
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  ({int(res['images'])} images) -> {args.json_out}")
    else:
        print(text)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from ..commands.train import load_run_config
    from ..train.finetune import finetune

    cfg = load_run_config(argparse.Namespace(config=args.config, overrides=args.overrides, resume=False))
    dest = args.dest or f"{str(args.bundle).rstrip('/')}-finetuned"
    res = finetune(cfg, bundle=args.bundle, run_dir=dest, resume=args.resume, progress=not args.no_progress,
                   max_steps=args.max_steps)
    acc = f", test top-1 {res['test_top1']:.2f}%" if "test_top1" in res else ""
    print(f"finetuned {res['step']}/{res['total_steps']} steps{acc}; bundle: {res['bundle']}")
    return 0
