"""The bit-packed engine computes the StaticBNN's logits; packed files, ONNX export, latency model, CLI."""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import randomize_

from nasbnn.cli import main
from nasbnn.cost import LayerKind
from nasbnn.engine import BinaryEngine, ConvSpec, InputError, PackedModel, pack_model
from nasbnn.engine import runtime as runtime_mod
from nasbnn.engine import schedule as schedule_mod
from nasbnn.engine.verify import compare, explain_divergence
from nasbnn.errors import CheckpointError, EngineError
from nasbnn.export import export_subnet
from nasbnn.models import StaticBNN, SuperBNN
from nasbnn.ops.layers import shortcut_add
from nasbnn.presets import create_space

FASHION = Path("/usr/share/datasets/fashion-mnist")
TOL = 1e-4


# --------------------------------------------------------------------------------------------- helpers
_NETS: dict[str, SuperBNN] = {}


def supernet(name: str) -> SuperBNN:
    """A randomised supernet per preset (non-identity BN statistics, shifts, slopes), built once."""
    if name not in _NETS:
        _NETS[name] = randomize_(SuperBNN(create_space(name), seed=1), seed=2).eval()
    return _NETS[name]


def check_engine(static: StaticBNN, engine: BinaryEngine, x: torch.Tensor) -> int:
    """Engine logits equal the StaticBNN's up to rounding: same top-1 and relative error <= 1e-4 per image.

    An image may diverge only through a sign tie: at the first layer whose binarisation differs, the
    StaticBNN's sign argument is within float rounding of zero (see nasbnn.engine.verify). Such ties
    are rare (about 1 image in 1000 at these sizes); returns how many occurred.
    """
    res = compare(static, engine, x, tol=TOL)
    assert res["unexplained"] == 0, res["diverging"]
    assert res["sign_ties"] <= max(1, len(x) // 50), res["diverging"]
    assert res["agree"] + res["sign_ties"] == len(x)
    if res["agree"]:
        assert res["max_rel_err"] <= TOL
    return res["sign_ties"]


def images(space, n: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, space.in_channels, h, w or h, generator=torch.Generator().manual_seed(seed))


def finest_plan(npix, cout, cog, kw, *, threads, cap, serial_ppj, next_cg, gathered, layer, split_channels=True):
    """Every layer on the thread pool, one block of pixels per job, a channel range at every legal bound.

    At test sizes the cost model runs most layers on one thread; this split exercises every path of
    the parallel decomposition (ranges inside groups, across groups, partial blocks, shared pixels).
    """
    edges = [0, *(schedule_mod.channel_bounds(cout, cog, next_cg) if split_channels else []), cout]
    cr = np.array(list(itertools.pairwise(edges)), np.int64)
    ppj = runtime_mod.K.BLOCK
    return schedule_mod.Plan(ppj, cr, True, -(-npix // ppj) * len(cr), threads)


@pytest.fixture(params=["1-thread", "2-threads"])
def threads(request, monkeypatch) -> int:
    """Thread counts the agreement tests run at: two threads with the finest split of every layer."""
    if request.param == "2-threads":
        monkeypatch.setattr(runtime_mod, "plan_layer", finest_plan)
        return 2
    return 1


# --------------------------------------------------------------------------------------------- correctness
CASES = {
    # preset: (resolutions, random architectures besides largest and smallest, batch)
    "tiny": ([(16, 16), (15, 15), (17, 9), (1, 1)], 3, 4),
    "fashion-mnist": ([(28, 28), (29, 27)], 2, 4),
    "cifar": ([(32, 32)], 1, 2),
    "imagenet": ([(48, 48), (37, 29)], 1, 2),
}


_CASE_NETS: dict[str, list[tuple[StaticBNN, Any]]] = {}


def case_nets(name: str) -> list[tuple[StaticBNN, Any]]:
    """The exported networks of a preset's agreement test and their packed models, built once."""
    if name not in _CASE_NETS:
        space = create_space(name)
        rng = random.Random(7)
        archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(CASES[name][1])]
        if name in ("cifar", "imagenet"):
            archs = archs[1:]  # their largest member (the same stage table) has its own test below
        statics = [export_subnet(supernet(name), arch).eval() for arch in archs]
        _CASE_NETS[name] = [(s, pack_model(s)) for s in statics]
    return _CASE_NETS[name]


@pytest.mark.parametrize("batched", [False, True], ids=["batch1", "batchN"])
@pytest.mark.parametrize("name", list(CASES))
def test_engine_matches_static(name, batched, threads):
    space = create_space(name)
    sizes, _, batch = CASES[name]
    for i, (static, packed) in enumerate(case_nets(name)):
        engine = BinaryEngine(packed, threads=threads)
        h, w = sizes[i % len(sizes)]
        check_engine(static, engine, images(space, batch if batched else 1, h, w, seed=i))


def imagenet_largest() -> tuple[StaticBNN, Any]:
    """The largest imagenet member of the randomised supernet and its packed model, built once."""
    if "imagenet-largest" not in _CASE_NETS:
        static = export_subnet(supernet("imagenet"), create_space("imagenet").largest()).eval()
        _CASE_NETS["imagenet-largest"] = [(static, pack_model(static))]
    return _CASE_NETS["imagenet-largest"][0]


@pytest.mark.parametrize("batch", [1, 2])
def test_imagenet_largest_at_reduced_resolution(batch, threads):
    space = create_space("imagenet")
    static, packed = imagenet_largest()
    engine = BinaryEngine(packed, threads=threads)
    check_engine(static, engine, images(space, batch, 40, seed=3))


def test_thread_splits_give_identical_logits(monkeypatch):
    """Splitting pixels and channels among threads changes no arithmetic: the logits are bit-identical.

    The imagenet largest member at 72x72 (maps 36 down to 3): the cost model's own plans at two
    threads, then the finest split, against one thread, at batch 1 and 3.
    """
    space = create_space("imagenet")
    _, packed = imagenet_largest()
    for batch in (1, 3):
        x = images(space, batch, 72, seed=batch)
        ref = BinaryEngine(packed)(x, threads=1)
        assert np.array_equal(BinaryEngine(packed)(x, threads=2), ref)
        with monkeypatch.context() as m:
            m.setattr(runtime_mod, "plan_layer", finest_plan)
            assert np.array_equal(BinaryEngine(packed)(x, threads=2), ref)


def test_tiny_every_dimension_and_thread_counts():
    """1x1 groups, odd channel counts, stride 2 on odd sizes, one or two threads give identical logits."""
    space = create_space("tiny")
    arch = space.parse("c8k3g1.1|c16k3g1.1,c16k3g1.1|c32k5g2.2,c32k3g2.2")
    static = export_subnet(supernet("tiny"), arch).eval()
    engine = BinaryEngine(pack_model(static))
    x = images(space, 3, 13, 11, seed=4)
    check_engine(static, engine, x)
    assert np.array_equal(engine(x, threads=1), engine(x, threads=2))


def test_engine_reused_across_sizes_gives_the_logits_of_a_fresh_one():
    """Layer launches are kept per input size and thread count; growing work buffers must not leave any of
    them on an old buffer: a small input after a larger one (and the reverse) gives a fresh engine's logits."""
    space = create_space("tiny")
    packed = pack_model(export_subnet(supernet("tiny"), space.largest()).eval())
    engine = BinaryEngine(packed)
    inputs = [images(space, b, h, seed=b + h) for b, h in ((2, 9), (2, 16), (1, 12), (2, 9), (1, 16), (2, 16))]
    for threads in (1, 2, 1):
        for x in inputs:
            assert np.array_equal(engine(x, threads=threads), BinaryEngine(packed)(x, threads=threads))


def test_schedule_splits_small_maps_by_channels():
    """Plans cover every channel once, at legal bounds; small maps get balanced channel splits."""
    from nasbnn.engine.schedule import _job_costs, _makespan, channel_bounds, plan_layer

    # the 7x7 5x5 conv of the largest imagenet member (8 groups of 192, next layer one group of 1536)
    bounds = channel_bounds(1536, 192, 1536)
    assert bounds and all(c % 64 == 0 for c in bounds)
    assert channel_bounds(96, 96, 192) == [c for c in range(16, 96, 16) if c % 64 == 0] == [64]
    assert channel_bounds(36, 12, None) == [12, 24]  # groups not a multiple of the vector width: group bounds
    for layer in ("tbb", "workqueue"):
        plan = plan_layer(49, 1536, 192, 75, threads=2, cap=48, serial_ppj=16, next_cg=1536, gathered=True,
                          layer=layer)
        cr = plan.cranges
        assert plan.parallel and cr[0, 0] == 0 and cr[-1, 1] == 1536 and (cr[1:, 0] == cr[:-1, 1]).all()
        assert set(cr[1:, 0].tolist()) <= set(bounds) and len(cr) >= 2
        assert plan.jobs == -(-49 // plan.pix_per_job) * len(cr)
        costs = _job_costs(49, plan.pix_per_job, *schedule_mod._chunk_cost(cr, 192, 75, True))
        assert _makespan(costs, 2) <= 0.56 * costs.sum()  # both threads get about half
    one = plan_layer(49, 1536, 192, 75, threads=1, cap=48, serial_ppj=16, next_cg=1536, gathered=True, layer="tbb")
    assert not one.parallel and one.pix_per_job == 16 and one.cranges.tolist() == [[0, 1536]]
    # a layer of a few microseconds stays on the calling thread
    tiny = plan_layer(16, 32, 32, 2, threads=2, cap=256, serial_ppj=8, next_cg=32, gathered=False, layer="tbb")
    assert not tiny.parallel


def test_odd_channel_counts_pad_bits(threads):
    """Channels that do not fill a word (12, 24, 48 per group) in a user space."""
    from nasbnn.space import SearchSpace, StageSpec

    space = SearchSpace("odd", [StageSpec(widths=(12,), stride=2),
                                StageSpec(widths=(24,), depths=(2,), kernel_sizes=(3,), groups=(2,), stride=1),
                                StageSpec(widths=(72,), depths=(1,), kernel_sizes=(5,), groups=(1,), stride=2)],
                        in_channels=2, num_classes=7, resolution=15)
    net = randomize_(SuperBNN(space, seed=3), seed=4).eval()
    static = export_subnet(net, space.largest()).eval()
    engine = BinaryEngine(pack_model(static), threads=threads)
    check_engine(static, engine, images(space, 4, 15, seed=5))
    check_engine(static, engine, images(space, 1, 15, seed=6))


def _im2col_words(xp, b_, h, w, k, s, g, wg, merge):
    """Reference for kernels._gather_group: every output pixel's taps' words, zeros outside the image."""
    p = (k - 1) // 2
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    words = xp.reshape(b_, h, w, -1)[..., g * wg:(g + 1) * wg]
    padded = np.zeros((b_, h + 2 * p, w + 2 * p, wg), np.uint64)
    padded[:, p:p + h, p:p + w] = words
    rows = []
    for b in range(b_):
        for oy in range(ho):
            for ox in range(wo):
                taps = [padded[b, oy * s + ky, ox * s + kx] for ky in range(k) for kx in range(k)]
                if merge:
                    last = [t[wg - 1] for t in taps] + [np.uint64(0)] * (len(taps) % 2)
                    halves = [last[i] | (last[i + 1] << np.uint64(32)) for i in range(0, len(last), 2)]
                    rows.append(np.concatenate([t[:wg - 1] for t in taps] + [np.array(halves, np.uint64)]))
                else:
                    rows.append(np.concatenate(taps))
    return np.stack(rows)


@pytest.mark.parametrize("k,s,groups,wg,merge", [(3, 1, 1, 2, True), (3, 2, 1, 2, True), (5, 1, 2, 3, False),
                                                 (5, 2, 4, 1, False), (3, 1, 1, 1, False), (1, 2, 2, 1, False),
                                                 (5, 1, 1, 1, True)])
def test_gathered_words_match_im2col(k, s, groups, wg, merge):
    """Word-level im2col of border and interior pixels, strides 1 and 2, one group and several."""
    from nasbnn.engine import kernels as kern

    b_, h, w = 2, 9, 8
    p = (k - 1) // 2
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    rng = np.random.default_rng(k * 100 + s * 10 + groups)
    xp = rng.integers(0, 2 ** 63, size=(b_ * h * w, groups * wg), dtype=np.uint64)
    if merge:  # the last word of each group holds at most 32 channels
        xp.reshape(b_ * h * w, groups, wg)[..., wg - 1] &= np.uint64(0xFFFFFFFF)
    geo = kern.ConvGeometry(b_, h, w, ho, wo, k, s, p, groups, 64 * wg, wg, 8)
    npix = b_ * ho * wo
    coords = np.empty((npix, 4), np.int64)
    kern._job_coords(0, npix, geo, coords)
    row = k * k * (wg - 1) + (k * k + 1) // 2 if merge else k * k * wg
    for g in range(groups):
        dst = np.full((npix, row), 7, np.uint64)  # stale words must all be overwritten
        kern._gather_group(xp, coords, npix, geo, g, merge, dst)
        np.testing.assert_array_equal(dst, _im2col_words(xp, b_, h, w, k, s, g, wg, merge))


def test_each_thread_prefetches_each_channel_range_once():
    """Under numba's static schedule (contiguous runs, sizes as np.array_split) a job prefetches its weights when
    its channel range is new to its thread's run."""
    cr = np.array([[0, 16], [16, 32], [32, 48]], np.int64)
    flags = schedule_mod.Plan(8, cr, True, 12, threads=2).prefetch_flags()  # runs: jobs 0-5 and 6-11
    assert flags.tolist() == [True, True, True, False, False, False] * 2
    flags = schedule_mod.Plan(8, cr, True, 7, threads=2).prefetch_flags()  # runs: 0-3 (chunks 0 1 2 0), 4-6 (1 2 0)
    assert flags.tolist() == [True, True, True, False, True, True, True]
    one = np.array([[0, 48]], np.int64)
    assert schedule_mod.Plan(8, one, True, 5, threads=3).prefetch_flags().tolist() == [True, False, True, False, True]
    assert schedule_mod.Plan(8, one, False, 5, threads=3).prefetch_flags().tolist() == [True] + [False] * 4


def _fashion_images(n: int) -> np.ndarray:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    magic, count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    assert magic == 2051 and count >= n
    pix = np.frombuffer(raw, np.uint8, count=n * rows * cols, offset=16).reshape(n, 1, rows, cols)
    return ((pix.astype(np.float32) / 255.0) - 0.286) / 0.353


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_images():
    space = create_space("fashion-mnist")
    rng = random.Random(11)
    static = export_subnet(supernet("fashion-mnist"), space.sample(rng)).eval()
    engine = BinaryEngine(pack_model(static))
    check_engine(static, engine, torch.from_numpy(_fashion_images(128)))


def test_float_baseline_is_the_static_network():
    from nasbnn.engine.frozen import freeze

    space = create_space("fashion-mnist")
    static = export_subnet(supernet("fashion-mnist"), space.largest()).eval()
    x = images(space, 3, 28)
    with torch.no_grad():
        a, b = static(x), freeze(static)(x)
    assert float((a - b).norm() / b.norm()) <= 1e-5


def _zero_network() -> tuple[StaticBNN, torch.Tensor]:
    """A tiny network whose binary convs see exact zeros (sign(x + shift) = 0) in some channels."""
    space = create_space("tiny")
    static = export_subnet(supernet("tiny"), space.parse("c8k3g1.1|c16k3g1.1,c16k3g1.1|c32k5g2.2,c32k3g1.1"))
    static = static.eval()
    v = 0.5
    with torch.no_grad():
        st = static.stem
        for c in (1, 6):  # stem channel c is the constant v everywhere
            st.conv.weight[c] = 0
            st.bn.running_mean[c] = 0
            st.bn.bias[c] = 0
            st.act.shift_in[0, c] = 0
            st.act.shift_out[0, c] = v
        blk = static.blocks[0]
        blk.rsign1.shift[0, [1, 6]] = -v  # the 3x3 conv binarises exact zeros in channels 1 and 6
        blk.bn1.weight[1] = 0  # 3x3 output channel 1 is 0 + shortcut v -> v
        blk.bn1.bias[1] = 0
        blk.bn1.running_mean[1] = 0
        blk.rprelu1.shift_in[0, 1] = 0
        blk.rprelu1.shift_out[0, 1] = 0
        blk.rsign2.shift[0, 1] = -v  # the 1x1 conv binarises exact zeros in channel 1
    return static, images(space, 3, 12, 10, seed=6)


def test_sign_zero_activations_count_zero(monkeypatch, threads):
    static, x = _zero_network()
    with torch.no_grad():
        h = static.stem(x)
        assert (static.blocks[0].rsign1(h) == 0).sum() > 0
        o1 = static.blocks[0].rprelu1(shortcut_add(static.blocks[0].bn1(
            static.blocks[0].conv_kxk(static.blocks[0].rsign1(h))), h))
        assert (static.blocks[0].rsign2(o1) == 0).sum() > 0
    engine = BinaryEngine(pack_model(static), threads=threads)
    assert check_engine(static, engine, x) == 0
    assert check_engine(static, engine, x[:1]) == 0
    # Without the correction the zeros would count as +1 and the logits would differ.
    monkeypatch.setattr(runtime_mod.BinaryEngine, "_zero_fix", staticmethod(lambda *a: None))
    with torch.no_grad():
        ref = static(x)
    out = torch.from_numpy(engine(x))
    assert float((out - ref).norm() / ref.norm()) > TOL


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_in_one_pass_match_layer_by_layer(monkeypatch, threads):
    """A block run in one pass (K×K and 1×1 units in the same jobs) gives the same logits bit for bit, and its
    timing entry covers both layers."""
    from nasbnn.engine.bench import random_static

    monkeypatch.setattr(runtime_mod, "FUSE_MIN_BYTES", 0)  # every block of a batch-1 input in one pass
    rng = random.Random(5)
    for name in ("fashion-mnist", "cifar", "tiny"):
        space = create_space(name)
        for arch in (space.largest(), space.smallest(), space.sample(rng), space.sample(rng)):
            packed = pack_model(random_static(space, arch, seed=2))
            one, apart = BinaryEngine(packed), BinaryEngine(packed, fuse=False)
            x = images(space, 1, space.resolution + 3).numpy()
            timings: list = []
            out = one.run(x, threads=threads, timings=timings)
            assert np.array_equal(out, apart.run(x, threads=threads)), (name, str(arch))
            assert [t.layers for t in timings] == [1] + [2] * ((len(packed.layers) - 1) // 2) + [1]
            assert timings[1].name == "blocks.0"
            # batches of several images run layer by layer (one pass measured slower there)
            two: list = []
            one.run(np.concatenate([x, x]), threads=threads, timings=two)
            assert {t.layers for t in two} == {1}


def test_one_pass_falls_back_on_exact_zeros(monkeypatch):
    """Exact zeros in a block's input or in its K×K output need sign(0) corrections, which the one-pass kernel
    does not apply: it reports the zeros and the block runs again layer by layer, with the same result."""
    monkeypatch.setattr(runtime_mod, "FUSE_MIN_BYTES", 0)
    static, x = _zero_network()
    x1 = x[:1]
    engine = BinaryEngine(pack_model(static), threads=1)
    assert check_engine(static, engine, x1) == 0
    assert np.array_equal(engine(x1), BinaryEngine(pack_model(static), fuse=False)(x1, threads=1))
    program = engine._program(1, x1.shape[2], x1.shape[3], 1)
    stem, block0 = program[0], program[1]
    assert block0.fallback, "block 0 should run in one pass"
    src = engine._step(stem, np.ascontiguousarray(x1.numpy()))
    assert src[2]  # the stem's output has exact zeros: the block's input carries corrections
    # Given the same words without them, the kernel runs and reports the exact zeros of its K×K output.
    _, mid_zeros = block0.kernel((src[0], src[1], False), *block0.args)
    assert mid_zeros > 0


def test_divergence_is_detected_not_excused(tiny_static):
    """A real mismatch (a wrong weight bit in the packed model) is reported as such, never as a tie."""
    packed = pack_model(tiny_static)
    bad = dict(packed.tensors)
    w = bad["blocks.1.conv_kxk.weight"].copy()
    w[3] ^= np.uint64(0b101)
    bad["blocks.1.conv_kxk.weight"] = w
    engine = BinaryEngine(PackedModel(packed.space, packed.arch, bad))
    x = images(tiny_static.space, 2, 16)
    res = compare(tiny_static, engine, x)
    assert res["unexplained"] == 2 and res["sign_ties"] == 0
    assert {d["layer"] for d in res["diverging"]} == {"stage1.block1.conv3x3"}
    assert explain_divergence(tiny_static, BinaryEngine(packed), x[:1])["kind"] == "none"


# --------------------------------------------------------------------------------------------- packed files
@pytest.fixture(scope="module")
def tiny_static() -> StaticBNN:
    space = create_space("tiny")
    return export_subnet(supernet("tiny"), space.largest()).eval()


def test_engine_leaves_pytorch_threads_alone(tiny_static, monkeypatch):
    """The engine's threading layer is never OpenMP (whose thread count PyTorch shares) unless asked for."""
    import os

    import numba

    monkeypatch.setattr(runtime_mod, "plan_layer", finest_plan)  # every layer on the thread pool
    engine = BinaryEngine(pack_model(tiny_static))
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        engine(images(tiny_static.space, 2, 16), threads=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(prev)
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        assert numba.threading_layer() in ("tbb", "workqueue")


def test_pack_save_load_roundtrip(tmp_path, tiny_static):
    packed = pack_model(tiny_static)
    path = packed.save(tmp_path / "m.nbp")
    loaded = PackedModel.load(path)
    assert loaded.arch == tiny_static.arch and loaded.space == tiny_static.space
    assert set(loaded.tensors) == set(packed.tensors)
    for k, v in packed.tensors.items():
        assert np.array_equal(loaded.tensors[k], v), k
    assert loaded.float_bytes == packed.float_bytes > 8 * packed.nbytes
    x = images(tiny_static.space, 2, 16)
    assert np.array_equal(BinaryEngine(loaded)(x), BinaryEngine(packed)(x))
    meta = loaded.metadata()
    assert meta["format"] == "nasbnn-packed" and meta["format_version"] == 1
    # the header keeps the kinds' text; the layers and the engine's timings carry them as LayerKind
    kinds = [layer["kind"] for layer in json.loads(json.dumps(meta))["layers"]]
    assert kinds == ["int8 conv"] + ["binary conv"] * (len(kinds) - 1)
    assert [spec.kind for spec in loaded.layers] == [LayerKind(k) for k in kinds]
    assert ConvSpec(**meta["layers"][1]) == loaded.layers[1]  # a header's layer reads back as the typed spec
    with pytest.raises(ValueError, match="binary conf"):
        ConvSpec(**{**meta["layers"][1], "kind": "binary conf"})
    timings: list = []
    BinaryEngine(loaded).run(x, timings=timings)
    assert [t.kind for t in timings] == [spec.kind for spec in loaded.layers] + [LayerKind.FP_LINEAR]
    w = packed.tensors["blocks.0.conv_kxk.weight"]
    assert w.dtype == np.uint64 and w.shape == (8, 3, 3, 1)


def _rewrite_header(src: Path, dst: Path, edit) -> None:  # type: ignore[no-untyped-def]
    blob = src.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * ((-len(new)) % 8)
    dst.write_bytes(len(new).to_bytes(8, "little") + new + blob[8 + n:])


def test_bad_packed_files(tmp_path, tiny_static):
    good = pack_model(tiny_static).save(tmp_path / "good.nbp")
    blob = good.read_bytes()
    cases = {
        "missing": (tmp_path / "nope.nbp", "does not exist"),
        "folder": (tmp_path, "is a folder, not a file"),
        "empty": (tmp_path / "empty.nbp", "empty or truncated"),
        "short": (tmp_path / "short.nbp", "truncated"),
        "torch": (tmp_path / "model.pt", "not a nasbnn packed model"),
        "plain": (tmp_path / "plain.safetensors", "not a nasbnn packed model"),
        "version": (tmp_path / "v2.nbp", "format version 2"),
        "shape": (tmp_path / "shape.nbp", "expected"),
    }
    (tmp_path / "empty.nbp").write_bytes(b"")
    (tmp_path / "short.nbp").write_bytes(blob[: len(blob) - 100])
    torch.save(tiny_static.state_dict(), tmp_path / "model.pt")
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))

    def bump(h):  # type: ignore[no-untyped-def]
        h["__metadata__"]["format_version"] = "2"

    _rewrite_header(good, tmp_path / "v2.nbp", bump)

    def reshape(h):  # type: ignore[no-untyped-def]
        h["classifier.bias"]["shape"] = [1, h["classifier.bias"]["shape"][0]]

    _rewrite_header(good, tmp_path / "shape.nbp", reshape)
    for label, (path, text) in cases.items():
        with pytest.raises(CheckpointError, match=text) as info:
            PackedModel.load(path)
        assert "\n" not in str(info.value), label


def test_padding_bits_and_uninitialised_networks(tiny_static, caplog):
    packed = pack_model(tiny_static)
    bad = dict(packed.tensors)
    w = bad["blocks.0.conv_kxk.weight"].copy()
    w[0, 0, 0, 0] |= np.uint64(1 << 63)  # 8 channels per word: bit 63 is padding
    bad["blocks.0.conv_kxk.weight"] = w
    with pytest.raises(CheckpointError, match="padding bits"):
        PackedModel(packed.space, packed.arch, bad)
    const = copy.deepcopy(tiny_static)
    with torch.no_grad():
        const.blocks[0].conv_kxk.weight[2] = 0.5  # a constant filter: standardisation divides by 0
    with pytest.raises(EngineError, match="not finite"):
        pack_model(const)
    tie = copy.deepcopy(tiny_static)
    with torch.no_grad():
        w = tie.blocks[1].conv_1x1.weight
        w[0] = 0
        w[0, 0] = 1
        w[0, 1] = -1  # the other weights of filter 0 equal its mean: sign 0
    with caplog.at_level("WARNING", logger="nasbnn.engine.packed"):
        tied = pack_model(tie)  # the zero weights pack as +1, with a warning naming the layer and count
    assert "blocks.1.conv_1x1: " in caplog.text and "sign 0" in caplog.text
    n_in = tie.blocks[1].conv_1x1.weight.shape[1]
    zero_count = int((tie.blocks[1].conv_1x1.prepared_weight()[0] == 0).sum())
    assert zero_count == n_in - 2 > 0
    words = tied.tensors["blocks.1.conv_1x1.weight"]
    bits = np.unpackbits(np.ascontiguousarray(words[0]).reshape(-1).view(np.uint8), bitorder="little")[:n_in]
    assert bits.tolist() == [0, 1] + [0] * (n_in - 2)  # bit 1 is -1: only the -1 weight; the ties are +1
    with pytest.raises(EngineError, match="StaticBNN"):
        pack_model(torch.nn.Linear(2, 2))


def test_input_validation(tiny_static):
    engine = BinaryEngine(pack_model(tiny_static))
    x = images(tiny_static.space, 2, 16)
    ref = engine(x)
    assert np.allclose(engine(x.numpy().astype(np.float64)), ref)
    assert np.array_equal(engine(np.asfortranarray(x.numpy())), ref)  # non-contiguous input is copied
    assert np.array_equal(engine(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)), ref)
    bad = {
        "4-D": x[0],
        "channels": torch.randn(2, 4, 16, 16),
        "empty": torch.randn(0, 3, 16, 16),
        "dtype": np.zeros((1, 3, 16, 16), np.complex64),
        "NaN": torch.full((1, 3, 16, 16), float("nan")),
    }
    for label, value in bad.items():
        with pytest.raises(InputError, match=label if label != "dtype" else "dtype") as info:
            engine(value)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError):
        engine(np.array([["a"]]))
    with pytest.raises(EngineError, match="threads"):
        engine(x, threads=0)


# --------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("name", ["tiny", "fashion-mnist"])
def test_onnx_export_matches_pytorch(tmp_path, name):
    pytest.importorskip("onnxruntime")
    from nasbnn.engine.onnx_export import check_onnx, export_onnx

    space = create_space(name)
    for i, arch in enumerate([space.largest(), space.sample(random.Random(2))]):
        static = export_subnet(supernet(name), arch).eval()
        path = export_onnx(static, tmp_path / f"{name}{i}.onnx")
        assert check_onnx(static, path, images(space, 3, space.resolution, seed=i)) <= TOL


# --------------------------------------------------------------------------------------------- latency model
def test_latency_model_recovers_coefficients(tmp_path):
    from nasbnn.engine.latency import LatencyModel

    rng = np.random.default_rng(0)
    bops = rng.uniform(0, 3e9, 200)
    flops = rng.uniform(0, 5e7, 200)
    ms = 0.6 * bops / 1e9 + 9.0 * flops / 1e9 + 0.02 + rng.normal(0, 1e-4, 200)
    model = LatencyModel.fit(np.column_stack([bops, flops, ms]))
    assert model.a_ms_per_gbop == pytest.approx(0.6, rel=1e-2)
    assert model.b_ms_per_gflop == pytest.approx(9.0, rel=2e-2)
    assert model.c_ms_per_layer == pytest.approx(0.02, rel=2e-2)
    # Launches that ran two layers (a block in one pass): rows (BOPs, FLOPs, layers, ms), same coefficients.
    from nasbnn.engine.latency import _launch_features

    feats = np.column_stack([bops, flops, np.ones(200)])
    spans = [1] + [2] * 99 + [1]
    launch = _launch_features(feats, spans)
    assert launch.shape == (101, 3) and launch[1, 2] == 2 and launch[:, 0].sum() == pytest.approx(bops.sum())
    lms = 0.6 * launch[:, 0] / 1e9 + 9.0 * launch[:, 1] / 1e9 + 0.02 * launch[:, 2]
    blocks = LatencyModel.fit(np.column_stack([launch, lms]))
    assert (blocks.a_ms_per_gbop, blocks.b_ms_per_gflop, blocks.c_ms_per_layer) == pytest.approx((0.6, 9.0, 0.02))
    # A negative true coefficient is clamped to 0 (non-negative least squares).
    neg = LatencyModel.fit(np.column_stack([bops, flops, 0.5 * bops / 1e9 - 2.0 * flops / 1e9 + 0.1]))
    assert neg.b_ms_per_gflop == 0.0 and neg.a_ms_per_gbop > 0
    path = model.save(tmp_path / "lat.json")
    again = LatencyModel.load(path)
    assert again == model
    space = create_space("tiny")
    assert again.predict(space.largest(), space) > again.predict(space.smallest(), space) > 0
    (tmp_path / "bad.json").write_text("{\"format\": \"other\"}")
    with pytest.raises(CheckpointError, match="not a latency model"):
        LatencyModel.load(tmp_path / "bad.json")
    with pytest.raises(EngineError, match="at least 3 finite rows"):
        LatencyModel.fit([[1.0, 2.0, 3.0]])
    # One file, one model per engine thread count: chosen by thread count, never guessed.
    from nasbnn.engine.latency import save_models

    two = LatencyModel(0.3, 9.0, 0.01, meta={"threads": 2})
    assert model.threads == 1 and two.threads == 2
    both = save_models([model, two], tmp_path / "both.json")
    assert LatencyModel.load(both, threads=2) == two and LatencyModel.load(both, threads=1) == model
    with pytest.raises(CheckpointError, match=r"\[1, 2\] engine threads"):
        LatencyModel.load(both)
    with pytest.raises(CheckpointError, match="latency fit --threads 4"):
        LatencyModel.load(both, threads=4)
    assert LatencyModel.load(path, threads=1) == model
    with pytest.raises(EngineError, match="same thread count"):
        save_models([model, model], tmp_path / "dup.json")


def test_latency_cost_fn_and_rank_correlations():
    from scipy import stats

    from nasbnn.engine.latency import LatencyModel, kendall_tau, latency_cost_fn, spearman_rho

    space = create_space("fashion-mnist")
    cost = latency_cost_fn(LatencyModel(1.0, 10.0, 0.01), space)
    assert isinstance(cost(space.largest()), float) and cost(space.largest()) > cost(space.smallest())
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 30).astype(float), rng.normal(size=30)
    assert spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b)[0])


