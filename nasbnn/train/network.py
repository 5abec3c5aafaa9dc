"""The recipe of one static network trained on labels: fine-tuning a bundle, or training an architecture
from scratch. Both run on the run skeleton (:mod:`nasbnn.train.run`) and differ only in their settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..space import SearchSpace
from .bn import evaluate_top1
from .distributed import all_reduce_gradients, average_buffers
from .optim import build_optimizer, build_scheduler
from .run import check_finite, load_training_state, training_state

__all__ = ["NetworkRecipe", "Optimization"]


@dataclass(frozen=True)
class Optimization:
    """Adam and the warm-up + cosine schedule of one network's training."""

    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    warmup_start_factor: float = 0.01
    min_lr: float = 0.0
    grad_clip: float | None = None


class NetworkRecipe:
    """A static network trained with ``loss_fn(logits, labels)``; evaluation is test top-1/top-5 with the
    network's own BN statistics, in float32.

    Args:
        kind: the checkpoint kind (``"finetune"``, ``"standalone"``).
        net: the network, already on the run's device.
        ctx: the run context (device, ranks, autocast).
        data: the dataset's splits.
        batch: the global training batch size.
        seed: the seed of the batch order and augmentation.
        extra: recorded in every checkpoint; a resume must find the same values there.
    """

    def __init__(self, kind: str, net: torch.nn.Module, space: SearchSpace, ctx: Any, data: Any, *,
                 loss_fn: Callable[[Tensor, Tensor], Tensor], opt: Optimization, total_steps: int, batch: int,
                 seed: int, eval_batch: int, extra: dict[str, Any]) -> None:
        self.kind, self.net, self.space, self.ctx, self.data = kind, net, space, ctx, data
        self.loss_fn, self.opt, self.batch, self.seed, self.eval_batch = loss_fn, opt, batch, seed, eval_batch
        self.extra = extra
        self.optimizer = build_optimizer(net, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas)
        self.scheduler = build_scheduler(self.optimizer, total_steps=total_steps, warmup_steps=opt.warmup_steps,
                                         start_factor=opt.warmup_start_factor, min_lr=opt.min_lr)
        self._autocast = ctx.autocast()
        self._test: list[tuple[Tensor, Tensor]] | None = None

    def batches(self, epoch: int, start_batch: int) -> Any:
        ctx = self.ctx
        return self.data.train.loader(batch_size=self.batch, train=True, seed=self.seed, epoch=epoch,
                                      start_batch=start_batch, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                                      device=ctx.device, channels_last=ctx.channels_last)

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[0].shape[0])

    def step(self, batch: tuple[Tensor, Tensor], step: int) -> dict[str, Tensor]:
        images, labels = batch
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast:
            loss = self.loss_fn(self.net(images).float(), labels)
        loss.backward()
        all_reduce_gradients(self.net, self.ctx.dist)
        check_finite(loss, step, self.net.parameters())
        if self.opt.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.opt.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        average_buffers(self.net, self.ctx.dist)
        return {"loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        if self._test is None:
            self._test = list(self.data.test.loader(batch_size=self.eval_batch, train=False, seed=0,
                                                    device=self.ctx.device, channels_last=self.ctx.channels_last))
        return {f"test_{k}": v for k, v in evaluate_top1(self.net, self._test).items()}

    def state_dict(self) -> dict[str, Any]:
        return training_state(self.net, self.optimizer, self.scheduler)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_training_state(state, self.net, self.optimizer, self.scheduler)

    def checkpoint_extra(self) -> dict[str, Any]:
        return dict(self.extra)
