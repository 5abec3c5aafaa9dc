"""The data package: idx / CIFAR / synthetic datasets, hold-out, and deterministic, resumable, sharded batches."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nasbnn.config import DataConfig, SyntheticDataConfig
from nasbnn.data import Augment, DataBundle, Normalize, TensorSplit, build_data, derive_seed
from nasbnn.data.augment import draw_params, hflip, random_crop
from nasbnn.data.cifar import safe_unpickle
from nasbnn.data.idx import read_idx
from nasbnn.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)",
)
FM_MEAN, FM_STD = 0.2860, 0.3530


# ----------------------------------------------------------------------------------------- helpers
def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, gz: bool = True) -> Path:
    """Writes an unsigned-byte idx file (header: 0, 0, 0x08, ndim, then big-endian int32 dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, array.ndim]) if magic is None else magic.to_bytes(4, "big")
    raw = head + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw, compresslevel=1))
    else:
        path.write_bytes(raw)
    return path


def make_idx_folder(folder: Path, *, n_train: int = 60, n_test: int = 25, size: int = 12, gz: bool = True,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tiny 10-class idx dataset with random pixels and balanced labels."""
    rs = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tx = rs.randint(0, 256, (n_train, size, size)).astype(np.uint8)
    ty = (np.arange(n_train) % 10)[rs.permutation(n_train)].astype(np.uint8)
    ex = rs.randint(0, 256, (n_test, size, size)).astype(np.uint8)
    ey = (np.arange(n_test) % 10).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte", tx, gz=gz)
    write_idx(folder / "train-labels-idx1-ubyte", ty, gz=gz)
    write_idx(folder / "t10k-images-idx3-ubyte", ex, gz=gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", ey, gz=gz)
    return tx, ty, ex, ey


@pytest.fixture
def tiny(tmp_path) -> tuple[DataBundle, tuple[np.ndarray, ...]]:
    arrays = make_idx_folder(tmp_path / "idx")
    cfg = DataConfig(name="fashion-mnist", root=str(tmp_path / "idx"), holdout_per_class=2)
    return build_data(cfg, resolution=12, seed=7), arrays


def collect(batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = [], []
    for x, y in batches:
        xs.append(x.clone())
        ys.append(y.clone())
    return xs, ys


def assert_same_batches(a, b) -> None:
    assert len(a[0]) == len(b[0])
    for xa, xb, ya, yb in zip(a[0], b[0], a[1], b[1]):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)


# --------------------------------------------------------------------------------- real dataset
@pytest.fixture(scope="module")
def fmnist() -> DataBundle:
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    return build_data(DataConfig(), resolution=28, seed=0)


@needs_fmnist
def test_fashion_mnist_from_debian_package(fmnist):
    b = fmnist
    assert (b.name, b.num_classes, b.in_channels, b.resolution) == ("fashion-mnist", 10, 1, 28)
    assert (len(b.train), len(b.search_val), len(b.test)) == (60000 - 5000, 5000, 10000)
    assert torch.bincount(b.search_val.labels).tolist() == [500] * 10
    assert torch.bincount(b.train.labels).tolist() == [5500] * 10
    assert torch.bincount(b.test.labels).tolist() == [1000] * 10
    assert b.test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official t10k order
    xs, ys = collect(b.test.loader(batch_size=2500, train=False, seed=0))
    assert [x.shape for x in xs] == [torch.Size([2500, 1, 28, 28])] * 4
    x = torch.cat(xs)
    assert torch.equal(torch.cat(ys), b.test.labels)
    # normalised with the dataset statistics: about zero mean, unit std, black maps to -mean/std
    assert abs(float(x.mean())) < 0.05 and 0.95 < float(x.std()) < 1.05
    assert float(x.min()) == pytest.approx(-FM_MEAN / FM_STD, abs=1e-5)
    assert float(x.max()) == pytest.approx((1 - FM_MEAN) / FM_STD, abs=1e-5)


@needs_fmnist
def test_fashion_mnist_train_batch_speed(fmnist):
    batches = fmnist.train.loader(batch_size=256, train=True, seed=0)
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    for _ in range(30):
        x, y = next(it)
    per_batch = (time.perf_counter() - start) / 30
    assert x.shape == (256, 1, 28, 28) and y.shape == (256,)
    assert per_batch < 0.02, f"{per_batch * 1e3:.1f} ms per augmented batch of 256"


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match=r"Fashion-MNIST not found in .*nowhere.*apt-get install dataset-fashion-mnist"):
        build_data(DataConfig(root=str(tmp_path / "nowhere")), resolution=28, seed=0)
    make_idx_folder(tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing train-images-idx3-ubyte\.gz\); install it with"):
        build_data(DataConfig(root=str(tmp_path / "d")), resolution=28, seed=0)
    with pytest.raises(DataError, match=r"MNIST not found in .*set data\.root"):
        build_data(DataConfig(name="mnist", root=str(tmp_path / "nowhere")), resolution=28, seed=0)


@needs_fmnist
def test_corrupted_fashion_mnist_copy(tmp_path):
    copy = tmp_path / "fm"
    shutil.copytree(FMNIST, copy)
    labels = copy / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[3] = 0x02  # magic 2050
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz has magic number 2050, expected 2049"):
        build_data(DataConfig(root=str(copy)), resolution=28, seed=0)
    shutil.copy(FMNIST / "train-labels-idx1-ubyte.gz", labels)
    images = copy / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:200_000])
    with pytest.raises(DataError, match=r"cannot read .*t10k-images-idx3-ubyte\.gz: .*damaged"):
        build_data(DataConfig(root=str(copy)), resolution=28, seed=0)


# ------------------------------------------------------------------------------- tiny idx files
def test_tiny_idx_files_load_exactly(tmp_path):
    for gz in (True, False):
        folder = tmp_path / f"gz{gz}"
        _, ty, ex, ey = make_idx_folder(folder, gz=gz)
        b = build_data(DataConfig(root=str(folder), holdout_per_class=0), resolution=12, seed=0)
        assert (len(b.train), len(b.search_val), len(b.test)) == (60, 0, 25)
        assert b.train.labels.tolist() == ty.tolist() and b.test.labels.tolist() == ey.tolist()
        (x,), (y,) = collect(b.test.loader(batch_size=100, train=False, seed=0))
        expected = (torch.from_numpy(ex).float()[:, None] / 255 - FM_MEAN) / FM_STD
        torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
        assert y.tolist() == ey.tolist()
        assert len(b.search_val.loader(batch_size=4, train=False, seed=0)) == 0


def test_malformed_idx_files(tmp_path):
    arr = np.zeros((3, 4, 4), np.uint8)
    bad = write_idx(tmp_path / "m", arr, magic=2049)
    with pytest.raises(DataError, match=r"m\.gz has magic number 2049, expected 2051"):
        read_idx(bad, magic=2051)
    raw = write_idx(tmp_path / "t", arr, gz=False)
    raw.write_bytes(raw.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"t is truncated: the header announces 3x4x4 = 48 bytes of data, the file "
                                        r"holds 43"):
        read_idx(raw, magic=2051)
    assert read_idx(write_idx(tmp_path / "ok", arr), magic=2051).shape == (3, 4, 4)
    # label out of range, count mismatch
    make_idx_folder(tmp_path / "a")
    write_idx(tmp_path / "a" / "t10k-labels-idx1-ubyte", np.full(25, 12, np.uint8))
    with pytest.raises(DataError, match=r"has label 12; Fashion-MNIST labels are 0\.\.9"):
        build_data(DataConfig(root=str(tmp_path / "a")), resolution=12, seed=0)
    write_idx(tmp_path / "a" / "t10k-labels-idx1-ubyte", np.zeros(24, np.uint8))
    with pytest.raises(DataError, match=r"holds 25 images but .* holds 24 labels"):
        build_data(DataConfig(root=str(tmp_path / "a")), resolution=12, seed=0)


def test_holdout_too_large(tmp_path):
    make_idx_folder(tmp_path / "a")  # 6 images per class
    with pytest.raises(DataError, match=r"has 6 training images, too few to hold out 6 .* at most 5"):
        build_data(DataConfig(root=str(tmp_path / "a"), holdout_per_class=6), resolution=12, seed=0)


def test_resize_and_resolution_option(tmp_path):
    make_idx_folder(tmp_path / "a")
    b = build_data(DataConfig(root=str(tmp_path / "a"), holdout_per_class=1), resolution=16, seed=0)
    assert b.resolution == 16
    x, _ = next(iter(b.train.loader(batch_size=8, train=True, seed=0)))
    assert x.shape == (8, 1, 16, 16)
    with pytest.raises(DataError, match=r"data\.resolution=20 applies to imagefolder only"):
        build_data(DataConfig(root=str(tmp_path / "a"), resolution=20), resolution=16, seed=0)


# ------------------------------------------------------------------------------ holdout / limits
def test_holdout_disjoint_stable_and_seeded(tmp_path):
    make_idx_folder(tmp_path / "a", n_train=200)
    cfg = DataConfig(root=str(tmp_path / "a"), holdout_per_class=3)
    b1 = build_data(cfg, resolution=12, seed=5)
    b2 = build_data(cfg, resolution=12, seed=5)
    b3 = build_data(cfg, resolution=12, seed=6)
    ids = lambda split: split._index.tolist()  # noqa: E731
    assert ids(b1.train) == ids(b2.train) and ids(b1.search_val) == ids(b2.search_val)
    assert ids(b1.search_val) != ids(b3.search_val)
    assert not set(ids(b1.train)) & set(ids(b1.search_val))
    assert sorted(ids(b1.train) + ids(b1.search_val)) == list(range(200))
    assert ids(b1.train) == sorted(ids(b1.train))  # the rest stays in file order
    assert torch.bincount(b1.search_val.labels).tolist() == [3] * 10
    limited = build_data(cfg.model_copy(update={"limit_train": 17}), resolution=12, seed=5)
    assert ids(limited.train) == ids(b1.train)[:17]


# ---------------------------------------------------------------------------------- batch plans
def test_same_seed_same_batches_other_epoch_other_order(tiny):
    b, _ = tiny
    a1 = collect(b.train.loader(batch_size=6, train=True, seed=3, epoch=1))
    a2 = collect(b.train.loader(batch_size=6, train=True, seed=3, epoch=1))
    assert_same_batches(a1, a2)
    assert len(a1[0]) == 40 // 6  # drop_last for training
    other = collect(b.train.loader(batch_size=6, train=True, seed=3, epoch=2))
    assert not torch.equal(torch.cat(a1[1]), torch.cat(other[1]))
    full = collect(b.train.loader(batch_size=6, train=True, seed=3, epoch=1, drop_last=False))
    assert len(full[0]) == 7 and full[0][-1].shape[0] == 4
    assert sorted(torch.cat(full[1]).tolist()) == sorted(b.train.labels.tolist())


def test_global_rngs_untouched(tiny):
    b, _ = tiny
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    collect(b.train.loader(batch_size=8, train=True, seed=0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state(), np_state))


def test_resume_equals_suffix_of_full_pass(tiny):
    b, _ = tiny
    full = collect(b.train.loader(batch_size=6, train=True, seed=1, epoch=4))
    for k in (0, 3, len(full[0])):
        batches = b.train.loader(batch_size=6, train=True, seed=1, epoch=4, start_batch=k)
        assert len(batches) == len(full[0]) - k
        assert_same_batches(collect(batches), (full[0][k:], full[1][k:]))
    with pytest.raises(DataError, match="start batch 7 is outside this epoch of 6 batches"):
        b.train.loader(batch_size=6, train=True, seed=1, start_batch=7)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_add_up_to_the_global_batch(tiny, world_size):
    b, _ = tiny
    single = collect(b.train.loader(batch_size=8, train=True, seed=2, epoch=1))
    shards = [collect(b.train.loader(batch_size=8, train=True, seed=2, epoch=1, rank=r, world_size=world_size,
                                     start_batch=1)) for r in range(world_size)]
    for i in range(len(single[0]) - 1):
        assert all(s[0][i].shape[0] == 8 // world_size for s in shards)
        assert torch.equal(torch.cat([s[0][i] for s in shards]), single[0][i + 1])
        assert torch.equal(torch.cat([s[1][i] for s in shards]), single[1][i + 1])
    with pytest.raises(DataError, match="batch size 6 is not divisible by the 4 ranks"):
        b.train.loader(batch_size=6, train=True, seed=0, world_size=4)


def test_eval_shards_are_ceil_split_without_padding(tiny):
    b, _ = tiny  # 25 test images, batches of 10: 10, 10, 5
    single = collect(b.test.loader(batch_size=10, train=False, seed=0))
    shards = [collect(b.test.loader(batch_size=10, train=False, seed=0, rank=r, world_size=4)) for r in range(4)]
    assert [[x.shape[0] for x in s[0]] for s in shards] == [[3, 3, 2], [3, 3, 2], [3, 3, 1], [1, 1, 0]]
    for i in range(3):
        assert torch.equal(torch.cat([s[0][i] for s in shards]), single[0][i])
        assert torch.equal(torch.cat([s[1][i] for s in shards]), single[1][i])
    assert torch.equal(torch.cat(single[1]), b.test.labels)  # fixed order
    assert shards[3][0][2].shape == (0, 1, 12, 12)
    sub = b.test.subset(range(5, 12))
    assert torch.equal(sub.labels, b.test.labels[5:12])
    assert torch.equal(next(iter(sub.loader(batch_size=7, train=False, seed=0)))[0], torch.cat(single[0])[5:12])


def test_augmentation_changes_images_keeps_labels(tiny):
    b, (tx, ty, _, _) = tiny
    train = b.train
    plain = TensorSplit(torch.from_numpy(tx)[:, None], torch.from_numpy(ty.astype(np.int64)),
                        norm=Normalize((FM_MEAN,), (FM_STD,)))
    base = plain.subset(train._index)
    order = b.train.loader(batch_size=10, train=True, seed=9).plan.order
    (ref,), _ = collect(base.loader(batch_size=1000, train=False, seed=0))
    xs, ys = collect(train.loader(batch_size=10, train=True, seed=9))
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, train.labels[order[: y.numel()]])
    changed = 0
    fill = -FM_MEAN / FM_STD
    for j in range(y.numel()):
        src = ref[order[j]]
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2), value=fill)
        candidates = [c for dy in range(5) for dx in range(5) for c in
                      (padded[:, dy:dy + 12, dx:dx + 12], padded[:, dy:dy + 12, dx:dx + 12].flip(2))]
        assert any(torch.allclose(x[j], c, atol=1e-6) for c in candidates), f"sample {j} is not a crop/flip"
        changed += not torch.allclose(x[j], src)
    assert changed >= 0.8 * y.numel()
    # the eval transform of the same split leaves images untouched
    (ev,), _ = collect(train.loader(batch_size=1000, train=False, seed=9))
    assert torch.equal(ev, ref)


def test_random_crop_and_flip_ops():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.uint8).reshape(2, 1, 3, 4)
    out = random_crop(x, torch.tensor([[0, 0], [1, 1]]), pad=1)
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 1, 2], [0, 4, 5, 6]]
    assert torch.equal(out[1], x[1])
    shifted = random_crop(x, torch.tensor([[2, 2], [1, 2]]), pad=1)[1, 0]
    assert shifted.tolist() == [[13, 14, 15, 0], [17, 18, 19, 0], [21, 22, 23, 0]]
    flipped = hflip(x, torch.tensor([True, False]))
    assert torch.equal(flipped[0], x[0].flip(2)) and torch.equal(flipped[1], x[1])
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    o1, f1 = draw_params(g1, 16, Augment(crop_pad=2, flip=True))
    o2, f2 = draw_params(g2, 16, Augment(crop_pad=2, flip=True))
    assert torch.equal(o1, o2) and torch.equal(f1, f2) and int(o1.max()) <= 4 and int(o1.min()) >= 0


def test_derive_seed_is_a_fixed_scheme():
    assert derive_seed(0, "perm", 0) == 1828712840738437139
    assert derive_seed(0, "perm", 1) != derive_seed(1, "perm", 0)
    assert 0 <= derive_seed(-5, "aug", 3, 7) < 2**63


def test_channels_last_and_no_augment(tiny, tmp_path):
    b, _ = tiny
    x, _ = next(iter(b.train.loader(batch_size=4, train=True, seed=0, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    cfg = DataConfig(root=str(tmp_path / "idx"), holdout_per_class=2, augment=False)
    plain = build_data(cfg, resolution=12, seed=7)
    (xa,), (ya,) = collect(plain.train.loader(batch_size=40, train=True, seed=4))
    (ref,), _ = collect(plain.train.loader(batch_size=40, train=False, seed=4))
    order = plain.train.loader(batch_size=40, train=True, seed=4).plan.order
    assert torch.equal(xa, ref[order]) and torch.equal(ya, plain.train.labels[order])


# ----------------------------------------------------------------------------------------- CIFAR
def _fake_cifar10(parent: Path, n: int = 20) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rs = np.random.RandomState(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in (np.arange(n) + i) % 10],
            b"data": rs.randint(0, 256, (n, 3072)).astype(np.uint8),
            b"filenames": [f"img{j}.png".encode() for j in range(n)],
        }
        # protocol 2 as the original (Python 2) files; the test batch as a modern protocol-5 pickle
        (folder / name).write_bytes(pickle.dumps(batch, protocol=5 if name == "test_batch" else 2))
    return folder


def test_damaged_cifar_batches_are_one_line_errors(tmp_path):
    folder = _fake_cifar10(tmp_path)
    for junk in (b"hello world" * 10, b"\x80\x02}q", b""):  # a memo read (KeyError), truncated, empty
        (folder / "data_batch_3").write_bytes(junk)
        with pytest.raises(DataError, match=r"cannot read .*data_batch_3: .*damaged"):
            build_data(DataConfig(name="cifar10", root=str(folder), holdout_per_class=1), resolution=32, seed=0)


def test_fake_cifar10_folder_loads(tmp_path):
    folder = _fake_cifar10(tmp_path)
    raw = safe_unpickle(folder / "data_batch_2")
    for root in (folder, tmp_path):
        b = build_data(DataConfig(name="cifar10", root=str(root), holdout_per_class=1), resolution=32, seed=0)
        assert (b.num_classes, b.in_channels, b.resolution) == (10, 3, 32)
        assert (len(b.train), len(b.search_val), len(b.test)) == (90, 10, 20)
    # pixel layout: rows of 3072 = R plane, G plane, B plane, each 32x32 row-major
    img, _ = b.train.subset([]).take(torch.zeros(0, dtype=torch.int64))
    assert img.shape == (0, 3, 32, 32)
    full = build_data(DataConfig(name="cifar10", root=str(folder), holdout_per_class=0), resolution=32, seed=0)
    images, labels = full.train.take(torch.arange(20, 40))
    assert torch.equal(images.reshape(20, -1), torch.from_numpy(raw[b"data"]))
    assert labels.tolist() == raw[b"labels"]
    x, _ = next(iter(full.train.loader(batch_size=20, train=False, seed=0)))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    first, _ = full.train.take(torch.arange(20))
    torch.testing.assert_close(x, (first.float() / 255 - mean) / std, atol=1e-5, rtol=0)


def test_fake_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 300), ("test", 100)):
        batch = {b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [i % 20 for i in range(n)],
                 b"data": np.zeros((n, 3072), np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    b = build_data(DataConfig(name="cifar100", root=str(tmp_path), holdout_per_class=1), resolution=32, seed=0)
    assert (b.num_classes, len(b.train), len(b.search_val), len(b.test)) == (100, 200, 100, 100)
    assert b.test.labels.tolist() == [i % 100 for i in range(100)]


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path):
    folder = _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(str(marker)), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch refers to (posix|os|nt)\.mkdir, which a CIFAR file never needs"):
        build_data(DataConfig(name="cifar10", root=str(folder), holdout_per_class=1), resolution=32, seed=0)
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                                      b"labels": torch.Size([1, 2])}))
    with pytest.raises(DataError, match=r"refers to torch\.Size"):
        build_data(DataConfig(name="cifar10", root=str(folder), holdout_per_class=1), resolution=32, seed=0)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(DataError, match=r"cannot read .*test_batch"):
        build_data(DataConfig(name="cifar10", root=str(folder), holdout_per_class=1), resolution=32, seed=0)


def test_cifar_missing_root_and_bad_shapes(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 needs data\.root; download the python version"):
        build_data(DataConfig(name="cifar10"), resolution=32, seed=0)
    with pytest.raises(DataError, match=r"CIFAR-100 not found in"):
        build_data(DataConfig(name="cifar100", root=str(tmp_path)), resolution=32, seed=0)
    folder = _fake_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be a uint8 array N x 3072"):
        build_data(DataConfig(name="cifar10", root=str(folder)), resolution=32, seed=0)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [10] * 4}))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9, found 10\.\.10"):
        build_data(DataConfig(name="cifar10", root=str(folder)), resolution=32, seed=0)


# ------------------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_and_determinism():
    cfg = DataConfig(name="synthetic", holdout_per_class=4,
                     synthetic=SyntheticDataConfig(num_train=40, num_test=20, num_classes=4, channels=2, resolution=8))
    a = build_data(cfg, resolution=8, seed=1)
    assert (a.num_classes, a.in_channels, a.resolution) == (4, 2, 8)
    assert (len(a.train), len(a.search_val), len(a.test)) == (40, 16, 20)
    assert torch.bincount(a.train.labels).tolist() == [10] * 4
    assert torch.bincount(a.search_val.labels).tolist() == [4] * 4
    b = build_data(cfg, resolution=8, seed=1)
    c = build_data(cfg, resolution=8, seed=2)
    xa, xb, xc = (next(iter(s.test.loader(batch_size=20, train=False, seed=0)))[0] for s in (a, b, c))
    assert torch.equal(xa, xb) and not torch.allclose(xa, xc)
    assert abs(float(xa.mean())) < 0.3 and 0.7 < float(xa.std()) < 1.3
    up = build_data(cfg, resolution=12, seed=1)
    assert next(iter(up.train.loader(batch_size=4, train=True, seed=0)))[0].shape == (4, 2, 12, 12)


def test_synthetic_data_warns_that_it_does_not_read_a_given_root(caplog, tmp_path):
    small = SyntheticDataConfig(num_train=8, num_test=8, num_classes=2, channels=1, resolution=4)
    with caplog.at_level("WARNING", logger="nasbnn.data.build"):
        build_data(DataConfig(name="synthetic", holdout_per_class=1, synthetic=small), resolution=4, seed=0)
        assert not caplog.records
        build_data(DataConfig(name="synthetic", holdout_per_class=1, synthetic=small, root=str(tmp_path)),
                   resolution=4, seed=0)
    assert len(caplog.records) == 1
    assert f"data.root={tmp_path} is not read" in caplog.records[0].getMessage()


def test_synthetic_is_learnable():
    cfg = DataConfig(name="synthetic", holdout_per_class=20)
    b = build_data(cfg, resolution=16, seed=0)
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(3 * 16 * 16, 5)
    with torch.no_grad():
        model.weight.copy_(0.01 * torch.randn(model.weight.shape, generator=gen))
        model.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for epoch in range(2):
        for x, y in b.train.loader(batch_size=32, train=True, seed=0, epoch=epoch):
            loss = torch.nn.functional.cross_entropy(model(x.flatten(1)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        correct = sum(int((model(x.flatten(1)).argmax(1) == y).sum())
                      for x, y in b.test.loader(batch_size=64, train=False, seed=0))
    assert correct / len(b.test) > 0.6  # chance is 0.2


def test_unknown_dataset_and_export_format_raise_config_errors():
    from nasbnn.data.build import DATASETS
    from nasbnn.deploy import EXPORT_FORMATS
    from nasbnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'; valid: .*fashion-mnist"):
        DATASETS.get("nope")
    with pytest.raises(ConfigError, match=r"unknown export format 'nope'; valid: .*onnx"):
        EXPORT_FORMATS.get("nope")
