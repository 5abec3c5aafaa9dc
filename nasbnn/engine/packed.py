"""The packed model format: bit-packed binary weights, folded output transforms, one safetensors file.

:func:`pack_model` turns a :class:`~nasbnn.models.StaticBNN` (eval semantics) into a
:class:`PackedModel`; :meth:`PackedModel.save` / :meth:`PackedModel.load` write and read it, checking
every array against the shapes the architecture implies. See ``docs/engine.md`` for the conventions.

Loading and running need numpy and safetensors only: PyTorch is imported by the packing functions
alone, so that a device can run ``.nbp`` files without the training stack.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cost import LayerKind
from ..errors import CheckpointError, EngineError, NasbnnError
from ..space import Arch, SearchSpace
from ..utils.io import JSONTextError, missing_file, parse_json

if TYPE_CHECKING:  # pragma: no cover
    import torch

_logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ConvSpec",
    "InputSpec",
    "PackedModel",
    "float_model_bytes",
    "pack_model",
    "words_per_group",
]

FORMAT_NAME = "nasbnn-packed"
FORMAT_VERSION = 1
BIT_CONVENTION = (
    "bit 1 = -1, bit 0 = +1; input channel c of a group is bit c % 64 of word c // 64 of that group; "
    "unused bits of a group's last word are 0; weights [C_out, K, K, words] (OHWI), output channel o "
    "reads group o // (C_out / groups)"
)
PADDING = "zero: taps outside the image contribute 0 to the dot product"


def words_per_group(channels: int, groups: int) -> int:
    """uint64 words holding one group's ``channels / groups`` bits."""
    return -(-(channels // groups) // 64)


@dataclass(frozen=True)
class ConvSpec:
    """One layer of a packed model, in network order.

    Attributes:
        name: e.g. ``"stem.conv"``, ``"blocks.3.conv_kxk"``, ``"blocks.3.conv_1x1"``.
        kind: :attr:`~nasbnn.cost.LayerKind.INT8_CONV` (the stem) or ``BINARY_CONV``; its text is
            accepted too.
        in_channels, out_channels, kernel_size, stride, groups: of the convolution.
    """

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    groups: int

    def __post_init__(self) -> None:
        if not isinstance(self.kind, LayerKind):
            object.__setattr__(self, "kind", LayerKind(self.kind))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": self.kernel_size, "stride": self.stride,
                "groups": self.groups}


@dataclass(frozen=True)
class InputSpec:
    """What a device needs to turn an image into the network's input, as stored in the packed file.

    Attributes:
        channels, resolution: the image the network was trained on (channels x resolution x resolution).
        mean, std: per-channel normalisation ``(pixel / 255 - mean) / std`` of 8-bit images (None: not
            recorded, e.g. files packed before these fields existed or generated data).
        class_names: one label per classifier output (None: unknown; classes are then shown by index).
        dataset: name of the training dataset, for display (None: unknown).
    """

    channels: int
    resolution: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "resolution": self.resolution,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "class_names": None if self.class_names is None else list(self.class_names),
                "dataset": self.dataset}


def _input_spec(space: SearchSpace, preprocess: dict[str, Any] | None, source: str) -> InputSpec:
    """Validates the optional ``preprocess`` fields (mean, std, class_names, dataset) against ``space``."""
    d = dict(preprocess or {})
    unknown = sorted(set(d) - {"mean", "std", "class_names", "dataset", "channels", "resolution"})
    if unknown:
        raise CheckpointError(f"{source}: unknown input fields {unknown}")
    c = space.in_channels
    for key, want in (("channels", c), ("resolution", space.resolution)):
        if key in d and d[key] != want:
            raise CheckpointError(f"{source}: input {key} {d[key]!r} disagrees with the network's {want}")
    mean, std = d.get("mean"), d.get("std")
    if (mean is None) != (std is None):
        raise CheckpointError(f"{source}: input normalisation needs both mean and std")
    if mean is not None and std is not None:
        try:
            mean = tuple(float(v) for v in mean)
            std = tuple(float(v) for v in std)
        except (TypeError, ValueError):
            raise CheckpointError(f"{source}: input mean/std must be lists of numbers") from None
        if len(mean) == 1 and c > 1:
            mean, std = mean * c, std * c
        if len(mean) != c or len(std) != c:
            raise CheckpointError(f"{source}: input mean/std have {len(mean)}/{len(std)} values; the network "
                                  f"takes {c} channels")
        if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
            raise CheckpointError(f"{source}: input mean must be finite and std positive")
    names = d.get("class_names")
    if names is not None:
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{source}: class_names must be a list of strings")
        if len(names) != space.num_classes:
            raise CheckpointError(f"{source}: {len(names)} class names for {space.num_classes} classes")
        names = tuple(names)
    dataset = d.get("dataset")
    return InputSpec(c, space.resolution, mean, std, names, None if dataset is None else str(dataset))


