"""FCOS (Tian et al., ICCV 2019): locations, target assignment, losses, and decoding into detections."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..train.distributed import DistInfo, all_reduce_sum
from .boxes import batched_nms, elementwise_giou, elementwise_iou
from .config import DetectConfig, DetectEvalConfig
from .model import HeadOutput

__all__ = [
    "Locations",
    "assign_targets",
    "centerness_target",
    "decode_detections",
    "fcos_losses",
    "make_locations",
    "sigmoid_focal_loss",
]


@dataclass(frozen=True)
class Locations:
    """All locations of a pyramid, level after level; the cell ``(i, j)`` of a level of stride ``s`` is at
    ``((j + 0.5)·s, (i + 0.5)·s)``.

    Attributes:
        points: float32 [N, 2] ``(x, y)`` canvas coordinates.
        strides: float32 [N] the stride of each location's level.
        level: int64 [N] the level index of each location.
        ranges: float32 [N, 2] the ``(low, high]`` range of the largest ltrb distance its level takes.
        counts: locations per level.
    """

    points: Tensor
    strides: Tensor
    level: Tensor
    ranges: Tensor
    counts: list[int]


def make_locations(sizes: list[tuple[int, int]], strides: list[int], range_scale: float,
                   device: torch.device | str = "cpu") -> Locations:
    """The locations of levels with grids ``sizes`` and ``strides``; level i takes max-distances in
    ``(range_scale·strides[i-1], range_scale·strides[i]]`` (the first from 0, the last up to infinity)."""
    pts, sts, lvl, rng, counts = [], [], [], [], []
    n = len(sizes)
    for i, ((h, w), s) in enumerate(zip(sizes, strides)):
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * s
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack((gx.reshape(-1), gy.reshape(-1)), dim=1))
        k = h * w
        counts.append(k)
        sts.append(torch.full((k,), float(s), device=device))
        lvl.append(torch.full((k,), i, dtype=torch.long, device=device))
        lo = 0.0 if i == 0 else range_scale * strides[i - 1]
        hi = float("inf") if i == n - 1 else range_scale * s
        rng.append(torch.tensor([[lo, hi]], device=device).expand(k, 2))
    return Locations(torch.cat(pts), torch.cat(sts), torch.cat(lvl), torch.cat(rng), counts)


def assign_targets(loc: Locations, boxes: Tensor, labels: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """FCOS targets of one image.

    A location is positive for a box when it lies inside it (with centre sampling: also within
    ``radius · stride`` of the box centre) and the box's largest ltrb distance from it falls in the
    location's level range; among several such boxes the smallest wins.

    Args:
        loc: the pyramid's locations.
        boxes: float [M, 4] ground truth ``x0, y0, x1, y1`` on the canvas.
        labels: int64 [M] contiguous labels.
        radius: centre-sampling radius in strides (0: any location inside the box).

    Returns:
        ``(cls_target, ltrb_target)``: int64 [N] labels (-1 for background) and float32 [N, 4] distances
        to the assigned box (zeros for background).
    """
    n = loc.points.shape[0]
    device = loc.points.device
    if boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=device), torch.zeros(n, 4, device=device)
    boxes = boxes.float()
    x, y = loc.points[:, 0:1], loc.points[:, 1:2]
    ltrb = torch.stack((x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x,
                        boxes[None, :, 3] - y), dim=2)  # [N, M, 4]
    if radius > 0:
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        r = loc.strides[:, None] * radius
        sx0 = torch.maximum(cx[None] - r, boxes[None, :, 0])
        sy0 = torch.maximum(cy[None] - r, boxes[None, :, 1])
        sx1 = torch.minimum(cx[None] + r, boxes[None, :, 2])
        sy1 = torch.minimum(cy[None] + r, boxes[None, :, 3])
        inside = (x > sx0) & (y > sy0) & (x < sx1) & (y < sy1)
    else:
        inside = ltrb.min(dim=2).values > 0
    reach = ltrb.max(dim=2).values
    in_range = (reach > loc.ranges[:, 0:1]) & (reach <= loc.ranges[:, 1:2])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(n, -1)
    area = torch.where(inside & in_range, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(dim=1)
    positive = torch.isfinite(best_area)
    cls_target = torch.where(positive, labels[best], torch.full_like(best, -1))
    ltrb_target = ltrb[torch.arange(n, device=device), best] * positive[:, None]
    return cls_target, ltrb_target


def centerness_target(ltrb: Tensor) -> Tensor:
    """sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b)) of positive locations' distances [P, 4] -> [P]."""
    lr = ltrb[:, 0::2]
    tb = ltrb[:, 1::2]
    return torch.sqrt((lr.min(dim=1).values / lr.max(dim=1).values).clamp(min=0)
                      * (tb.min(dim=1).values / tb.max(dim=1).values).clamp(min=0))


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sum of the focal loss (Lin et al., 2017) over all elements; ``alpha`` weighs positives."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def _ltrb_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    return torch.cat((points - ltrb[:, :2], points + ltrb[:, 2:]), dim=1)


