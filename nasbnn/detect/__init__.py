"""Binary object detectors on searched NAS-BNN backbones: FCOS on an FPN-lite neck, COCO-format data,
COCO evaluation, analytic OPs, and a synthetic shapes dataset for tests and the CPU demo.

Names are imported on first use, so that the CLI registers ``nasbnn detect`` without loading PyTorch.
"""

from __future__ import annotations

from .._lazy import lazy_namespace

#: public name -> the submodule that defines it
_WHERE = {
    "batched_nms": "boxes",
    "box_iou": "boxes",
    "nms": "boxes",
    "CategoryMap": "coco",
    "CocoSplit": "coco",
    "load_coco_split": "coco",
    "DetectRunConfig": "config",
    "detector_cost": "cost",
    "detector_cost_table": "cost",
    "detector_layer_costs": "cost",
    "coco_evaluate": "evaluate",
    "evaluate_detector": "evaluate",
    "to_coco_results": "evaluate",
    "BinaryDetector": "model",
    "generate_synthetic_coco": "synthetic",
    "evaluate_run": "train",
    "load_detector": "train",
    "train_detector": "train",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_namespace(__name__, globals(), _WHERE)
