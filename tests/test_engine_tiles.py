"""The XOR-popcount micro-kernels against numpy, and the AVX2 byte-sum path inside the whole engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from nasbnn.engine import kernels as K

REPO = Path(__file__).resolve().parents[1]
HAS_AVX2 = K._X86 and "avx2" in K._FEATURES

_TILES: dict[tuple[int, int, bool], object] = {}


def tile_runner(rows: int, vectors: int, byte_sums: bool):  # type: ignore[no-untyped-def]
    """A compiled function that runs one ``rows`` × ``vectors`` tile at pixel row 1 and channel vector 1."""
    key = (rows, vectors, byte_sums)
    if key not in _TILES:
        tile = K._make_tile(rows, vectors, 4, byte_sums=byte_sums)

        @njit
        def run(src, kw, wg, acc):  # type: ignore[no-untyped-def]
            tile(src, 1, 2, kw, wg, 4, acc, 1)

        _TILES[key] = run
    return _TILES[key]


def expected(src: np.ndarray, wg: np.ndarray, kw: int, rows: int, vectors: int) -> np.ndarray:
    """sum over k < kw of popcount(src[1 + i, 2 + k] XOR wg[k, 4 + n]) for i < rows, n < vectors·4."""
    a = src[1:1 + rows, 2:2 + kw]
    w = wg[:kw, 4:4 + 4 * vectors]
    return np.bitwise_count(a[:, :, None] ^ w[None, :, :]).sum(axis=1).astype(np.int32)


@pytest.mark.parametrize("byte_sums", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAS_AVX2, reason="byte sums need AVX2"))], ids=["popcount", "byte-sums"])
@pytest.mark.parametrize("rows,vectors", [(4, 3), (4, 2), (4, 1), (1, 3), (1, 1)])
def test_tiles_count_xor_popcounts(rows, vectors, byte_sums):
    """Random words, and words whose XOR is all ones (64 per word: a byte sum overflows after 31 words
    unless it is widened in time), over row lengths around the widening period; nothing outside the
    tile's accumulators is written."""
    rng = np.random.default_rng(rows * 10 + vectors)
    run = tile_runner(rows, vectors, byte_sums)
    for kw in (1, 3, 4, 30, 31, 32, 62, 63, 64, 75, 100):
        for adversarial in (False, True):
            src = rng.integers(0, 2**64, (rows + 2, kw + 3), dtype=np.uint64)
            wg = rng.integers(0, 2**64, (kw + 1, 4 * vectors + 8), dtype=np.uint64)
            if adversarial:
                src[:] = np.uint64(2**64 - 1)
                wg[:] = 0
            acc = np.full((rows + 2, 4 * vectors + 8), -7, np.int32)
            run(src, kw, wg, acc)
            want = expected(src, wg, kw, rows, vectors)
            assert np.array_equal(acc[1:1 + rows, 4:4 + 4 * vectors], want), (kw, adversarial)
            if adversarial:
                assert int(want.max()) == 64 * kw
            outside = acc.copy()
            outside[1:1 + rows, 4:4 + 4 * vectors] = -7
            assert (outside == -7).all()


def test_byte_sum_tiles_need_four_uint64_lanes():
    with pytest.raises(ValueError, match="byte sums"):
        K._make_tile(4, 3, 8, byte_sums=True)
    with pytest.raises(ValueError, match="byte sums"):
        K._make_tile(4, 3, 8, kind="float", byte_sums=True)


_CHILD = """
import json, sys
import numpy as np
from nasbnn.engine import BinaryEngine, PackedModel
from nasbnn.engine import kernels
engine = BinaryEngine(PackedModel.load(sys.argv[1]))
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([engine(x, threads=1), engine(x, threads=2)]))
print(json.dumps({"byte_sums": kernels.BYTE_SUMS, "wide": kernels.WIDE_VECTORS}))
"""

# A Haswell-class target: AVX2 without AVX-512, the machines where the byte-sum tiles run.
_AVX2_FEATURES = ",".join([
    "+64bit", "+avx", "+avx2", "+bmi", "+bmi2", "+cmov", "+cx16", "+f16c", "+fma", "+fxsr", "+lzcnt", "+mmx",
    "+movbe", "+pclmul", "+popcnt", "+sse", "+sse2", "+sse3", "+sse4.1", "+sse4.2", "+ssse3", "+xsave",
    "-avx512f", "-avx512vpopcntdq", "-avx512bw", "-avx512vl", "-avx512dq", "-avx512cd",
])


@pytest.mark.skipif(not HAS_AVX2, reason="needs an x86 CPU with AVX2")
def test_avx2_build_computes_the_static_network(tmp_path):
    """The engine compiled for AVX2 alone (byte-sum tiles on rows of >= 4 words, the plain ones below) gives
    the simulated network's logits and the host build's, at one and two threads, on a network whose 3x3
    and 5x5 convs gather rows of 9 and more words and whose 1x1 convs read rows of one word, at batch 3
    (maps whose pixels do not fill whole blocks)."""
    import torch
    from helpers import randomize_

    from nasbnn.engine import BinaryEngine, pack_model
    from nasbnn.export import export_subnet
    from nasbnn.models import SuperBNN
    from nasbnn.presets import create_space

    space = create_space("tiny")
    arch = space.parse("c8k3g1.1|c16k3g1.1,c16k3g1.1|c32k5g2.2,c32k3g2.2")
    static = export_subnet(randomize_(SuperBNN(space, seed=1), seed=2).eval(), arch).eval()
    model = pack_model(static)
    model.save(tmp_path / "m.nbp")
    x = torch.randn(3, space.in_channels, 13, 11, generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "x.npy", x.numpy())
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": _AVX2_FEATURES,
           "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "m.nbp"), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags = json.loads(proc.stdout.strip().splitlines()[-1])
    assert flags == {"byte_sums": True, "wide": False}
    avx2 = np.load(tmp_path / "out.npy")
    with torch.no_grad():
        want = static(x).numpy()
    host = BinaryEngine(model)(x.numpy(), threads=1)
    for out in (*avx2, host):
        # these images meet no sign tie: every logit within float rounding of the simulated network's
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # The popcounts are exact integers on both builds; the float output transform and the classifier may
    # round differently with other vector widths.
    np.testing.assert_allclose(avx2[0], host, rtol=1e-5, atol=1e-5)
    assert np.array_equal(avx2[0], avx2[1])
