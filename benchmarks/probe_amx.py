"""Binary dot products on AMX int8 tiles against the engine's XOR-popcount micro-kernel. Prints JSON.

A ±1 dot product of K terms is ``K - 2·popcount(a XOR w)`` on packed bits, or one int8 multiply-add per
term on ±1 bytes. Intel AMX (Sapphire Rapids and later) multiplies 16×64 by 64×16 int8 tiles into 16×16
int32 in one instruction (``tdpbssd``), 1 024 multiply-adds per cycle at its peak, against 512 bits per
``vpxorq`` + ``vpopcntq`` + ``vpaddq`` step on AVX-512. This probe times both on the same problem sizes,
side by side in one process, and checks both results against numpy:

* AMX: 32 pixels × 32 output channels (four accumulator tiles, two A and two B tiles per step of 64
  bytes of K), A row-major int8, B in the VNNI layout (four K values per 32-bit column element);
* popcount: 32 pixels × 48 output channels with ``kernels._tile_main3`` (8 pixels × 24 channels per
  call), activations and weights as packed uint64 words.

Rates are binary multiply-adds per second (one bit pair, or one int8 pair). Needs Linux on x86-64; on a
CPU or kernel without AMX the AMX side reports why it did not run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import time
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from nasbnn.engine import kernels as K
from nasbnn.engine.bench import machine_info

_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64


def amx_permission() -> str | None:
    """Asks the kernel for the AMX tile state; None when granted, else why not."""
    if platform.machine() != "x86_64" or platform.system() != "Linux":
        return f"not Linux on x86-64 ({platform.system()} {platform.machine()})"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return "no /proc/cpuinfo"
    if "amx_int8" not in flags.split():
        return "the CPU does not report amx_int8"
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    if not (features.get("amx-int8") and features.get("amx-tile")) or os.environ.get("NUMBA_CPU_FEATURES"):
        return "the compiler does not target AMX on this host"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        return f"arch_prctl(ARCH_REQ_XCOMP_PERM) failed: errno {ctypes.get_errno()}"
    return None


_I8, _I64, _VOID = ir.IntType(8), ir.IntType(64), ir.VoidType()
_PTR = _I8.as_pointer()


def _fn(builder: Any, name: str, args: list[Any]) -> Any:
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VOID, args), name)


@intrinsic
def _tile_config(typingctx, cfg):  # type: ignore[no-untyped-def]
    """``ldtilecfg`` from a 64-byte uint8 array."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        builder.call(_fn(builder, "llvm.x86.ldtilecfg", [_PTR]), [builder.bitcast(arr.data, _PTR)])
        return context.get_dummy_value()

    return types.none(cfg), codegen


