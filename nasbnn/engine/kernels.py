"""Numba kernels of the binary inference engine: bit packing, XOR-popcount convolutions, the stem.

Activations are NHWC. A packed activation holds, per pixel, ``groups × words_per_group`` uint64 words;
channel ``c`` of group ``g`` is bit ``c % 64`` of word ``g·words_per_group + c // 64``, set when the
value is negative (bit 1 = -1, bit 0 = +1), padding bits 0. A binary convolution gathers the words of
a block of output pixels (zero words for taps outside the image), counts ``popcount(a XOR w)`` with a
register-tiled micro-kernel (8 pixels × 24 output channels held in vector registers), then corrects
the border taps exactly, applies the folded output transform, the shortcut and RPReLU, and packs the
result for the next layer.
"""

from __future__ import annotations

import types as _pytypes
from typing import Any, NamedTuple

import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "BLOCK",
    "TILE_N",
    "WIDE_VECTORS",
    "BinaryWeights",
    "ConvGeometry",
    "Jobs",
    "PackTarget",
    "PackedInput",
    "Shortcut",
    "bconv_forward",
    "bconv_forward_serial",
    "plain_args",
    "pool_classify",
    "pool_classify_serial",
    "stem_forward",
    "stem_forward_serial",
    "zero_corrections",
]


def _preload_tbb() -> bool:
    """Makes oneTBB's library findable for numba's ``tbb`` layer; True when numba's TBB pool then imports.

    The ``tbb`` wheel puts ``libtbb.so.12`` in the environment's ``lib`` folder, which the dynamic
    loader does not search; loading it once by path (global symbols) lets numba's pool link to it.
    """
    import ctypes
    import os
    import sys

    from numba.np.ufunc import parallel

    def loads() -> bool:
        try:
            parallel._check_tbb_version_compatible()  # raises ImportError when oneTBB is missing or too old
            import numba.np.ufunc.tbbpool  # noqa: F401
            return True
        except (ImportError, OSError, ValueError, AttributeError):  # AttributeError: a numba without the check
            return False

    if loads():
        return True
    for base in dict.fromkeys((sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable)))):
        path = os.path.join(base, "lib", "libtbb.so.12")
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return False
            return loads()
    return False


def _choose_threading_layer() -> None:
    """Uses oneTBB's pool where it loads, numba's own workqueue pool otherwise, never OpenMP.

    Measured on this project's 2-core machine: starting and joining a parallel region costs about 2 µs
    with TBB (the calling thread works too; idle workers spin briefly, then sleep) against 45-80 µs with
    workqueue (the caller sleeps while two pool threads are woken). A network runs 40-50 regions per
    image, so at batch 1 the workqueue pool costs milliseconds and hides the second core's gain. OpenMP
    launches as fast but ``numba.set_num_threads`` then also changes PyTorch's OpenMP thread count in
    the same process, and its idle threads spin after each kernel: PyTorch code run after the engine
    can be several times slower. Neither TBB nor workqueue touches PyTorch. A layer the user chose
    (``NUMBA_THREADING_LAYER``) is kept; oneTBB is made loadable for every choice that may pick it
    (``tbb``, ``safe``, ``threadsafe``, ``forksafe``), since numba alone does not find the ``tbb`` wheel's
    library. Must run before the first parallel kernel; the pools are not re-entrant from several Python
    threads, so the runtime serialises launches (``runtime.LAUNCH_LOCK``).
    """
    import numba
    from numba.np.ufunc import parallel

    layer = numba.config.THREADING_LAYER
    if getattr(parallel, "_is_initialized", False) or layer in ("omp", "workqueue"):
        return
    tbb = _preload_tbb()
    if layer == "default":
        numba.config.THREADING_LAYER = "tbb" if tbb else "workqueue"


_choose_threading_layer()


def _target_features() -> set[str]:
    """The features of numba's target CPU as LLVM names them: the host's, or those NUMBA_CPU_FEATURES turns on."""
    import numba

    try:
        if numba.config.CPU_FEATURES:
            return {f[1:] for f in numba.config.CPU_FEATURES.split(",") if f.startswith("+")}
        return {name for name, on in _llvm.get_host_cpu_features().items() if on}
    except Exception:  # pragma: no cover - unknown platform: the portable path
        return set()


_FEATURES = _target_features()
_X86 = _llvm.get_process_triple().startswith("x86_64")

#: True when the target CPU has AVX-512 with VPOPCNTDQ: the kernels then ask LLVM for 512-bit vectors.
WIDE_VECTORS: bool = {"avx512f", "avx512vpopcntdq"} <= _FEATURES

#: True when popcounts are summed per byte (see :func:`_make_tile`): x86 with AVX2 but without VPOPCNTDQ.
BYTE_SUMS: bool = _X86 and not WIDE_VECTORS and "avx2" in _FEATURES
#: Words a byte-sum tile adds before it widens its sums: each word adds at most 8 to a byte, 31 × 8 < 256.
BYTE_SUM_WORDS = 31

#: uint64 lanes per vector register the micro-kernel uses (zmm with VPOPCNTDQ, else ymm).
LANES = 8 if WIDE_VECTORS else 4
#: Output channels per vector of uint64 lanes: the weights' channel dimension is padded to a multiple of it.
#: Tiles are three vectors wide (two and one for the remainder).
TILE_N = LANES
#: Pixels per micro-kernel tile (its TILE_M × 3 accumulator vectors stay in registers).
TILE_M = 8 if WIDE_VECTORS else 4
#: Output pixels per block of the conv driver (a multiple of TILE_M).
BLOCK = 8


# --------------------------------------------------------------------------------------------- records
# The kernels take their many arrays and sizes as a few records. They cross from Python as plain tuples
# (see :func:`plain_args`) and are named again on entry: numba's dispatcher types a plain tuple in C but a
# NamedTuple in Python, about 1 µs more per record and call, a sizeable share of a small layer's time.


class ConvGeometry(NamedTuple):
    """The sizes of one convolution: batch, input and output maps, kernel, groups and packed words."""

    batch: int
    h: int  # input height and width
    w: int
    ho: int  # output height and width
    wo: int
    k: int  # kernel size, stride, zero padding
    s: int
    p: int
    groups: int
    cg: int  # input channels per group
    wg: int  # packed input words per group (0 for the stem's float input)
    cog: int  # output channels per group


class PackedInput(NamedTuple):
    """A binary conv's input: packed words and the sign(0) corrections of its exact zeros."""

    words: np.ndarray  # [B·H·W, groups·wg] uint64
    zc: np.ndarray  # [B·Ho·Wo, C_out] int64 amounts subtracted from the dot products (see zero_corrections)
    has_zc: bool  # whether zc applies (else it is a dummy)


class BinaryWeights(NamedTuple):
    """A binary conv's weights in kernel layout and its folded output transform."""

    wt: np.ndarray  # [groups, words per gathered row, npad] uint64; npad >= cog, a multiple of LANES
    dbase: np.ndarray  # [ncfg, C_out] int32 per border case, see bconv_forward
    tp: np.ndarray  # [5, C_out] float32: mul, bias, RPReLU shift_in, slope, shift_out
    merge: bool  # the taps' last words are paired (see _gather_group); only with K > 1


class Shortcut(NamedTuple):
    """What a binary conv adds to its output before RPReLU."""

    res: np.ndarray  # [B, Hr, Wr, Cr] float32
    pool: bool  # 2x2/2 ceil-mode average of res first
    rix: np.ndarray  # [C_out] int64: the shortcut channel of each output channel (c mod Cr)
    same: bool  # rix is the identity


class PackTarget(NamedTuple):
    """Where a layer packs sign(output + shift) for the next conv, in that conv's layout."""

    on: bool  # whether there is a next conv (else the other fields are dummies)
    shift: np.ndarray  # [C_out + 64] float32 RSign shift of the next conv (64 elements of slack)
    groups: int  # the next conv's groups, input channels and packed words per group
    cg: int
    wg: int
    out: np.ndarray  # [B·Ho·Wo, groups·wg] uint64
    vec_word: np.ndarray  # [C_out / FLOAT_LANES] int64 per vector of output channels: its word in a row of out
    vec_bit: np.ndarray  # ... and the bit offset of its first channel in that word


