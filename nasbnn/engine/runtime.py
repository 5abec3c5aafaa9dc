"""The CPU inference engine: runs a :class:`~nasbnn.engine.packed.PackedModel` with the numba kernels.

:class:`BinaryEngine` lays the packed weights out for the kernels once, then runs any batch and
resolution: the stem, every binary conv unit (conv, output transform, shortcut, RPReLU and the next
layer's packing fused; at batch 1 the blocks of large maps in one pass), global average pooling and the
classifier.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cost import LayerKind
from ..errors import EngineError, NasbnnError
from ..space import conv_out_size
from . import kernels as K
from .packed import PackedModel, words_per_group
from .schedule import Plan, plan_layer

__all__ = ["BinaryEngine", "InputError", "LayerTiming"]

#: Elements after every float work buffer and shift vector that the packing kernels may read.
SLACK = 64

#: Bytes per cache line: work buffers and weights start on one.
CACHE_LINE = 64

#: Serialises kernel launches of all engines: numba's thread pools are not re-entrant.
LAUNCH_LOCK = threading.Lock()

#: The classifier uses the thread pool from this many multiply-adds on: with oneTBB a parallel region
#: costs about 2 µs, and the classifier of an ImageNet network (1.5 M weights, 6 MB, read from memory
#: once per image) takes about 0.7 ms on one core.
PARALLEL_MIN_WORK = 250_000

#: Input sizes and thread counts whose layer launches an engine keeps (see BinaryEngine._program).
MAX_PROGRAMS = 128

#: Maps of at most this many output pixels may go whole to one job (see BinaryEngine._plan).
WHOLE_MAP_PIXELS = 256

#: A block runs in one pass when its K×K output (float32) takes at least this many bytes (1 MiB: a core's L2
#: cache on the AMD EPYC, half of it on the Xeon of benchmarks/RESULTS.md). See BinaryEngine._block_plan.
FUSE_MIN_BYTES = 1 << 20


def _start_pool() -> None:
    """Starts numba's thread pool, or raises EngineError in one line when its threading layer cannot load
    (an unknown ``NUMBA_THREADING_LAYER``, or one whose library is missing)."""
    from numba.np.ufunc import parallel

    if getattr(parallel, "_is_initialized", False):
        return
    try:
        parallel._launch_threads()
    except ValueError as e:
        layer = os.environ.get("NUMBA_THREADING_LAYER")
        hint = f" (NUMBA_THREADING_LAYER={layer!r})" if layer is not None else ""
        raise EngineError(f"numba cannot start its thread pool{hint}: {str(e).strip().splitlines()[0]}") from None


def _threading_layer() -> str:
    """numba's threading layer: the one running, else the one configured."""
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:  # no parallel region has run yet
        return str(numba.config.THREADING_LAYER)


class InputError(NasbnnError):
    """An input the engine cannot run (shape, dtype or values)."""


@dataclass(frozen=True)
class LayerTiming:
    """Wall time of one engine launch of one call: one layer, or a whole block run in one pass.

    ``layers`` is how many consecutive layers of the network the launch ran: 1, or 2 for a block (its
    K×K and 1×1 convs; ``name`` is then the block's, e.g. ``blocks.3``).
    """

    name: str
    kind: LayerKind
    seconds: float
    layers: int = 1


#: Pack offsets of a layer that packs nothing, the RSign shift that stands for a missing next conv, and the
#: sign(0) corrections of an input without exact zeros (the kernels never write them).
_NO_OFFSETS = (np.zeros(1, np.int64), np.zeros(1, np.int64))
_NO_SHIFT = np.zeros(SLACK + 1, np.float32)
_NO_ZC = np.zeros((1, 1), np.int64)
_NO_WORDS = np.zeros((1, 1), np.uint64)
_NO_RES = np.zeros((1, 1, 1, 1), np.float32)


