"""Inference on files with a packed model: reading images or ``.npy`` batches, normalising them as the
model was trained, and ranking the classes. Needs numpy (and Pillow for image files), never PyTorch.

Inputs are checked against the packed file's :class:`~nasbnn.engine.packed.InputSpec`: an image must
have the channel count and the size the network was trained on; 8-bit pixels are normalised with the
recorded mean and std. ``.npy`` arrays may be [B, C, H, W], [C, H, W] or, for one channel, [H, W];
uint8 arrays are pixels (normalised like images), floating-point arrays are taken as network inputs
(already normalised).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NasbnnError
from ..utils.io import missing_file
from .packed import InputSpec, PackedModel

__all__ = ["InferInputError", "Prediction", "classify_files", "consumer_shift_names", "format_predictions",
           "load_inputs", "near_ties", "normalization", "predict_topk"]

#: Pillow modes accepted per channel count (a palette image is expanded to RGB first).
_MODES = {1: ("L",), 3: ("RGB",)}


class InferInputError(NasbnnError):
    """An input file that cannot be read or does not fit the network."""


@dataclass(frozen=True)
class Prediction:
    """The top classes of one input: ``source`` names it (file, or ``file[i]`` for a batch)."""

    source: str
    classes: list[int]
    names: list[str]
    probabilities: list[float]
    logits: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.source, "top": [
            {"class": c, "name": n, "probability": p, "logit": v}
            for c, n, p, v in zip(self.classes, self.names, self.probabilities, self.logits)]}


def normalization(spec: InputSpec, mean: list[float] | None = None,
                  std: list[float] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (mean, std) as float32 [C], from the arguments or else the packed file (None: unknown)."""
    if mean is None and std is None:
        if spec.mean is None or spec.std is None:
            return None
        mean, std = list(spec.mean), list(spec.std)
    if mean is None or std is None:
        raise InferInputError("give both --mean and --std, or neither")
    c = spec.channels
    m = np.asarray(mean * c if len(mean) == 1 else mean, np.float32)
    s = np.asarray(std * c if len(std) == 1 else std, np.float32)
    if m.shape != (c,) or s.shape != (c,):
        want = "one value each (the network has one input channel)" if c == 1 else f"1 or {c} values (one per channel)"
        raise InferInputError(f"mean/std need {want}; got {len(mean)} and {len(std)}")
    if not np.isfinite(m).all() or not (np.isfinite(s).all() and (s > 0).all()):
        raise InferInputError("mean must be finite and std positive")
    return m, s