class Jobs(NamedTuple):
    """How a layer's output is split among parallel jobs (see :mod:`nasbnn.engine.schedule`)."""

    pix_per_job: int  # output pixels per job (a multiple of BLOCK)
    cranges: np.ndarray  # [chunks, 2] int64 output channel ranges [lo, hi), see bconv_forward
    zeros: np.ndarray  # [jobs] int64: every job writes a count of the exact zeros it packed (non-zero iff any)
    prefetch: np.ndarray  # [jobs] bool: the jobs that prefetch their channels' weights (schedule.Plan.prefetch_flags)


class _JobRows(NamedTuple):
    """One job's output rows ``p0 .. p0 + npx - 1`` with their coordinates and the job's work buffers."""

    p0: int
    npx: int
    coords: np.ndarray  # [npx, 4] int64: batch, y, x, border case
    acc: np.ndarray  # [BLOCK, npad] int32 popcount sums
    rbuf: np.ndarray  # [BLOCK, npad] float32 shortcut of the block's pixels (when not read in place)
    pixels: np.ndarray  # [4, BLOCK] int64 per pixel of the block: border case, shortcut, output offsets, row
    start: int  # the block of pixels the job begins with (it goes on cyclically), see bconv_forward


def plain_args(*args: Any) -> tuple[Any, ...]:
    """Kernel arguments with the records turned into plain tuples (see the records' comment above)."""
    return tuple(tuple(a) if isinstance(a, tuple) else a for a in args)


@intrinsic
def popcount64(typingctx, x):  # type: ignore[no-untyped-def]
    """Number of set bits of a uint64 (``llvm.ctpop.i64``: POPCNT, or VPOPCNTQ once vectorised)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _prefer_wide_vectors(typingctx):  # type: ignore[no-untyped-def]
    """Marks the enclosing function to be vectorised with 512-bit registers where the CPU has VPOPCNTDQ.

    LLVM tunes Intel AVX-512 cores to prefer 256-bit vectors; the popcount loops are bound by
    VPOPCNTQ throughput and run about 1.3-1.5x faster with 512-bit vectors. The attributes are the
    ones clang sets for ``-mprefer-vector-width=512``. Emits no instructions.
    """
    sig = types.none()

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        if WIDE_VECTORS:
            attrs = builder.function.attributes
            # The attribute set only admits enumerated names; string attributes go in as plain items.
            set.add(attrs, '"prefer-vector-width"="512"')
            set.add(attrs, '"min-legal-vector-width"="512"')
        return context.get_dummy_value()

    return sig, codegen


def _make_tile(rows: int, vectors: int, lanes: int, kind: str = "popcount",  # type: ignore[no-untyped-def]
               byte_sums: bool = False):
    """A micro-kernel intrinsic for ``rows`` pixels × ``vectors·lanes`` output channels.

    ``tile(src, r0, c0, kw, wg, n0, acc, a0)`` sets, for i < rows and n < vectors·lanes,
    ``acc[a0 + i, n0 + n] = sum_{k < kw} f(src[r0 + i, c0 + k], wg[k, n0 + n])`` with
    ``f(a, w) = popcount(a XOR w)`` (uint64 operands, int32 ``acc``, ``kind="popcount"``) or ``a·w`` (float32 arrays,
    ``kind="float"``, multiply-add fused where the CPU has FMA). The accumulators live in vector registers (stack slots
    that LLVM promotes); each step loads ``vectors`` weight vectors and broadcasts one source element
    per pixel. The caller guarantees that the indices are in bounds.

    With ``byte_sums`` (AVX2 without VPOPCNTDQ) the popcounts are summed per byte and widened once
    every BYTE_SUM_WORDS words: the uint64 popcount of a 256-bit vector costs a PSADBW and an add more
    per step than the byte popcount it is built from.
    """
    is_float = kind == "float"
    if byte_sums and (is_float or lanes != 4):
        raise ValueError("byte sums are for popcount tiles of four uint64 lanes (AVX2)")

    @intrinsic
    def tile(typingctx, src, r0, c0, kw, wg, n0, acc, a0):  # type: ignore[no-untyped-def]
        sig = types.none(src, r0, c0, kw, wg, n0, acc, a0)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            src_v, r0_v, c0_v, kw_v, wg_v, n0_v, acc_v, a0_v = args
            sty, wty, aty = signature.args[0], signature.args[4], signature.args[6]
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)
            ety = ir.FloatType() if is_float else i64
            vty = ir.VectorType(ety, lanes)
            sary = context.make_array(sty)(context, builder, src_v)
            wary = context.make_array(wty)(context, builder, wg_v)
            aary = context.make_array(aty)(context, builder, acc_v)
            s_ld = cgutils.unpack_tuple(builder, sary.shape, 2)[1]
            w_ld = cgutils.unpack_tuple(builder, wary.shape, 2)[1]
            a_ld = cgutils.unpack_tuple(builder, aary.shape, 2)[1]
            name = f"llvm.fmuladd.v{lanes}f32" if is_float else f"llvm.ctpop.v{lanes}i64"
            nargs = 3 if is_float else 1
            op = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * nargs), name)
            zero = ir.Constant(vty, None)
            slots = []
            for _ in range(rows):
                row = []
                for _ in range(vectors):
                    slot = cgutils.alloca_once(builder, vty)
                    builder.store(zero, slot)
                    row.append(slot)
                slots.append(row)
            rowp = []
            for m in range(rows):
                off = builder.add(builder.mul(builder.add(r0_v, ir.Constant(i64, m)), s_ld), c0_v)
                rowp.append(builder.gep(sary.data, [off]))
            wbase = builder.gep(wary.data, [n0_v])
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

            def step(k, sums, count):  # type: ignore[no-untyped-def]
                """Word (or float) k of every pixel against the weight vectors: ``sums += count(a, w)``."""
                wrow = builder.gep(wbase, [builder.mul(k, w_ld)])
                wv = []
                for v in range(vectors):
                    ptr = builder.bitcast(builder.gep(wrow, [ir.Constant(i64, v * lanes)]), vty.as_pointer())
                    wv.append(builder.load(ptr, align=4 if is_float else 8))
                for m in range(rows):
                    a = builder.load(builder.gep(rowp[m], [k]))
                    ab = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)), undef, splat)
                    for v in range(vectors):
                        cur = builder.load(sums[m][v])
                        builder.store(count(cur, ab, wv[v]), sums[m][v])

            if is_float:
                with cgutils.for_range(builder, kw_v) as loop:
                    step(loop.index, slots, lambda cur, a, w: builder.call(op, [a, w, cur]))
            elif not byte_sums:
                with cgutils.for_range(builder, kw_v) as loop:
                    step(loop.index, slots, lambda cur, a, w: builder.add(cur, builder.call(op, [builder.xor(a, w)])))
            else:
                # Per byte: popcount of each byte of a XOR w (AVX2's nibble lookup, no widening), summed in
                # bytes for up to BYTE_SUM_WORDS words, then widened once per run by PSADBW (byte sums of
                # each uint64 lane) into the uint64 sums.
                bty = ir.VectorType(ir.IntType(8), 8 * lanes)
                bpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(bty, [bty]),
                                                      f"llvm.ctpop.v{8 * lanes}i8")
                psad = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [bty, bty]),
                                                      "llvm.x86.avx2.psad.bw")
                bzero = ir.Constant(bty, None)
                bslots = [[cgutils.alloca_once(builder, bty) for _ in range(vectors)] for _ in range(rows)]
                run = ir.Constant(i64, BYTE_SUM_WORDS)
                nruns = builder.udiv(builder.add(kw_v, ir.Constant(i64, BYTE_SUM_WORDS - 1)), run)

                def byte_count(cur, a, w):  # type: ignore[no-untyped-def]
                    return builder.add(cur, builder.call(bpop, [builder.bitcast(builder.xor(a, w), bty)]))

                with cgutils.for_range(builder, nruns) as runs:
                    k0 = builder.mul(runs.index, run)
                    k1 = builder.add(k0, run)
                    k1 = builder.select(builder.icmp_signed("<", k1, kw_v), k1, kw_v)
                    for row in bslots:
                        for slot in row:
                            builder.store(bzero, slot)
                    with cgutils.for_range_slice(builder, k0, k1, ir.Constant(i64, 1)) as (k, _):
                        step(k, bslots, byte_count)
                    for m in range(rows):
                        for v in range(vectors):
                            wide = builder.call(psad, [builder.load(bslots[m][v]), bzero])
                            builder.store(builder.add(builder.load(slots[m][v]), wide), slots[m][v])
            abase = builder.gep(aary.data, [n0_v])
            # popcount sums are stored as int32 (at most K·K·C_in per output: far below 2^31)
            sty_out = vty if is_float else ir.VectorType(i32, lanes)
            for m in range(rows):
                arow = builder.gep(abase, [builder.mul(builder.add(a0_v, ir.Constant(i64, m)), a_ld)])
                for v in range(vectors):
                    ptr = builder.bitcast(builder.gep(arow, [ir.Constant(i64, v * lanes)]), sty_out.as_pointer())
                    val = builder.load(slots[m][v])
                    if not is_float:
                        val = builder.trunc(val, sty_out)
                    builder.store(val, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_main3 = _make_tile(TILE_M, 3, LANES)
_tile_main2 = _make_tile(TILE_M, 2, LANES)
_tile_main1 = _make_tile(TILE_M, 1, LANES)
_tile_one3 = _make_tile(1, 3, LANES)
_tile_one1 = _make_tile(1, 1, LANES)
#: Gathered rows of at least this many words use the byte-sum tiles where BYTE_SUMS holds; on shorter rows
#: widening costs more than it saves.
BYTE_SUM_MIN_WORDS = 4
# Byte-sum tiles are two vectors wide: with three, AVX2's 16 vector registers spill inside the loop.
_btile_main2 = _make_tile(TILE_M, 2, LANES, byte_sums=BYTE_SUMS)
_btile_main1 = _make_tile(TILE_M, 1, LANES, byte_sums=BYTE_SUMS)
_btile_one1 = _make_tile(1, 1, LANES, byte_sums=BYTE_SUMS)
#: float32 lanes per vector (twice the uint64 lanes); the stem's channels are padded to a multiple of it.
FLOAT_LANES = 2 * LANES
STEM_TILE_N = FLOAT_LANES
# Stem tiles of three vectors (fewer broadcasts per multiply-add) and of one for the remainder.
_ftile_main3 = _make_tile(TILE_M, 3, FLOAT_LANES, "float")
_ftile_one3 = _make_tile(1, 3, FLOAT_LANES, "float")
_ftile_main1 = _make_tile(TILE_M, 1, FLOAT_LANES, "float")
_ftile_one1 = _make_tile(1, 1, FLOAT_LANES, "float")


@intrinsic
def _prefetch(typingctx, arr, off):  # type: ignore[no-untyped-def]
    """A hint to bring the cache line of ``arr.flat[off]`` into the caches (``prefetcht0``); never faults."""
    sig = types.none(arr, off)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        # read access, high temporal locality, data cache
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _sign_bits64(typingctx, f, fo, shift, so):  # type: ignore[no-untyped-def]
    """Bit masks over i < 64 of ``f[fo + i] + shift[so + i] < 0`` and of ``... == 0`` (two uint64).

    One vector compare per 16 (or 8) floats into a mask register. Reads 64 elements of both arrays
    without bounds checks: the caller guarantees them readable (buffers carry 64 elements of slack).
    """
    sig = types.UniTuple(types.uint64, 2)(f, fo, shift, so)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fary = context.make_array(signature.args[0])(context, builder, args[0])
        sary = context.make_array(signature.args[2])(context, builder, args[2])
        vty = ir.VectorType(ir.FloatType(), 64)
        fv = builder.load(builder.bitcast(builder.gep(fary.data, [args[1]]), vty.as_pointer()), align=4)
        sv = builder.load(builder.bitcast(builder.gep(sary.data, [args[3]]), vty.as_pointer()), align=4)
        v = builder.fadd(fv, sv)
        zero = ir.Constant(vty, None)
        i64 = ir.IntType(64)
        neg = builder.bitcast(builder.fcmp_ordered("<", v, zero), i64)
        isz = builder.bitcast(builder.fcmp_ordered("==", v, zero), i64)
        return context.make_tuple(builder, signature.return_type, [neg, isz])

    return sig, codegen


def _record_array(context, builder, rec_ty, rec, name):  # type: ignore[no-untyped-def]
    """In an intrinsic's code generation: the array helper of field ``name`` of the NamedTuple value ``rec``."""
    j = rec_ty.fields.index(name)
    return context.make_array(rec_ty[j])(context, builder, builder.extract_value(rec, j))


