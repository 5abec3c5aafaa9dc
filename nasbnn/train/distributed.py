"""Multi-process training through torchrun: initialisation, gradient and buffer synchronisation.

Gradients are synchronised once per optimizer step (after all sandwich passes) with one flat
all-reduce per bucket, rather than once per backward as ``DistributedDataParallel`` would, and only
the gradients that exist are reduced (see :func:`all_reduce_gradients`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import NasbnnError
from ..utils.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_spec: str = "auto") -> tuple[DistInfo, torch.device]:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1); NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_spec)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


_BUCKET_ELEMENTS = 1 << 24


@torch.no_grad()
def all_reduce_gradients(model: nn.Module, info: DistInfo) -> None:
    """Averages over ranks the gradients that exist; a parameter without one keeps none.

    A parameter that no pass of the step used (a kernel-transform or Bi-Transformation matrix of a
    block no student activated) has no gradient, so Adam skips it: no step, no weight decay, its moments
    untouched, exactly as in one process. Filling it with zeros would move it with stale momentum on N
    ranks but not on one. Every rank trains the same architectures, so the set is the same everywhere;
    one small all-reduce of the presence mask checks that before the buckets are paired up.
    """
    if not info.enabled:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    _check_same_gradient_set(params, info.world_size)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        if p.grad is None:
            continue
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= _BUCKET_ELEMENTS:
            _reduce_bucket(bucket, info.world_size)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, info.world_size)


def _check_same_gradient_set(params: list[nn.Parameter], world: int) -> None:
    """Raises if ranks disagree on which parameters have a gradient (the buckets would not line up)."""
    mask = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    mask = mask.to(params[0].device)
    dist.all_reduce(mask)
    bad = ((mask != 0) & (mask != world)).nonzero()
    if bad.numel():
        raise NasbnnError(f"ranks disagree on which parameters were used in this step ({bad.numel()} differ); "
                          "every rank must train the same architectures")


def _reduce_bucket(tensors: list[torch.Tensor], world: int) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


@torch.no_grad()
def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Averages floating-point buffers (BN running statistics) so every rank holds the same model."""
    if not info.enabled:
        return
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if bufs:
        _reduce_bucket(bufs, info.world_size)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values)
    return values