def _read_image(path: Path, spec: InputSpec) -> np.ndarray:
    """uint8 [C, H, W] of one image file, checked against the network's channels and size."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InferInputError(f"{str(path)!r}: reading image files needs Pillow (pip install 'nasbnn[images]'); "
                              "or pass the images as an .npy batch") from None
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB") if im.mode == "P" else im.copy()
    except Image.DecompressionBombError:
        raise InferInputError(f"image {str(path)!r} is far larger than any network input (Pillow refuses to "
                              f"decode it); the network takes {spec.resolution}x{spec.resolution}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InferInputError(f"cannot read image {str(path)!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                              ) from None
    bands = len(img.getbands())
    modes = " or ".join(_MODES.get(spec.channels, ("?",)))
    if bands != spec.channels:
        raise InferInputError(f"image {str(path)!r} has {bands} channel(s) ({img.mode}); the network takes "
                              f"{spec.channels} ({modes} images)")
    if img.mode not in _MODES.get(spec.channels, ()):
        raise InferInputError(f"image {str(path)!r} is in mode {img.mode}; the network takes 8-bit {modes} images")
    w, h = img.size
    if (h, w) != (spec.resolution, spec.resolution):
        raise InferInputError(f"image {str(path)!r} is {w}x{h}; the network takes {spec.resolution}x"
                              f"{spec.resolution} (resize it first)")
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _check_npy_header(fh: Any, path: Path) -> None:
    """Refuses, before anything is allocated, an .npy file whose header declares more data than the file holds
    (a damaged or hostile header would otherwise ask for petabytes). ``fh`` is just past the magic prefix."""
    fh.seek(0)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:  # other versions: numpy's own checks
        return
    if dtype.hasobject:
        raise InferInputError(f"cannot read {str(path)!r} as a numpy array: it holds Python objects, which would have "
                              "to be unpickled; save plain numbers")
    need = math.prod(shape) * dtype.itemsize
    have = os.fstat(fh.fileno()).st_size - fh.tell()
    if need != have:
        raise InferInputError(f"{str(path)!r} declares an array of shape {tuple(shape)} ({need} bytes) but holds "
                              f"{have} bytes of data; the file is damaged or truncated")


def _read_npy(path: Path, spec: InputSpec) -> np.ndarray:
    """[B, C, H, W] of an .npy file (never unpickled), checked against the network."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
            if magic == np.lib.format.MAGIC_PREFIX:
                _check_npy_header(fh, path)
        a = np.load(path, allow_pickle=False) if magic == np.lib.format.MAGIC_PREFIX else None
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, InferInputError):
            raise
        raise InferInputError(f"cannot read {str(path)!r} as a numpy array: {str(exc).splitlines()[0]}") from None
    if a is None:  # np.load would open a zip as an .npz archive and try to unpickle anything else
        what = "an .npz archive, not an .npy array" if magic.startswith(b"PK") else "not an .npy file (no NumPy header)"
        raise InferInputError(f"{str(path)!r} is {what}; save the batch with numpy.save")
    if a.dtype.kind not in "fiu":
        raise InferInputError(f"{str(path)!r} holds {a.dtype} values; expected uint8 pixels or float inputs")
    if a.ndim == 2 and spec.channels == 1:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[None]
    r, c = spec.resolution, spec.channels
    if a.ndim != 4 or a.shape[1:] != (c, r, r) or a.shape[0] < 1:
        raise InferInputError(f"{str(path)!r} has shape {tuple(a.shape)}; the network takes [batch, {c}, {r}, {r}] "
                              f"(or [{c}, {r}, {r}])")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InferInputError(f"{str(path)!r} contains NaN or infinite values")
    return a


def load_inputs(paths: list[str], spec: InputSpec, norm: tuple[np.ndarray, np.ndarray] | None
                ) -> tuple[np.ndarray, list[str]]:
    """The network input [N, C, H, W] (float32) of the given files, and a name per image.

    Raises:
        InferInputError: a missing or unreadable file, a wrong channel count or size, or 8-bit pixels
            when the normalisation is unknown.
    """
    batches, names = [], []
    for name in paths:
        p = Path(name)
        if not p.is_file():
            raise InferInputError(missing_file(p, "input"))
        if p.suffix.lower() == ".npy":
            a = _read_npy(p, spec)
            names += [name] if a.shape[0] == 1 else [f"{name}[{i}]" for i in range(a.shape[0])]
        else:
            a = _read_image(p, spec)[None]
            names.append(name)
        if a.dtype == np.uint8:
            if norm is None:
                raise InferInputError(f"{name!r}: the packed file does not record its input normalisation; give "
                                      "--mean and --std (of pixels scaled to [0, 1])")
            m, s = norm
            with np.errstate(over="ignore", invalid="ignore"):
                a = (a.astype(np.float32) / np.float32(255) - m[:, None, None]) / s[:, None, None]
            if not np.isfinite(a).all():
                raise InferInputError(f"{name!r}: the normalised pixels overflow float32; is --std that small?")
        elif a.dtype.kind in "iu":
            raise InferInputError(f"{name!r} holds {a.dtype} values; pixels must be uint8, inputs floating point")
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.asarray(a, np.float32)
        if not np.isfinite(a).all():
            raise InferInputError(f"{name!r} holds values beyond the float32 range")
        batches.append(a)
    if not batches:
        raise InferInputError("no inputs given")
    return np.ascontiguousarray(np.concatenate(batches)), names


def predict_topk(logits: np.ndarray, sources: list[str], k: int, class_names: tuple[str, ...] | None
                 ) -> list[Prediction]:
    """The ``k`` most probable classes of each row of ``logits`` (softmax probabilities, ties by index)."""
    if k < 1:
        raise InferInputError(f"--top-k must be at least 1, got {k}")
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    k = min(k, logits.shape[1])
    out = []
    for i, src in enumerate(sources):
        order = np.argsort(-z[i], kind="stable")[:k]
        out.append(Prediction(src, [int(c) for c in order],
                              [class_names[c] if class_names else str(int(c)) for c in order],
                              [float(p[i, c]) for c in order], [float(logits[i, c]) for c in order]))
    return out