def _layer_specs(space: SearchSpace, arch: Arch) -> list[ConvSpec]:
    geo = space.geometry(arch)
    g0 = geo[0]
    specs = [ConvSpec("stem.conv", LayerKind.INT8_CONV, g0.in_channels, g0.block.width, g0.block.kernel_size, g0.stride,
                      g0.block.groups)]
    for i, g in enumerate(geo[1:]):
        b, c = g.block, g.in_channels
        specs.append(ConvSpec(f"blocks.{i}.conv_kxk", LayerKind.BINARY_CONV, c, c, b.kernel_size, g.stride, b.groups))
        specs.append(ConvSpec(f"blocks.{i}.conv_1x1", LayerKind.BINARY_CONV, c, b.width, 1, 1, b.pw_groups))
    return specs


def _expected_tensors(space: SearchSpace, arch: Arch) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (numpy dtype name, shape) of every array the packed form of ``arch`` holds."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    specs = _layer_specs(space, arch)
    stem = specs[0]
    o = stem.out_channels
    out["stem.weight"] = ("int8", (o, stem.kernel_size, stem.kernel_size, stem.in_channels // stem.groups))
    for name in ("scale", "mul", "bias", "act.shift_in", "act.slope", "act.shift_out"):
        out[f"stem.{name}"] = ("float32", (o,))
    for i in range((len(specs) - 1) // 2):
        for conv, spec, sign, act in (("conv_kxk", specs[1 + 2 * i], "rsign1", "rprelu1"),
                                      ("conv_1x1", specs[2 + 2 * i], "rsign2", "rprelu2")):
            pre = f"blocks.{i}"
            wg = words_per_group(spec.in_channels, spec.groups)
            out[f"{pre}.{conv}.weight"] = ("uint64", (spec.out_channels, spec.kernel_size, spec.kernel_size, wg))
            out[f"{pre}.{conv}.mul"] = ("float32", (spec.out_channels,))
            out[f"{pre}.{conv}.bias"] = ("float32", (spec.out_channels,))
            out[f"{pre}.{sign}.shift"] = ("float32", (spec.in_channels,))
            for name in ("shift_in", "slope", "shift_out"):
                out[f"{pre}.{act}.{name}"] = ("float32", (spec.out_channels,))
    out["classifier.weight"] = ("float32", (space.num_classes, arch.final_width))
    out["classifier.bias"] = ("float32", (space.num_classes,))
    return out


class PackedModel:
    """A binary network in deployable form: packed ±1 weights and per-channel float parameters.

    Attributes:
        space: the search space of the architecture.
        arch: the architecture.
        tensors: name -> numpy array (see :func:`pack_model` and ``docs/engine.md`` for the names).
        layers: the convolutions in network order.
        float_bytes: size of the float32 parameters and buffers of the network it was packed from
            (0 when unknown).
        input: the image size, normalisation and class names (see :class:`InputSpec`).
    """

    def __init__(self, space: SearchSpace, arch: Arch, tensors: dict[str, np.ndarray], *,
                 float_bytes: int = 0, preprocess: dict[str, Any] | None = None) -> None:
        self.space = space
        self.arch = arch
        self.tensors = tensors
        self.layers = _layer_specs(space, arch)
        self.float_bytes = int(float_bytes)
        _check_tensors(space, arch, tensors, source="packed model")
        self.input = _input_spec(space, preprocess, "packed model")

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays (the file adds a small JSON header)."""
        return int(sum(a.nbytes for a in self.tensors.values()))

    @property
    def num_blocks(self) -> int:
        return (len(self.layers) - 1) // 2

    def metadata(self) -> dict[str, Any]:
        """The JSON header stored beside the arrays."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "arch": str(self.arch),
            "space": self.space.to_dict(),
            "bit_convention": BIT_CONVENTION,
            "padding": PADDING,
            "float_bytes": self.float_bytes,
            "input": self.input.to_dict(),
            "layers": [spec.to_dict() for spec in self.layers],
            "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in self.tensors.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Writes the model to ``path`` (safetensors, atomically); returns the path."""
        from safetensors.numpy import save

        from ..utils.io import atomic_write_bytes

        meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "model": json.dumps(self.metadata(), separators=(",", ":"))}
        data = save({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, metadata=meta)
        p = Path(path)
        atomic_write_bytes(p, data)
        return p

    @classmethod
    def load(cls, path: str | Path) -> PackedModel:
        """Reads a file written by :meth:`save`.

        Raises:
            CheckpointError: the file is missing, truncated, not a packed model, of another format
                version, or holds arrays that do not match its architecture.
        """
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(missing_file(p, "packed model"))
        blob = p.read_bytes()
        meta = _read_header(blob, p)
        try:
            space = SearchSpace.from_dict(meta["space"])
            arch = space.validate(Arch.parse(meta["arch"]), nondecreasing=False)
        except NasbnnError as exc:
            raise CheckpointError(f"{str(p)!r}: bad architecture in the header: {exc}") from None
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{str(p)!r}: incomplete header (missing {exc}); the file is damaged") from None
        from safetensors.numpy import load

        try:
            tensors = load(blob)
        except Exception as exc:  # the Rust reader raises its own error type
            raise CheckpointError(f"{str(p)!r}: cannot read the arrays ({str(exc).splitlines()[0]}); "
                                  "the file is damaged or truncated") from None
        _check_tensors(space, arch, tensors, source=repr(str(p)))
        preprocess = meta.get("input")  # absent in files packed before it existed: nothing known
        if preprocess is not None and not isinstance(preprocess, dict):
            raise CheckpointError(f"{str(p)!r}: the input description in the header is not a mapping")
        _input_spec(space, preprocess, repr(str(p)))  # a bad field names the file
        float_bytes = meta.get("float_bytes", 0) or 0
        if not isinstance(float_bytes, int) or isinstance(float_bytes, bool) or float_bytes < 0:
            raise CheckpointError(f"{str(p)!r}: float_bytes in the header is {float_bytes!r}, not a byte count; the "
                                  "file is damaged")
        return cls(space, arch, tensors, float_bytes=float_bytes, preprocess=preprocess)

    def __repr__(self) -> str:
        return f"PackedModel(space={self.space.name!r}, arch={str(self.arch)!r}, bytes={self.nbytes})"


def _read_header(blob: bytes, p: Path) -> dict[str, Any]:
    """The model metadata of a packed file, after checking the safetensors framing."""
    what = f"{str(p)!r} is not a nasbnn packed model"
    if len(blob) < 8:
        raise CheckpointError(f"{what} (only {len(blob)} bytes; the file is empty or truncated)")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > 100_000_000:
        raise CheckpointError(f"{what} (no safetensors header; expected a file written by PackedModel.save)")
    if 8 + n > len(blob):
        raise CheckpointError(f"{str(p)!r} is truncated: the header needs {8 + n} bytes, the file has {len(blob)}")
    try:
        header = parse_json(blob[8:8 + n])
    except JSONTextError as exc:
        raise CheckpointError(f"{what} (its header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{what} (its header is not a mapping)")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{what} (its header's metadata is not a mapping)")
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{what} (format {meta.get('format')!r}; expected {FORMAT_NAME!r}, "
                              "as written by PackedModel.save)")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{str(p)!r} is packed model format version {version}; this nasbnn reads version "
                              f"{FORMAT_VERSION} only (re-pack it from the bundle)")
    try:
        model = parse_json(meta["model"])
    except (KeyError, TypeError, JSONTextError):
        raise CheckpointError(f"{str(p)!r}: the model description in the header is missing or damaged") from None
    if not isinstance(model, dict):
        raise CheckpointError(f"{str(p)!r}: the model description in the header is not a mapping")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items()
                   if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    except (TypeError, ValueError, IndexError, KeyError):
        raise CheckpointError(f"{str(p)!r}: the array offsets in the header are damaged") from None
    if 8 + n + end > len(blob):
        raise CheckpointError(f"{str(p)!r} is truncated: the arrays need {8 + n + end} bytes, the file has "
                              f"{len(blob)}")
    return model


def _check_tensors(space: SearchSpace, arch: Arch, tensors: dict[str, np.ndarray], *, source: str) -> None:
    """Every array present, with the dtype and shape ``arch`` implies; padding bits zero; floats finite."""
    expected = _expected_tensors(space, arch)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{source}: missing arrays {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                              f"for architecture {arch}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{source}: unexpected arrays {extra[:3]}{' ...' if len(extra) > 3 else ''}; "
                              "it was packed for another architecture or format")
    specs = {s.name: s for s in _layer_specs(space, arch)}
    for name, (dtype, shape) in expected.items():
        a = tensors[name]
        if not isinstance(a, np.ndarray) or str(a.dtype) != dtype or tuple(a.shape) != shape:
            got = f"{getattr(a, 'dtype', type(a).__name__)} {tuple(getattr(a, 'shape', ()))}"
            raise CheckpointError(f"{source}: array {name!r} is {got}; expected {dtype} {shape}")
        if a.dtype == np.float32 and not np.isfinite(a).all():
            raise CheckpointError(f"{source}: array {name!r} holds NaN or infinite values")
        if a.dtype == np.uint64:
            spec = specs[name.rsplit(".", 1)[0]]
            cg = spec.in_channels // spec.groups
            mask = _valid_bits(cg, shape[-1])
            if np.any(a & ~mask):
                raise CheckpointError(f"{source}: array {name!r} has padding bits set (beyond {cg} channels per "
                                      "group); the file is damaged")


def _valid_bits(cg: int, words: int) -> np.ndarray:
    mask = np.zeros(words, np.uint64)
    for wi in range(words):
        nb = min(64, cg - 64 * wi)
        mask[wi] = np.uint64((1 << nb) - 1) if nb < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return mask


# --------------------------------------------------------------------------------------------- packing
def pack_bits(signs: np.ndarray, groups: int) -> np.ndarray:
    """Packs ±1 weights [O, I/groups, K, K] into uint64 [O, K, K, words] (bit 1 = -1)."""
    o, cg, k, _ = signs.shape
    wg = -(-cg // 64)
    neg = np.zeros((o, k, k, wg * 64), bool)
    neg[..., :cg] = signs.transpose(0, 2, 3, 1) < 0
    # Little-endian bytes of bits 0..63 are exactly the little-endian uint64 word.
    return np.ascontiguousarray(np.packbits(neg, axis=-1, bitorder="little")).view("<u8").astype(np.uint64)


def _fold_bn(bn: torch.nn.BatchNorm2d, scale: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """(mul, bias) with ``bn(scale · z) = mul · z + bias`` (computed in float64)."""
    import torch

    if not bn.track_running_stats or bn.running_mean is None:
        raise EngineError("cannot pack a BatchNorm without running statistics")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    a = gamma / torch.sqrt(var + bn.eps)
    bias = beta - mean * a
    mul = a if scale is None else a * scale.double()
    return mul.float().numpy(), bias.float().numpy()


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().reshape(-1).cpu().numpy().copy()


def float_model_bytes(static: torch.nn.Module) -> int:
    """Bytes of a network's float parameters and floating-point buffers."""
    n = sum(p.numel() * p.element_size() for p in static.parameters())
    n += sum(b.numel() * b.element_size() for b in static.buffers() if b.is_floating_point())
    return int(n)


def pack_model(static: torch.nn.Module, *, preprocess: dict[str, Any] | None = None) -> PackedModel:
    """The packed form of a :class:`~nasbnn.models.StaticBNN`, with its eval-mode semantics.

    Binary weights are ``sign(standardised latent weight)`` (of the raw latent weight for a network
    trained without Weight Normalization, and so is ``alpha``) packed 64 input channels per word (per
    group); the scale ``alpha`` and BatchNorm fold into ``mul``/``bias``; RSign shifts are kept per
    channel; the stem keeps its 8-bit levels (int8) and per-filter step (``scale``).

    Args:
        static: the network.
        preprocess: what inference on images needs besides the space's size: ``mean``, ``std`` (per
            channel, of pixels scaled to [0, 1]), ``class_names``, ``dataset`` (see
            :func:`nasbnn.data.build.preprocess_info`); stored in the file's header.

    Raises:
        EngineError: the network is not a StaticBNN, or a binary weight is not finite (e.g. an
            uninitialised network from :meth:`StaticBNN.build`). A weight of sign 0 (exactly its filter's
            mean) packs as +1, with a warning.
    """
    import torch

    with torch.no_grad():
        tensors = _pack_tensors(static)
    return PackedModel(static.space, static.arch, tensors, float_bytes=float_model_bytes(static),
                       preprocess=preprocess)


def _pack_tensors(static: torch.nn.Module) -> dict[str, np.ndarray]:
    """The arrays of :func:`pack_model` (under ``torch.no_grad``)."""
    import torch

    from ..models.static import StaticBNN
    from ..ops.functions import grad_scale
    from ..ops.layers import INT8_MAX, INT8_MIN

    if not isinstance(static, StaticBNN):
        raise EngineError(f"pack_model needs a StaticBNN (see nasbnn.export_subnet), got {type(static).__name__}")
    static = static.cpu()
    t: dict[str, np.ndarray] = {}
    # Stem: the same fake-quantised weights as QConv2d.quantized_weight, as int8 levels and a step.
    conv = static.stem.conv
    w = conv.weight.detach().float()
    eps = torch.finfo(torch.float32).eps
    step = conv.step_size.detach().float()
    s = step + (step.clamp(min=eps) - step)
    s = grad_scale(s, 1.0 / math.sqrt(w.numel() * INT8_MAX))
    q = torch.round(w / s.view(-1, 1, 1, 1)).clamp(INT8_MIN, INT8_MAX)
    t["stem.weight"] = q.to(torch.int8).permute(0, 2, 3, 1).contiguous().numpy()
    t["stem.scale"] = _f32(s)
    t["stem.mul"], t["stem.bias"] = _fold_bn(static.stem.bn, None)
    act = static.stem.act
    t["stem.act.shift_in"], t["stem.act.slope"], t["stem.act.shift_out"] = (
        _f32(act.shift_in), _f32(act.slope), _f32(act.shift_out))
    for i, block in enumerate(static.blocks):
        pre = f"blocks.{i}"
        for conv_name, bn_name, sign, act in (("conv_kxk", "bn1", "rsign1", "rprelu1"),
                                              ("conv_1x1", "bn2", "rsign2", "rprelu2")):
            bconv = getattr(block, conv_name)
            bn = getattr(block, bn_name)
            rprelu = getattr(block, act)
            wn = bconv.prepared_weight().detach().float()
            signs = torch.sign(wn)
            if not torch.isfinite(wn).all():
                raise EngineError(f"{pre}.{conv_name}: latent weights are not finite after standardisation "
                                  "(a constant filter?); cannot pack an uninitialised network")
            zeros = int((signs == 0).sum())
            if zeros:
                # sign(0) = 0 drops the weight from the simulated sum; one bit cannot: it packs as +1.
                _logger.warning("%s.%s: %d binary weight(s) with sign 0 (latent weight equal to its filter mean) "
                                "packed as +1; the engine can differ from the simulated network on them",
                                pre, conv_name, zeros)
                signs = torch.where(signs == 0, torch.ones_like(signs), signs)
            alpha = wn.abs().mean(dim=(1, 2, 3))
            t[f"{pre}.{conv_name}.weight"] = pack_bits(signs.numpy(), bconv.groups)
            t[f"{pre}.{conv_name}.mul"], t[f"{pre}.{conv_name}.bias"] = _fold_bn(bn, alpha)
            t[f"{pre}.{sign}.shift"] = _f32(getattr(block, sign).shift)
            t[f"{pre}.{act}.shift_in"] = _f32(rprelu.shift_in)
            t[f"{pre}.{act}.slope"] = _f32(rprelu.slope)
            t[f"{pre}.{act}.shift_out"] = _f32(rprelu.shift_out)
    t["classifier.weight"] = static.classifier.weight.detach().float().cpu().numpy().copy()
    t["classifier.bias"] = _f32(static.classifier.bias)
    return t
