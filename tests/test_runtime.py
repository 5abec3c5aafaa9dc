"""The torch-free runtime: packed models load and run, and ``nasbnn infer`` classifies files, in a process
where ``import torch`` fails; bad inputs to ``nasbnn infer`` are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasbnn import create_space
from nasbnn.cli import main
from nasbnn.engine.bench import random_static
from nasbnn.engine.infer import near_ties
from nasbnn.engine.packed import PackedModel, pack_model
from nasbnn.engine.runtime import BinaryEngine
from nasbnn.engine.verify import compare, consumer_shifts, reference_units

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
NAMES = ["ant", "bee", "cat", "dog", "eel"]

# Runs in a fresh interpreter where PyTorch cannot be imported: loads the model, runs the engine, runs the
# CLI, and reports every module of the training stack that got imported.
_TORCH_FREE = """
import contextlib, io, json, sys
sys.modules["torch"] = None
import numpy as np
from nasbnn.engine.packed import PackedModel
from nasbnn.engine.runtime import BinaryEngine
from nasbnn.cli import main
model, x_path, out_path, png = sys.argv[1:5]
logits = BinaryEngine(PackedModel.load(model), threads=1)(np.load(x_path))
np.save(out_path, logits)
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    code = main(["infer", "--packed", model, png, x_path, "--top-k", "5", "--threads", "1", "--json", "--ties"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               ("torch", "pydantic", "omegaconf", "tqdm", "matplotlib", "tensorboard") and sys.modules[m] is not None)
heavy += sorted(m for m in sys.modules if m.startswith(("nasbnn.models", "nasbnn.train", "nasbnn.ops")))
print(json.dumps({"code": code, "infer": json.loads(buf.getvalue()), "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory):
    space = create_space("tiny")
    net = random_static(space, space.largest(), seed=3)
    path = tmp_path_factory.mktemp("rt") / "model.nbp"
    pack_model(net, preprocess={"mean": MEAN, "std": STD, "class_names": NAMES, "dataset": "toy"}).save(path)
    return path, net


def _png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels).save(path)
    return path


def _pixels(seed: int, shape=(16, 16, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _normalised(pixels: np.ndarray) -> np.ndarray:
    m, s = np.float32(MEAN)[:, None, None], np.float32(STD)[:, None, None]
    return ((pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255) - m) / s)[None]


def test_packed_file_records_its_input(packed_file):
    path, _ = packed_file
    spec = PackedModel.load(path).input
    assert (spec.channels, spec.resolution) == (3, 16)
    assert spec.mean == pytest.approx(MEAN) and spec.std == pytest.approx(STD)
    assert spec.class_names == tuple(NAMES) and spec.dataset == "toy"


def test_torch_free_process_gives_the_same_logits(packed_file, tmp_path):
    path, net = packed_file
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    pixels = _pixels(1)
    png = _png(tmp_path / "img.png", pixels)
    engine = BinaryEngine(PackedModel.load(path), threads=1)
    ref = engine(x.numpy())
    check = compare(net, engine, x)  # the normal path agrees with the simulated network
    assert check["unexplained"] == 0 and check["agree"] + check["sign_ties"] == 6
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _TORCH_FREE, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy"), str(png)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["code"] == 0 and res["heavy"] == []
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), ref)
    preds = res["infer"]["predictions"]
    assert [p["input"] for p in preds] == [str(png)] + [f"{tmp_path / 'x.npy'}[{i}]" for i in range(6)]
    ties = near_ties(PackedModel.load(path), engine, np.concatenate([_normalised(pixels), x.numpy()]))
    assert [p["near_ties"] for p in preds] == ties
    img_ref = engine(_normalised(pixels))[0]
    for p, row in zip(preds, [img_ref, *ref]):
        order = np.argsort(-row, kind="stable")
        assert [t["class"] for t in p["top"]] == order.tolist()
        assert [t["name"] for t in p["top"]] == [NAMES[c] for c in order]
        np.testing.assert_allclose([t["logit"] for t in p["top"]], row[order], rtol=1e-6)
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose([t["probability"] for t in p["top"]], probs[order], rtol=1e-5)


_LAYER = """
import sys
import numba
import numpy as np
from nasbnn.engine.packed import PackedModel
from nasbnn.engine.runtime import BinaryEngine
np.save(sys.argv[3], BinaryEngine(PackedModel.load(sys.argv[1]), threads=2)(np.load(sys.argv[2])))
print(numba.threading_layer())
"""


@pytest.mark.parametrize("layer", ["tbb", "safe", "workqueue"])
def test_threading_layer_the_user_names(packed_file, tmp_path, layer):
    """``NUMBA_THREADING_LAYER`` is honoured, TBB included (numba alone does not find the tbb wheel's library)."""
    from nasbnn.engine.kernels import _preload_tbb

    if layer != "workqueue" and not _preload_tbb():
        pytest.skip("oneTBB does not load here")
    path, _ = packed_file
    x = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NUMBA_THREADING_LAYER": layer}
    proc = subprocess.run([sys.executable, "-c", _LAYER, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == ("workqueue" if layer == "workqueue" else "tbb")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), BinaryEngine(PackedModel.load(path), threads=1)(x))


def test_unknown_threading_layer_is_a_one_line_error(packed_file, tmp_path):
    path, _ = packed_file
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NUMBA_THREADING_LAYER": "nosuchlayer"}
    proc = subprocess.run([sys.executable, "-m", "nasbnn", "infer", "--packed", str(path), str(tmp_path / "x.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NUMBA_THREADING_LAYER='nosuchlayer'" in lines[0] and "Traceback" not in proc.stderr


def test_near_ties_are_those_of_the_simulated_network(packed_file):
    path, net = packed_file
    model = PackedModel.load(path)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    tol = 0.02  # wide, so that every image has some: the counts are then a real comparison
    got = near_ties(model, BinaryEngine(model, threads=1), x.numpy(), tol=tol)
    names = ["stem.conv"] + [f"blocks.{i}.{c}" for i in range(model.num_blocks) for c in ("conv_kxk", "conv_1x1")]
    want = [{"count": 0, "first_layer": None} for _ in range(4)]
    for name, r, s in zip(names, reference_units(net, x), consumer_shifts(net)):
        scale = np.abs(r).reshape(4, -1).max(axis=1)
        hits = (np.abs(r + s) <= tol * scale[:, None, None, None]).reshape(4, -1).sum(axis=1)
        for b in range(4):
            want[b]["count"] += int(hits[b])
            want[b]["first_layer"] = want[b]["first_layer"] or (name if hits[b] else None)
    assert got == want and all(w["count"] > 0 for w in want)


def test_infer_text_output_and_uint8_npy(packed_file, tmp_path, capsys):
    path, _ = packed_file
    pixels = np.stack([_pixels(5), _pixels(6)])  # [2, H, W, C]
    np.save(tmp_path / "u8.npy", pixels.transpose(0, 3, 1, 2).copy())
    assert main(["infer", "--packed", str(path), str(tmp_path / "u8.npy"), "--top-k", "2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    engine = BinaryEngine(PackedModel.load(path), threads=1)
    assert len(lines) == 2
    for line, px in zip(lines, pixels):
        best = int(np.argmax(engine(_normalised(px))[0]))
        assert line.split(": ", 1)[1].startswith(NAMES[best] + " ")


def _err(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nasbnn infer: error: ") and "Traceback" not in err
    return err


def test_infer_bad_inputs(packed_file, tmp_path, capsys):
    path, _ = packed_file
    base = ["infer", "--packed", str(path)]
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    assert "cannot read image" in _err([*base, str(tmp_path / "junk.png")], capsys)
    gray = _png(tmp_path / "gray.png", _pixels(2, (16, 16)))
    assert "1 channel(s) (L); the network takes 3" in _err([*base, str(gray)], capsys)
    rgba = _png(tmp_path / "rgba.png", _pixels(2, (16, 16, 4)))
    assert "4 channel(s) (RGBA)" in _err([*base, str(rgba)], capsys)
    big = _png(tmp_path / "big.png", _pixels(3, (20, 16, 3)))
    assert "is 16x20; the network takes 16x16" in _err([*base, str(big)], capsys)
    assert "does not exist" in _err([*base, str(tmp_path / "missing.png")], capsys)
    assert "is a folder, not a file" in _err([*base, str(tmp_path)], capsys)
    np.save(tmp_path / "bad.npy", np.zeros((2, 1, 16, 16), np.float32))
    assert "has shape (2, 1, 16, 16)" in _err([*base, str(tmp_path / "bad.npy")], capsys)
    np.save(tmp_path / "nan.npy", np.full((1, 3, 16, 16), np.nan, np.float32))
    assert "NaN" in _err([*base, str(tmp_path / "nan.npy")], capsys)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "cannot read" in _err([*base, str(tmp_path / "obj.npy")], capsys)
    np.savez(tmp_path / "arch.npz", x=np.zeros((1, 3, 16, 16), np.float32))
    (tmp_path / "arch.npz").rename(tmp_path / "arch.npy")  # np.load would return an NpzFile, not an array
    assert "is an .npz archive, not an .npy array" in _err([*base, str(tmp_path / "arch.npy")], capsys)
    (tmp_path / "text.npy").write_text("1 2 3\n")
    assert "is not an .npy file (no NumPy header)" in _err([*base, str(tmp_path / "text.npy")], capsys)
    good = _png(tmp_path / "ok.png", _pixels(4))
    assert "--top-k must be at least 1" in _err([*base, str(good), "--top-k", "0"], capsys)
    assert "mean/std need 1 or 3 values" in _err([*base, str(good), "--mean", "0.1", "0.2", "--std", "1", "1"],
                                                 capsys)


def test_normalisation_arguments_name_the_counts_a_network_takes():
    from nasbnn.engine.infer import InferInputError, normalization
    from nasbnn.engine.packed import InputSpec

    gray, rgb = InputSpec(channels=1, resolution=28), InputSpec(channels=3, resolution=16)
    with pytest.raises(InferInputError, match=r"one value each \(the network has one input channel\); got 2 and 1"):
        normalization(gray, [0.1, 0.2], [1.0])
    with pytest.raises(InferInputError, match=r"need 1 or 3 values \(one per channel\); got 2 and 2"):
        normalization(rgb, [0.1, 0.2], [1.0, 1.0])
    m, s = normalization(rgb, [0.5], [0.25])
    assert m.tolist() == [0.5] * 3 and s.tolist() == [0.25] * 3


def _rewrite_header(src: Path, dst: Path, edit) -> Path:
    """Copies a packed file with its safetensors metadata changed by ``edit(meta)``."""
    blob = src.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    edit(header["__metadata__"])
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(len(new).to_bytes(8, "little") + new + blob[8 + n:])
    return dst


def test_infer_other_format_version_and_old_files(packed_file, tmp_path, capsys):
    path, _ = packed_file
    png = _png(tmp_path / "ok.png", _pixels(7))
    v2 = _rewrite_header(path, tmp_path / "v2.nbp", lambda m: m.update(format_version="2"))
    assert "format version 2; this nasbnn reads version 1" in _err(["infer", "--packed", str(v2), str(png)], capsys)

    def drop_input(meta):
        model = json.loads(meta["model"])
        del model["input"]
        meta["model"] = json.dumps(model)

    old = _rewrite_header(path, tmp_path / "old.nbp", drop_input)  # as written before the input fields existed
    spec = PackedModel.load(old).input
    assert spec.mean is None and spec.class_names is None and spec.resolution == 16
    assert "does not record its input normalisation" in _err(["infer", "--packed", str(old), str(png)], capsys)
    assert main(["infer", "--packed", str(old), str(png), "--mean", *map(str, MEAN), "--std", *map(str, STD),
                 "--json", "--threads", "1"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"][0]
    ref = BinaryEngine(PackedModel.load(path), threads=1)(_normalised(_pixels(7)))[0]
    assert top["class"] == int(np.argmax(ref)) and top["name"] == str(int(np.argmax(ref)))
    assert top["logit"] == pytest.approx(float(ref.max()), rel=1e-6)


def test_bad_input_fields_in_the_header(packed_file, tmp_path):
    path, _ = packed_file

    def bad_std(meta):
        model = json.loads(meta["model"])
        model["input"]["std"] = [0.1, 0.0, 0.2]
        meta["model"] = json.dumps(model)

    from nasbnn.errors import CheckpointError

    with pytest.raises(CheckpointError, match="std positive"):
        PackedModel.load(_rewrite_header(path, tmp_path / "bad.nbp", bad_std))


def test_infer_inputs_too_large_for_the_arithmetic(packed_file, tmp_path, capsys, monkeypatch):
    """Images Pillow refuses as decompression bombs, .npy headers that declare more than the file holds, values
    beyond float32 and outputs that overflow: one line each, nothing allocated for the declared size."""
    from PIL import Image

    path, _ = packed_file
    base = ["infer", "--packed", str(path)]
    png = _png(tmp_path / "ok.png", _pixels(5))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 16x16 = 256 pixels, over twice the limit: a "bomb"
    assert "far larger than any network input" in _err([*base, str(png)], capsys)
    monkeypatch.undo()
    f = tmp_path / "huge.npy"
    np.save(f, np.zeros((1, 3, 16, 16), np.float32))
    blob = f.read_bytes()  # the same header length: the longer shape takes four bytes of the padding
    f.write_bytes(blob.replace(b"(1, 3, 16, 16), }    ", b"(99999, 3, 16, 16), }"))
    assert "declares an array of shape (99999, 3, 16, 16)" in _err([*base, str(f)], capsys)
    np.save(f, np.full((1, 3, 16, 16), 1e300))
    assert "beyond the float32 range" in _err([*base, str(f)], capsys)
    assert "overflow float32; is --std that small" in _err([*base, str(png), "--mean", "0.5", "--std", "1e-45"],
                                                           capsys)
    np.save(f, np.full((1, 3, 16, 16), 3e38, np.float32))
    assert "output is not finite" in _err([*base, str(f)], capsys)


def test_class_names_print_as_one_harmless_line_each():
    from nasbnn.engine.infer import format_predictions

    row = {"input": "a.png", "top": [{"name": "cat\n\x1b[31mdog", "probability": 0.5}]}
    text = format_predictions({"predictions": [row]})
    assert text == "a.png: cat\\n\\x1b[31mdog 50.0%"


def test_header_input_fields_must_agree_with_the_network(packed_file, tmp_path):
    from nasbnn.errors import CheckpointError

    path, _ = packed_file

    def channels(meta):
        model = json.loads(meta["model"])
        model["input"]["channels"] = -3
        meta["model"] = json.dumps(model)

    with pytest.raises(CheckpointError, match="input channels -3 disagrees with the network's 3"):
        PackedModel.load(_rewrite_header(path, tmp_path / "bad.nbp", channels))
