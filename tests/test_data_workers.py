"""Image-folder loading with worker processes: the same batches and weights for any worker count, the
workers really running (and kept across epochs), JPEG draft decoding of training crops, the core warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from random import Random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from nasbnn.config import RunConfig, load_config
from nasbnn.data import FolderSplit
from nasbnn.data import imagefolder as imf
from nasbnn.data import workers as wk
from nasbnn.train.checkpoint import load_checkpoint
from nasbnn.train.supernet import train_supernet


def photo(rs: np.random.RandomState, width: int, height: int, tint: int) -> Image.Image:
    """Smooth colour fields plus grain, so JPEG crops and scales behave as on photos."""
    low = rs.randint(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = base + rs.randint(-6, 7, (height, width, 1))
    pixels[..., 0] = (pixels[..., 0] + tint) // 2
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg_folder(root: Path, train: int = 10, val: int = 3, size: tuple[int, int] = (40, 30)) -> Path:
    rs = np.random.RandomState(0)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(("ant", "bee", "cow")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                photo(rs, *size, tint=100 * c).save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root


class Recorder:
    """Wraps ``_DecodeDataset._decode`` to note, per decoded item, the process and worker that decoded it
    (appended to a file, so forked workers report back)."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        original = imf._DecodeDataset._decode

        def decode(dataset, item, out):  # type: ignore[no-untyped-def]
            info = get_worker_info()
            seed = dataset.seed if dataset.random_crop else -1
            line = f"{seed} {os.getpid()} {-1 if info is None else info.id} {0 if info is None else info.num_workers}"
            with open(path, "a") as f:
                f.write(line + "\n")
            return original(dataset, item, out)

        monkeypatch.setattr(imf._DecodeDataset, "_decode", decode)

    def rows(self) -> list[tuple[int, int, int, int]]:
        if not self.path.exists():
            return []
        return [tuple(int(v) for v in line.split()) for line in self.path.read_text().split("\n") if line]


def test_two_workers_train_the_same_weights_as_none_and_really_run(tmp_path, monkeypatch):
    root = jpeg_folder(tmp_path / "data")
    runs = {}
    for n in (0, 2):
        rec = Recorder(tmp_path / f"decoded{n}.txt", monkeypatch)
        cfg = load_config(RunConfig, None, [
            "space.name=tiny", "data.name=imagefolder", f"data.root={root}", "data.holdout_per_class=2",
            "data.resolution=16", "data.batch_size=8", "data.eval_batch_size=16", f"data.workers={n}",
            "train.epochs=2", "train.log_every=1", "train.checkpoint_every=100", "train.eval_images=8",
            "train.eval_every_epochs=2", "train.lr=0.005", f"out={tmp_path / f'run{n}'}"])
        train_supernet(cfg, progress=False)
        runs[n] = (load_checkpoint(tmp_path / f"run{n}" / "checkpoint.pt", kind="supernet"), rec.rows())
    (a, rows0), (b, rows2) = runs[0], runs[2]
    assert a["step"] == b["step"] == 6  # 24 training images / 8, two epochs
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for (ka, sa), (_, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]), ka
    main = os.getpid()
    assert rows0 and all(pid == main and wid == -1 for _, pid, wid, _ in rows0)
    assert all(pid != main and nw == 2 for _, pid, _, nw in rows2)
    training = [r for r in rows2 if r[0] == 0]  # training crops with the run seed: two epochs of 24 images
    assert len(training) == 48
    assert {wid for _, _, wid, _ in training} == {0, 1}
    assert len({pid for _, pid, _, _ in training}) == 2  # the same two workers served both epochs


