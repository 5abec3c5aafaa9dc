"""The fast image path: Pillow's bilinear resize reproduced bit for bit on numpy arrays, and JPEGs decoded by
simplejpeg giving the same training and evaluation views as Pillow alone, with Pillow taking every file the
fast path does not accept."""

from __future__ import annotations

from pathlib import Path
from random import Random

import numpy as np
import pytest
from PIL import Image

from nasbnn.data import imagefolder as imf
from nasbnn.data import jpeg, resample
from nasbnn.data.augment import random_resized_crop_box

pytest.importorskip("simplejpeg")


def pillow_resize(src: np.ndarray, box, size, flip: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = Image.fromarray(src).resize(size, Image.Resampling.BILINEAR, box=box)
    return np.asarray(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out)


def test_resize_matches_pillow_pixel_for_pixel():
    rng = np.random.default_rng(0)
    cases = 0
    for trial in range(120):
        h, w = int(rng.integers(3, 260)), int(rng.integers(3, 260))
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x0, y0 = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
        boxes = [
            random_resized_crop_box(Random(trial), w, h),  # integer training crops
            (0, 0, w, h),  # whole image (evaluation)
            (x0, y0, float(rng.uniform(x0 + 0.5, w)), float(rng.uniform(y0 + 0.5, h))),  # fractional edges
        ]
        for box in boxes:
            # Down and up in each axis, an identity axis, and a pure crop (box size == output size).
            sizes = [(int(rng.integers(1, 300)), int(rng.integers(1, 300))), (w, int(rng.integers(1, 300))),
                     (int(rng.integers(1, 300)), h), (max(int(box[2] - box[0]), 1), max(int(box[3] - box[1]), 1))]
            for size in sizes:
                flip = bool(rng.integers(0, 2))
                got = resample.resize_box(src, box, size, flip=flip)
                assert np.array_equal(got, pillow_resize(src, box, size, flip)), (h, w, box, size, flip)
                cases += 1
    assert cases == 120 * 3 * 4


def test_both_pass_orders_are_exercised_and_the_probe_tells_them_apart():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    box = (0.0, 0.0, 200.0, 200.0)
    # Columns first under Pillow 13's rule (loses 150 rows, 2 x 20 columns), rows first otherwise.
    tall, wide = (180, 50), (50, 180)
    assert resample._columns_first_13(200, 200, tall) and not resample._columns_first_13(200, 200, wide)
    orders = {rule: resample._resize_with(rule, src, box, tall, False, None) for rule in resample._RULES}
    assert not np.array_equal(orders["pillow13"], orders["rows-first"])  # the order is visible in the pixels
    rule = resample.pillow_order()
    assert rule is not None
    assert np.array_equal(orders[rule], pillow_resize(src, box, tall, False))
    # At and around Pillow 13's threshold (rows lost = 2 x columns lost; an output as tall as the image).
    for size in [(180, 160), (181, 160), (180, 159), (179, 161), (230, 200), (260, 199)]:
        assert np.array_equal(resample.resize_box(src, box, size), pillow_resize(src, box, size, False)), size


def test_resize_refuses_when_pillow_follows_an_unknown_order(monkeypatch):
    monkeypatch.setattr(resample, "pillow_order", lambda: None)
    with pytest.raises(RuntimeError, match="order this module does not reproduce"):
        resample.resize_box(np.zeros((4, 4, 3), np.uint8), (0, 0, 4, 4), (2, 2))


def photo(rs: np.random.RandomState, width: int, height: int) -> Image.Image:
    low = rs.randint(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    return Image.fromarray((base + rs.randint(-8, 9, (height, width, 1))).clip(0, 255).astype(np.uint8))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    rs = np.random.RandomState(0)
    files = {}
    for i, (w, h) in enumerate([(120, 90), (64, 100), (333, 250), (500, 375)]):
        files[f"rgb{i}"] = tmp_path / f"rgb{i}.jpg"
        photo(rs, w, h).save(files[f"rgb{i}"], quality=90)
    files["large"] = tmp_path / "large.jpg"  # crops at least twice the output: drafted by Pillow
    photo(rs, 900, 700).save(files["large"], quality=85)
    files["progressive"] = tmp_path / "progressive.jpg"
    photo(rs, 150, 110).save(files["progressive"], quality=80, progressive=True)
    files["gray"] = tmp_path / "gray.jpg"
    photo(rs, 100, 80).convert("L").save(files["gray"])
    files["cmyk"] = tmp_path / "cmyk.jpg"
    photo(rs, 90, 70).convert("CMYK").save(files["cmyk"])
    files["png"] = tmp_path / "image.png"
    photo(rs, 80, 60).save(files["png"])
    return files


def views(files: dict[str, Path], res: int) -> list[np.ndarray]:
    out = []
    for i, path in enumerate(files.values()):
        for draft in (False, True):
            out.append(imf.decode_train(path, res, Random(i), flip=bool(i % 2), draft=draft))
        out.append(imf.decode_eval(path, res))
        into = np.zeros((res, res, 3), np.uint8)
        assert imf.decode_train(path, res, Random(i), flip=True, draft=False, out=into) is into
        out.append(into)
    return out


def test_simplejpeg_views_equal_pillow_views(images):
    accepted = {name for name, p in images.items() if jpeg.jpeg_size(p.read_bytes()) is not None}
    assert accepted == {"rgb0", "rgb1", "rgb2", "rgb3", "large", "progressive", "gray"}  # not CMYK, not PNG
    for res in (32, 224):
        fast = views(images, res)
        with jpeg.pillow_only():
            assert jpeg.jpeg_size(images["rgb0"].read_bytes()) is None
            plain = views(images, res)
        assert len(fast) == len(plain) == 4 * len(images)
        for a, b in zip(fast, plain):
            assert a.shape == (res, res, 3) and a.flags.c_contiguous and np.array_equal(a, b)


def test_files_the_fast_path_refuses_go_to_pillow_with_its_errors(images, tmp_path, monkeypatch):
    data = images["rgb0"].read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    assert jpeg.jpeg_size(truncated.read_bytes()) is not None and jpeg.jpeg_array(truncated.read_bytes()) is None
    with pytest.raises(OSError, match="truncated"):  # Pillow's own verdict, as before
        imf.decode_train(truncated, 32, Random(0), flip=False, draft=False)
    with pytest.raises(OSError):
        imf.decode_eval(truncated, 32)
    assert jpeg.jpeg_size(b"\xff\xd8 not a jpeg") is None and jpeg.jpeg_size(b"GIF89a") is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 500x375 photo is now a decompression bomb
    assert jpeg.jpeg_size(images["rgb3"].read_bytes()) is None
    with pytest.raises(Image.DecompressionBombError):
        imf.decode_eval(images["rgb3"], 32)