def _make_epilogue(pack: bool):  # type: ignore[no-untyped-def]
    """The vectorised output transform intrinsic of a block of pixels, optionally packing for the next layer."""

    @intrinsic
    def epilogue(typingctx, acc, mr, ac0, conv, c0, res, rv, rv0, out, nvec, target, pixels):  # type: ignore[no-untyped-def]
        """``nvec`` vectors of the output transform of ``mr`` pixels (see :func:`_conv_group`).

        ``pixels`` [4, BLOCK] int64 holds per pixel i < mr the flat offsets of its border case's row of
        ``dbase`` (case · C_out), of its shortcut, of its output and of its packed row (row · words).
        With ``dbase`` and ``tp`` of ``conv`` (:class:`BinaryWeights`), for
        n < nvec·FLOAT_LANES and c = c0 + n: ``d = dbase[case_i, c] - 2·acc[i, ac0 + n]``;
        ``t = float(d)·tp[0, c] + tp[1, c] + res[res_i + rv[rv0 + j] + l] + tp[2, c]`` for
        n = j·FLOAT_LANES + l (``rv`` gives each vector's shortcut offset, e.g. ``c mod C_res`` when
        widening); ``t = t·tp[3, c]`` where t < 0; ``out[out_i + n] = t + tp[4, c]``: the scalar code's
        operations in the same order.
        With packing, the sign bits of ``out + target.shift[c]`` are OR-ed into
        ``target.out[row_i, target.vec_word[v]]`` at bit ``target.vec_bit[v]`` for channel vector
        v = c // FLOAT_LANES (``target``: :class:`PackTarget`), and the number of channel lanes in which an
        exact zero occurred is returned (non-zero when there was any: all the caller needs to know).

        Channel vectors are the outer loop: each vector's transform constants are loaded once for the
        block's pixels. ``acc``/``dbase`` are int32 2-D, ``tp`` float32 [5, C], ``res``/``out`` flat
        float32. The caller guarantees the indices are in bounds.
        """
        sig = types.int64(acc, mr, ac0, conv, c0, res, rv, rv0, out, nvec, target, pixels)
        lanes = FLOAT_LANES

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            acc_v, mr_v, ac0_v, conv_v, c0_v, res_v, rv_v, rv0_v, out_v, nvec_v, tgt_v, pix_v = args
            acc_t, _, _, conv_t, _, res_t, rv_t, _, out_t, _, tgt_t, pix_t = signature.args
            i32 = ir.IntType(32)
            i64 = ir.IntType(64)
            f32 = ir.FloatType()
            vi = ir.VectorType(i32, lanes)
            vf = ir.VectorType(f32, lanes)
            aary = context.make_array(acc_t)(context, builder, acc_v)
            dary = _record_array(context, builder, conv_t, conv_v, "dbase")
            tary = _record_array(context, builder, conv_t, conv_v, "tp")
            rary = context.make_array(res_t)(context, builder, res_v)
            rvary = context.make_array(rv_t)(context, builder, rv_v)
            oary = context.make_array(out_t)(context, builder, out_v)
            pxary = context.make_array(pix_t)(context, builder, pix_v)
            sary, pkary, pwary, pbary = (_record_array(context, builder, tgt_t, tgt_v, name)
                                         for name in ("shift", "out", "vec_word", "vec_bit"))
            a_ld = cgutils.unpack_tuple(builder, aary.shape, 2)[1]
            t_ld = cgutils.unpack_tuple(builder, tary.shape, 2)[1]
            px_ld = cgutils.unpack_tuple(builder, pxary.shape, 2)[1]
            pa = builder.gep(aary.data, [ac0_v])
            pd = builder.gep(dary.data, [c0_v])
            pt = [builder.gep(tary.data, [builder.add(builder.mul(ir.Constant(i64, r), t_ld), c0_v)])
                  for r in range(5)]
            prv = builder.gep(rvary.data, [rv0_v])
            ppx = [builder.gep(pxary.data, [builder.mul(ir.Constant(i64, r), px_ld)]) for r in range(4)]
            zero = ir.Constant(vf, None)
            one = ir.Constant(vi, [1] * lanes)
            if pack:
                psh = builder.gep(sary.data, [c0_v])
                v0 = builder.udiv(c0_v, ir.Constant(i64, lanes))
                ivec = ir.IntType(lanes)
                seen = cgutils.alloca_once_value(builder, ir.Constant(ivec, 0))  # lanes that met an exact zero

            def vload(base, off, t):  # type: ignore[no-untyped-def]
                return builder.load(builder.bitcast(builder.gep(base, [off]), t.as_pointer()), align=4)

            with cgutils.for_range(builder, nvec_v) as vloop:
                off = builder.mul(vloop.index, ir.Constant(i64, lanes))
                mul, bias, sin, slope, sout = (vload(p, off, vf) for p in pt)
                roff = builder.load(builder.gep(prv, [vloop.index]))
                if pack:
                    sh = vload(psh, off, vf)
                    vi_ = builder.add(v0, vloop.index)
                    word = builder.load(builder.gep(pwary.data, [vi_]))
                    bit = builder.load(builder.gep(pbary.data, [vi_]))
                with cgutils.for_range(builder, mr_v) as ploop:
                    i = ploop.index
                    case_off, r_i, o_i, row_off = (builder.load(builder.gep(p, [i])) for p in ppx)
                    d = builder.sub(vload(pd, builder.add(case_off, off), vi),
                                    builder.shl(vload(pa, builder.add(builder.mul(i, a_ld), off), vi), one))
                    y = builder.fadd(builder.fmul(builder.sitofp(d, vf), mul), bias)
                    y = builder.fadd(y, vload(rary.data, builder.add(r_i, roff), vf))
                    t = builder.fadd(y, sin)
                    t = builder.select(builder.fcmp_ordered("<", t, zero), builder.fmul(t, slope), t)
                    o = builder.fadd(t, sout)
                    builder.store(o, builder.bitcast(builder.gep(oary.data, [builder.add(o_i, off)]),
                                                     vf.as_pointer()), align=4)
                    if pack:
                        v = builder.fadd(o, sh)
                        neg = builder.zext(builder.bitcast(builder.fcmp_ordered("<", v, zero), ivec), i64)
                        isz = builder.bitcast(builder.fcmp_ordered("==", v, zero), ivec)
                        wp = builder.gep(pkary.data, [builder.add(row_off, word)])
                        builder.store(builder.or_(builder.load(wp), builder.shl(neg, bit)), wp)
                        builder.store(builder.or_(builder.load(seen), isz), seen)
            if not pack:
                return ir.Constant(i64, 0)
            return builder.zext(builder.ctpop(builder.load(seen)), i64)

        return sig, codegen

    return epilogue