@intrinsic
def _tile_release(typingctx):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        builder.call(_fn(builder, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _amx_block(typingctx, a, b, c):  # type: ignore[no-untyped-def]
    """c[32, 32] int32 = a[32, K] int8 · B, with b [K/64, 2, 16, 64] the two column tiles in VNNI layout."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aa, bb, cc = (context.make_array(t)(context, builder, v) for t, v in zip(signature.args, args))
        lda = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
        steps = cgutils.unpack_tuple(builder, bb.shape, 4)[0]
        zero = _fn(builder, "llvm.x86.tilezero", [_I8])
        load = _fn(builder, "llvm.x86.tileloadd64", [_I8, _PTR, _I64])
        dot = _fn(builder, "llvm.x86.tdpbssd", [_I8, _I8, _I8])
        store = _fn(builder, "llvm.x86.tilestored64", [_I8, _PTR, _I64])

        def imm(v: int) -> Any:
            return ir.Constant(_I8, v)

        for t in range(4):
            builder.call(zero, [imm(t)])
        pa, pb = builder.bitcast(aa.data, _PTR), builder.bitcast(bb.data, _PTR)
        with cgutils.for_range(builder, steps) as loop:
            ka = builder.mul(loop.index, ir.Constant(_I64, 64))
            builder.call(load, [imm(4), builder.gep(pa, [ka]), lda])
            builder.call(load, [imm(5), builder.gep(pa, [builder.add(ka, builder.mul(lda, ir.Constant(_I64, 16)))]),
                                lda])
            kb = builder.mul(loop.index, ir.Constant(_I64, 2048))
            builder.call(load, [imm(6), builder.gep(pb, [kb]), ir.Constant(_I64, 64)])
            builder.call(load, [imm(7), builder.gep(pb, [builder.add(kb, ir.Constant(_I64, 1024))]),
                                ir.Constant(_I64, 64)])
            for t, (ta, tb) in enumerate([(4, 6), (4, 7), (5, 6), (5, 7)]):
                builder.call(dot, [imm(t), imm(ta), imm(tb)])
        pc = builder.bitcast(cc.data, _PTR)
        for t, (r, col) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
            dst = builder.gep(pc, [ir.Constant(_I64, r * 128 + col * 4)])
            builder.call(store, [imm(t), dst, ir.Constant(_I64, 128)])
        return context.get_dummy_value()

    return types.none(a, b, c), codegen


@njit(cache=False)
def _amx_loop(cfg, a, b, c, reps):  # type: ignore[no-untyped-def]
    _tile_config(cfg)
    for _ in range(reps):
        _amx_block(a, b, c)
    _tile_release()


@njit(cache=False)
def _popcount_loop(src, wgt, acc, reps):  # type: ignore[no-untyped-def]
    kw = src.shape[1]
    for _ in range(reps):
        for r0 in range(0, 32, K.TILE_M):
            for n0 in range(0, 48, 3 * K.LANES):
                K._tile_main3(src, r0, 0, kw, wgt, n0, acc, r0)


def _tile_config_bytes() -> np.ndarray:
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1  # palette 1
    cfg[16:48].view(np.uint16)[:8] = 64  # bytes per row of tiles 0-7
    cfg[48:56] = 16  # rows of tiles 0-7
    return cfg


def _best_seconds(loops: dict[str, tuple[Any, tuple[Any, ...]]], seconds: float) -> dict[str, float]:
    """Per name, seconds per repeat of ``loop(*args, reps)``: the best of 5 rounds that run every loop in
    turn (side by side, so that a change in the machine's speed reaches all of them), each run sized to
    about ``seconds``."""
    reps = {}
    for name, (loop, args) in loops.items():
        t0 = time.perf_counter()
        loop(*args, 1)
        reps[name] = max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(5):
        for name, (loop, args) in loops.items():
            t0 = time.perf_counter()
            loop(*args, reps[name])
            best[name] = min(best[name], (time.perf_counter() - t0) / reps[name])
    return best


def probe(kbits: list[int], seconds: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    why_not = amx_permission()
    rows = []
    for kb in kbits:
        if kb % 64:
            raise SystemExit(f"error: K must be a multiple of 64 bits, got {kb}")
        row: dict[str, Any] = {"k_bits": kb}
        # popcount: 32 pixels × 48 channels, K/64 words
        words = kb // 64
        src = rng.integers(0, 2**63, size=(32, words), dtype=np.uint64)
        wgt = rng.integers(0, 2**63, size=(words, 48), dtype=np.uint64)
        acc = np.zeros((32, 48), np.int32)
        _popcount_loop(src, wgt, acc, 1)
        bits = np.unpackbits(np.bitwise_xor(src[:, :, None], wgt[None]).view(np.uint8), axis=None)
        ref = bits.reshape(32, words, 48, 64).sum(axis=(1, 3))
        row["popcount_exact"] = bool(np.array_equal(acc, ref))
        row["popcount_bytes_per_pixel"] = kb // 8
        loops: dict[str, tuple[Any, tuple[Any, ...]]] = {"popcount": (_popcount_loop, (src, wgt, acc))}
        macs = {"popcount": 32 * 48 * kb}
        if why_not is None:
            a = rng.choice(np.array([-1, 1], np.int8), size=(32, kb))
            w = rng.choice(np.array([-1, 1], np.int8), size=(kb, 32))
            steps = kb // 64
            vnni = w.reshape(steps, 16, 4, 2, 16).transpose(0, 3, 1, 4, 2).reshape(steps, 2, 16, 64).copy()
            c = np.zeros((32, 32), np.int32)
            cfg = _tile_config_bytes()
            _amx_loop(cfg, a, vnni, c, 1)
            row["amx_exact"] = bool(np.array_equal(c, a.astype(np.int32) @ w.astype(np.int32)))
            row["amx_bytes_per_pixel"] = kb
            loops["amx"] = (_amx_loop, (cfg, a, vnni, c))
            macs["amx"] = 32 * 32 * kb
        for name, sec in _best_seconds(loops, seconds).items():
            row[f"{name}_gmacs"] = macs[name] / sec / 1e9
        if why_not is None:
            row["amx_over_popcount"] = row["amx_gmacs"] / row["popcount_gmacs"]
        rows.append(row)
    return {"machine": machine_info(1), "amx": "available" if why_not is None else why_not, "rows": rows,
            "unit": "G binary multiply-adds per second, one thread, best of 5 interleaved rounds"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k-bits", type=int, nargs="+", default=[640, 1280, 2560, 4800],
                    help="dot product lengths (multiples of 64); 4800 = a 5×5 conv over 192 channels")
    ap.add_argument("--seconds", type=float, default=0.2, help="length of each timed run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.seconds <= 0:
        raise SystemExit("error: --seconds must be positive")
    print(json.dumps(probe(args.k_bits, args.seconds, args.seed), indent=2))


if __name__ == "__main__":
    main()
