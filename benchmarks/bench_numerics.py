"""What bf16 autocast changes against float32: logits on the upstream parity fixture and the losses of
a few supernet training steps. Prints one JSON object (the figures behind docs/upstream.md).

    python benchmarks/bench_numerics.py [--fixtures /path/to/fixtures/upstream] [--space fashion-mnist]

Logits: each fixture case (architecture x weight mode) in float32 and under bf16 autocast on the CPU,
relative L2 to the official code's float32 logits; beside them, float32 with 1e-4 Gaussian input noise,
the scale at which these random binary networks already flip signs. oneDNN is pinned to AVX2, the ISA
the fixtures were made with. Training: the same initial weights, batches and architectures, trained
``--steps`` steps in float32 and in bf16; per-step sandwich losses and the weights' relative change.
"""

from __future__ import annotations

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before torch loads oneDNN

import argparse
import json
import sys
from pathlib import Path

import torch

from nasbnn.utils.device import autocast
from nasbnn.utils.sysinfo import machine_info

CPU = torch.device("cpu")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).norm() / b.norm())


@torch.no_grad()
def logits_figures(folder: Path, noise_cases: int) -> list[dict]:
    from nasbnn.parity import logits_cases

    rows = []
    for _, i, net, x, case in logits_cases(folder):
        ref = torch.tensor(case["logits"], dtype=torch.float32)
        with net.precision(case["weights"]):
            fp32 = net(x)
            with autocast(CPU, "bf16"):
                bf16 = net(x)
            if i < noise_cases:  # the same noise for every case of a file (one generator seed)
                noise = net(x + 1e-4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
        row = {"case": case["name"], "weights": case["weights"], "fp32_vs_upstream": _rel(fp32, ref),
               "bf16_vs_upstream": _rel(bf16, ref), "bf16_top1_agrees": bool((bf16.argmax(1) == ref.argmax(1)).all())}
        if i < noise_cases:
            row["fp32_noise_1e-4_vs_upstream"] = _rel(noise, ref)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress: each 224-pixel case is slow on a CPU
    return rows


def training_figures(space_name: str, steps: int, batch: int) -> dict:
    from nasbnn.config import TrainConfig
    from nasbnn.models import SuperBNN
    from nasbnn.presets import create_space
    from nasbnn.train.optim import build_optimizer, build_scheduler
    from nasbnn.train.sampler import SandwichSampler
    from nasbnn.train.supernet import SupernetTrainer

    space = create_space(space_name)
    cfg = TrainConfig()
    runs = {}
    for amp in ("off", "bf16"):
        model = SuperBNN(space, seed=0)
        opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        trainer = SupernetTrainer(model, cfg, SandwichSampler(space, num_random=cfg.num_random, seed=0), opt,
                                  build_scheduler(opt, total_steps=steps), autocast=autocast(CPU, amp))
        g = torch.Generator().manual_seed(0)
        losses = []
        for step in range(steps):
            x = torch.randn(batch, space.in_channels, space.resolution, space.resolution, generator=g)
            y = torch.randint(0, space.num_classes, (batch,), generator=g)
            losses.append(round(float(trainer.step(x, y, step)["loss"]), 5))
        runs[amp] = (losses, torch.cat([p.detach().flatten() for p in model.parameters()]))
    init = torch.cat([p.detach().flatten() for p in SuperBNN(space, seed=0).parameters()])
    (l32, w32), (l16, w16) = runs["off"], runs["bf16"]
    return {"space": space_name, "steps": steps, "batch": batch, "loss_fp32": l32, "loss_bf16": l16,
            "max_rel_loss_diff": round(max(abs(a - b) / abs(a) for a, b in zip(l32, l16)), 5),
            "weights_rel_diff": round(_rel(w16, w32), 7),
            "update_rel_diff": round(float((w16 - w32).norm() / (w32 - init).norm()), 4)}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", default=str(here.parent / "shared" / "fixtures" / "upstream"))
    p.add_argument("--space", default="fashion-mnist")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--noise-cases", type=int, default=1, help="cases that also get the input-noise reference")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out: dict = {"benchmark": "numerics_bf16_vs_fp32", "machine": machine_info(),
                 "onednn_max_cpu_isa": os.environ["ONEDNN_MAX_CPU_ISA"]}
    if (Path(a.fixtures) / "make_state.py").is_file():
        rows = logits_figures(Path(a.fixtures), a.noise_cases)
        out["logits"] = rows
        for key in ("fp32_vs_upstream", "bf16_vs_upstream", "fp32_noise_1e-4_vs_upstream"):
            vals = [r[key] for r in rows if key in r]
            out[f"{key}_range"] = [round(min(vals), 7), round(max(vals), 7)]
    out["training"] = training_figures(a.space, a.steps, a.batch)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
