"""Box arithmetic: COCO/corner conversions, IoU and GIoU, greedy and class-wise NMS (in torch).

Boxes are ``[x0, y0, x1, y1]`` in continuous pixel coordinates unless said otherwise; COCO's are ``[x, y, w, h]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "elementwise_giou",
    "elementwise_iou",
    "nms",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] COCO ``[x, y, w, h]`` -> ``[x0, y0, x1, y1]``."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """[..., 4] ``[x0, y0, x1, y1]`` -> COCO ``[x, y, w, h]``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """[..., 4] -> [...]: areas (zero for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _intersection_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of ``a`` and ``b`` ([..., 4], broadcast against each other).

    Pairwise and element-wise IoU differ only in how their inputs are broadcast, so both take the
    areas from here.
    """
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a) + box_area(b) - inter


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: [N, 4] × [M, 4] -> [N, M]; pairs with an empty union get 0."""
    inter, union = _intersection_union(a[:, None, :], b[None, :, :])
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def elementwise_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of corresponding boxes: [N, 4] × [N, 4] -> [N]."""
    inter, union = _intersection_union(a, b)
    return inter / (union + eps)


def elementwise_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU of corresponding boxes (Rezatofighi et al., 2019): [N, 4] × [N, 4] -> [N] in (-1, 1]."""
    inter, union = _intersection_union(a, b)
    iou = inter / (union + eps)
    hull = box_area(torch.cat((torch.minimum(a[:, :2], b[:, :2]), torch.maximum(a[:, 2:], b[:, 2:])), dim=1))
    return iou - (hull - union) / (hull + eps)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score.

    A box is dropped when its IoU with an already kept, higher-scored box exceeds ``iou_threshold``.
    Equal scores keep their input order (stable sort).

    Args:
        boxes: [N, 4] ``x0, y0, x1, y1``.
        scores: [N].
        iou_threshold: in [0, 1].
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    if not sorted_boxes.is_floating_point():
        sorted_boxes = sorted_boxes.float()
    # Overlap test for every pair at once; the sequential pass below then only reads booleans.
    over = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different labels never suppress each other.

    Runs :func:`nms` on each label's boxes; returns the kept indices by decreasing score (ties in input
    order).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = []
    for label in torch.unique(labels).tolist():
        idx = (labels == label).nonzero().squeeze(1)
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    keep = torch.sort(torch.cat(kept)).values  # input order, so the stable sort below breaks ties by index
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