def test_batches_equal_for_any_workers_with_kept_and_concurrent_loaders(tmp_path, monkeypatch):
    root = jpeg_folder(tmp_path / "data", train=6, val=1)
    files = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.jpg"))
    labels = torch.tensor([("ant", "bee", "cow").index(f.split("/")[1]) for f in files])
    ref = FolderSplit(root, files, labels, resolution=16)
    split = FolderSplit(root, files, labels, resolution=16, workers=2)

    def epoch(s: FolderSplit, e: int, **kw) -> list[torch.Tensor]:
        return [x for x, _ in s.loader(batch_size=4, train=True, seed=3, epoch=e, **kw)]

    expected = [epoch(ref, e) for e in range(2)]
    staged = []

    def source():  # type: ignore[no-untyped-def]
        for i in range(3):
            staged.append(i)
            yield i

    ahead = imf._one_ahead(source())
    assert next(ahead) == 0 and staged == [0, 1]  # the next item is pulled before the first is handed out
    assert list(ahead) == [1, 2] and list(imf._one_ahead(iter(()))) == []
    rec = Recorder(tmp_path / "decoded.txt", monkeypatch)
    for e in range(2):
        assert all(torch.equal(u, v) for u, v in zip(epoch(split, e), expected[e], strict=True))
    assert len({pid for _, pid, _, _ in rec.rows()}) == 2  # epoch 1 reused epoch 0's workers
    # Two passes at once (the kept loader is busy): the second gets its own loader, same batches.
    first = iter(split.loader(batch_size=4, train=True, seed=3, epoch=0))
    head = next(first)[0]
    second = epoch(split, 0)
    assert torch.equal(head, expected[0][0])
    assert all(torch.equal(u, v) for u, v in zip(second, expected[0], strict=True))
    assert all(torch.equal(x, v) for (x, _), v in zip(first, expected[0][1:], strict=True))
    # A pass left early lets its workers go; a complete one keeps them.
    assert split._kept is not None
    partial = [x for _, (x, _) in zip(range(1), split.loader(batch_size=4, train=True, seed=3, epoch=1))]
    assert torch.equal(partial[0], expected[1][0]) and split._kept is None
    # An explicit count wins over the split's own; eval batches do not depend on it either.
    assert all(torch.equal(u, v) for u, v in zip(epoch(split, 1, workers=0), expected[1], strict=True))
    ev = [x for x, _ in split.loader(batch_size=5, train=False, seed=0)]
    assert all(torch.equal(u, v) for u, v in zip(ev, [x for x, _ in ref.loader(batch_size=5, train=False, seed=0)],
                                                 strict=True))