_epilogue_vec = _make_epilogue(False)
_epilogue_vec_pack = _make_epilogue(True)


# Hot loops index with uint64 (no negative-index wraparound, so LLVM vectorises them), create no array
# views and call no numba function per pixel: each view or argument copy of an array costs an atomic
# reference-count update, which is why the per-pixel code below is written out in its loops.


# --------------------------------------------------------------------------------------------- packing
@njit(cache=True, fastmath=False)
def _pack_rows(f, cols, p0, p1, target, wlo, whi):
    """Packs sign(f + shift) of pixels ``p0 <= pix < p1`` of flat ``f`` [pix·cols + c] into ``target.out`` [pix, words].

    ``target`` is a :class:`PackTarget` (its shift and layout). Only words ``wlo <= j < whi`` of each
    pixel (all: ``0, groups·wg``), so that jobs owning other channels of the same pixels can pack theirs
    at the same time. ``f`` and ``shift`` must be readable 64 elements past each pixel's last channel
    (slack). Returns the number of exact zeros of ``f + shift``.
    """
    _prefer_wide_vectors()
    shift, cg, wg, dst = target.shift, target.cg, target.wg, target.out
    zeros = 0
    full = np.uint64(0xFFFFFFFFFFFFFFFF)
    for pix in range(p0, p1):
        pu = np.uint64(pix)
        fo = pix * cols
        for j in range(wlo, whi):
            g = j // wg
            wi = j - g * wg
            c0 = g * cg + wi * 64
            nb = min(64, cg - wi * 64)
            neg, isz = _sign_bits64(f, fo + c0, shift, c0)
            mask = full if nb == 64 else (np.uint64(1) << np.uint64(nb)) - np.uint64(1)
            dst[pu, np.uint64(j)] = neg & mask
            zeros += popcount64(isz & mask)
    return zeros


# --------------------------------------------------------------------------------------------- binary conv
@njit(cache=True, fastmath=False)
def _border_case(oy, ox, geo):
    """Index of the border case of output pixel (oy, ox): how many kernel rows/columns fall outside.

    ``((top·(p+1) + bottom)·(p+1) + left)·(p+1) + right``; 0 for interior pixels.
    """
    h, w, k, s, p = geo.h, geo.w, geo.k, geo.s, geo.p
    t = max(0, p - oy * s)
    bt = max(0, oy * s - p + k - h)
    lf = max(0, p - ox * s)
    rt = max(0, ox * s - p + k - w)
    p1 = p + 1
    return ((t * p1 + bt) * p1 + lf) * p1 + rt


