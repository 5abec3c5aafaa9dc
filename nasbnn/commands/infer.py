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
    from ..engine.infer import classify_files, format_predictions
    from .common import print_report

    result = classify_files(args.packed, args.inputs, top_k=args.top_k, threads=args.threads, mean=args.mean,
                            std=args.std, ties=args.ties)
    print_report(result, as_json=args.json, text=format_predictions)
    return 0
