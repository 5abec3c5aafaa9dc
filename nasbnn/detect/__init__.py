"""Binary object detectors on searched NAS-BNN backbones: FCOS on an FPN-lite neck, COCO-format data,
COCO evaluation, analytic OPs, and a synthetic shapes dataset for tests and the CPU demo.

Names are imported on first use, so that the CLI registers ``nasbnn detect`` without loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nasbnn.detect' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