@njit(cache=True, fastmath=False)
def _gather_group(xp, coords, npx, geo, g, merge, dst):
    """Word-level im2col of ``npx`` output pixels for group ``g`` into ``dst`` rows, zeros outside the image.

    Without ``merge`` a row is the K·K taps' ``wg`` words each. With ``merge`` (the group's last word
    holds at most 32 channels) a row is the taps' ``wg - 1`` full words, then the last words of taps
    2j and 2j+1 side by side in one word (low and high 32 bits): about a quarter fewer words for 96
    channels per group. :func:`merged_weights` lays the weights out the same way.
    """
    _prefer_wide_vectors()
    h, w, k, s, p, wg = geo.h, geo.w, geo.k, geo.s, geo.p, geo.wg
    words = xp.shape[1]
    flat = xp.reshape(-1)
    q_full = wg - 1 if merge else wg
    kk = k * k
    half0 = kk * q_full
    toff = np.empty(kk, np.int64)  # word offset of each tap from the window's first pixel
    for ky in range(k):
        for kx in range(k):
            toff[ky * k + kx] = (ky * w + kx) * words
    for m in range(npx):
        b, oy, ox = coords[m, 0], coords[m, 1], coords[m, 2]
        mu = np.uint64(m)
        q = 0
        if not merge and s == 1 and words == wg and ox >= p and ox + p < w:
            # stride 1, one group, all columns inside: each kernel row is one run of K·wg words
            run = k * wg
            for ky in range(k):
                iy = oy - p + ky
                if iy < 0 or iy >= h:
                    for j in range(run):
                        dst[mu, np.uint64(q + j)] = 0
                else:
                    src = ((b * h + iy) * w + ox - p) * wg
                    for j in range(run):
                        dst[mu, np.uint64(q + j)] = flat[np.uint64(src + j)]
                q += run
            continue
        y0 = oy * s - p
        x0 = ox * s - p
        if y0 >= 0 and y0 + k <= h and x0 >= 0 and x0 + k <= w:
            # every tap inside the image: no bounds tests, taps addressed through the offset table
            base = ((b * h + y0) * w + x0) * words + g * wg
            if q_full == 1:
                for t in range(kk):
                    dst[mu, np.uint64(t)] = flat[np.uint64(base + toff[t])]
            else:
                for t in range(kk):
                    src = base + toff[t]
                    for wd in range(q_full):
                        dst[mu, np.uint64(t * q_full + wd)] = flat[np.uint64(src + wd)]
            if merge:  # the halves, two taps per word
                last = base + wg - 1
                for j in range(kk // 2):
                    lo = flat[np.uint64(last + toff[2 * j])]
                    hi = flat[np.uint64(last + toff[2 * j + 1])]
                    dst[mu, np.uint64(half0 + j)] = lo | (hi << np.uint64(32))
                if kk % 2 == 1:
                    dst[mu, np.uint64(half0 + kk // 2)] = flat[np.uint64(last + toff[kk - 1])]
            continue
        t = 0
        for ky in range(k):
            iy = oy * s - p + ky
            for kx in range(k):
                ix = ox * s - p + kx
                inside = not (iy < 0 or iy >= h or ix < 0 or ix >= w)
                src = np.uint64((b * h + iy) * w + ix if inside else 0)
                for wd in range(q_full):
                    dst[mu, np.uint64(q + wd)] = xp[src, np.uint64(g * wg + wd)] if inside else np.uint64(0)
                q += q_full
                if merge:
                    half = xp[src, np.uint64(g * wg + wg - 1)] if inside else np.uint64(0)
                    j = np.uint64(half0 + t // 2)
                    if t % 2 == 0:
                        dst[mu, j] = half
                    else:
                        dst[mu, j] |= half << np.uint64(32)
                t += 1


@njit(cache=True, fastmath=False)
def _conv_group(src, r0, c0w, g, nlo, nhi, job, geo, conv, inp, short, out_f, target):
    """Popcounts and output transform of group ``g`` for a job's pixels whose words are ``src[r0:, c0w:]``.

    Only the group's output channels ``nlo <= n < nhi`` (``nlo`` a multiple of FLOAT_LANES, ``nhi`` one
    too or ``cog``): a job may own part of a group, so that small maps still give every thread work.

    Pixel m of ``job`` (:class:`_JobRows`) writes output (and packed) row ``job.p0 + m`` and reads
    sign(0) corrections from the same row of ``inp.zc``; ``job.coords[m]`` = (b, y, x, border case)
    addresses the shortcut. The other records are those of :func:`bconv_forward`.

    For each block of 8 pixels: the micro-kernel tiles fill ``acc``, then the output transform runs for
    the block: ``dot = dbase[case, c] - 2·popcount`` (exact zero padding), ``y = dot·mul + bias``
    (folded alpha and BatchNorm), ``+ shortcut``, RPReLU. Whole vectors of channels go through
    :func:`_epilogue_vec`, one vector of channels for all the block's pixels at a time (``job.pixels``
    says where each pixel reads and writes); the remaining channels, and every channel when sign(0)
    corrections apply, through the scalar loop (same operations, same order). When packing is fused (see
    :func:`_fuses_pack`) the sign bits for the next layer are OR-ed into the zeroed ``target.out`` rows
    on the way; returns a count of the exact zeros met then, non-zero exactly when there was any (the vector
    path counts channel lanes, not values).
    """
    _prefer_wide_vectors()
    p0, npx, coords, acc, rbuf, pixels = job.p0, job.npx, job.coords, job.acc, job.rbuf, job.pixels
    rbuf_flat = rbuf.reshape(-1)
    dstride, pstride = conv.dbase.shape[1], target.out.shape[1]
    wgt = conv.wt[g]
    kw, npad = wgt.shape[0], wgt.shape[1]
    dbase, tp, cog = conv.dbase, conv.tp, geo.cog
    res, res_pool, rix, rsame = short.res, short.pool, short.rix, short.same
    zc, has_zc = inp.zc, inp.has_zc
    res_flat = res.reshape(-1)
    out_flat = out_f.reshape(-1)
    fuse_pack = _fuses_pack(has_zc, geo, target)
    c0 = g * cog
    cols = out_f.shape[1]
    hr, wr_, cr = res.shape[1], res.shape[2], res.shape[3]
    # The vector path reads the shortcut in place unless it is pooled or tiled across vector boundaries, or
    # the group's first channel is not on a vector boundary (24 channels per group with 16-lane vectors):
    # in-place reads address whole vectors of the shortcut pixel.
    vec_direct = not res_pool and (rsame or cr % FLOAT_LANES == 0) and c0 % FLOAT_LANES == 0
    nvec = 0 if has_zc else (nhi - nlo) // FLOAT_LANES
    nend = npad if nhi == cog else nhi  # weights are zero-padded past cog up to npad
    span = nend - nlo
    cc = c0 + nlo
    rvid = np.arange(0, max(cog, 1), FLOAT_LANES)  # offsets of the vectors in rbuf
    rvoff = np.arange(0, max(cols, 1), FLOAT_LANES) % cr  # offsets of the vectors in a shortcut pixel
    zeros = 0
    nblk = (npx + BLOCK - 1) // BLOCK
    byte_tiles = BYTE_SUMS and kw >= BYTE_SUM_MIN_WORDS
    # channels covered by whole main tiles (two vectors wide with byte sums, else three)
    nmain = nlo + span - span % ((2 if byte_tiles else 3) * LANES)
    for kb in range(nblk):
        m0 = (kb + job.start) % nblk * BLOCK
        mr = min(BLOCK, npx - m0)
        if byte_tiles:
            if mr == BLOCK:
                for t0 in range(0, BLOCK, TILE_M):
                    for n0 in range(nlo, nmain, 2 * LANES):
                        _btile_main2(src, r0 + m0 + t0, c0w, kw, wgt, n0, acc, t0)
                    if nend > nmain:
                        _btile_main1(src, r0 + m0 + t0, c0w, kw, wgt, nmain, acc, t0)
            else:
                for i in range(mr):
                    for n0 in range(nlo, nend, LANES):
                        _btile_one1(src, r0 + m0 + i, c0w, kw, wgt, n0, acc, i)
        elif mr == BLOCK:
            for t0 in range(0, BLOCK, TILE_M):
                for n0 in range(nlo, nmain, 3 * LANES):
                    _tile_main3(src, r0 + m0 + t0, c0w, kw, wgt, n0, acc, t0)
                if nend - nmain == 2 * LANES:
                    _tile_main2(src, r0 + m0 + t0, c0w, kw, wgt, nmain, acc, t0)
                elif nend - nmain == LANES:
                    _tile_main1(src, r0 + m0 + t0, c0w, kw, wgt, nmain, acc, t0)
        else:
            for i in range(mr):
                for n0 in range(nlo, nmain, 3 * LANES):
                    _tile_one3(src, r0 + m0 + i, c0w, kw, wgt, n0, acc, i)
                for n0 in range(nmain, nend, LANES):
                    _tile_one1(src, r0 + m0 + i, c0w, kw, wgt, n0, acc, i)
        for i in range(mr):
            m = m0 + i
            pix = p0 + m
            b, oy, ox = coords[m, 0], coords[m, 1], coords[m, 2]
            iu, bu = np.uint64(i), np.uint64(b)
            pixels[0, iu] = coords[m, 3] * dstride
            pixels[2, iu] = pix * cols + cc
            pixels[3, iu] = pix * pstride
            if vec_direct:  # the shortcut read in place, one contiguous run per channel vector
                pixels[1, iu] = ((b * hr + oy) * wr_ + ox) * cr
                continue
            pixels[1, iu] = i * rbuf.shape[1]
            # The shortcut of these channels into rbuf: 2x2/2 ceil-mode average and/or channel tiling.
            if res_pool:
                y0 = 2 * oy
                x0 = 2 * ox
                y1 = min(y0 + 2, hr)
                x1 = min(x0 + 2, wr_)
                cnt = np.float32((y1 - y0) * (x1 - x0))
                for n in range(nlo, nhi):
                    rbuf[iu, np.uint64(n)] = 0
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        yv_, xv_ = np.uint64(yy), np.uint64(xx)
                        if rsame:
                            for n in range(nlo, nhi):
                                rbuf[iu, np.uint64(n)] += res[bu, yv_, xv_, np.uint64(c0 + n)]
                        else:
                            for n in range(nlo, nhi):
                                rbuf[iu, np.uint64(n)] += res[bu, yv_, xv_, np.uint64(rix[np.uint64(c0 + n)])]
                for n in range(nlo, nhi):
                    rbuf[iu, np.uint64(n)] = rbuf[iu, np.uint64(n)] / cnt
            else:
                yu, xu = np.uint64(oy), np.uint64(ox)
                for n in range(nlo, nhi):
                    rbuf[iu, np.uint64(n)] = res[bu, yu, xu, np.uint64(rix[np.uint64(c0 + n)])]
        if vec_direct:
            rsrc, rvt, rv0 = res_flat, rvoff, cc // FLOAT_LANES
        else:
            rsrc, rvt, rv0 = rbuf_flat, rvid, nlo // FLOAT_LANES
        if fuse_pack:
            zeros += _epilogue_vec_pack(acc, mr, nlo, conv, cc, rsrc, rvt, rv0, out_flat, nvec, target, pixels)
        else:
            _epilogue_vec(acc, mr, nlo, conv, cc, rsrc, rvt, rv0, out_flat, nvec, target, pixels)
        if nlo + nvec * FLOAT_LANES == nhi:
            continue
        for i in range(mr):  # the channels left: same operations, same order
            m = m0 + i
            iu, pu = np.uint64(i), np.uint64(p0 + m)
            cu = np.uint64(coords[m, 3])
            bu, yu, xu = np.uint64(coords[m, 0]), np.uint64(coords[m, 1]), np.uint64(coords[m, 2])
            for n in range(nlo + nvec * FLOAT_LANES, nhi):
                nu = np.uint64(n)
                c = np.uint64(c0 + n)
                d = np.int64(dbase[cu, c]) - 2 * np.int64(acc[iu, nu])
                if has_zc:
                    d -= zc[pu, c]
                yv = np.float32(d) * tp[0, c] + tp[1, c]
                if vec_direct:
                    yv = yv + res[bu, yu, xu, np.uint64(rix[c])]
                else:
                    yv = yv + rbuf[iu, nu]
                tv = yv + tp[2, c]
                if tv < 0:
                    tv = tv * tp[3, c]
                out_f[pu, c] = tv + tp[4, c]
    return zeros


@njit(cache=True, fastmath=False)
def _fuses_pack(has_zc, geo, target):
    """Whether packing happens inside the vector output transform.

    Only when every channel takes the vector path (no sign(0) corrections: ``has_zc`` false, whole
    vectors per group) and every vector of output channels lies within one packed word of the next conv.
    """
    return target.on and not has_zc and geo.cog % FLOAT_LANES == 0 and target.cg % FLOAT_LANES == 0


@njit(cache=True, fastmath=False)
def _group_part(lo, hi, g, cog):
    """The part ``[nlo, nhi)`` of group ``g``'s output channels (``cog`` per group) inside ``lo <= c < hi``."""
    return max(lo, g * cog) - g * cog, min(hi, g * cog + cog) - g * cog


@njit(cache=True, fastmath=False)
def _prefetch_weights(wt, lo, hi, cog):
    """Requests the weight lines of output channels ``lo <= c < hi`` (``wt``: [groups, row words, npad]) at once.

    The tiles read a job's weights row by row, a few lines per step between many popcounts, so that
    lines missing from L2 (a layer's weights were last read one image ago) arrive one after the other.
    Asking for all of them first lets the memory system fetch them in parallel while the job gathers its
    input.
    """
    kw, npad = wt.shape[1], wt.shape[2]
    flat = wt.reshape(-1)
    per_line = 64 // 8
    for g in range(lo // cog, (hi - 1) // cog + 1):
        nlo, nhi = _group_part(lo, hi, g, cog)
        for r in range(kw):
            row = (g * kw + r) * npad
            for n in range(nlo - nlo % per_line, nhi, per_line):
                _prefetch(flat, row + n)


@njit(parallel=True, cache=True, fastmath=False)
def bconv_forward(inp, conv, geo, short, out_f, target, jobs):
    """One fused binary conv unit: XOR-popcount conv -> folded BN/alpha -> + shortcut -> RPReLU -> pack.

    Args:
        inp: the packed input [B·H·W, groups·wg] and its sign(0) corrections (:class:`PackedInput`):
            per output [B·Ho·Wo, C_out], the amount to subtract from the dot products.
        conv: weights and output transform (:class:`BinaryWeights`). ``dbase`` [ncfg, C_out] holds per
            border case (see :func:`_border_case`) valid taps · cg + 2 · popcount of the weight words of
            the taps outside the image, so that dot = dbase - 2 · popcount; ``tp`` the folded output
            transform ``mul``, ``bias``, then the RPReLU ``shift_in``, ``slope``, ``shift_out``.
        geo: the sizes (:class:`ConvGeometry`).
        short: the shortcut source and its channel map (:class:`Shortcut`).
        out_f: float output [B·Ho·Wo, C_out], followed in memory by 64 readable floats.
        target: where sign(out + shift) is packed for the next conv (:class:`PackTarget`); its
            ``vec_word``/``vec_bit`` are used when every vector of output channels lies within one word:
            then packing happens inside the output transform.
        jobs: the split (:class:`Jobs`): ``cranges`` [chunks, 2] output channel ranges [lo, hi) that
            divide the channels among jobs: job j computes pixel run ``j // chunks`` for channels
            ``cranges[j % chunks]``. Inside a group the bounds are multiples of FLOAT_LANES; with packing
            they start words of the next layer, so that no two jobs write the same packed word.

    The records may come as plain tuples of their fields (see :func:`plain_args`).

    Returns:
        The count of exact zeros met while packing (the sum of ``jobs.zeros``): non-zero iff any.
    """
    inp = PackedInput(*inp)
    conv = BinaryWeights(*conv)
    geo = ConvGeometry(*geo)
    short = Shortcut(*short)
    target = PackTarget(*target)
    jobs = Jobs(*jobs)
    _prefer_wide_vectors()
    xp, merge, k, s, wg, cog = inp.words, conv.merge, geo.k, geo.s, geo.wg, geo.cog
    pix_per_job, cranges, zcount = jobs.pix_per_job, jobs.cranges, jobs.zeros
    npix = geo.batch * geo.ho * geo.wo
    nch = cranges.shape[0]
    njobs = (npix + pix_per_job - 1) // pix_per_job * nch
    kw = conv.wt.shape[1]
    npad = conv.wt.shape[2]
    cout = geo.groups * cog
    direct = k == 1 and s == 1 and not merge
    of = out_f.reshape(-1)
    fuse_pack = _fuses_pack(inp.has_zc, geo, target)
    do_pack, out_p, ncg, nwg = target.on, target.out, target.cg, target.wg
    nwords = out_p.shape[1]
    prefetch = jobs.prefetch
    for job in prange(njobs):
        _prefer_wide_vectors()
        pj = job // nch
        chunk = job - pj * nch
        lo, hi = cranges[chunk, 0], cranges[chunk, 1]
        p0 = pj * pix_per_job
        p1_ = min(npix, p0 + pix_per_job)
        npx = p1_ - p0
        zeros = 0
        # the next layer's words of channels lo..hi-1 (all words when one chunk holds every channel)
        wlo = (lo // ncg) * nwg + (lo % ncg) // 64
        whi = min(nwords, ((hi - 1) // ncg) * nwg + ((hi - 1) % ncg) // 64 + 1) if nch > 1 else nwords
        # Jobs of the same pixels with other channels (on other threads at the same time) begin at other blocks
        # of them: a pixel's packed row spans both jobs' words, and two cores writing one cache line at once
        # pass it back and forth.
        start = chunk * ((npx + BLOCK - 1) // BLOCK) // nch
        if fuse_pack:
            for q in range(npx):
                pix = np.uint64(p0 + (q + start * BLOCK) % npx)
                for j in range(wlo, whi):
                    out_p[pix, np.uint64(j)] = 0
        patch = np.empty((pix_per_job, kw), np.uint64)
        rows = _JobRows(p0, npx, np.empty((pix_per_job, 4), np.int64), np.empty((BLOCK, npad), np.int32),
                        np.empty((BLOCK, npad), np.float32), np.empty((4, BLOCK), np.int64), start)
        if prefetch[job]:
            _prefetch_weights(conv.wt, lo, hi, cog)
        _job_coords(p0, npx, geo, rows.coords)
        for g in range(lo // cog, (hi - 1) // cog + 1):
            nlo, nhi = _group_part(lo, hi, g, cog)
            if direct:
                zeros += _conv_group(xp, p0, g * wg, g, nlo, nhi, rows, geo, conv, inp, short, out_f, target)
            else:
                _gather_group(xp, rows.coords, npx, geo, g, merge, patch)
                zeros += _conv_group(patch, 0, 0, g, nlo, nhi, rows, geo, conv, inp, short, out_f, target)
        if do_pack and not fuse_pack:
            zeros = _pack_rows(of, cout, p0, p1_, target, wlo, whi)
        zcount[job] = zeros
    return zcount.sum()


@njit(cache=True, fastmath=False)
def _job_coords(p0, npx, geo, coords):
    """Fills ``coords`` [npx, 4] with (batch, y, x, border case) of output pixels ``p0 .. p0 + npx - 1``."""
    ho, wo = geo.ho, geo.wo
    hw = ho * wo
    b = p0 // hw
    oy = (p0 - b * hw) // wo
    ox = p0 - b * hw - oy * wo
    for m in range(npx):  # (b, oy, ox) stepped without divisions
        coords[m, 0] = b
        coords[m, 1] = oy
        coords[m, 2] = ox
        coords[m, 3] = _border_case(oy, ox, geo)
        ox += 1
        if ox == wo:
            ox = 0
            oy += 1
            if oy == ho:
                oy = 0
                b += 1


@njit(parallel=True, cache=True, fastmath=False)
def block_forward(inp, conv1, geo1, short1, mid, conv2, geo2, rix2, out_f, target, jobs, mid_zeros):
    """A whole block in one pass: the K×K unit of :func:`bconv_forward`, then its 1×1 unit on the same pixels.

    The 1×1 conv reads only its own pixel, so a job that has computed the K×K unit for its output pixels
    (every channel) can run the 1×1 unit on them at once: the K×K output (the 1×1 unit's input and
    shortcut) stays in the job's buffers instead of travelling through memory.

    Args:
        inp, conv1, geo1, short1: the K×K unit's input, weights, sizes and shortcut, as in
            :func:`bconv_forward`; ``inp`` must carry no sign(0) corrections.
        mid: the K×K unit's :class:`PackTarget` (packing for the 1×1 conv); its ``out`` is not used.
        conv2, geo2: the 1×1 unit's weights and sizes; ``rix2``: its :class:`Shortcut` (only ``rix`` and
            ``same`` are used: the shortcut is the K×K output).
        out_f, target: the 1×1 unit's float output and pack target, as in :func:`bconv_forward`.
        jobs: pixel runs only (``jobs.cranges`` is one range of all channels).
        mid_zeros: [jobs] int64; every job writes a count of the exact zeros of the K×K output it packed.
            When any is non-zero the 1×1 results lack their sign(0) corrections and the caller must run
            the block again unit by unit.

    Returns:
        The numbers of exact zeros met while packing for the next conv and in the K×K output (the sum of
        ``mid_zeros``).
    """
    inp = PackedInput(*inp)
    conv1 = BinaryWeights(*conv1)
    geo1 = ConvGeometry(*geo1)
    short1 = Shortcut(*short1)
    mid = PackTarget(*mid)
    conv2 = BinaryWeights(*conv2)
    geo2 = ConvGeometry(*geo2)
    rix2 = Shortcut(*rix2)
    target = PackTarget(*target)
    jobs = Jobs(*jobs)
    _prefer_wide_vectors()
    xp = inp.words
    pix_per_job, zcount = jobs.pix_per_job, jobs.zeros
    npix = geo1.batch * geo1.ho * geo1.wo
    njobs = (npix + pix_per_job - 1) // pix_per_job
    kw1 = conv1.wt.shape[1]
    npad = max(conv1.wt.shape[2], conv2.wt.shape[2])
    c1 = geo1.groups * geo1.cog
    c2 = geo2.groups * geo2.cog
    mwords = mid.groups * mid.wg
    of = out_f.reshape(-1)
    fuse1 = _fuses_pack(inp.has_zc, geo1, mid)
    fuse2 = _fuses_pack(False, geo2, target)  # the 1×1 unit's input never carries sign(0) corrections here
    out_p = target.out  # written below through this name: a record field written inside prange is lost
    nwords = out_p.shape[1]
    slack_rows = (64 + c1 - 1) // c1
    prefetch = jobs.prefetch
    for job in prange(njobs):
        _prefer_wide_vectors()
        if prefetch[job]:  # every job reads all the weights: the first job of each thread asks for them
            _prefetch_weights(conv1.wt, 0, c1, geo1.cog)
            _prefetch_weights(conv2.wt, 0, c2, geo2.cog)
        p0 = job * pix_per_job
        p1_ = min(npix, p0 + pix_per_job)
        npx = p1_ - p0
        coords = np.empty((pix_per_job, 4), np.int64)
        _job_coords(p0, npx, geo1, coords)
        local = np.zeros((pix_per_job, 4), np.int64)  # the K×K output's rows in this job's buffer
        for m in range(npx):
            local[m, 2] = m
        acc = np.empty((BLOCK, npad), np.int32)
        rbuf = np.empty((BLOCK, npad), np.float32)
        pixels = np.empty((4, BLOCK), np.int64)
        mid_f = np.empty((pix_per_job + slack_rows, c1), np.float32)
        mid_p = np.zeros((pix_per_job, mwords), np.uint64)
        mid_t = PackTarget(True, mid.shift, mid.groups, mid.cg, mid.wg, mid_p, mid.vec_word, mid.vec_bit)
        # --- the K×K unit into the job's buffers (rows 0 .. npx - 1)
        patch = np.empty((pix_per_job, kw1), np.uint64)
        rows1 = _JobRows(0, npx, coords, acc, rbuf, pixels, 0)
        zmid = 0
        for g in range(geo1.groups):
            _gather_group(xp, coords, npx, geo1, g, conv1.merge, patch)
            zmid += _conv_group(patch, 0, 0, g, 0, geo1.cog, rows1, geo1, conv1, inp, short1, mid_f, mid_t)
        if not fuse1:
            zmid = _pack_rows(mid_f.reshape(-1), c1, 0, npx, mid_t, 0, mwords)
        mid_zeros[job] = zmid
        # --- the 1×1 unit on the same pixels: output rows p0 .. p1_ - 1
        if fuse2:
            for pix in range(p0, p1_):
                for j in range(nwords):
                    out_p[np.uint64(pix), np.uint64(j)] = 0
        sc2 = Shortcut(mid_f.reshape((1, 1, pix_per_job + slack_rows, c1)), False, rix2.rix, rix2.same)
        in2 = PackedInput(mid_p, inp.zc, False)
        rows2 = _JobRows(p0, npx, local, acc, rbuf, pixels, 0)
        zeros = 0
        for g in range(geo2.groups):
            zeros += _conv_group(mid_p, 0, g * geo2.wg, g, 0, geo2.cog, rows2, geo2, conv2, in2, sc2, out_f, target)
        if target.on and not fuse2:
            zeros = _pack_rows(of, c2, p0, p1_, target, 0, nwords)
        zcount[job] = zeros
    return zcount.sum(), mid_zeros.sum()


# --------------------------------------------------------------------------------------------- stem
@njit(parallel=True, cache=True, fastmath=False)
def stem_forward(x, wf, tp, geo, out_f, target, jobs):
    """The full-precision stem: conv (8-bit weights as float) -> folded BN -> RPReLU -> pack.

    Args:
        x: image [B, C_in, H, W] (float32, NCHW).
        wf: weights [groups, K·K·C_in/groups, npad] (float32: int8 level × scale), taps (ky, kx, ci)
            in that order, output channels innermost and zero-padded to a multiple of STEM_TILE_N.
        tp: [5, C_out] BN ``mul``, ``bias`` and RPReLU ``shift_in``, ``slope``, ``shift_out``.
        geo: the sizes (:class:`ConvGeometry`; the image's come from ``x``).
        out_f: output [B·Ho·Wo, C_out]; ``target`` and ``jobs`` as in :func:`bconv_forward` (pixel runs
            only: ``jobs.cranges`` is not read).
    """
    geo = ConvGeometry(*geo)
    target = PackTarget(*target)
    jobs = Jobs(*jobs)
    _prefer_wide_vectors()
    k, s, p, groups, og, ho, wo = geo.k, geo.s, geo.p, geo.groups, geo.cog, geo.ho, geo.wo
    pix_per_job, zcount = jobs.pix_per_job, jobs.zeros
    b_, cin, h, w = x.shape
    cing = cin // groups
    cout = out_f.shape[1]
    kw = k * k * cing
    npad = wf.shape[2]
    npix = b_ * ho * wo
    njobs = (npix + pix_per_job - 1) // pix_per_job
    hw = ho * wo
    of = out_f.reshape(-1)
    xf = x.reshape(-1)
    hw_in = h * w
    for job in prange(njobs):
        _prefer_wide_vectors()
        p0 = job * pix_per_job
        p1_ = min(npix, p0 + pix_per_job)
        npx = p1_ - p0
        patch = np.empty((pix_per_job, kw), np.float32)
        pf_ = patch.reshape(-1)
        acc = np.empty((BLOCK, npad), np.float32)
        for g in range(groups):
            # im2col of the job's pixels (zero outside the image), taps ordered (ky, kx, ci)
            for m in range(npx):
                pix = p0 + m
                b = pix // hw
                rem = pix - b * hw
                oy = rem // wo
                ox = rem - oy * wo
                q = m * kw
                base = (b * cin + g * cing) * hw_in
                for ky in range(k):
                    iy = oy * s - p + ky
                    for kx in range(k):
                        ix = ox * s - p + kx
                        inside = iy >= 0 and iy < h and ix >= 0 and ix < w
                        off = np.uint64(base + iy * w + ix if inside else base)  # always a valid index
                        keep = np.float32(1.0 if inside else 0.0)
                        # RGB and grey images without a loop (short loops cost more than their body)
                        if cing == 3:
                            pf_[np.uint64(q)] = xf[off] * keep
                            pf_[np.uint64(q + 1)] = xf[off + np.uint64(hw_in)] * keep
                            pf_[np.uint64(q + 2)] = xf[off + np.uint64(2 * hw_in)] * keep
                        elif cing == 1:
                            pf_[np.uint64(q)] = xf[off] * keep
                        else:
                            for ci in range(cing):
                                pf_[np.uint64(q + ci)] = xf[off + np.uint64(ci * hw_in)] * keep
                        q += cing
            wgt = wf[g]
            n3 = npad - npad % (3 * STEM_TILE_N)
            for m0 in range(0, npx, BLOCK):
                mr = min(BLOCK, npx - m0)
                for n0 in range(0, n3, 3 * STEM_TILE_N):
                    if mr == BLOCK:
                        for t0 in range(0, BLOCK, TILE_M):
                            _ftile_main3(patch, m0 + t0, 0, kw, wgt, n0, acc, t0)
                    else:
                        for i in range(mr):
                            _ftile_one3(patch, m0 + i, 0, kw, wgt, n0, acc, i)
                for n0 in range(n3, npad, STEM_TILE_N):
                    if mr == BLOCK:
                        for t0 in range(0, BLOCK, TILE_M):
                            _ftile_main1(patch, m0 + t0, 0, kw, wgt, n0, acc, t0)
                    else:
                        for i in range(mr):
                            _ftile_one1(patch, m0 + i, 0, kw, wgt, n0, acc, i)
                for i in range(mr):
                    pu = np.uint64(p0 + m0 + i)
                    iu = np.uint64(i)
                    for n in range(og):
                        cu = np.uint64(g * og + n)
                        yv = acc[iu, np.uint64(n)] * tp[0, cu] + tp[1, cu]
                        tv = yv + tp[2, cu]
                        if tv < 0:
                            tv = tv * tp[3, cu]
                        out_f[pu, cu] = tv + tp[4, cu]
        zeros = 0
        if target.on:
            zeros = _pack_rows(of, cout, p0, p1_, target, 0, target.groups * target.wg)
        zcount[job] = zeros
    return zcount.sum()


# --------------------------------------------------------------------------------------------- head
#: Classes per job of the classifier; its weights are stored in bands of this many classes (see pool_classify).
CLASS_BAND = 256


@njit(parallel=True, cache=True, fastmath=False)
def pool_classify(f, b_, hw, wt, bias, out):
    """Global average pool of ``f`` [B·HW, C] then ``out`` [B, classes] = pooled @ W.T + bias.

    ``wt`` is the classifier weight in bands of CLASS_BAND classes, ``[bands, C, CLASS_BAND]`` (float32,
    zero past the last class), so that a job reads its band as one contiguous run and every class has
    its own accumulator (vectorised without reordering any sum).
    """
    _prefer_wide_vectors()
    c = f.shape[1]
    ncls = out.shape[1]
    pooled = np.empty((b_, c), np.float32)
    for b in prange(b_):
        acc = np.zeros(c, np.float32)
        for q in range(hw):
            row = np.uint64(b * hw + q)
            for j in range(c):
                acc[np.uint64(j)] += f[row, np.uint64(j)]
        for j in range(c):
            pooled[np.uint64(b), np.uint64(j)] = acc[np.uint64(j)] / np.float32(hw)
    nband = wt.shape[0]
    for job in prange(b_ * nband):
        b = job // nband
        band = job - b * nband
        j0 = band * CLASS_BAND
        n = min(ncls, j0 + CLASS_BAND) - j0
        bu = np.uint64(b)
        wb = wt[band]
        acc = np.zeros(CLASS_BAND, np.float32)
        for q in range(c):
            pv = pooled[bu, np.uint64(q)]
            qu = np.uint64(q)
            for j in range(CLASS_BAND):
                acc[np.uint64(j)] += pv * wb[qu, np.uint64(j)]
        for j in range(n):
            out[bu, np.uint64(j0 + j)] = acc[np.uint64(j)] + bias[np.uint64(j0 + j)]


# --------------------------------------------------------------------------------------------- serial twins
def _serial_twin(kernel):  # type: ignore[no-untyped-def]
    """The same kernel compiled without a thread pool (``prange`` runs as ``range``).

    Launching a parallel region costs 10-15 µs (thread wake-up); small layers and one-thread runs
    call the twin instead. The twin gets its own name so that numba caches it separately.
    """
    f = kernel.py_func
    twin = _pytypes.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    twin.__doc__ = f"{f.__name__} without a thread pool (see _serial_twin)."
    return njit(cache=True, fastmath=False)(twin)


bconv_forward_serial = _serial_twin(bconv_forward)
block_forward_serial = _serial_twin(block_forward)
stem_forward_serial = _serial_twin(stem_forward)
pool_classify_serial = _serial_twin(pool_classify)


# --------------------------------------------------------------------------------------------- sign(0) fix
@njit(cache=True, fastmath=False)
def _tap_output(i, kk, s, p, n_out):
    """The output index whose kernel tap ``kk`` reads input index ``i`` along one axis, or -1 when none does."""
    t = i + p - kk
    if t < 0 or t % s != 0:
        return -1
    o = t // s
    return o if o < n_out else -1


@njit(cache=True, fastmath=False)
def zero_corrections(f, shift, wpk, geo, zc):
    """Adds to ``zc`` [B·Ho·Wo, C_out] the weight sign of every tap that met an exact zero activation.

    The packed input stores an exact zero of ``f + shift`` as +1; the true contribution of that tap is 0,
    so the conv kernel subtracts ``zc`` (the ±1 weight it multiplied) from the dot product.
    ``f`` [B·H·W, C_in] is the conv's float input, ``wpk`` its packed weights [C_out, K, K, wg] and
    ``geo`` its sizes (:class:`ConvGeometry`, possibly as a plain tuple).
    """
    geo = ConvGeometry(*geo)
    h, w, ho, wo, k, s, p, cg, cog = geo.h, geo.w, geo.ho, geo.wo, geo.k, geo.s, geo.p, geo.cg, geo.cog
    for b in range(geo.batch):
        for iy in range(h):
            for ix in range(w):
                frow = f[(b * h + iy) * w + ix]
                for c in range(geo.groups * cg):
                    if frow[c] + shift[c] != 0:
                        continue
                    g = c // cg
                    ci = c - g * cg
                    word = ci // 64
                    bit = np.uint64(ci % 64)
                    for ky in range(k):
                        oy = _tap_output(iy, ky, s, p, ho)
                        if oy < 0:
                            continue
                        for kx in range(k):
                            ox = _tap_output(ix, kx, s, p, wo)
                            if ox < 0:
                                continue
                            pix = (b * ho + oy) * wo + ox
                            for n in range(cog):
                                o = g * cog + n
                                neg = (wpk[o, ky, kx, word] >> bit) & np.uint64(1)
                                zc[pix, o] += 1 - 2 * np.int64(neg)
