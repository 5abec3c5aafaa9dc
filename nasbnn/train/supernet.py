"""Supernet training with the Bi-Teacher sandwich rule: the step, and the resumable run around it.

Per batch: the largest subnet with real-valued weights and binary activations (the Bi-Teacher) learns
from the labels (label-smoothed cross-entropy); the smallest and ``num_random`` random subnets with
binary weights learn from the teacher's detached logits; all gradients accumulate into one optimizer
step (synchronised once across ranks).
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import RunConfig, TrainConfig, config_to_dict, dump_config
from ..data.base import require_one_batch
from ..errors import NasbnnError
from ..models import SuperBNN
from ..models.blocks import set_fused
from ..ops.fused import compiled_tail_works
from ..space import Arch
from ..strategies import check_strategies, model_kwargs, strategies_from_config, strategies_from_record
from ..utils.io import atomic_write_text, ensure_dir
from ..utils.seeding import derive_seed
from .bn import evaluate_top1, preserved_bn_state, recalibrate_bn
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .distributed import DistInfo, all_reduce_gradients, average_buffers, barrier
from .losses import smooth_cross_entropy, soft_distillation
from .optim import build_optimizer, build_scheduler
from .sampler import SandwichSampler

__all__ = ["SupernetTrainer", "TrainingDiverged", "train_supernet"]

_logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class TrainingDiverged(NasbnnError):
    """A loss became NaN or infinite; the run stopped before applying that step."""

    def naming_checkpoint(self, ckpt_path: Path) -> TrainingDiverged:
        """The same error, telling the user which checkpoint holds the last good state and what to try."""
        kept = f"; the last good checkpoint is {str(ckpt_path)!r}" if ckpt_path.exists() else ""
        return TrainingDiverged(f"{self}{kept} (try a lower train.lr or train.grad_clip)")


class SupernetTrainer:
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
        self.model = model
        self.cfg = cfg
        self.sampler = sampler
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dist = dist or DistInfo()
        self._autocast = autocast

    def _ctx(self) -> AbstractContextManager:
        return self._autocast if self._autocast is not None else nullcontext()

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
        with model.precision("fp" if cfg.bi_teacher else "binary"), self._ctx():
            teacher_logits = model(images)
            loss_t = smooth_cross_entropy(teacher_logits, labels, cfg.label_smoothing)
        loss_t.backward()
        soft = teacher_logits.detach()
        out["loss_teacher"] = loss_t.detach()
        out["teacher_top1"] = (soft.argmax(1) == labels).float().mean() * 100
        random_losses = []
        for name, arch in plan.students:
            model.set_arch(arch)
            with self._ctx():
                logits = model(images)
                loss = soft_distillation(logits, soft, cfg.kd_temperature)
            if cfg.weight_distill:
                loss = loss + model.weight_distillation_loss(cfg.weight_distill_scale)
            loss.backward()
            if name == "smallest":
                out["loss_smallest"] = loss.detach()
                out["smallest_top1"] = (logits.detach().argmax(1) == labels).float().mean() * 100
            elif name == "largest":
                out["loss_largest"] = loss.detach()
            else:
                random_losses.append(loss.detach())
        if random_losses:
            out["loss_random"] = torch.stack(random_losses).mean()
        total = out["loss_teacher"] + out["loss_smallest"] + sum(random_losses, torch.zeros_like(loss_t))
        if "loss_largest" in out:
            total = total + out["loss_largest"]
        out["loss"] = total
        all_reduce_gradients(model, self.dist)
        if not bool(torch.isfinite(total)):
            raise TrainingDiverged(f"loss became {float(total)} at step {step}")
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


def train_supernet(cfg: RunConfig, *, run_dir: str | Path | None = None, resume: bool = False,
                   progress: bool = True, max_steps: int | None = None,
                   model_out: list[SuperBNN] | None = None) -> dict[str, Any]:
    """Trains a supernet as configured; writes a run folder; returns the final metrics.

    The run folder holds ``config.yaml``, ``checkpoint.pt`` (every ``train.checkpoint_every`` steps
    and at the end), ``metrics.jsonl``, TensorBoard events under ``tb/`` and ``train_summary.json``.

    Args:
        resume: continue from ``<run_dir>/checkpoint.pt`` (same data order, augmentation and
            architectures as an uninterrupted run).
        max_steps: stop after this global step (tests and time-boxed runs); the schedule still
            spans the configured epochs.
        model_out: if given, the trained in-memory supernet is appended to it.

    Raises:
        CheckpointError: ``resume`` without a checkpoint, or one of another search space.
        TrainingDiverged: a loss became NaN/inf (the last good checkpoint is kept).
    """
    from ..context import build_data_and_space, make_context, move_model
    from ..utils.metrics import MetricsWriter, Throughput, step_record

    ctx = make_context(cfg, run_dir)
    run = ctx.run_dir
    ckpt_path = run / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        raise NasbnnError(f"cannot resume: no checkpoint in {str(run)!r} (expected {CHECKPOINT_NAME})")
    if ctx.dist.is_main:
        ensure_dir(run)
        remove_stale_temporaries(run)
    barrier(ctx.dist)  # every rank may write split.json: none may start before the cleanup is over
    data, space = build_data_and_space(cfg, run)
    tcfg = cfg.train
    world = ctx.dist.world_size
    if data.train is None:
        raise NasbnnError(f"dataset {data.name!r} has no training split")
    require_one_batch(len(data.train), cfg.data.batch_size, key="data.batch_size")
    steps_per_epoch = len(data.train) // cfg.data.batch_size
    total_steps = max(1, math.ceil(tcfg.epochs * steps_per_epoch))

    model = SuperBNN(space, seed=derive_seed(cfg.seed, "init"), **model_kwargs(strategies_from_config(cfg)))
    model = move_model(model, ctx)
    if tcfg.compile:
        reason = compiled_tail_works(ctx.device)
        if reason is None:
            set_fused(model, "compiled")
        else:
            _logger.warning("train.compile: torch.compile is not usable here (%s); training without fusion", reason)
    optimizer = build_optimizer(model, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas)
    scheduler = build_scheduler(optimizer, total_steps=total_steps,
                                warmup_steps=round(tcfg.warmup_epochs * steps_per_epoch),
                                start_factor=tcfg.warmup_start_factor, min_lr=tcfg.min_lr)
    step = 0
    if resume:
        state = load_checkpoint(ckpt_path, kind="supernet", space=space)
        check_strategies(strategies_from_record(state.get("config")), strategies_from_config(cfg),
                         f"checkpoint {str(ckpt_path)!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        _logger.info("resumed from step %d", step)
    elif ctx.dist.is_main:
        dump_config(cfg, run / "config.yaml")
    barrier(ctx.dist)

    autocast = ctx.autocast()
    sampler = SandwichSampler(space, num_random=tcfg.num_random, seed=cfg.seed,
                              largest_student=tcfg.largest_student)
    trainer = SupernetTrainer(model, tcfg, sampler, optimizer, scheduler, dist=ctx.dist, autocast=autocast)
    metrics = MetricsWriter(run, resume_step=step if resume else None) if ctx.dist.is_main else None

    # A fixed evaluation setup: calibration batches from the training split, a capped test subset.
    eval_every = max(1, round(tcfg.eval_every_epochs * steps_per_epoch))
    calib_loader = data.train.loader(batch_size=min(cfg.data.batch_size, 256), train=True,
                                     seed=derive_seed(cfg.seed, "calib"), device=ctx.device,
                                     channels_last=ctx.channels_last)
    calib = [x for i, (x, _) in zip(range(4), calib_loader)]
    test_split = data.test if tcfg.eval_images is None else data.test.subset(range(min(tcfg.eval_images,
                                                                                          len(data.test))))
    test_batches = list(test_split.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0,
                                          device=ctx.device, channels_last=ctx.channels_last))
    eval_archs = {"teacher": (space.largest(), "fp" if tcfg.bi_teacher else "binary"),
                  "largest": (space.largest(), "binary"), "smallest": (space.smallest(), "binary")}

    last_step = total_steps if max_steps is None else min(total_steps, max_steps)
    bar = None
    if progress and ctx.dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=last_step, initial=step, unit="step", desc="supernet", dynamic_ncols=True)
    last_eval: dict[str, float] = {}
    speed = Throughput()
    try:
        while step < last_step:
            epoch, start = divmod(step, steps_per_epoch)
            loader = data.train.loader(batch_size=cfg.data.batch_size, train=True, seed=cfg.seed, epoch=epoch,
                                       start_batch=start, rank=ctx.dist.rank, world_size=world,
                                       device=ctx.device, channels_last=ctx.channels_last)
            for images, labels in loader:
                if step >= last_step:
                    break
                try:
                    losses = trainer.step(images, labels, step)
                except TrainingDiverged as exc:
                    raise exc.naming_checkpoint(ckpt_path) from None
                step += 1
                speed.add(images.shape[0] * world)
                if bar is not None:
                    bar.update(1)
                if step % tcfg.log_every == 0 or step == last_step:
                    rec = step_record(step, steps_per_epoch, optimizer.param_groups[0]["lr"], losses, speed.read())
                    if metrics is not None:
                        metrics.write(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", teacher=f"{rec['teacher_top1']:.0f}%",
                                        img_s=f"{rec['images_per_s']:.0f}")
                if step % eval_every == 0 or step == last_step:
                    if ctx.dist.is_main:
                        last_eval = _evaluate_archs(model, eval_archs, calib, test_batches, None)  # float32
                        if metrics is not None:
                            metrics.write({"step": step, "eval": last_eval})
                    barrier(ctx.dist)
                if (step % tcfg.checkpoint_every == 0 or step == last_step) and ctx.dist.is_main:
                    save_checkpoint(ckpt_path, kind="supernet", model_state=model.state_dict(), space=space,
                                    config=config_to_dict(cfg), step=step, optimizer=optimizer.state_dict(),
                                    scheduler=scheduler.state_dict(),
                                    extra={"epochs": tcfg.epochs, "steps_per_epoch": steps_per_epoch,
                                           "total_steps": total_steps, "eval": last_eval})
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    summary = {"step": step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
               "checkpoint": str(ckpt_path), "space": space.name, **last_eval}
    if ctx.dist.is_main:
        atomic_write_text(run / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    barrier(ctx.dist)
    if model_out is not None:
        model_out.append(model)
    return summary