# --------------------------------------------------------------------------------------------- CLI
def test_bench_cli_json(capsys):
    assert main(["bench", "--space", "tiny", "--largest", "--json", "--repeats", "1", "--warmup", "0",
                 "--batch", "1", "2", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("end_to_end_speedup", "binary_conv_speedup", "machine", "threads", "batches", "packed_bytes"):
        assert key in res
    assert res["threads"] == 1 and set(res["batches"]) == {"1", "2"}
    layers = res["batches"]["1"]["layers"]
    assert layers[0]["name"] == "stem.conv" and layers[-1]["name"] == "classifier"
    assert all("mops" in lay and lay["engine_ms"]["min"] > 0 for lay in layers)
    assert res["agreement"]["unexplained"] == 0
    assert main(["bench", "--space", "tiny", "--smallest", "--repeats", "1", "--warmup", "0", "--batch", "1"]) == 0
    assert "speedup" in capsys.readouterr().out
    assert main(["bench", "--space", "tiny", "--largest", "--threads", "999"]) == 2
    assert "threads" in capsys.readouterr().err


def test_benchmark_settles_each_side_before_timing_it(monkeypatch):
    """With ``settle`` every timed engine call and every timed float call follows untimed calls of the same
    side; without it the engine's timed call follows the float network's."""
    from nasbnn.engine import bench, frozen

    log: list[str] = []
    run, forward = BinaryEngine.run, frozen.FrozenBNN.forward
    monkeypatch.setattr(BinaryEngine, "run", lambda self, *a, **k: (log.append("e"), run(self, *a, **k))[1])
    monkeypatch.setattr(frozen.FrozenBNN, "forward", lambda self, x: (log.append("f"), forward(self, x))[1])
    space = create_space("tiny")
    static = bench.random_static(space, space.smallest())
    for settle, sequence in ((1e-9, "eeeff"), (0.0, "efe")):  # 1 ns: exactly one untimed call of each side
        log.clear()
        res = bench.benchmark(static, batch_sizes=(1,), threads=1, repeats=2, warmup=0, settle=settle)
        assert res["settle_seconds"] == settle
        # the first calls compile the engine and check agreement; then two repeats of the protocol
        assert "".join(log).endswith(sequence * 2), (settle, log)
    log.clear()
    bench.benchmark(static, batch_sizes=(1,), threads=1, repeats=1, warmup=0, settle=0.2)
    # a tiny network's calls take milliseconds: 0.2 s of settling is several untimed calls of each side
    assert log.count("f") >= 3 and log.count("e") >= 5, log


def test_bench_rows_of_blocks_run_in_one_pass(monkeypatch):
    """A block run in one pass is one row of the benchmark: its two layers' OPs and float times summed."""
    from nasbnn.cost import layer_costs
    from nasbnn.engine import bench

    monkeypatch.setattr(runtime_mod, "FUSE_MIN_BYTES", 0)
    space = create_space("tiny")
    static = bench.random_static(space, space.largest())
    res = bench.benchmark(static, batch_sizes=(1, 2), threads=1, repeats=1, warmup=0, settle=0)
    costs = layer_costs(static.arch, space, space.resolution)
    rows = res["batches"]["1"]["layers"]
    nblocks = (len(costs) - 2) // 2  # stem, two convs per block, classifier
    assert len(rows) == 2 + nblocks and rows[0]["name"] == "stem.conv" and rows[-1]["name"] == "classifier"
    first = rows[1]
    assert first["layers"] == [costs[1].name, costs[2].name] and first["name"] == f"{costs[1].name}+conv1x1"
    assert first["mops"] == pytest.approx(costs[1].cost.mops + costs[2].cost.mops)
    assert first["engine_layer"] == "blocks.0" and first["out_channels"] == costs[2].out_channels
    assert len(res["batches"]["2"]["layers"]) == len(costs)  # batch 2 runs layer by layer


def test_latency_cli(tmp_path, capsys):
    out = tmp_path / "lat.json"
    assert main(["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "1", "--out", str(out),
                 "--threads", "1", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["all"]["n"] == 4 and "spearman" in summary["all"]["ops"]
    assert set(summary["threads"]) == {"1", "2"} and -1 <= summary["cross_thread_kendall"]["1~2"] <= 1
    for t in ("1", "2"):
        assert summary["threads"][t]["model"]["meta"]["threads"] == int(t)
    assert main(["latency", "predict", "--model", str(out), "--space", "tiny", "--largest", "--threads", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("ms")
    assert main(["latency", "predict", "--model", str(out), "--space", "tiny", "--largest"]) == 2
    assert "latency_threads" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1, 2])
def test_grouped_conv_with_24_channels_per_group(threads):
    """Groups whose first channel is not on a 16-lane vector boundary (96 channels in 4 groups) must read their
    shortcut channels, not those of the vector the group's offset falls in."""
    space = create_space("fashion-mnist")
    arch = space.parse("c16k3g1.1|c32k3g1.1,c32k3g1.1|c64k5g1.1,c64k5g1.1|c96k5g2.1,c96k5g2.1,c96k5g4.1")
    from nasbnn.engine.bench import random_static

    net = random_static(space, arch).eval()
    res = compare(net, BinaryEngine(pack_model(net), threads=threads), torch.randn(2, 1, 28, 28,
                                                                              generator=torch.Generator().manual_seed(0)))
    assert res["unexplained"] == 0 and res["agree"] == 2, res
