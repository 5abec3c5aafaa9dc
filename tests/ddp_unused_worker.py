"""Worker of test_distributed: records what one sandwich step does to the parameters it did not use.

Runs as one plain process or under torchrun; each rank trains on its own random batches. For every step
it saves, for each parameter without a gradient, its value and Adam state before and after the step.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nasbnn.config import TrainConfig
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space
from nasbnn.train.distributed import setup, teardown
from nasbnn.train.optim import build_optimizer, build_scheduler
from nasbnn.train.sampler import SandwichSampler
from nasbnn.train.supernet import SupernetTrainer

STEPS = 4


def _adam_state(opt: torch.optim.Optimizer, p: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in opt.state.get(p, {}).items()}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    info, _ = setup("cpu")
    space = create_space("tiny")
    model = SuperBNN(space, seed=0)
    # weight decay > 0: a zero-filled gradient would still move an unused parameter through the L2 term
    opt = build_optimizer(model, lr=1e-2, weight_decay=1e-2)
    trainer = SupernetTrainer(model, TrainConfig(), SandwichSampler(space, seed=0), opt,
                              build_scheduler(opt, total_steps=STEPS), dist=info)
    named = dict(model.named_parameters())
    g = torch.Generator().manual_seed(100 + info.rank)
    record = []
    for step in range(STEPS):
        x = torch.randn(8, space.in_channels, space.resolution, space.resolution, generator=g)
        y = torch.randint(0, space.num_classes, (8,), generator=g)
        before = {n: (p.detach().clone(), _adam_state(opt, p)) for n, p in named.items()}
        trainer.step(x, y, step)
        unused = sorted(n for n, p in named.items() if p.grad is None)
        record.append({n: {"value": before[n][0], "after": named[n].detach().clone(), "state": before[n][1],
                           "state_after": _adam_state(opt, named[n])} for n in unused})
    torch.save(record, out / f"unused_rank{info.rank}_of{info.world_size}.pt")
    if info.enabled:
        dist.barrier()
    teardown()


if __name__ == "__main__":
    main()
