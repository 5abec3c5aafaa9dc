"""Training: the Bi-Teacher sandwich step, runs, checkpoints, BN recalibration, distributed helpers."""

from .bn import evaluate_top1, preserved_bn_state, recalibrate_bn
from .sampler import SandwichSampler, StepPlan
from .supernet import SupernetTrainer, TrainingDiverged, train_supernet

__all__ = [
    "SandwichSampler",
    "StepPlan",
    "SupernetTrainer",
    "TrainingDiverged",
    "evaluate_top1",
    "preserved_bn_state",
    "recalibrate_bn",
    "train_supernet",
]