@dataclass(frozen=True)
class _Launch:
    """One layer's kernel call for one input size and thread count (see :meth:`BinaryEngine._program`).

    ``kernel(layer input, *args)`` runs it; the input is the image for the stem, a
    :class:`~nasbnn.engine.kernels.PackedInput` for a binary conv.
    """

    name: str
    kind: LayerKind
    kernel: Callable[..., Any]
    args: tuple[Any, ...]  # after the input, records as plain tuples (see kernels.plain_args)
    key: str  # of the work buffers it writes ("0" or "1")
    out: np.ndarray  # float output [B·Ho·Wo, C] (a work buffer view)
    shape: tuple[int, int, int, int]  # B, Ho, Wo, C of out
    next_input: tuple[Any, ...]  # the next conv's PackedInput without sign(0) corrections, as a plain tuple
    fix: tuple[_Unit, K.ConvGeometry] | None  # the next conv and its sizes (None: the last layer)
    fallback: tuple[_Launch, ...] = ()  # a block's units one by one (see BinaryEngine._step)
    layers: int = 1  # how many layers of the network it runs (2: a block in one pass)


@dataclass
class _Unit:
    """One binary conv unit in kernel layout."""

    name: str
    cin: int
    cout: int
    k: int
    s: int
    groups: int
    cg: int
    wg: int
    cog: int
    weights: K.BinaryWeights  # wt [groups, row words, npad] (see _kernel_weights), dbase (see _border_table),
    # tp [5, cout] (mul, bias, RPReLU shift_in, slope, shift_out), merge (see kernels._gather_group)
    wpk: np.ndarray  # [cout, K, K, wg] as stored
    shift: np.ndarray  # RSign shift of the input [cin + SLACK] (zero slack)
    rix: np.ndarray  # shortcut channel per output channel
    rsame: bool
    pack_offsets: tuple[np.ndarray, np.ndarray] = _NO_OFFSETS  # see BinaryEngine._pack_offsets

    def geometry(self, batch: int, h: int, w: int) -> K.ConvGeometry:
        """The conv's sizes for an input of ``batch`` maps of ``h`` × ``w``."""
        return K.ConvGeometry(batch, h, w, conv_out_size(h, self.s), conv_out_size(w, self.s), self.k, self.s,
                              (self.k - 1) // 2, self.groups, self.cg, self.wg, self.cog)


def _merges(cg: int, k: int) -> bool:
    """Whether a conv pairs its taps' last words: the last word of a group holds at most 32 channels."""
    return k > 1 and 0 < cg % 64 <= 32


def _kernel_weights(wpk: np.ndarray, groups: int, merge: bool) -> np.ndarray:
    """[C_out, K, K, wg] -> [groups, row words, npad]: the gathered-row layout, output channels innermost.

    Rows follow ``kernels._gather_group``: per tap its words, or with ``merge`` every tap's full words
    and then the last words of tap pairs side by side (low, high 32 bits). Output channels are
    zero-padded to a multiple of the vector width.
    """
    cout, k, _, wg = wpk.shape
    cog = cout // groups
    npad = -(-cog // K.TILE_N) * K.TILE_N
    return _layout(wpk.reshape(groups, cog, k * k, wg), npad, merge=merge)


def _layout(taps: np.ndarray, npad: int, *, merge: bool) -> np.ndarray:
    """Lays out [groups, cog, taps, wg] weights as gathered rows [groups, row words, npad]."""
    groups, cog, nt, wg = taps.shape
    if merge:
        full = taps[..., : wg - 1].reshape(groups, cog, nt * (wg - 1))
        last = taps[..., wg - 1]
        if nt % 2:
            last = np.concatenate([last, np.zeros((groups, cog, 1), np.uint64)], axis=2)
        halves = last[..., 0::2] | (last[..., 1::2] << np.uint64(32))
        rows = np.concatenate([full, halves], axis=2)
    else:
        rows = taps.reshape(groups, cog, nt * wg)
    out = _aligned_zeros(groups * rows.shape[2] * npad, np.uint64).reshape(groups, rows.shape[2], npad)
    out[:, :, :cog] = rows.transpose(0, 2, 1)
    return out


def _aligned_zeros(n: int, dtype: Any) -> np.ndarray:
    """``np.zeros(n, dtype)`` starting on a cache line: the kernels load and store whole 64-byte vectors of
    their rows, and a vector that straddles two lines costs two accesses."""
    item = np.dtype(dtype).itemsize
    raw = np.zeros(n * item + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + n * item].view(dtype)


def _class_bands(w: np.ndarray) -> np.ndarray:
    """The classifier weight [classes, C] as [bands, C, CLASS_BAND]: each band's classes innermost, zero past the
    last class (see ``kernels.pool_classify``)."""
    ncls, c = w.shape
    band = K.CLASS_BAND
    nband = -(-ncls // band)
    out = _aligned_zeros(nband * c * band, np.float32).reshape(nband, c, band)
    padded = np.zeros((nband * band, c), np.float32)
    padded[:ncls] = w
    out[:] = padded.reshape(nband, band, c).transpose(0, 2, 1)
    return out


def _popcount(a: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (``np.bitwise_count`` where numpy has it, numpy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a)
    bits = np.unpackbits(np.ascontiguousarray(a).view(np.uint8)).reshape(*a.shape, 64)
    return bits.sum(axis=-1, dtype=np.int64)


def _border_table(wpk: np.ndarray, cg: int) -> np.ndarray:
    """[ncfg, C_out]: ``valid taps · cg + 2 · popcount(weight words of the taps outside the image)``.

    The conv kernel gathers zero words (+1 activations) for taps outside the image; their popcount
    is ``popcount(w)``. With this table the exact zero-padded dot product is ``table - 2·popcount``.
    A border case is (top, bottom, left, right) = how many kernel rows/columns fall outside, each
    0..(K-1)/2, indexed ``((t·(p+1) + b)·(p+1) + l)·(p+1) + r``.
    """
    cout, k, _, _ = wpk.shape
    p = (k - 1) // 2
    tap = _popcount(wpk).sum(axis=-1, dtype=np.int64)  # [cout, K, K]
    n = p + 1
    table = np.zeros((n**4, cout), np.int64)
    ky = np.arange(k)[:, None]
    kx = np.arange(k)[None, :]
    for t in range(n):
        for b in range(n):
            for lf in range(n):
                for r in range(n):
                    outside = (ky < t) | (ky >= k - b) | (kx < lf) | (kx >= k - r)
                    valid = (k - t - b) * (k - lf - r)
                    idx = ((t * n + b) * n + lf) * n + r
                    table[idx] = valid * cg + 2 * (tap[:, outside].sum(axis=1) if outside.any() else 0)
    return table.astype(np.int32)


class BinaryEngine:
    """Bit-packed XOR-popcount inference of a packed binary network on the CPU.

    Args:
        model: the packed network (see :func:`~nasbnn.engine.pack_model`).
        threads: worker threads (default: all cores numba sees). Changed per call with ``threads=``.
        fuse: run a block's two convs in one pass where its K×K output is too large to stay in a core's
            L2 cache (see :meth:`_block_plan`); the results are the same bit for bit either way.

    Calls are serialised (a lock shared by all engines): one call uses all the threads it is given.

    Example:
        >>> engine = BinaryEngine(pack_model(static))
        >>> logits = engine(images)           # images: [B, C, H, W] float array or tensor
    """

    def __init__(self, model: PackedModel, *, threads: int | None = None, fuse: bool = True) -> None:
        self.model = model
        self.fuse = fuse
        self.space = model.space
        self.arch = model.arch
        self.threads = threads
        self._work: dict[str, np.ndarray] = {}
        self._replaced = 0  # work buffers replaced by larger ones so far
        self._programs: dict[tuple[int, int, int, int, bool], list[_Launch]] = {}
        t = model.tensors
        stem = model.layers[0]
        self.in_channels = stem.in_channels
        self.num_classes = model.space.num_classes
        g0 = stem.groups
        o = stem.out_channels
        wq = t["stem.weight"].astype(np.float32) * t["stem.scale"][:, None, None, None]  # [O, K, K, Cin_g]
        k0 = stem.kernel_size
        og = o // g0
        npad = -(-og // K.STEM_TILE_N) * K.STEM_TILE_N
        self._stem_w = np.zeros((g0, k0 * k0 * (stem.in_channels // g0), npad), np.float32)
        self._stem_w[:, :, :og] = wq.reshape(g0, og, -1).transpose(0, 2, 1)
        self._stem_og = og
        self._stem = stem
        self._stem_tp = np.stack([t[f"stem.{n}"] for n in ("mul", "bias", "act.shift_in", "act.slope",
                                                           "act.shift_out")]).astype(np.float32)
        self._units: list[_Unit] = []
        for spec in model.layers[1:]:
            pre, conv = spec.name.rsplit(".", 1)
            sign, act = ("rsign1", "rprelu1") if conv == "conv_kxk" else ("rsign2", "rprelu2")
            wpk = np.ascontiguousarray(t[f"{spec.name}.weight"])
            cr = spec.in_channels
            cg = spec.in_channels // spec.groups
            merge = _merges(cg, spec.kernel_size)
            weights = K.BinaryWeights(
                wt=_kernel_weights(wpk, spec.groups, merge), dbase=_border_table(wpk, cg),
                tp=np.stack([t[f"{spec.name}.mul"], t[f"{spec.name}.bias"], t[f"{pre}.{act}.shift_in"],
                             t[f"{pre}.{act}.slope"], t[f"{pre}.{act}.shift_out"]]).astype(np.float32),
                merge=merge)
            self._units.append(_Unit(
                name=spec.name, cin=spec.in_channels, cout=spec.out_channels, k=spec.kernel_size, s=spec.stride,
                groups=spec.groups, cg=cg, wg=words_per_group(spec.in_channels, spec.groups),
                cog=spec.out_channels // spec.groups, weights=weights, wpk=wpk,
                shift=np.concatenate([t[f"{pre}.{sign}.shift"], np.zeros(SLACK, np.float32)]),
                rix=np.arange(spec.out_channels, dtype=np.int64) % cr, rsame=spec.out_channels == cr,
            ))
        for i, u in enumerate(self._units):
            u.pack_offsets = self._pack_offsets(self._units[i + 1] if i + 1 < len(self._units) else None, u.cout)
        self._cls_w = _class_bands(t["classifier.weight"])
        self._cls_b = t["classifier.bias"]

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_static(cls, static: Any, *, threads: int | None = None) -> BinaryEngine:
        """Packs a :class:`~nasbnn.models.StaticBNN` and builds an engine for it."""
        from .packed import pack_model

        return cls(pack_model(static), threads=threads)

    @classmethod
    def load(cls, path: Any, *, threads: int | None = None) -> BinaryEngine:
        """An engine for a packed model file (see :meth:`PackedModel.load`)."""
        return cls(PackedModel.load(path), threads=threads)

    # ------------------------------------------------------------------ running
    def __call__(self, x: Any, *, threads: int | None = None) -> np.ndarray:
        return self.run(x, threads=threads)

    def run(self, x: Any, *, threads: int | None = None, timings: list[LayerTiming] | None = None,
            trace: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
        """Logits [B, num_classes] (float32) of images ``x`` [B, C, H, W].

        Args:
            x: numpy array or torch tensor of a real dtype; any resolution >= 1.
            threads: worker threads for this call (default: the engine's); more than numba can use on this
                machine (``NUMBA_NUM_THREADS``) run on that many.
            timings: if given, one :class:`LayerTiming` per layer is appended.
            trace: if given, called as ``trace(layer_name, output)`` after the stem and every binary conv
                layer with its float output [B, H, W, C] (a view of a work buffer: copy it to keep it).
                Every layer then runs on its own (no block in one pass).

        Raises:
            InputError: ``x`` is not 4-D, has the wrong channel count, a non-numeric dtype, or
                non-finite values.
        """
        xa = self._check_input(x)
        import numba

        n = threads if threads is not None else self.threads
        limit = numba.config.NUMBA_NUM_THREADS
        if n is None:
            n = limit
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise EngineError(f"threads must be a positive integer, got {n!r}")
        n = min(int(n), limit)
        with LAUNCH_LOCK:
            _start_pool()
            prev = numba.get_num_threads()
            numba.set_num_threads(n)
            try:
                return self._forward(xa, n, timings, trace)
            finally:
                numba.set_num_threads(prev)

    def _check_input(self, x: Any) -> np.ndarray:
        # A tensor can only exist once torch is imported: the runtime itself never imports it.
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            if x.is_complex() or x.dtype == torch.bool:
                raise InputError(f"input dtype {x.dtype} is not supported; pass float32 images")
            x = x.detach().to("cpu", torch.float32).numpy()
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception:
                raise InputError(f"input of type {type(x).__name__} is not an array") from None
        if x.dtype.kind not in "fiu":
            raise InputError(f"input dtype {x.dtype} is not supported; pass float32 (or float64/integer) images")
        if x.ndim != 4:
            raise InputError(f"input must be 4-D [batch, {self.in_channels}, height, width]; got shape "
                             f"{tuple(x.shape)}")
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise InputError(f"input has {c} channels; this network takes {self.in_channels} "
                             f"(shape [batch, {self.in_channels}, height, width])")
        if b < 1 or h < 1 or w < 1:
            raise InputError(f"input shape {tuple(x.shape)} has an empty dimension")
        xa = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(xa).all():
            raise InputError("input contains NaN or infinite values")
        return xa

    def _buffer(self, key: str, size: int, dtype: Any) -> np.ndarray:
        """A reused work buffer of ``size`` elements, followed by 64 readable elements of slack.

        The packing kernels read whole 64-channel windows (see ``kernels._pack_pixel``).
        """
        buf = self._work.get(key)
        if buf is None or buf.size < size + SLACK or buf.dtype != dtype:
            if buf is not None:
                self._replaced += 1
            buf = _aligned_zeros(size + SLACK, dtype)
            self._work[key] = buf
        return buf[:size]

    @staticmethod
    def _cap(row_words: int) -> int:
        """Most output pixels per job: 256, and few enough that the job's gathered words (``row_words``
        per pixel) stay within 32 KiB, so that they are read from the L1 cache."""
        blk = K.BLOCK
        return 256 if row_words == 0 else max(blk, min(256, 4096 // row_words) // blk * blk)

    @classmethod
    def _jobs(cls, npix: int, threads: int, row_words: int = 0) -> int:
        """Output pixels per job of a pixel-only split: a multiple of the block, about 4 jobs per thread."""
        blk = K.BLOCK
        per = -(-npix // (4 * threads))
        return int(min(cls._cap(row_words), max(blk, -(-per // blk) * blk)))

    def _forward(self, x: np.ndarray, threads: int, timings: list[LayerTiming] | None, trace: Any) -> np.ndarray:
        """Runs the layers; see :meth:`run`."""
        clock = time.perf_counter
        b_ = x.shape[0]
        program = self._program(b_, x.shape[2], x.shape[3], threads, fuse=self.fuse and trace is None)
        src: Any = x  # the stem's input, then each binary conv's PackedInput
        for step in program:
            t0 = clock()
            src = self._step(step, src)
            if timings is not None:
                timings.append(LayerTiming(step.name, step.kind, clock() - t0, step.layers))
            if trace is not None:
                trace(step.name, step.out.reshape(step.shape))
        # --- global average pool + classifier
        t0 = clock()
        last = program[-1]
        logits = np.empty((b_, self.num_classes), np.float32)
        head = K.pool_classify if self._parallel(threads, self._cls_w.size * b_) else K.pool_classify_serial
        head(last.out, b_, last.shape[1] * last.shape[2], self._cls_w, self._cls_b, logits)
        if timings is not None:
            timings.append(LayerTiming("classifier", LayerKind.FP_LINEAR, clock() - t0))
        return logits

    def _step(self, step: _Launch, src: tuple[Any, ...]) -> tuple[Any, ...]:
        """Runs one launch on its input (a PackedInput as a plain tuple); returns the next launch's input.

        A block launch needs an input without sign(0) corrections and produces a K×K output without exact
        zeros in nearly every case; otherwise the block runs unit by unit, exactly as without fusion.
        """
        if step.fallback:
            if not src[2]:
                zeros, zmid = step.kernel(src, *step.args)
                if not zmid:
                    return self._next_input(zeros, step)
            for sub in step.fallback:
                src = self._step(sub, src)
            return src
        return self._next_input(step.kernel(src, *step.args), step)

    def _next_input(self, zeros: int, step: _Launch) -> tuple[Any, ...]:
        zc = self._zero_fix(zeros, step)
        return step.next_input if zc is None else (step.next_input[0], zc, True)

    # ------------------------------------------------------------------ helpers
    def _program(self, b_: int, h: int, w: int, threads: int, *, fuse: bool = True) -> list[_Launch]:
        """The launches of the stem and every binary conv for ``b_`` images of ``h`` × ``w`` (memoised).

        Everything but a layer's input (and the sign(0) corrections that come with it) is fixed for an input
        size and thread count: building the records once keeps their Python cost off every call.
        """
        key = (b_, h, w, threads, fuse)
        program = self._programs.get(key)
        if program is None:
            replaced = self._replaced
            program = self._build_program(b_, h, w, threads, fuse)
            if self._replaced != replaced:
                # A work buffer grew: the views taken before (this program's first layers, other programs)
                # keep the old one alive. Building again takes every view from the new buffers.
                self._programs.clear()
                program = self._build_program(b_, h, w, threads, fuse)
            if len(self._programs) >= MAX_PROGRAMS:
                self._programs.clear()
            self._programs[key] = program
        return program

    def _build_program(self, b_: int, h: int, w: int, threads: int, fuse: bool = True) -> list[_Launch]:
        """See :meth:`_program`. Work buffers "f0"/"p0" and "f1"/"p1" alternate, so that a kernel never writes
        what it reads; the K×K unit's shortcut is the block input, the 1×1 unit's the K×K output. A block run
        in one pass (see :meth:`_block_plan`) reads the one and writes the other; its unit-by-unit fallback puts
        the K×K output in "f2"/"p2"."""
        units = self._units
        st = self._stem
        k0 = st.kernel_size
        geo = K.ConvGeometry(b_, h, w, conv_out_size(h, st.stride), conv_out_size(w, st.stride), k0, st.stride,
                             (k0 - 1) // 2, st.groups, st.in_channels // st.groups, 0, self._stem_og)
        plan = self._plan(-1, b_ * geo.ho * geo.wo, threads)
        kernel = K.stem_forward if plan.parallel else K.stem_forward_serial
        program = [self._launch(st.name, st.kind, kernel, (self._stem_w, self._stem_tp), geo, plan, key="0",
                                short=None, nxt=units[0] if units else None, offsets=_NO_OFFSETS)]
        for i in range(0, len(units), 2):
            prev = program[-1]
            x_key, y_key = prev.key, "1" if prev.key == "0" else "0"
            block_input = prev.out.reshape(prev.shape)
            geo1 = units[i].geometry(b_, geo.ho, geo.wo)
            geo = units[i + 1].geometry(b_, geo1.ho, geo1.wo)
            plan = self._block_plan(i, geo1, threads) if fuse else None
            if plan is None:
                kxk = self._unit_launch(i, geo1, threads, key=y_key, res=block_input)
                program += [kxk, self._unit_launch(i + 1, geo, threads, key=x_key, res=kxk.out.reshape(kxk.shape))]
            else:
                kxk = self._unit_launch(i, geo1, threads, key="2", res=block_input)
                one = self._unit_launch(i + 1, geo, threads, key=y_key, res=kxk.out.reshape(kxk.shape))
                program.append(self._block_launch(i, geo1, geo, plan, key=y_key, res=block_input,
                                                  fallback=(kxk, one)))
        return program

    def _unit_launch(self, i: int, geo: K.ConvGeometry, threads: int, *, key: str, res: np.ndarray) -> _Launch:
        """Binary conv unit ``i`` alone, writing work buffers ``key``, its shortcut ``res``."""
        units = self._units
        u = units[i]
        plan = self._plan(i, geo.batch * geo.ho * geo.wo, threads)
        kernel = K.bconv_forward if plan.parallel else K.bconv_forward_serial
        short = K.Shortcut(res, i % 2 == 0 and u.s != 1, u.rix, u.rsame)
        return self._launch(u.name, LayerKind.BINARY_CONV, kernel, (u.weights,), geo, plan, key=key, short=short,
                            nxt=units[i + 1] if i + 1 < len(units) else None, offsets=u.pack_offsets)

    def _block_launch(self, i: int, geo1: K.ConvGeometry, geo2: K.ConvGeometry, plan: Plan, *, key: str,
                      res: np.ndarray, fallback: tuple[_Launch, _Launch]) -> _Launch:
        """Units ``i`` (K×K) and ``i + 1`` (1×1) in one pass (:func:`kernels.block_forward`)."""
        units = self._units
        u1, u2 = units[i], units[i + 1]
        nxt = units[i + 2] if i + 2 < len(units) else None
        out, target, jobs = self._outputs(geo2, plan, key=key, nxt=nxt, offsets=u2.pack_offsets)
        mid = K.PackTarget(True, u2.shift, u2.groups, u2.cg, u2.wg, _NO_WORDS, *u1.pack_offsets)
        mid_zeros = self._buffer("zm", plan.jobs, np.int64)
        records = (u1.weights, geo1, K.Shortcut(res, u1.s != 1, u1.rix, u1.rsame), mid, u2.weights, geo2,
                   K.Shortcut(_NO_RES, False, u2.rix, u2.rsame), out, target, jobs, mid_zeros)
        kernel = K.block_forward if plan.parallel else K.block_forward_serial
        return self._make_launch(u1.name.rsplit(".", 1)[0], LayerKind.BINARY_CONV, kernel, records, geo2, key=key,
                                 out=out, target=target, nxt=nxt, fallback=fallback, layers=2)

    def _block_plan(self, i: int, geo1: K.ConvGeometry, threads: int) -> Plan | None:
        """A pixel-run split for running units ``i`` and ``i + 1`` in one pass, or None to run them apart.

        One pass keeps the K×K output in the job's buffers instead of writing it out and reading it back.
        At batch 1 that pays for outputs of 1 MiB and more (the 112², 56² and stride-1 28² blocks of the
        largest `imagenet` member: 1-2.5 % faster end to end than from 2 MiB on the Xeon of
        benchmarks/RESULTS.md). Smaller maps are better served by the separate layers' channel splits: one
        pass for the 14² blocks as well measured 6-8 % slower on two threads, since every job then reads all
        of the K×K weights. At batch 8 one pass measured slower (0.88× end to end), so larger batches run
        layer by layer.
        """
        u = self._units[i]
        npix = geo1.batch * geo1.ho * geo1.wo
        if geo1.batch > 1 or 4 * npix * u.cout < FUSE_MIN_BYTES:
            return None
        row = u.weights.wt.shape[1]
        return plan_layer(npix, u.cout, u.cog, row, threads=threads, cap=self._cap(row),
                          serial_ppj=self._jobs(npix, 1, row), next_cg=None, gathered=True,
                          layer=_threading_layer(), split_channels=False)

    def _launch(self, name: str, kind: LayerKind, kernel: Callable[..., Any], weights: tuple[Any, ...],
                geo: K.ConvGeometry, plan: Plan, *, key: str, short: K.Shortcut | None, nxt: _Unit | None,
                offsets: tuple[np.ndarray, np.ndarray]) -> _Launch:
        """One layer's launch writing work buffers ``key`` and packing for ``nxt`` (None: the last layer).

        The kernel's arguments after its input: ``weights``, the geometry, the shortcut (binary convs),
        the float output, the pack target (``offsets``: see :meth:`_pack_offsets`) and the split.
        """
        out, target, jobs = self._outputs(geo, plan, key=key, nxt=nxt, offsets=offsets)
        records = (*weights, geo, *(() if short is None else (short,)), out, target, jobs)
        return self._make_launch(name, kind, kernel, records, geo, key=key, out=out, target=target, nxt=nxt)

    def _outputs(self, geo: K.ConvGeometry, plan: Plan, *, key: str, nxt: _Unit | None,
                 offsets: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, K.PackTarget, K.Jobs]:
        """The float output [B·Ho·Wo, C], the pack target for ``nxt`` and the split of a launch writing work
        buffers ``key``."""
        npix = geo.batch * geo.ho * geo.wo
        c = geo.groups * geo.cog
        out = self._buffer("f" + key, npix * c, np.float32).reshape(npix, c)
        target = self._pack_target("p" + key, npix, nxt, offsets)
        jobs = K.Jobs(plan.pix_per_job, plan.cranges, self._buffer("zp" + key, plan.jobs, np.int64),
                      plan.prefetch_flags())
        return out, target, jobs

    @staticmethod
    def _make_launch(name: str, kind: LayerKind, kernel: Callable[..., Any], records: tuple[Any, ...],
                     geo: K.ConvGeometry, *, key: str, out: np.ndarray, target: K.PackTarget, nxt: _Unit | None,
                     **more: Any) -> _Launch:
        """A launch of ``kernel`` with ``records`` writing ``out`` (``geo``'s output pixels) and ``target``, which
        feeds ``nxt``."""
        fix = None if nxt is None else (nxt, nxt.geometry(geo.batch, geo.ho, geo.wo))
        return _Launch(name, kind, kernel, K.plain_args(*records), key, out, (geo.batch, geo.ho, geo.wo, out.shape[1]),
                       tuple(K.PackedInput(target.out, _NO_ZC, False)), fix, **more)

    @staticmethod
    def _parallel(threads: int, work: int) -> bool:
        """Whether the classifier's ``work`` multiply-adds are worth the thread pool (8x more with workqueue)."""
        scale = 1 if _threading_layer() in ("tbb", "omp") else 8
        return threads > 1 and work >= scale * PARALLEL_MIN_WORK

    def _pack_target(self, key: str, npix: int, nxt: _Unit | None,
                     offsets: tuple[np.ndarray, np.ndarray]) -> K.PackTarget:
        """Where a layer of ``npix`` output pixels packs for the next conv ``nxt`` (dummies when there is none)."""
        if nxt is None:
            return K.PackTarget(False, _NO_SHIFT, 1, 1, 1, self._buffer(key, 1, np.uint64).reshape(1, 1), *offsets)
        words = nxt.groups * nxt.wg
        out = self._buffer(key, npix * words, np.uint64).reshape(npix, words)
        return K.PackTarget(True, nxt.shift, nxt.groups, nxt.cg, nxt.wg, out, *offsets)

    def _plan(self, index: int, npix: int, threads: int) -> Plan:
        """How layer ``index`` (-1: the stem) splits ``npix`` output pixels among ``threads``."""
        units = self._units
        nxt = units[index + 1] if index + 1 < len(units) else None
        if index < 0:
            st = self._stem
            kw = st.kernel_size**2 * st.in_channels // st.groups
            return plan_layer(npix, st.out_channels, self._stem_og, kw, threads=threads, cap=self._cap(kw // 2),
                              serial_ppj=self._jobs(npix, 1, kw // 2), next_cg=nxt and nxt.cg, gathered=True,
                              layer=_threading_layer(), split_channels=False)
        u = units[index]
        row = 0 if u.k == 1 and u.s == 1 else u.weights.wt.shape[1]
        # A small map may go whole to a job that owns a range of channels, even if its gathered words then
        # exceed L1: the layers of a stage can then split the same channels the same way, so that each
        # thread reads back the shortcut it wrote itself (3 % faster on stages 4-5 of the largest
        # `imagenet` member at batch 1 on two threads, Xeon of benchmarks/RESULTS.md).
        cap = WHOLE_MAP_PIXELS if npix <= WHOLE_MAP_PIXELS else self._cap(row)
        return plan_layer(npix, u.cout, u.cog, u.weights.wt.shape[1], threads=threads, cap=cap,
                          serial_ppj=self._jobs(npix, 1, row), next_cg=nxt and nxt.cg, gathered=row > 0,
                          layer=_threading_layer())

    @staticmethod
    def _pack_offsets(nxt: _Unit | None, cout: int) -> tuple[np.ndarray, np.ndarray]:
        """Per vector of FLOAT_LANES output channels: the next layer's word index and bit offset."""
        n = max(1, cout // K.FLOAT_LANES)
        if nxt is None:
            return np.zeros(n, np.int64), np.zeros(n, np.int64)
        c = np.arange(n, dtype=np.int64) * K.FLOAT_LANES
        within = c % nxt.cg
        return (c // nxt.cg) * nxt.wg + within // 64, within % 64

    @staticmethod
    def _zero_fix(zeros: int, step: _Launch) -> np.ndarray | None:
        """The sign(0) = 0 correction for the conv after ``step``, or None when its input has no exact zeros."""
        if step.fix is None or not zeros:
            return None
        nxt, geo = step.fix
        zc = np.zeros((geo.batch * geo.ho * geo.wo, nxt.cout), np.int64)
        K.zero_corrections(*K.plain_args(step.out, nxt.shift, nxt.wpk, geo, zc))
        return zc
