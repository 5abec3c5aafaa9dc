"""Device selection and the mixed-precision / memory-format policy."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..errors import ConfigError


def resolve_device(spec: str = "auto", *, local_rank: int | None = None) -> torch.device:
    """``auto`` picks CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available; use device=cpu")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {spec!r}; valid: auto, cpu, cuda, cuda:N")
    return dev


def uses_bf16(device: torch.device, mode: str) -> bool:
    """Whether ``train.amp`` = ``mode`` runs the training passes under bf16 autocast on ``device``."""
    return mode == "bf16" or (mode == "auto" and device.type == "cuda")


def autocast(device: torch.device, mode: str = "off") -> AbstractContextManager:
    """bf16 autocast when ``mode`` is bf16 (any device) or auto (CUDA only); nothing when off.

    Only training passes use it. Evaluations (BN recalibration, top-1, search fitness) always run in
    float32, because deployment (export, eval, the packed engine) computes in float32 and a ranking is
    only worth what it predicts about those numbers.
    """
    if mode == "off" or device.type != "cuda":
        if mode == "bf16" and device.type != "cuda":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def configure_backends(device: torch.device, amp: str = "off") -> None:
    """cuDNN autotuning on CUDA; TF32 matmuls only for a run that chose bf16.

    Autotuning picks among float32 convolution algorithms (the set of conv shapes in a search space is
    finite), so it changes speed, not precision. A float32 run keeps PyTorch's default TF32 behaviour, as
    the official code ran: TF32 in cuDNN convolutions, full float32 matmuls. Both flags are set every time
    so that an earlier bf16 run in the same process does not leak into a float32 one.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = uses_bf16(device, amp)
        torch.backends.cudnn.allow_tf32 = True