def fcos_losses(out: HeadOutput, loc: Locations, boxes: list[Tensor], labels: list[Tensor], cfg: DetectConfig,
                dist: DistInfo | None = None) -> dict[str, Tensor]:
    """The FCOS losses of a batch; ``loss`` is their weighted sum (the others are detached).

    Sigmoid focal loss over all locations and classes; GIoU (or IoU) loss of the positives' boxes
    weighted by their centerness targets; binary cross-entropy of the positives' centerness. The
    normalisers (positives, centerness sum) are averaged over ranks, so the gradients averaged by
    data parallelism equal those of the single-process batch.
    """
    dist = dist or DistInfo()
    cls_logits = out.cls_logits.float()
    num_classes = cls_logits.shape[-1]
    targets = [assign_targets(loc, b, t, cfg.center_sampling_radius) for b, t in zip(boxes, labels)]
    cls_t = torch.stack([t[0] for t in targets])  # [B, N]
    ltrb_t = torch.stack([t[1] for t in targets])  # [B, N, 4]
    pos = cls_t >= 0
    onehot = F.one_hot(cls_t.clamp(min=0), num_classes).to(cls_logits.dtype) * pos[..., None]
    pos_ltrb = ltrb_t[pos]
    ctr_t = centerness_target(pos_ltrb) if pos_ltrb.numel() else pos_ltrb.new_zeros(0)
    norms = torch.stack((pos.sum().to(torch.float32), ctr_t.sum().detach())).to(cls_logits.device)
    norms = all_reduce_sum(norms, dist) / dist.world_size
    num_pos = norms[0].clamp(min=1.0)
    ctr_sum = norms[1].clamp(min=1e-6)
    loss_cls = sigmoid_focal_loss(cls_logits, onehot, cfg.focal_alpha, cfg.focal_gamma) / num_pos
    if pos_ltrb.numel():
        pts = loc.points[None].expand(pos.shape[0], -1, -1)[pos]
        pred = _ltrb_to_boxes(pts, out.box_ltrb.float()[pos])
        tgt = _ltrb_to_boxes(pts, pos_ltrb)
        overlap = elementwise_giou(pred, tgt) if cfg.box_loss == "giou" else elementwise_iou(pred, tgt)
        loss_box = ((1 - overlap) * ctr_t).sum() / ctr_sum
        loss_ctr = F.binary_cross_entropy_with_logits(out.centerness_logits.float()[pos], ctr_t,
                                                      reduction="sum") / num_pos
    else:  # keep the graph connected so every rank runs the same backward
        loss_box = out.box_ltrb.sum() * 0.0
        loss_ctr = out.centerness_logits.sum() * 0.0
    loss = loss_cls + cfg.box_loss_weight * loss_box + loss_ctr
    return {"loss": loss, "loss_cls": loss_cls.detach(), "loss_box": loss_box.detach(),
            "loss_ctr": loss_ctr.detach(), "num_pos": norms[0].detach()}


@torch.no_grad()
def decode_detections(out: HeadOutput, loc: Locations, cfg: DetectEvalConfig, canvas: int) -> list[dict[str, Tensor]]:
    """Detections per image: ``boxes`` [n, 4] canvas ``x0, y0, x1, y1``, ``scores`` [n], ``labels`` [n].

    Per level, locations whose class probability exceeds ``score_threshold`` are ranked by
    ``sqrt(p_class · p_centerness)`` and the best ``pre_nms_topk`` kept; boxes are clipped to the canvas,
    suppressed class-wise (``nms_threshold``) and the best ``max_detections`` returned.
    """
    prob = torch.sigmoid(out.cls_logits.float())
    ctr = torch.sigmoid(out.centerness_logits.float())
    ltrb = out.box_ltrb.float()
    results = []
    for b in range(prob.shape[0]):
        cand_boxes, cand_scores, cand_labels = [], [], []
        start = 0
        for count in loc.counts:
            sl = slice(start, start + count)
            start += count
            p = prob[b, sl]
            keep = p > cfg.score_threshold
            flat = keep.nonzero()
            if flat.numel() == 0:
                continue
            li, cls = flat[:, 0], flat[:, 1]
            score = torch.sqrt(p[li, cls] * ctr[b, sl][li])
            if score.numel() > cfg.pre_nms_topk:
                top = torch.topk(score, cfg.pre_nms_topk).indices
                li, cls, score = li[top], cls[top], score[top]
            pts = loc.points[sl][li]
            boxes = _ltrb_to_boxes(pts, ltrb[b, sl][li]).clamp(min=0, max=float(canvas))
            cand_boxes.append(boxes)
            cand_scores.append(score)
            cand_labels.append(cls)
        if not cand_boxes:
            results.append({"boxes": prob.new_zeros(0, 4), "scores": prob.new_zeros(0),
                            "labels": torch.zeros(0, dtype=torch.long, device=prob.device)})
            continue
        boxes, scores, labels = torch.cat(cand_boxes), torch.cat(cand_scores), torch.cat(cand_labels)
        kept = batched_nms(boxes, scores, labels, cfg.nms_threshold)[: cfg.max_detections]
        results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return results
