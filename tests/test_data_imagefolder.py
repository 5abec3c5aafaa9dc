"""Image folders: the hold-out manifest (written, reused, reproducible, refused on mismatch) and PIL decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasbnn.config import DataConfig
from nasbnn.data import FolderSplit, build_data
from nasbnn.errors import DataError

CLASSES = ["cat", "dog", "fox"]


def make_folder(root: Path, *, train_per_class: int = 6, val_per_class: int = 2) -> Path:
    """3 classes of 20x24 (width x height) PNG / JPG images with random pixels."""
    rs = np.random.RandomState(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rs.randint(0, 256, (24, 20, 3)).astype(np.uint8)
                pixels[..., 0] = 80 * c  # class-dependent red channel
                ext = ".PNG" if i == 1 else ".png"
                Image.fromarray(pixels).save(folder / f"img{i:02d}{ext}")
            (folder / "notes.txt").write_text("not an image")
    return root


def cfg_for(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), holdout_per_class=kw.pop("holdout_per_class", 2), **kw)


def collect(batches):
    xs, ys = [], []
    for x, y in batches:
        xs.append(x)
        ys.append(y)
    return xs, ys


def test_manifest_written_reused_and_reproducible(tmp_path):
    root = make_folder(tmp_path / "data")
    b = build_data(cfg_for(root), resolution=16, seed=0, run_dir=tmp_path / "run")
    assert (b.name, b.num_classes, b.in_channels, b.resolution) == ("imagefolder", 3, 3, 16)
    assert (len(b.train), len(b.search_val), len(b.test)) == (12, 6, 6)
    assert torch.bincount(b.search_val.labels).tolist() == [2, 2, 2]
    assert b.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    path = tmp_path / "run" / "split.json"
    data = json.loads(path.read_text())
    assert data["classes"] == CLASSES and data["seed"] == 0 and data["holdout_per_class"] == 2
    assert len(data["train"]) == 12 and len(data["holdout"]) == 6 and len(data["hash"]) == 64
    assert not set(data["train"]) & set(data["holdout"])
    assert {f.split("/")[0] for f in data["train"]} == {"train"}
    assert "train/dog/img01.PNG" in data["train"] + data["holdout"]  # upper-case extension
    assert not any(f.endswith(".txt") for f in data["train"])
    assert isinstance(b.train, FolderSplit) and b.train.files == data["train"]
    before = path.read_bytes()
    again = build_data(cfg_for(root), resolution=16, seed=0, run_dir=tmp_path / "run")
    assert path.read_bytes() == before and again.train.files == b.train.files
    # another machine / run folder with the same seed draws the same split
    other = build_data(cfg_for(root, manifest=str(tmp_path / "m" / "split.json")), resolution=16, seed=0)
    assert (tmp_path / "m" / "split.json").read_bytes() == before
    assert other.search_val.files == b.search_val.files
    reseeded = build_data(cfg_for(root), resolution=16, seed=1)
    assert reseeded.search_val.files != b.search_val.files


def test_mismatched_or_modified_manifest_is_refused(tmp_path):
    root = make_folder(tmp_path / "data")
    run = tmp_path / "run"
    build_data(cfg_for(root), resolution=16, seed=0, run_dir=run)
    with pytest.raises(DataError, match=r"was made with seed 0, this run uses seed 3; delete .*split\.json"):
        build_data(cfg_for(root), resolution=16, seed=3, run_dir=run)
    with pytest.raises(DataError, match=r"holds out 2 images per class, this run asks for data\.holdout_per_class=1"):
        build_data(cfg_for(root, holdout_per_class=1), resolution=16, seed=0, run_dir=run)
    path = run / "split.json"
    data = json.loads(path.read_text())
    data["train"][0], data["holdout"][0] = data["holdout"][0], data["train"][0]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"was modified .*; delete"):
        build_data(cfg_for(root), resolution=16, seed=0, run_dir=run)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read split manifest"):
        build_data(cfg_for(root), resolution=16, seed=0, run_dir=run)


def test_eval_transform_and_normalisation(tmp_path):
    root = make_folder(tmp_path / "data")
    Image.new("RGB", (30, 40), (255, 0, 128)).save(root / "val" / "fox" / "zz_solid.png")
    b = build_data(cfg_for(root), resolution=16, seed=0)
    xs, ys = collect(b.test.loader(batch_size=4, train=False, seed=0))
    assert [x.shape for x in xs] == [(4, 3, 16, 16), (3, 3, 16, 16)]
    x = torch.cat(xs)
    assert torch.equal(torch.cat(ys), b.test.labels) and float(x.min()) >= -1 - 1e-6 and float(x.max()) <= 1 + 1e-6
    solid = x[-1]  # the last file of the last class
    torch.testing.assert_close(solid[0], torch.ones(16, 16))
    torch.testing.assert_close(solid[1], -torch.ones(16, 16))
    torch.testing.assert_close(solid[2], torch.full((16, 16), 128 / 127.5 - 1))
    # class-dependent red channel survives the resize
    red = x[:6, 0].mean(dim=(1, 2))
    assert torch.allclose(red, (80 * torch.tensor([0, 0, 1, 1, 2, 2.0])) / 127.5 - 1, atol=0.02)


def test_training_batches_deterministic_resumable_sharded(tmp_path):
    root = make_folder(tmp_path / "data")
    b = build_data(cfg_for(root), resolution=16, seed=0)
    full = collect(b.train.loader(batch_size=4, train=True, seed=5, epoch=2))
    assert len(full[0]) == 3 and all(x.shape == (4, 3, 16, 16) for x in full[0])
    assert sorted(torch.cat(full[1]).tolist()) == sorted(b.train.labels.tolist())
    state = torch.get_rng_state()
    again = collect(b.train.loader(batch_size=4, train=True, seed=5, epoch=2, workers=2))
    assert torch.equal(torch.get_rng_state(), state)  # the loader never draws from the global RNG
    for xa, xb in zip(full[0], again[0]):
        assert torch.equal(xa, xb)
    resumed = collect(b.train.loader(batch_size=4, train=True, seed=5, epoch=2, start_batch=1))
    for xa, xb in zip(full[0][1:], resumed[0]):
        assert torch.equal(xa, xb)
    shards = [collect(b.train.loader(batch_size=4, train=True, seed=5, epoch=2, rank=r, world_size=2))
              for r in range(2)]
    for i in range(3):
        assert torch.equal(torch.cat([s[0][i] for s in shards]), full[0][i])
        assert torch.equal(torch.cat([s[1][i] for s in shards]), full[1][i])
    # random resized crops differ from the eval view of the same images
    (ev,), _ = collect(b.train.loader(batch_size=12, train=False, seed=5))
    order = b.train.loader(batch_size=4, train=True, seed=5, epoch=2).plan.order
    assert not torch.allclose(torch.cat(full[0]), ev[order])
    other_epoch = collect(b.train.loader(batch_size=4, train=True, seed=5, epoch=3))
    assert not torch.equal(torch.cat(other_epoch[0]), torch.cat(full[0]))


def test_unreadable_image_and_bad_layouts(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "val" / "dog" / "broken.png").write_bytes(b"")
    b = build_data(cfg_for(root), resolution=16, seed=0)
    with pytest.raises(DataError, match=r"cannot decode image .*val/dog/broken\.png .*remove or replace the file"):
        collect(b.test.loader(batch_size=4, train=False, seed=0))
    with pytest.raises(DataError, match=r"needs data\.root"):
        build_data(DataConfig(name="imagefolder"), resolution=16, seed=0)
    with pytest.raises(DataError, match=r"too few to hold out 6 .* at most 5"):
        build_data(cfg_for(root, holdout_per_class=6), resolution=16, seed=0)
    (root / "val" / "emu").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "emu" / "a.png")
    with pytest.raises(DataError, match=r"same class folders .*unexpected \['emu'\]"):
        build_data(cfg_for(root), resolution=16, seed=0)


def test_limit_train_covers_every_class(tmp_path):
    root = make_folder(tmp_path / "data")
    b = build_data(cfg_for(root, limit_train=5, resolution=20), resolution=16, seed=0)
    assert b.resolution == 20 and len(b.train) == 5
    assert sorted(b.train.labels.tolist()) == [0, 0, 1, 1, 2]
    x, _ = next(iter(b.train.loader(batch_size=5, train=True, seed=0)))
    assert x.shape == (5, 3, 20, 20)
    sub = b.test.subset(range(1, 4))
    assert sub.files == b.test.files[1:4] and torch.equal(sub.labels, b.test.labels[1:4])


def test_one_class_is_not_a_classification_dataset(tmp_path):
    """A folder of one class trains a network that is right by construction (100 % top-1): refused."""
    import shutil

    root = make_folder(tmp_path / "data")
    for split in ("train", "val"):
        for name in CLASSES[1:]:
            shutil.rmtree(root / split / name)
    with pytest.raises(DataError, match="one class subfolder"):
        build_data(cfg_for(root), resolution=16, seed=0)
