"""COCO evaluation of a detector: detections back to original image coordinates and category ids, then
pycocotools' standard ``COCOeval`` bbox protocol (AP@[.5:.95], AP50, AP75, per-size AP and AR)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from .boxes import xyxy_to_xywh
from .coco import CategoryMap, CocoSplit
from .config import DetectEvalConfig
from .data import DetectionBatch, ImageMeta
from .fcos import decode_detections, make_locations
from .model import BinaryDetector

__all__ = ["STAT_NAMES", "coco_evaluate", "evaluate_detector", "to_coco_results"]

#: Names of ``COCOeval.stats`` in order.
STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")


def to_coco_results(detections: Sequence[dict[str, torch.Tensor]], metas: Sequence[ImageMeta],
                    categories: CategoryMap) -> list[dict[str, Any]]:
    """COCO result entries (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``) of canvas
    detections, mapped back through each image's letterbox (and flip) to its original coordinates."""
    out: list[dict[str, Any]] = []
    for det, meta in zip(detections, metas):
        if det["boxes"].numel() == 0:
            continue
        boxes = meta.box.to_image(det["boxes"].detach().cpu().double().numpy(), flipped=meta.flipped)
        xywh = xyxy_to_xywh(torch.from_numpy(boxes)).tolist()
        for b, s, lab in zip(xywh, det["scores"].tolist(), det["labels"].tolist()):
            out.append({"image_id": meta.image_id, "category_id": categories.category_id(int(lab)),
                        "bbox": [round(v, 3) for v in b], "score": round(float(s), 5)})
    return out


def _ground_truth(coco: dict[str, Any]) -> dict[str, Any]:
    """The annotation dict with the fields ``COCOeval`` reads filled in where a file leaves them out."""
    anns = []
    for a in coco["annotations"]:
        a = dict(a)
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        a.setdefault("iscrowd", 0)
        anns.append(a)
    return {"images": coco["images"], "annotations": anns, "categories": coco["categories"]}


def coco_evaluate(coco: dict[str, Any], results: list[dict[str, Any]], image_ids: Iterable[int]) -> dict[str, float]:
    """The 12 standard ``COCOeval`` bbox statistics of ``results`` over the images ``image_ids``.

    Args:
        coco: the ground truth (a parsed COCO annotation file).
        results: COCO result entries (see :func:`to_coco_results`).
        image_ids: the evaluated images (others are ignored).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools reports progress on stdout
        gt = COCO()
        gt.dataset = _ground_truth(coco)
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = {"images": coco["images"], "annotations": [], "categories": coco["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = sorted(set(int(i) for i in image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, np.asarray(ev.stats).tolist())}


@torch.no_grad()
def predict(model: BinaryDetector, batches: Iterable[DetectionBatch], cfg: DetectEvalConfig,
            autocast: AbstractContextManager | None = None) -> tuple[list[dict[str, torch.Tensor]], list[ImageMeta]]:
    """Canvas detections of every image of ``batches`` (model in eval mode), with their metas."""
    was_training = model.training
    model.eval()
    dets: list[dict[str, torch.Tensor]] = []
    metas: list[ImageMeta] = []
    try:
        for batch in batches:
            if len(batch) == 0:
                continue
            with autocast if autocast is not None else nullcontext():
                out = model(batch.images)
            loc = make_locations(out.sizes, model.strides, model.cfg.range_scale, batch.images.device)
            dets.extend(decode_detections(out, loc, cfg, batch.images.shape[-1]))
            metas.extend(batch.metas)
    finally:
        model.train(was_training)
    return dets, metas


def evaluate_detector(model: BinaryDetector, split: CocoSplit, batches: Iterable[DetectionBatch],
                      cfg: DetectEvalConfig, autocast: AbstractContextManager | None = None
                      ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """COCO statistics of ``model`` on ``split`` (its images as yielded by ``batches``) and the results."""
    dets, metas = predict(model, batches, cfg, autocast)
    results = to_coco_results(dets, metas, split.categories)
    stats = coco_evaluate(split.coco, results, [im.id for im in split.images])
    return stats, results