def test_jpeg_draft_keeps_the_crop_region(tmp_path):
    path = tmp_path / "big.jpg"
    photo(np.random.RandomState(1), 640, 480, tint=0).save(path, quality=92)
    res, drafted = 64, 0
    for i in range(12):
        with Image.open(path) as img:
            box = imf.random_resized_crop_box(Random(i), *img.size)
            mapped = imf._draft_for_crop(img, box, res)
            scale = 640 / img.size[0]
            if mapped != box:
                drafted += 1
                assert scale in (2, 4, 8) and img.size == (640 // scale, 480 // scale)
                assert [v * scale for v in mapped] == list(box)  # the same region of the picture
                assert min(mapped[2] - mapped[0], mapped[3] - mapped[1]) >= res  # still only downscaled
        full = imf.decode_train(path, res, Random(i), flip=False, draft=False).astype(np.float32)
        fast = imf.decode_train(path, res, Random(i), flip=False, draft=True).astype(np.float32)
        assert full.shape == fast.shape == (res, res, 3)
        assert np.abs(full - fast).mean() < 3.0  # a few levels out of 255, while a crop moved by 8 pixels ...
        with Image.open(path) as img:
            dx = -8 if box[0] >= 8 else 8
            moved = (box[0] + dx, box[1], box[2] + dx, box[3])
            shifted = np.asarray(img.convert("RGB").resize((res, res), Image.Resampling.BILINEAR, box=moved))
        assert np.abs(full - shifted).mean() > 10.0  # ... differs by far more
    assert drafted >= 6
    # Crops too small to reduce, and images that are not JPEGs, decode in full.
    with Image.open(path) as img:
        assert imf._draft_for_crop(img, (0, 0, 400, 300), 256) == (0, 0, 400, 300) and img.size == (640, 480)
    Image.open(path).save(tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as img:
        assert imf._draft_for_crop(img, (0, 0, 640, 480), 32) == (0, 0, 640, 480)
    # The mirrored view is the flipped unmirrored one.
    plain = imf.decode_train(path, res, Random(0), flip=False, draft=True)
    assert np.array_equal(imf.decode_train(path, res, Random(0), flip=True, draft=True), plain[:, ::-1])


def test_warns_once_when_workers_exceed_the_cores(monkeypatch, caplog):
    monkeypatch.setattr(wk, "_warned", set())
    monkeypatch.setattr(wk, "available_cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with caplog.at_level(logging.WARNING, logger=wk.__name__):
        assert wk.check_workers(4) == 4 and not caplog.records
        assert wk.check_workers(6) == 6 and wk.check_workers(6) == 6
        assert len(caplog.records) == 1 and "data.workers=6 exceeds the 4 cores" in caplog.text
        caplog.clear()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # under torchrun each local process has its own workers
        assert wk.check_workers(3) == 3
        assert len(caplog.records) == 1 and "per process x 2 processes" in caplog.text
        assert "at most 2" in caplog.text


def test_batch_ring_hands_back_what_was_put_and_refuses_a_reused_slot():
    ring = imf._BatchRing(slots=3, capacity=2, resolution=4)
    rs = np.random.RandomState(0)
    images = [rs.randint(0, 256, (4, 4, 3)).astype(np.uint8) for _ in range(5)]
    def put(ordinal: int, batch: list[np.ndarray]) -> imf._Slot:
        ring.slot(ordinal, len(batch))[:] = np.stack(batch)
        return ring.stamp(ordinal, len(batch))

    first = put(0, images[:2])
    assert first == imf._Slot(0, 2)
    later = put(4, images[2:3])  # slot 1, a one-image (last) batch
    x = ring.take(first)
    assert x.shape == (2, 3, 4, 4) and torch.equal(x, torch.from_numpy(np.stack(images[:2])).permute(0, 3, 1, 2))
    assert torch.equal(ring.take(later)[0], torch.from_numpy(images[2]).permute(2, 0, 1))
    put(3, images[3:5])  # batch 3 reuses slot 0 while batch 0 would still be in use
    with pytest.raises(RuntimeError, match=r"batch 0 was overwritten .*slot 0 holds batch 3"):
        ring.check(first)
    with pytest.raises(RuntimeError, match="overwritten"):
        ring.take(first)


def test_ring_prefetches_fewer_batches_when_they_are_large():
    mb = 1 << 20
    assert imf._prefetch(0, 10 * mb) == 0
    assert imf._prefetch(8, 64 * 224 * 224 * 3) == 4  # 64 images per process, 8 workers: 34 slots, 327 MB
    assert imf._prefetch(8, 30 * mb) == 4  # (1024 // 30 - 2) // 8 = 4: 34 x 30 MB within 1 GiB
    assert imf._prefetch(8, 40 * mb) == 2  # (25 - 2) // 8
    assert imf._prefetch(8, 2048 * 224 * 224 * 3) == 1  # a 2,048-image calibration batch: one per worker
    assert imf._prefetch(2, 100 * mb) == 4


def test_loader_refuses_a_ring_that_does_not_fit_in_shared_memory(tmp_path, monkeypatch):
    root = jpeg_folder(tmp_path / "data", train=3, val=1)
    files = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.jpg"))
    split = FolderSplit(root, files, torch.zeros(len(files), dtype=torch.int64), resolution=16, workers=2)
    monkeypatch.setattr(imf.shutil, "disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(imf.DataError, match=r"need 22 KiB of shared memory for their batches, but /dev/shm has "
                                            r"1 KiB free; lower data.workers"):
        list(split.loader(batch_size=3, train=True, seed=0))


def test_unreadable_training_image_in_a_worker_names_the_file(tmp_path):
    root = jpeg_folder(tmp_path / "data", train=3, val=1)
    (root / "train" / "bee" / "001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    files = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.jpg"))
    split = FolderSplit(root, files, torch.zeros(len(files), dtype=torch.int64), resolution=16, workers=2)
    with pytest.raises(imf.DataError, match=r"cannot decode image .*train/bee/001\.jpg .*remove or replace"):
        list(split.loader(batch_size=3, train=True, seed=0))
    assert split._kept is None  # the failed pass did not keep its workers


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cpu_uint8_normalisation_is_bit_identical_to_addcmul(channels, layout):
    """The table lookup of a CPU uint8 batch equals the device path's ``addcmul(shift, x.float(), scale)``
    exactly, for NCHW and NHWC-viewed-as-NCHW batches, and returns contiguous NCHW float32."""
    from nasbnn.data.augment import Normalize
    from nasbnn.data.base import finish_images

    gen = torch.Generator().manual_seed(channels)
    norm = Normalize((0.4914, 0.4822, 0.4465)[:channels], (0.2470, 0.2435, 0.2616)[:channels])
    if layout == "nhwc":
        x = torch.randint(0, 256, (5, 17, 19, channels), dtype=torch.uint8, generator=gen).permute(0, 3, 1, 2)
    else:
        x = torch.randint(0, 256, (5, channels, 17, 19), dtype=torch.uint8, generator=gen)
    scale, shift = norm.scale_shift(channels, True, torch.device("cpu"))
    expected = torch.addcmul(shift, x.contiguous().float(), scale)
    got = finish_images(x, norm, False, {})
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, expected)
    cl = finish_images(x, norm, True, {})
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, expected)
    cache: dict = {}
    batches = [finish_images(x, norm, False, cache) for _ in range(3)]  # held: three different buffers
    assert len({b.data_ptr() for b in batches}) == 3 and all(torch.equal(b, expected) for b in batches)


def test_output_pool_reuses_a_buffer_only_when_no_tensor_or_view_holds_it():
    from nasbnn.data.pixels import OutputPool

    pool = OutputPool(keep=2)
    a = pool.take((2, 3))
    first = a.data_ptr()
    view = a[1:]
    del a
    b = pool.take((2, 3))  # the first buffer is still seen through the view
    assert b.data_ptr() != first
    c = pool.take((2, 3))  # both kept buffers in use: a new one, which replaces the oldest in the pool
    assert c.data_ptr() not in (first, b.data_ptr())
    del view
    second = b.data_ptr()
    del b
    assert pool.take((2, 3)).data_ptr() == second  # free again (the first one left the pool)
    assert pool.take((3, 3)).shape == (3, 3)
