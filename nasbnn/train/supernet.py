"""Supernet training with the Bi-Teacher sandwich rule: the step, and the resumable run around it.

Per batch: the largest subnet with real-valued weights and binary activations (the Bi-Teacher) learns
from the labels (label-smoothed cross-entropy); the smallest and ``num_random`` random subnets with
binary weights learn from the teacher's detached logits; all gradients accumulate into one optimizer
step (synchronised once across ranks).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import RunConfig, TrainConfig
from ..errors import DataError
from ..models import SuperBNN
from ..models.blocks import Fusion, set_fused
from ..ops.fused import compiled_tail_works
from ..space import Arch
from ..strategies import check_strategies, model_kwargs, strategies_from_config, strategies_from_record
from ..utils.seeding import derive_seed
from .bn import evaluate_top1, preserved_bn_state, recalibrate_bn
from .distributed import DistInfo, all_reduce_gradients, average_buffers
from .losses import smooth_cross_entropy, soft_distillation
from .optim import build_optimizer, build_scheduler
from .run import Cadence, StepTrainer, TrainingDiverged, TrainingRun, check_finite, load_training_state, training_state
from .sampler import Role, SandwichSampler

__all__ = ["SupernetTrainer", "TrainingDiverged", "train_supernet"]

_logger = logging.getLogger(__name__)


class SupernetTrainer(StepTrainer[SuperBNN]):
    """One optimizer step of the sandwich rule; no logging, no I/O.

    Args:
        model: the supernet (already on its device).
        cfg: the training section of the config.
        sampler: chooses the step's architectures from the step number.
        optimizer, scheduler: stepped once per :meth:`step`.
        dist: rank information; gradients and BN statistics are averaged across ranks.
        autocast: context manager for the training forward passes (``train.amp``).
    """

    def __init__(self, model: SuperBNN, cfg: TrainConfig, sampler: SandwichSampler,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, *,
                 dist: DistInfo | None = None, autocast: AbstractContextManager | None = None) -> None:
        super().__init__(model, optimizer, scheduler, dist=dist, autocast=autocast)
        self.cfg = cfg
        self.sampler = sampler

    def step(self, images: Tensor, labels: Tensor, step: int) -> dict[str, Tensor]:
        """Trains on one batch; returns detached losses and the teacher's batch accuracy.

        Raises:
            TrainingDiverged: a loss is not finite (the optimizer step is not applied).
        """
        cfg, model = self.cfg, self.model
        plan = self.sampler.plan(step)
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out: dict[str, Tensor] = {}
        model.set_arch(plan.teacher)
        with model.precision("fp" if cfg.bi_teacher else "binary"), self.autocast():
            teacher_logits = model(images)
            loss_t = smooth_cross_entropy(teacher_logits, labels, cfg.label_smoothing)
        loss_t.backward()
        soft = teacher_logits.detach()
        out["loss_teacher"] = loss_t.detach()
        out["teacher_top1"] = (soft.argmax(1) == labels).float().mean() * 100
        random_losses = []
        for role, arch in plan.students:
            model.set_arch(arch)
            with self.autocast():
                logits = model(images)
                loss = soft_distillation(logits, soft, cfg.kd_temperature)
            if cfg.weight_distill:
                loss = loss + model.weight_distillation_loss(cfg.weight_distill_scale)
            loss.backward()
            if role is Role.RANDOM:
                random_losses.append(loss.detach())
            else:
                out[f"loss_{role.value}"] = loss.detach()
            if role is Role.SMALLEST:
                out["smallest_top1"] = (logits.detach().argmax(1) == labels).float().mean() * 100
        if random_losses:
            out["loss_random"] = torch.stack(random_losses).mean()
        total = out["loss_teacher"] + out["loss_smallest"] + sum(random_losses, torch.zeros_like(loss_t))
        if "loss_largest" in out:
            total = total + out["loss_largest"]
        out["loss"] = total
        all_reduce_gradients(model, self.dist)
        check_finite(total, step, model.parameters())
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        average_buffers(model, self.dist)
        return out


def _evaluate_archs(model: SuperBNN, archs: dict[str, tuple[Arch, str]], calib: list[Tensor],
                    test_batches: list[tuple[Tensor, Tensor]], autocast: AbstractContextManager | None
                    ) -> dict[str, float]:
    """Top-1 of each named (arch, weight mode) after BN recalibration; the supernet is restored."""
    results = {}
    previous = model.arch
    for name, (arch, mode) in archs.items():
        with preserved_bn_state(model), model.use_arch(arch), model.precision(mode):
            recalibrate_bn(model, calib, autocast=autocast)
            results[f"{name}_top1"] = evaluate_top1(model, test_batches, autocast=autocast)["top1"]
    model.set_arch(previous)
    return results


class SupernetRecipe:
    """The supernet's recipe on the run skeleton: model, optimizer and data from the config; the step is
    :class:`SupernetTrainer`'s; evaluation is the Bi-Teacher, the largest and the smallest binary subnet
    after BN recalibration on a fixed calibration set, on a capped test subset, in float32."""

    kind = "supernet"

    def __init__(self, cfg: RunConfig, ctx: Any, data: Any, space: Any, total_steps: int, steps_per_epoch: int
                 ) -> None:
        from ..context import move_model

        tcfg = cfg.train
        self.cfg, self.ctx, self.data, self.space = cfg, ctx, data, space
        model = SuperBNN(space, seed=derive_seed(cfg.seed, "init"), **model_kwargs(strategies_from_config(cfg)))
        self.model = move_model(model, ctx)
        if tcfg.compile:
            reason = compiled_tail_works(ctx.device)
            if reason is None:
                set_fused(self.model, Fusion.COMPILED)
            else:
                _logger.warning("train.compile: torch.compile is not usable here (%s); training without fusion",
                                reason)
        self.optimizer = build_optimizer(self.model, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas)
        self.scheduler = build_scheduler(self.optimizer, total_steps=total_steps,
                                         warmup_steps=round(tcfg.warmup_epochs * steps_per_epoch),
                                         start_factor=tcfg.warmup_start_factor, min_lr=tcfg.min_lr)
        sampler = SandwichSampler(space, num_random=tcfg.num_random, seed=cfg.seed,
                                  largest_student=tcfg.largest_student)
        self.trainer = SupernetTrainer(self.model, tcfg, sampler, self.optimizer, self.scheduler, dist=ctx.dist,
                                       autocast=ctx.autocast())
        self._eval: tuple[list[Tensor], list[tuple[Tensor, Tensor]]] | None = None

    def batches(self, epoch: int, start_batch: int) -> Any:
        ctx = self.ctx
        return self.data.train.loader(batch_size=self.cfg.data.batch_size, train=True, seed=self.cfg.seed,
                                      epoch=epoch, start_batch=start_batch, rank=ctx.dist.rank,
                                      world_size=ctx.dist.world_size, device=ctx.device,
                                      channels_last=ctx.channels_last)

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[0].shape[0])

    def step(self, batch: tuple[Tensor, Tensor], step: int) -> dict[str, Tensor]:
        return self.trainer.step(batch[0], batch[1], step)

    def evaluate(self) -> dict[str, float]:
        from ..runs import eval_batches

        cfg, ctx, space = self.cfg, self.ctx, self.space
        if self._eval is None:  # built on first use: calibration images and a capped test subset
            calib_loader = self.data.train.loader(batch_size=min(cfg.data.batch_size, 256), train=True,
                                                  seed=derive_seed(cfg.seed, "calib"), device=ctx.device,
                                                  channels_last=ctx.channels_last)
            calib = [x for _, (x, _y) in zip(range(4), calib_loader)]
            test = self.data.test
            if cfg.train.eval_images is not None:
                test = test.subset(range(min(cfg.train.eval_images, len(test))))
            self._eval = (calib, eval_batches(test, cfg, ctx.device, channels_last=ctx.channels_last))
        teacher_mode = "fp" if cfg.train.bi_teacher else "binary"
        archs = {"teacher": (space.largest(), teacher_mode), "largest": (space.largest(), "binary"),
                 "smallest": (space.smallest(), "binary")}
        return _evaluate_archs(self.model, archs, *self._eval, None)  # float32, as deployment

    def state_dict(self) -> dict[str, Any]:
        return training_state(self.model, self.optimizer, self.scheduler)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_strategies(strategies_from_record(state.get("config")), strategies_from_config(self.cfg),
                         "the checkpoint")
        load_training_state(state, self.model, self.optimizer, self.scheduler)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"epochs": self.cfg.train.epochs}


def train_supernet(cfg: RunConfig, *, run_dir: str | Path | None = None, resume: bool = False,
                   force: bool = False, progress: bool = True, max_steps: int | None = None,
                   model_out: list[SuperBNN] | None = None) -> dict[str, Any]:
    """Trains a supernet as configured; writes a run folder; returns the final metrics.

    The run folder holds ``config.yaml``, ``checkpoint.pt`` (every ``train.checkpoint_every`` steps,
    after each evaluation and at the end), ``metrics.jsonl``, TensorBoard events under ``tb/`` and
    ``train_summary.json``.

    Args:
        resume: continue from ``<run_dir>/checkpoint.pt`` (same data order, augmentation and
            architectures as an uninterrupted run).
        force: a fresh run may replace a checkpoint already in the run folder.
        max_steps: stop after this global step (tests and time-boxed runs); the schedule still
            spans the configured epochs.
        model_out: if given, the trained in-memory supernet is appended to it.

    Raises:
        CheckpointError: ``resume`` without a checkpoint, or one of another search space or strategies.
        TrainingDiverged: a loss became NaN/inf (the last good checkpoint is kept).
    """
    from ..context import base_space, build_data_and_space, make_context

    base_space(cfg)  # a space that does not resolve fails before the run folder is made
    ctx = make_context(cfg, run_dir)
    run = TrainingRun(ctx.run_dir, cfg, dist=ctx.dist, resume=resume, force=force,
                      progress=progress, desc="supernet", kind="supernet")
    data, space = build_data_and_space(cfg, ctx.run_dir)
    if data.train is None:
        raise DataError(f"dataset {data.name!r} has no training split")
    tcfg = cfg.train
    steps_per_epoch, total_steps = run.schedule(len(data.train), cfg.data.batch_size, tcfg.epochs,
                                                key="data.batch_size")
    recipe = SupernetRecipe(cfg, ctx, data, space, total_steps, steps_per_epoch)
    run.start(recipe, run.load("supernet", space))
    cadence = Cadence(log_every=tcfg.log_every, checkpoint_every=tcfg.checkpoint_every,
                      eval_every=max(1, round(tcfg.eval_every_epochs * steps_per_epoch)))
    summary = run.train(recipe, examples=len(data.train), batch_size=cfg.data.batch_size, epochs=tcfg.epochs,
                        cadence=cadence, max_steps=max_steps)
    summary["space"] = space.name
    run.write_json("train_summary.json", summary)
    if model_out is not None:
        model_out.append(recipe.model)
    return summary
