"""``nasbnn infer``: classify image files or ``.npy`` batches with a packed model (``.nbp``).

Everything it loads is torch-free (numpy, numba, safetensors, and Pillow for image files), so that it
runs on a device that has only the runtime installed (see docs/engine.md, "Deploying on a device").
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="classify images (or an .npy batch) with a packed model, without PyTorch",
                       description="Runs a packed model (nasbnn export --format packed) with the bit-packed engine "
                                   "and prints the top classes of every input. Images must have the network's "
                                   "channel count and size; 8-bit pixels are normalised as in training.")
    p.add_argument("--packed", required=True, metavar="FILE", help="the packed model (.nbp)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (PNG, JPEG, ... through Pillow) or .npy arrays [B, C, H, W] "
                        "(uint8 pixels, or float inputs already normalised)")
    p.add_argument("--top-k", type=int, default=3, help="classes to print per input (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                   help="per-channel mean of pixels in [0, 1] (default: as recorded in the packed file)")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="S",
                   help="per-channel std of pixels in [0, 1] (default: as recorded in the packed file)")
    p.add_argument("--ties", action="store_true",
                   help="also count, per input, the binarisations within float rounding of zero (where another "
                        "float implementation may disagree); runs the network twice")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_infer)


def _infer(args: argparse.Namespace) -> int:
    from ..engine.infer import InferInputError, load_inputs, near_ties, normalization, predict_topk
    from ..engine.packed import PackedModel
    from ..engine.runtime import BinaryEngine
    from .common import print_json

    if args.top_k < 1:
        raise InferInputError(f"--top-k must be at least 1, got {args.top_k}")
    model = PackedModel.load(args.packed)
    spec = model.input
    x, sources = load_inputs(args.inputs, spec, normalization(spec, args.mean, args.std))
    engine = BinaryEngine(model, threads=args.threads)
    logits = engine(x)
    preds = predict_topk(logits, sources, args.top_k, spec.class_names)
    ties = near_ties(model, engine, x) if args.ties else [None] * len(preds)
    if args.json:
        rows = [{**p.to_dict(), **({"near_ties": t} if t is not None else {})} for p, t in zip(preds, ties)]
        print_json({"packed": args.packed, "arch": str(model.arch), "dataset": spec.dataset, "predictions": rows})
        return 0
    for p, t in zip(preds, ties):
        ranked = "  ".join(f"{n} {100 * q:.1f}%" for n, q in zip(p.names, p.probabilities))
        note = f"  ({t['count']} near-tie binarisation(s), first in {t['first_layer']})" if t and t["count"] else ""
        print(f"{p.source}: {ranked}{note}")
    return 0
