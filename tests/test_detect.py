"""Binary detectors: box geometry, targets, NMS, OPs against hooks, COCO evaluation, data validation,
and the whole synthesise -> train -> resume -> eval loop at a tiny size."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nasbnn.cli import main
from nasbnn.config import load_config
from nasbnn.detect.boxes import batched_nms, box_iou, nms
from nasbnn.detect.coco import CategoryMap, load_coco_split
from nasbnn.detect.config import DetectConfig, DetectEvalConfig, DetectRunConfig
from nasbnn.detect.cost import detector_cost, detector_layer_costs
from nasbnn.detect.data import DetectionDataset, ImageMeta, detection_batches
from nasbnn.detect.evaluate import coco_evaluate, to_coco_results
from nasbnn.detect.fcos import assign_targets, centerness_target, decode_detections, make_locations
from nasbnn.detect.model import BinaryDetector, HeadOutput
from nasbnn.detect.synthetic import generate_synthetic_coco
from nasbnn.detect.train import load_detector, train_detector
from nasbnn.detect.transforms import flip_boxes, letterbox
from nasbnn.errors import DataError
from nasbnn.export import export_subnet
from nasbnn.models import StaticBNN, SuperBNN
from nasbnn.ops.layers import BinaryConv2d, QConv2d
from nasbnn.presets import create_space
from nasbnn.train.checkpoint import load_checkpoint
from nasbnn.utils.metrics import read_jsonl


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, images=24, val_images=8, size=64, seed=3, classes=3, max_objects=3)
    return root


def tiny_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return ["device=cpu", f"out={out}", "backbone.space=tiny", "backbone.arch=smallest", f"data.root={root}",
            "data.train=train", "data.val=val", "data.canvas=64", "data.batch_size=8", "data.eval_batch_size=16",
            "detect.neck_width=16", "detect.gn_groups=4", "detect.head_convs=1", "train.epochs=2",
            "train.log_every=1", "train.checkpoint_every=2", "train.lr=0.005", "train.warmup_epochs=0", *extra]


def tiny_cfg(root: Path, out: Path, *extra: str) -> DetectRunConfig:
    return load_config(DetectRunConfig, None, tiny_overrides(root, out, *extra))


def write_coco(tmp: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None,
               make_files: bool = True) -> tuple[Path, Path]:
    from PIL import Image

    img_dir = tmp / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    if make_files:
        for im in images:
            Image.new("RGB", (im["width"], im["height"]), (10, 20, 30)).save(img_dir / im["file_name"])
    ann = tmp / "ann.json"
    cats = categories if categories is not None else [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return ann, img_dir


def image(i: int, w: int = 40, h: int = 30) -> dict:
    return {"id": i, "file_name": f"{i}.png", "width": w, "height": h}


def annotation(i: int, image_id: int, bbox: list, cat: int = 4, **kw) -> dict:
    area = bbox[2] * bbox[3] if len(bbox) == 4 else 0
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": area, "iscrowd": 0, **kw}


# ------------------------------------------------------------------------------------------ geometry
def test_letterbox_and_flip_round_trip():
    rng = np.random.default_rng(0)
    for w, h, canvas in ((640, 480, 128), (333, 500, 96), (64, 64, 64), (1000, 10, 128)):
        lb = letterbox(w, h, canvas)
        assert max(lb.new_width, lb.new_height) == canvas and min(lb.new_width, lb.new_height) >= 1
        xy = rng.uniform(0, 1, size=(20, 2)) * [w, h]
        wh = rng.uniform(0, 1, size=(20, 2)) * ([w, h] - xy)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        on_canvas = lb.to_canvas(boxes)
        assert on_canvas[:, 0::2].max() <= lb.new_width + 1e-3 and on_canvas[:, 1::2].max() <= lb.new_height + 1e-3
        np.testing.assert_allclose(lb.to_image(on_canvas), boxes, atol=1e-3 * max(w, h) / canvas)
        flipped = flip_boxes(on_canvas, lb.new_width)
        assert (flipped[:, 2] >= flipped[:, 0]).all()
        np.testing.assert_allclose(flip_boxes(flipped, lb.new_width), on_canvas, atol=1e-5)
        np.testing.assert_allclose(lb.to_image(flipped, flipped=True), boxes, atol=1e-3 * max(w, h) / canvas)


def test_flipped_sample_keeps_the_box_on_the_object(tmp_path):
    from PIL import Image

    img = np.zeros((50, 80, 3), dtype=np.uint8)
    img[10:30, 5:25] = (255, 0, 0)  # a red square at x 5..25, y 10..30 of an 80x50 image
    (tmp_path / "images").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "1.png")
    ann, img_dir = write_coco(tmp_path, [image(1, 80, 50)], [annotation(1, 1, [5, 10, 20, 20])], make_files=False)
    split = load_coco_split(ann, img_dir)
    ds = DetectionDataset(split, canvas=40, in_channels=3, fill=(0, 0, 0))
    for flip in (False, True):
        x, boxes, labels, meta = ds[(0, flip)]
        assert x.shape == (3, 40, 40) and meta.box.new_width == 40 and meta.box.new_height == 25
        x0, y0, x1, y1 = boxes[0]
        expect_x0 = 40 - 12.5 if flip else 2.5
        np.testing.assert_allclose([x0, y0, x1 - x0, y1 - y0], [expect_x0, 5, 10, 10], atol=1e-5)
        inside = x[0, int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1].float()
        assert inside.min() > 200  # red inside the transformed box
        assert x[0, :, int(x1) + 1:].float().max() < 60 and x[0, :, :max(0, int(x0) - 1)].float().max() < 60
        assert x[:, 25:].abs().sum() == 0  # padding rows below the 25-pixel-high image
        back = meta.box.to_image(boxes, flipped=flip)
        np.testing.assert_allclose(back[0], [5, 10, 25, 30], atol=1e-4)
        assert labels.tolist() == [0]


# ------------------------------------------------------------------------------------------ targets
def test_target_assignment_by_hand():
    # One level of stride 8 on a 32x32 canvas: locations at 4, 12, 20, 28 on each axis.
    loc = make_locations([(4, 4)], [8], range_scale=8.0)
    assert loc.points[:4].tolist() == [[4, 4], [12, 4], [20, 4], [28, 4]]
    boxes = torch.tensor([[2.0, 2.0, 22.0, 14.0]])
    cls, ltrb = assign_targets(loc, boxes, torch.tensor([1]), radius=0.0)
    grid = cls.view(4, 4)
    expected = torch.full((4, 4), -1)
    expected[0:2, 0:3] = 1  # x in {4, 12, 20}, y in {4, 12}
    assert torch.equal(grid, expected)
    assert ltrb.view(4, 4, 4)[0, 1].tolist() == [10, 2, 10, 10]  # location (12, 4)
    assert ltrb.view(4, 4, 4)[1, 2].tolist() == [18, 10, 2, 2]  # location (20, 12)
    assert ltrb[cls < 0].abs().sum() == 0
    # Centre sampling with radius 1 stride (8 px) around (12, 8), clipped to the box: x = 12, y in {4, 12}.
    cls_c, _ = assign_targets(loc, boxes, torch.tensor([1]), radius=1.0)
    assert sorted((cls_c >= 0).nonzero().squeeze(1).tolist()) == [1, 5]
    # Two boxes covering (12, 12): the smaller one wins there.
    two = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 16.0, 16.0]])
    cls2, ltrb2 = assign_targets(loc, two, torch.tensor([0, 2]), radius=0.0)
    assert cls2.view(4, 4)[1, 1] == 2 and ltrb2.view(4, 4, 4)[1, 1].tolist() == [4, 4, 4, 4]
    assert cls2.view(4, 4)[0, 0] == 0 and (cls2 == 0).sum() == 15
    # Centerness of those distances.
    ctr = centerness_target(torch.tensor([[10.0, 2.0, 10.0, 10.0], [4.0, 4.0, 4.0, 4.0]]))
    np.testing.assert_allclose(ctr.numpy(), [np.sqrt(0.2), 1.0], rtol=1e-6)
    # No boxes: all background.
    cls0, ltrb0 = assign_targets(loc, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), radius=1.5)
    assert (cls0 == -1).all() and ltrb0.abs().sum() == 0


def test_scale_ranges_send_objects_to_their_level():
    # strides 8 and 16 with range_scale 4: level 0 takes max distances in (0, 32], level 1 (32, inf).
    loc = make_locations([(8, 8), (4, 4)], [8, 16], range_scale=4.0)
    assert loc.counts == [64, 16]
    small = torch.tensor([[20.0, 20.0, 44.0, 44.0]])  # max distance 20 -> level 0 only
    big = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # max distance >= 32 near its border, centre cells at level 1
    cls, _ = assign_targets(loc, small, torch.tensor([0]), radius=0.0)
    assert (cls[:64] >= 0).any() and (cls[64:] < 0).all()
    cls, ltrb = assign_targets(loc, big, torch.tensor([0]), radius=0.0)
    reach = ltrb.max(dim=1).values
    assert (reach[:64][cls[:64] >= 0] <= 32).all() and (reach[64:][cls[64:] >= 0] > 32).all()
    assert (cls[64:] >= 0).sum() == 16


# ------------------------------------------------------------------------------------------ NMS
def _reference_nms(boxes, scores, labels, thr):
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(labels[k] != labels[i] or iou(boxes[k], boxes[i]) <= thr for k in keep):
            keep.append(i)
    return keep


def test_nms_matches_brute_force():
    rnd = random.Random(0)
    for trial in range(25):
        n = rnd.randint(0, 60)
        boxes = []
        for _ in range(n):
            x, y = rnd.uniform(0, 50), rnd.uniform(0, 50)
            boxes.append([x, y, x + rnd.uniform(1, 30), y + rnd.uniform(1, 30)])
        scores = [round(rnd.random(), 1) for _ in range(n)]  # rounded: many ties
        labels = [rnd.randint(0, 2) for _ in range(n)]
        thr = rnd.choice([0.0, 0.3, 0.5, 0.7])
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        s, lab = torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)
        b64 = [[float(v) for v in row] for row in b.tolist()]
        assert batched_nms(b, s, lab, thr).tolist() == _reference_nms(b64, scores, labels, thr), trial
        assert nms(b, s, thr).tolist() == _reference_nms(b64, scores, [0] * n, thr), trial


def test_box_iou_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [[50 / 150, 0.0], [0.0, 0.0]], rtol=1e-6)


# ------------------------------------------------------------------------------------------ OPs
def _hook_count(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """MACs of every convolution as it runs, by kind (shared head layers count once per call)."""
    totals = {"int8": 0.0, "binary": 0.0, "fp": 0.0}

    def hook(m, inputs, out):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        macs = out.numel() / out.shape[0] * (m.in_channels // m.groups) * k * k
        kind = "int8" if isinstance(m, QConv2d) else "binary" if isinstance(m, BinaryConv2d) else "fp"
        totals[kind] += macs

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, BinaryConv2d, QConv2d))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return totals


@pytest.mark.parametrize("space_name,arch_kind,canvas,extra", [
    ("tiny", "largest", 64, {}),
    ("tiny", "smallest", 50, {"binary_towers": True, "extra_levels": 2, "num_levels": 2}),
    ("fashion-mnist", "smallest", 72, {"num_levels": 3, "extra_levels": 0, "head_convs": 3}),
])
def test_detector_ops_match_hooks(space_name, arch_kind, canvas, extra):
    import math

    space = create_space(space_name).with_overrides(in_channels=3)
    arch = space.largest() if arch_kind == "largest" else space.smallest()
    cfg = DetectConfig(neck_width=16, gn_groups=4, **extra)
    model = BinaryDetector(export_subnet(SuperBNN(space), arch), 5, cfg, canvas)
    counted = _hook_count(model, torch.zeros(1, 3, canvas, canvas))
    for convention in ("upstream", "standard"):
        rows = detector_layer_costs(space, arch, cfg, 5, canvas, convention)
        stem = next(r for r in rows if r.name == "stem.conv")
        fp_rows = sum(r.cost.flops for r in rows if r.name != "stem.conv")
        bops = sum(r.cost.bops for r in rows)
        assert bops == counted["binary"]
        assert fp_rows == counted["fp"]
        expect_stem = math.floor(counted["int8"] / 8) if convention == "upstream" else counted["int8"]
        assert stem.cost.flops == expect_stem
        total = detector_cost(space, arch, cfg, 5, canvas, convention)
        assert total.total.bops == bops and total.total.flops == fp_rows + expect_stem
        from nasbnn.cost import arch_cost

        back = arch_cost(arch, space, canvas, convention)
        assert total.backbone.bops == back.bops
        assert total.backbone.flops == back.flops - space.num_classes * (arch.final_width + 1)
        assert total.total.mops == pytest.approx(total.backbone.mops + total.neck_head.mops)


# ------------------------------------------------------------------------------------------ evaluation
def test_perfect_detections_give_map_one(synth):
    split = load_coco_split(synth / "annotations" / "instances_val.json", synth / "val")
    ds = DetectionDataset(split, canvas=48, in_channels=3, fill=(0, 0, 0))  # a different scale than the files
    dets, metas = [], []
    for i in range(len(ds)):
        _, boxes, labels, meta = ds[(i, i % 2 == 1)]  # every other image flipped
        dets.append({"boxes": torch.from_numpy(boxes), "scores": torch.linspace(1.0, 0.9, len(labels)),
                     "labels": torch.from_numpy(labels)})
        metas.append(meta)
    results = to_coco_results(dets, metas, split.categories)
    assert {r["category_id"] for r in results} <= {1, 3, 5}  # original ids, not labels
    assert len(results) == sum(len(b) for b in split.boxes) > 0
    stats = coco_evaluate(split.coco, results, [im.id for im in split.images])
    assert stats["mAP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(1.0) and stats["AR_100"] == pytest.approx(1.0)
    # Dropping half of the detections lowers the recall; no detections at all give 0.
    half = coco_evaluate(split.coco, results[::2], [im.id for im in split.images])
    assert half["AR_100"] < 1.0
    assert coco_evaluate(split.coco, [], [im.id for im in split.images])["mAP"] == 0.0


def test_decoding_recovers_boxes_from_ideal_outputs():
    loc = make_locations([(4, 4)], [8], range_scale=8.0)
    boxes = torch.tensor([[2.0, 2.0, 22.0, 14.0]])
    cls_t, ltrb_t = assign_targets(loc, boxes, torch.tensor([1]), radius=0.0)
    logits = torch.full((1, 16, 3), -10.0)
    logits[0, cls_t >= 0, 1] = 10.0
    out = HeadOutput(logits, ltrb_t[None].clamp(min=1e-3), torch.full((1, 16), 10.0), [(4, 4)])
    det = decode_detections(out, loc, DetectEvalConfig(), canvas=32)[0]
    assert det["labels"].tolist() == [1]  # the 6 duplicates are suppressed to one
    np.testing.assert_allclose(det["boxes"][0].numpy(), [2, 2, 22, 14], atol=1e-4)


def test_category_map():
    cm = CategoryMap.from_list([{"id": 7, "name": "c"}, {"id": 1, "name": "a"}, {"id": 3, "name": "b"}])
    assert cm.ids == (1, 3, 7) and cm.names == ("a", "b", "c") and cm.num_classes == 3
    assert [cm.label(i) for i in (1, 3, 7)] == [0, 1, 2] and [cm.category_id(k) for k in range(3)] == [1, 3, 7]
    assert 5 not in cm and 3 in cm


# ------------------------------------------------------------------------------------------ bad input
def test_malformed_and_invalid_annotation_files_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [1, 2,')
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco_split(bad, tmp_path)
    bad.write_text('{"images": []}')
    with pytest.raises(DataError, match="'annotations', 'categories' missing"):
        load_coco_split(bad, tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_coco_split(tmp_path / "nope.json", tmp_path)
    cases = [
        ([annotation(17, 1, [1, 1, 5, 5], cat=5)], "annotation 17 has category_id 5.*valid ids: 4, 9"),
        ([annotation(18, 99, [1, 1, 5, 5])], "annotation 18 refers to image_id 99"),
        ([annotation(19, 1, [1, 1, 5])], r"annotation 19 has bbox \[1, 1, 5\]"),
        ([annotation(20, 1, [1, 1, 5, 5]), annotation(20, 1, [2, 2, 5, 5])], "annotation id 20 is listed twice"),
    ]
    for anns, msg in cases:
        sub = tmp_path / msg[:12].replace(" ", "_")
        ann, img_dir = write_coco(sub, [image(1)], anns)
        with pytest.raises(DataError, match=msg) as err:
            load_coco_split(ann, img_dir)
        assert "\n" not in str(err.value)


def test_box_cleaning_crowd_empty_and_missing_images(tmp_path):
    anns = [
        annotation(1, 1, [-5, 2, 20, 10]),  # reaches left of the image: clipped to x 0..15
        annotation(2, 1, [30, 20, 50, 50], cat=9),  # reaches right/bottom: clipped to 30..40, 20..30
        annotation(3, 1, [45, 5, 10, 10]),  # entirely outside: dropped
        annotation(4, 1, [5, 5, 0.5, 10]),  # degenerate: dropped
        annotation(5, 1, [0, 0, 40, 30], iscrowd=1),  # crowd: no training target
        annotation(6, 3, [1, 1, 4, 4]),  # on an image whose file is missing
    ]
    ann, img_dir = write_coco(tmp_path, [image(1), image(2), image(3)], anns)
    (img_dir / "3.png").unlink()
    with pytest.raises(DataError, match=r"1 of the 3 images .* are missing .*3\.png.*skip_missing_images"):
        load_coco_split(ann, img_dir)
    split = load_coco_split(ann, img_dir, skip_missing_images=True)
    assert [im.id for im in split.images] == [1, 2]
    np.testing.assert_allclose(split.boxes[0], [[0, 2, 15, 12], [30, 20, 40, 30]])
    assert split.labels[0].tolist() == [0, 1]
    assert split.boxes[1].shape == (0, 4) and split.labels[1].shape == (0,)  # the empty image is kept
    assert split.stats == {"annotations": 6, "crowd": 1, "clipped": 3, "degenerate": 2, "missing_images": 1}
    # The loader yields the empty image with no targets, and nothing else breaks.
    ds = DetectionDataset(split, canvas=32, in_channels=1, fill=(0,))
    batch = next(iter(detection_batches(ds, batch_size=2, train=True, flip=True, seed=0)))
    assert batch.images.shape == (2, 1, 32, 32)
    assert sorted(len(b) for b in batch.boxes) == [0, 2]
    # COCOeval sees the ground truth as given: detections equal to the non-crowd boxes are perfect, a
    # detection on the crowd region is ignored (not a false positive), the skipped image is not evaluated.
    dets = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9 - 0.1 * k}
            for k, a in enumerate(anns[:4])]
    dets.append({"image_id": 1, "category_id": 4, "bbox": [1, 1, 38, 28], "score": 0.95})
    stats = coco_evaluate(split.coco, dets, [im.id for im in split.images])
    assert stats["mAP"] == pytest.approx(1.0)


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    ann, img_dir = write_coco(tmp_path, [image(1)], [annotation(33, 1, [1, 1, 5, 5], cat=2)])
    code = main(["detect", "train", "--config", "detect-synthetic", f"out={tmp_path / 'run'}",
                 f"data.train_annotations={ann}", f"data.train_images={img_dir}", f"data.val_annotations={ann}",
                 f"data.val_images={img_dir}", "data.synthetic=null", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "annotation 33 has category_id 2" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------ backbones
def test_backbone_from_checkpoint_and_bundle(tmp_path, synth):
    from nasbnn.bundle import save_bundle
    from nasbnn.detect.backbone import build_backbone
    from nasbnn.detect.config import BackboneConfig
    from nasbnn.train.checkpoint import save_checkpoint

    space = create_space("tiny")
    supernet = SuperBNN(space, seed=5)
    save_checkpoint(tmp_path / "super.pt", kind="supernet", model_state=supernet.state_dict(), space=space,
                    config={}, step=0)
    arch = space.smallest()
    ref = export_subnet(supernet, arch)
    net, source = build_backbone(BackboneConfig(checkpoint=str(tmp_path / "super.pt"), arch=str(arch)))
    assert source["kind"] == "supernet" and net.arch == arch
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    save_bundle(ref, tmp_path / "bundle")
    net2, source2 = build_backbone(BackboneConfig(bundle=str(tmp_path / "bundle")))
    assert source2["kind"] == "bundle" and net2.arch == arch
    # Frozen backbone: training changes the neck/head only, and the backbone keeps its BN statistics.
    cfg = tiny_cfg(synth, tmp_path / "frozen", "detect.freeze_backbone=true", f"backbone.bundle={tmp_path / 'bundle'}")
    models: list[BinaryDetector] = []
    train_detector(cfg, progress=False, max_steps=2, model_out=models)
    det = models[0]
    for k, v in ref.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(det.backbone.state_dict()[k], v), k
    assert not hasattr(det.backbone, "classifier")


# ------------------------------------------------------------------------------------------ the loop
def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, kind="detector")["model"]


def test_train_resume_eval_loop(tmp_path, synth):
    full = tiny_cfg(synth, tmp_path / "full")
    summary = train_detector(full, progress=False, max_steps=5)
    assert summary["step"] == 5 and summary["total_steps"] == 2 * (24 // 8)
    part = tiny_cfg(synth, tmp_path / "part")
    train_detector(part, progress=False, max_steps=2)  # "killed" after step 2 (last checkpoint at 2)
    resumed = train_detector(part, progress=False, resume=True, max_steps=5)
    a, b = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(tmp_path / "part" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["mAP"] == summary["mAP"]
    recs = [r for r in read_jsonl(tmp_path / "part" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert {"loss", "loss_cls", "loss_box", "loss_ctr", "num_pos", "lr", "images_per_s"} <= set(recs[0])
    for name in ("config.yaml", "eval.json", "detections_val.json", "train_summary.json"):
        assert (tmp_path / "full" / name).is_file(), name
    assert list((tmp_path / "full" / "tb").iterdir())
    ev = json.loads((tmp_path / "full" / "eval.json").read_text())
    assert set(ev["metrics"]) >= {"mAP", "AP50", "AP75", "AP_small", "AR_100"} and ev["images"] == 8
    # `nasbnn detect eval` reproduces the run's figures from its checkpoint.
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "full"), "--json-out",
                 str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["metrics"] == ev["metrics"]
    model, cats, _, _ = load_detector(tmp_path / "full" / "checkpoint.pt")
    assert cats.ids == (1, 3, 5) and isinstance(model.backbone, StaticBNN)


def test_training_loss_decreases(tmp_path, synth):
    cfg = tiny_cfg(synth, tmp_path / "learn", "train.epochs=8", "train.lr=0.01", "train.checkpoint_every=100",
                   "detect.neck_width=32", "detect.gn_groups=8")
    train_detector(cfg, progress=False)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "learn" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 24
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_cli_synth_and_cost(tmp_path, capsys):
    assert main(["detect", "synth", "--out", str(tmp_path / "d"), "--images", "6", "--size", "32",
                 "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images" in out and "val: 1 images" in out
    coco = json.loads((tmp_path / "d" / "annotations" / "instances_train.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 3, 5]
    assert all(a["bbox"][0] + a["bbox"][2] <= 32 and a["bbox"][1] + a["bbox"][3] <= 32 for a in coco["annotations"])
    # Same seed -> same dataset.
    main(["detect", "synth", "--out", str(tmp_path / "e"), "--images", "6", "--size", "32", "--seed", "1"])
    again = json.loads((tmp_path / "e" / "annotations" / "instances_train.json").read_text())
    assert again["annotations"] == coco["annotations"]
    first = [(tmp_path / d / "train" / "000001.png").read_bytes() for d in ("d", "e")]
    assert first[0] == first[1]
    capsys.readouterr()
    assert main(["detect", "cost", "--space", "tiny", "--smallest", "data.canvas=64"]) == 0
    table = capsys.readouterr().out
    for word in ("stem.conv", "binary conv", "neck.lateral", "head.cls_pred", "backbone total", "detector total",
                 "MOPs"):
        assert word in table, word
    assert main(["detect", "cost", "--space", "tiny", "--smallest", "--json", "--convention", "standard"]) == 0
    res = json.loads(capsys.readouterr().out)
    space = create_space("tiny").with_overrides(in_channels=3)
    cfg = load_config(DetectRunConfig, "detect-synthetic", [])
    expect = detector_cost(space, space.smallest(), cfg.detect, 3, cfg.data.canvas, "standard")
    assert res["total"]["mops"] == pytest.approx(expect.total.mops)
    assert res["backbone"]["mops"] < res["total"]["mops"]


def test_config_errors_are_one_line():
    from nasbnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown config key 'detect\.nope'"):
        load_config(DetectRunConfig, "detect-synthetic", ["detect.nope=1"])
    with pytest.raises(ConfigError, match=r"either backbone\.checkpoint or backbone\.bundle"):
        load_config(DetectRunConfig, "detect-synthetic", ["backbone.checkpoint=a", "backbone.bundle=b"])
    coco = load_config(DetectRunConfig, "detect-coco", [])
    assert coco.backbone.space == "imagenet" and coco.data.train == "train2017"
    space = create_space("imagenet")
    from nasbnn.detect.model import level_specs

    levels = level_specs(space, space.largest(), coco.detect, coco.data.canvas)
    assert [lv.stride for lv in levels] == [8, 16, 32, 64, 128]


def test_detector_forward_shapes_and_static_members():
    space = create_space("tiny")
    net = StaticBNN.build(space, space.largest())
    cfg = DetectConfig(neck_width=16, gn_groups=4, num_levels=1, extra_levels=1)
    export = export_subnet(SuperBNN(space), space.largest())
    net.load_state_dict(export.state_dict())
    det = BinaryDetector(net, 4, cfg, 40)
    out = det(torch.randn(2, 3, 40, 40))
    assert out.sizes == [(10, 10), (5, 5)]
    assert out.cls_logits.shape == (2, 125, 4) and out.box_ltrb.shape == (2, 125, 4)
    assert out.centerness_logits.shape == (2, 125) and (out.box_ltrb > 0).all()
    # ImageMeta is plain data (picklable for loader workers).
    import pickle

    meta = ImageMeta(0, 1, letterbox(10, 5, 8), True)
    assert pickle.loads(pickle.dumps(meta)) == meta


def test_batches_do_not_depend_on_workers_and_resume_mid_epoch(synth):
    split = load_coco_split(synth / "annotations" / "instances_train.json", synth / "train")
    ds = DetectionDataset(split, canvas=32, in_channels=3, fill=(1, 2, 3))

    def take(**kw):
        return list(detection_batches(ds, batch_size=8, train=True, flip=True, seed=7, epoch=1, **kw))

    base = take()
    assert len(base) == 3 and any(m.flipped for b in base for m in b.metas)
    for other in (take(workers=2), [None, *take(start_batch=1)]):
        for a, b in zip(base, other):
            if b is None:
                continue
            assert torch.equal(a.images, b.images) and a.metas == b.metas
            assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    # Two ranks' shards make up the single-process batch.
    shards = [take(rank=r, world_size=2) for r in (0, 1)]
    for i, full in enumerate(base):
        assert torch.equal(torch.cat([shards[0][i].images, shards[1][i].images]), full.images)
