"""Seconds per supernet training step on 2 gloo processes: the hand-written once-per-step reduction
(over the gradients that exist) against ``DistributedDataParallel`` with ``no_sync`` for all but the
last sandwich pass. Prints one JSON object.

    python benchmarks/bench_ddp.py --space fashion-mnist --batch 32 --steps 10

Both variants train the same architectures on the same synthetic batches from the same initial weights;
each rank uses one intra-op thread. The figure decides which synchronisation the trainer uses.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from nasbnn.config import TrainConfig
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space
from nasbnn.train.distributed import DistInfo, average_buffers
from nasbnn.train.losses import smooth_cross_entropy, soft_distillation
from nasbnn.train.optim import build_optimizer, build_scheduler
from nasbnn.train.sampler import SandwichSampler
from nasbnn.train.supernet import SupernetTrainer
from nasbnn.utils.sysinfo import cpu_name


def _ddp_step(ddp: DistributedDataParallel, model: SuperBNN, sampler: SandwichSampler, cfg: TrainConfig,
              opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, step: int, info: DistInfo) -> None:
    """The sandwich step with DDP's per-backward reduction, suppressed (no_sync) until the last pass."""
    plan = sampler.plan(step)
    opt.zero_grad(set_to_none=True)
    passes = [("fp", plan.teacher), *(("binary", arch) for _, arch in plan.students)]
    soft = None
    for i, (mode, arch) in enumerate(passes):
        model.set_arch(arch)
        with (nullcontext() if i == len(passes) - 1 else ddp.no_sync()), model.precision(mode):
            logits = ddp(x)
            if soft is None:
                loss = smooth_cross_entropy(logits, y, cfg.label_smoothing)
                soft = logits.detach()
            else:
                loss = soft_distillation(logits, soft, cfg.kd_temperature)
            loss.backward()
    opt.step()
    average_buffers(model, info)


def _runner(variant: str, space, cfg: TrainConfig, info: DistInfo, x: torch.Tensor,  # type: ignore[no-untyped-def]
            y: torch.Tensor):
    """A fresh supernet (same seed for both variants) and a function that trains it for one step."""
    model = SuperBNN(space, seed=0)
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = SandwichSampler(space, num_random=cfg.num_random, seed=0)
    if variant == "ddp":
        ddp = DistributedDataParallel(model, find_unused_parameters=True, forward_sync_buffers=False)
        return lambda s: _ddp_step(ddp, model, sampler, cfg, opt, x, y, s, info)
    trainer = SupernetTrainer(model, cfg, sampler, opt, build_scheduler(opt, total_steps=10_000), dist=info)
    return lambda s: trainer.step(x, y, s)


def _worker(rank: int, world: int, port: int, a: argparse.Namespace, queue: mp.SimpleQueue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    info = DistInfo(rank, world, rank)
    space = create_space(a.space)
    cfg = TrainConfig()
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(a.batch, space.in_channels, space.resolution, space.resolution, generator=g)
    y = torch.randint(0, space.num_classes, (a.batch,), generator=g)
    times: dict[str, list[float]] = {}
    for variant in ("reduction", "ddp", "reduction", "ddp"):  # interleaved: load drift hits both alike
        run = _runner(variant, space, cfg, info, x, y)
        for s in range(a.warmup):
            run(s)
        for s in range(a.warmup, a.warmup + a.steps):
            dist.barrier()
            t0 = time.perf_counter()
            run(s)
            dist.barrier()
            times.setdefault(variant, []).append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({k: statistics.median(v) for k, v in times.items()})
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="fashion-mnist")
    p.add_argument("--batch", type=int, default=32, help="per rank")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round (2 rounds)")
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, port, a, queue), nprocs=2, start_method="spawn")
    med = queue.get()
    print(json.dumps({"space": a.space, "world": 2, "backend": "gloo", "batch_per_rank": a.batch,
                      "steps": 2 * a.steps, "s_per_step_reduction": round(med["reduction"], 4),
                      "s_per_step_ddp_no_sync": round(med["ddp"], 4),
                      "ddp_over_reduction": round(med["ddp"] / med["reduction"], 3),
                      "cpu": cpu_name(), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
