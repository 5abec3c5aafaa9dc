"""Binary object detectors on searched NAS-BNN backbones: FCOS on an FPN-lite neck, COCO-format data,
COCO evaluation, analytic OPs, and a synthetic shapes dataset for tests and the CPU demo."""

from __future__ import annotations

from .boxes import batched_nms, box_iou, nms
from .coco import CategoryMap, CocoSplit, load_coco_split
from .config import DetectRunConfig
from .cost import detector_cost, detector_cost_table, detector_layer_costs
from .evaluate import coco_evaluate, evaluate_detector, to_coco_results
from .model import BinaryDetector
from .synthetic import generate_synthetic_coco
from .train import evaluate_run, load_detector, train_detector

__all__ = [
    "BinaryDetector",
    "CategoryMap",
    "CocoSplit",
    "DetectRunConfig",
    "batched_nms",
    "box_iou",
    "coco_evaluate",
    "detector_cost",
    "detector_cost_table",
    "detector_layer_costs",
    "evaluate_detector",
    "evaluate_run",
    "generate_synthetic_coco",
    "load_coco_split",
    "load_detector",
    "nms",
    "to_coco_results",
    "train_detector",
]
