"""Images per second of the full supernet training step (teacher + smallest + N random, one
optimizer step) for a preset, device and batch size. Prints one JSON object.

    python benchmarks/bench_train.py --space fashion-mnist --device cpu --batch 256
    python benchmarks/bench_train.py --space imagenet --device cuda --batch 128   # float32 + channels_last
    python benchmarks/bench_train.py --space imagenet --device cuda --batch 128 --amp bf16

Synthetic inputs at the space's resolution; the architectures are drawn as in training.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nasbnn.config import TrainConfig
from nasbnn.context import move_model
from nasbnn.models import SuperBNN
from nasbnn.models.blocks import set_fused
from nasbnn.presets import create_space
from nasbnn.train.optim import build_optimizer, build_scheduler
from nasbnn.train.sampler import SandwichSampler
from nasbnn.train.supernet import SupernetTrainer
from nasbnn.utils.device import autocast, configure_backends, resolve_device, uses_bf16
from nasbnn.utils.sysinfo import cpu_name


def measure(space_name: str, device: str, batch: int, steps: int, warmup: int, amp: str,
            channels_last: bool | None, threads: int | None, fused: str | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    configure_backends(dev, amp)
    space = create_space(space_name)
    model = SuperBNN(space)
    cl = dev.type == "cuda" if channels_last is None else channels_last

    class _Ctx:  # what move_model needs
        device = dev
        channels_last = cl

    model = move_model(model, _Ctx)  # type: ignore[arg-type]
    if fused:
        set_fused(model, fused)
    cfg = TrainConfig()
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = build_scheduler(opt, total_steps=10_000)
    trainer = SupernetTrainer(model, cfg, SandwichSampler(space, num_random=cfg.num_random, seed=0), opt, sched,
                              autocast=autocast(dev, amp))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, space.in_channels, space.resolution, space.resolution, generator=g).to(dev)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, space.num_classes, (batch,), generator=g).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t_warm = time.perf_counter()
    for i in range(warmup):
        trainer.step(x, y, i)
    sync()
    warmup_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for i in range(steps):
        trainer.step(x, y, warmup + i)
    sync()
    dt = time.perf_counter() - t0
    return {
        "benchmark": "supernet_train_step",
        "space": space_name,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "amp": "bf16" if uses_bf16(dev, amp) else "off",
        "channels_last": cl,
        "fused_tail": fused or "off",
        "warmup_seconds": round(warmup_s, 1),
        "passes_per_step": 2 + cfg.num_random,
        "steps": steps,
        "seconds_per_step": round(dt / steps, 4),
        "images_per_s": round(batch * steps / dt, 1),
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="fashion-mnist")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", default="off", choices=("auto", "bf16", "off"), help="as train.amp (default float32)")
    p.add_argument("--channels-last", default=None, choices=("on", "off"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fused", default=None, choices=("compiled", "eager"),
                   help="fuse the element-wise block tails (compiled: torch.compile)")
    a = p.parse_args()
    cl = None if a.channels_last is None else a.channels_last == "on"
    print(json.dumps(measure(a.space, a.device, a.batch, a.steps, a.warmup, a.amp, cl, a.threads, a.fused)))


if __name__ == "__main__":
    main()
