"""Device selection and the mixed-precision / memory-format policy."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..errors import NasbnnError


def resolve_device(spec: str = "auto", *, local_rank: int | None = None) -> torch.device:
    """``auto`` picks CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise NasbnnError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NasbnnError(f"device {spec!r} requested but CUDA is not available; use device=cpu")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise NasbnnError(f"unsupported device {spec!r}; valid: auto, cpu, cuda, cuda:N")
    return dev


def autocast(device: torch.device, mode: str = "auto") -> AbstractContextManager:
    """bf16 autocast on CUDA when ``mode`` is auto or bf16; nothing on CPU (or when off)."""
    if mode == "off" or device.type != "cuda":
        if mode == "bf16" and device.type != "cuda":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning (the set of conv shapes in a search space is finite) and TF32 matmuls."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
