"""Losses of supernet training: label-smoothed cross-entropy and soft-target distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def smooth_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.1) -> Tensor:
    """Cross-entropy against (1 - eps)·onehot + eps/K, averaged over the batch."""
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


def soft_distillation(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """-sum softmax(teacher/T)·log_softmax(student/T), batch mean, times T² (Hinton et al., 2015).

    At T = 1 (the default, as upstream) this is the cross-entropy to the teacher's distribution, which
    differs from KL(teacher || student) by the teacher's entropy, a constant for the student.
    """
    t = temperature
    p = F.softmax(teacher.detach().float() / t, dim=1)
    loss = -(p * F.log_softmax(student.float() / t, dim=1)).sum(dim=1).mean()
    return loss * (t * t)