def consumer_shift_names(model: PackedModel) -> list[str]:
    """Per traced layer (the stem, then every binary conv in order), the RSign shift that binarises its
    output for the next conv; the last layer feeds the classifier and has none."""
    out = []
    for i in range(model.num_blocks):
        out += [f"blocks.{i}.rsign1.shift", f"blocks.{i}.rsign2.shift"]
    return out


def near_ties(model: PackedModel, engine: Any, x: np.ndarray, *, tol: float = 1e-5) -> list[dict[str, Any]]:
    """Per image, the binarisations that float rounding could flip: ``|x + shift| <= tol * max|x|`` of
    the layer (the criterion of :func:`nasbnn.engine.verify.explain_divergence`), counted over all layers.

    Another correct float32 implementation (PyTorch, ONNX) may binarise such a value the other way, and
    its logits then differ by more than rounding; a device can flag these predictions without the
    simulated network. Returns ``{"count": n, "first_layer": name or None}`` per image.
    """
    shifts = [model.tensors[n] for n in consumer_shift_names(model)]
    counts = np.zeros(x.shape[0], np.int64)
    first: list[str | None] = [None] * x.shape[0]
    layer = [0]

    def visit(name: str, f: np.ndarray) -> None:
        j = layer[0]
        layer[0] += 1
        if j >= len(shifts):
            return
        scale = np.abs(f).reshape(f.shape[0], -1).max(axis=1)
        near = np.abs(f + shifts[j]) <= tol * scale[:, None, None, None]
        hits = near.reshape(f.shape[0], -1).sum(axis=1)
        for b in np.flatnonzero(hits):
            first[b] = first[b] or name
        counts[:] += hits

    engine.run(x, trace=visit)
    return [{"count": int(c), "first_layer": n} for c, n in zip(counts, first)]


def classify_files(packed: str, inputs: list[str], *, top_k: int = 3, threads: int | None = None,
                   mean: list[float] | None = None, std: list[float] | None = None,
                   ties: bool = False) -> dict[str, Any]:
    """The ``top_k`` most probable classes of every input under the packed model at ``packed``, JSON-ready:
    per input its ranked classes and, with ``ties``, its :func:`near_ties` (the network then runs twice).

    Raises:
        InferInputError: ``top_k`` below 1, or an input that cannot be read or does not fit the network.
    """
    from .runtime import BinaryEngine

    if top_k < 1:
        raise InferInputError(f"--top-k must be at least 1, got {top_k}")
    model = PackedModel.load(packed)
    spec = model.input
    x, sources = load_inputs(inputs, spec, normalization(spec, mean, std))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as a non-finite output, reported below
        engine = BinaryEngine(model, threads=threads)
        logits = engine(x)
    bad = [src for src, row in zip(sources, logits) if not np.isfinite(row).all()]
    if bad:
        raise InferInputError(f"{bad[0]!r}: the network's output is not finite (its inputs or weights are too large "
                              "for float32 arithmetic); are the inputs normalised as the network expects?")
    preds = predict_topk(logits, sources, top_k, spec.class_names)
    flagged = near_ties(model, engine, x) if ties else [None] * len(preds)
    rows = [{**p.to_dict(), **({"near_ties": t} if t is not None else {})} for p, t in zip(preds, flagged)]
    return {"packed": packed, "arch": str(model.arch), "dataset": spec.dataset, "predictions": rows}


def _printable(name: str, limit: int = 80) -> str:
    """A class name as one harmless line of a terminal: control characters (newlines, escape sequences that
    a hostile file could carry) escaped, and at most ``limit`` characters."""
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in name)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_predictions(result: dict[str, Any]) -> str:
    """One line per input of a :func:`classify_files` result: its classes with their probabilities, and how
    many of its binarisations were near ties when there were any."""
    lines = []
    for row in result["predictions"]:
        ranked = "  ".join(f"{_printable(c['name'])} {100 * c['probability']:.1f}%" for c in row["top"])
        t = row.get("near_ties")
        note = f"  ({t['count']} near-tie binarisation(s), first in {t['first_layer']})" if t and t["count"] else ""
        lines.append(f"{row['input']}: {ranked}{note}")
    return "\n".join(lines)
