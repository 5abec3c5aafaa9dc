"""The run skeleton: one object owns a training run's folder and drives any recipe's step function.

Supernet training, fine-tuning, stand-alone training and detector training differ only in what one
step does and what evaluation means. Everything around them lives here once:

- the run folder: creation with one-line errors for unusable paths, removal of temporaries a killed
  writer left behind, the resolved ``config.yaml``, the ``checkpoint.pt`` written atomically;
- resume: the same step, batches and randomness as an uninterrupted run (recipes derive every random
  draw from the step and epoch position);
- the loop: epochs of batches from ``recipe.batches(epoch, start_batch)``, the fewer-than-one-batch check,
  a progress bar, ``metrics.jsonl`` and TensorBoard, the log / evaluation / checkpoint cadence, the
  divergence check, ``train_summary.json``;
- ranks: only rank 0 writes, and all ranks meet at barriers around what it writes.

A recipe (see :class:`Recipe`) builds its model, optimizer and data in its own ``setup`` and hands the
run a step function that returns named losses.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from pydantic import BaseModel

from ..data.base import require_one_batch
from ..errors import CheckpointError, ConfigError, DataError, NasbnnError, OutputError
from ..space import SearchSpace
from ..utils.io import atomic_write_text, ensure_dir
from ..utils.metrics import MetricsWriter, Throughput, step_record
from .checkpoint import load_checkpoint, remove_stale_temporaries, restoring, save_checkpoint
from .distributed import DistInfo, barrier

__all__ = ["CHECKPOINT_NAME", "Cadence", "Recipe", "StepTrainer", "TrainingDiverged", "TrainingRun"]

_logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class TrainingDiverged(NasbnnError):
    """A loss became NaN or infinite; the run stopped before applying that step."""

    def naming_checkpoint(self, ckpt_path: Path) -> TrainingDiverged:
        """The same error, telling the user which checkpoint holds the last good state and what to try."""
        kept = f"; the last good checkpoint is {str(ckpt_path)!r}" if ckpt_path.exists() else ""
        return TrainingDiverged(f"{self}{kept} (try a lower learning rate or gradient clipping)")


def check_finite(loss: torch.Tensor, step: int, params: Iterable[torch.nn.Parameter] | None = None) -> None:
    """Raises :class:`TrainingDiverged` when ``loss`` is NaN or infinite, or any gradient of ``params`` is (call
    after the gradients are averaged, before the optimizer step): a finite loss can still have NaN gradients,
    and one such step would turn the weights to NaN."""
    if not bool(torch.isfinite(loss)):
        raise TrainingDiverged(f"loss became {float(loss.detach())} at step {step}")
    if params is not None:
        grads = [p.grad for p in params if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()):
            raise TrainingDiverged(f"gradients became NaN or infinite at step {step} (loss {float(loss.detach()):.4g})")


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """What a recipe's checkpoint holds: the model's, the optimizer's and the schedule's state dicts."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def load_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> None:
    """Restores what :func:`training_state` saved."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


ModelT = TypeVar("ModelT", bound=torch.nn.Module)


class StepTrainer(Generic[ModelT]):
    """What every recipe's optimizer step works with: the model, the optimizer and schedule it steps
    once per call, the ranks it averages over, and the autocast of its training forward passes.

    Subclasses define ``step``; like them, this holds no logging and does no I/O.
    """

    def __init__(self, model: ModelT, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, dist: DistInfo | None = None,
                 autocast: AbstractContextManager | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dist = dist or DistInfo()
        self._autocast = autocast

    def autocast(self) -> AbstractContextManager:
        """The context of a training forward pass: the run's autocast, or none."""
        return self._autocast if self._autocast is not None else nullcontext()


@dataclass(frozen=True)
class Cadence:
    """How often the loop logs, evaluates and checkpoints, in steps.

    Attributes:
        eval_every: periodic evaluation; ``None`` for none.
        eval_at_end: evaluate after the last step as well.
    """

    log_every: int
    checkpoint_every: int
    eval_every: int | None = None
    eval_at_end: bool = True


class Recipe(Protocol):
    """What a training recipe gives the run skeleton.

    ``step`` must derive all its randomness from ``step`` (and the batch from ``epoch``/``start_batch``),
    so that a resumed run repeats an uninterrupted one exactly.
    """

    kind: str  # the checkpoint kind ("supernet", "finetune", ...)
    space: SearchSpace
    optimizer: torch.optim.Optimizer

    def batches(self, epoch: int, start_batch: int) -> Iterable[Any]: ...
    def batch_size(self, batch: Any) -> int: ...
    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor]: ...
    def evaluate(self) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...  # {"model": ..., "optimizer": ..., "scheduler": ...}
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def checkpoint_extra(self) -> dict[str, Any]: ...


@dataclass
class _Progress:
    """The rank-0 side effects of the loop: progress bar and metrics; absent on other ranks."""

    bar: Any = None
    metrics: MetricsWriter | None = None
    speed: Throughput = field(default_factory=Throughput)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def _check_same_kind(path: Path, kind: str) -> None:
    """Refuses ``--force`` over a run of another kind (a fine-tuning over a supernet run would replace hours of
    training that this command did not make). A checkpoint that cannot be read is what --force is for."""
    from ..utils.torch_files import safe_torch_load

    try:
        other = safe_torch_load(path)
    except NasbnnError:
        return
    found = other.get("kind") if isinstance(other, dict) else None
    if isinstance(found, str) and found != kind:
        raise OutputError(f"run folder {str(path.parent)!r} holds a {found} run; --force starts over a {kind} run "
                          "only: choose another folder")


class TrainingRun:
    """Owns one run folder: creation, resume, config dump, checkpoints, metrics and the summary.

    Args:
        folder: the run folder (created if needed).
        config: the resolved configuration, dumped to ``config.yaml`` by a fresh run.
        dist: rank information; only rank 0 writes.
        resume: continue from ``<folder>/checkpoint.pt``.
        force: a fresh run may replace the folder's checkpoint.
        progress: show a progress bar (rank 0).

    Raises:
        OutputError: the folder cannot be used (a file in the way, read-only, ...), or a fresh run without
            ``force`` into a folder that already holds a checkpoint.
        CheckpointError: ``resume`` without a checkpoint.
    """

    def __init__(self, folder: str | Path, config: BaseModel, *, dist: DistInfo | None = None,
                 resume: bool = False, force: bool = False, progress: bool = True,
                 desc: str = "train", kind: str | None = None) -> None:
        self.folder = Path(folder)
        self.config = config
        self.dist = dist or DistInfo()
        self.resume = resume
        self.progress = progress
        self.desc = desc
        self.checkpoint_path = self.folder / CHECKPOINT_NAME
        if resume and not self.checkpoint_path.is_file():
            raise CheckpointError(f"cannot resume: no checkpoint in {str(self.folder)!r} (expected {CHECKPOINT_NAME})")
        if not resume and not force and self.checkpoint_path.is_file():
            raise OutputError(f"run folder {str(self.folder)!r} already holds {CHECKPOINT_NAME}; pass --resume to "
                              "continue that run or --force to start over, replacing its checkpoint")
        if force and not resume and kind is not None and self.checkpoint_path.is_file():
            _check_same_kind(self.checkpoint_path, kind)
        if self.dist.is_main:
            ensure_dir(self.folder, what="run folder")
            remove_stale_temporaries(self.folder)
        barrier(self.dist)  # ranks may write into the folder (split.json): none before the cleanup is over
        self.step = 0
        self.steps_per_epoch = self.total_steps = 0
        self.last_eval: dict[str, float] = {}

    # ----------------------------------------------------------------------------------- state
    def load(self, kind: str, space: SearchSpace | None = None) -> dict[str, Any] | None:
        """The checkpoint to resume from (validated against ``kind`` and ``space``), or ``None`` for a fresh run."""
        if not self.resume:
            return None
        return load_checkpoint(self.checkpoint_path, kind=kind, space=space)

    def start(self, recipe: Recipe, state: dict[str, Any] | None = None) -> None:
        """Restores ``recipe`` from ``state`` (a resume) or writes ``config.yaml`` (a fresh run); all ranks meet."""
        from ..config import dump_config

        if state is not None:
            with restoring(self.checkpoint_path, "this run's model and optimizer"):
                recipe.load_state_dict(state)
            self.step = int(state["step"])
            self.last_eval = dict(state.get("extra", {}).get("eval", {}))
            _logger.info("resumed from step %d", self.step)
        elif self.dist.is_main:
            dump_config(self.config, self.folder / "config.yaml")
        barrier(self.dist)

    def save(self, recipe: Recipe) -> None:
        """Writes the checkpoint (rank 0, atomically)."""
        if not self.dist.is_main:
            return
        state = recipe.state_dict()
        save_checkpoint(self.checkpoint_path, kind=recipe.kind, model_state=state["model"], space=recipe.space,
                        config=self.config.model_dump(mode="json"), step=self.step,
                        optimizer=state.get("optimizer"), scheduler=state.get("scheduler"),
                        extra={**recipe.checkpoint_extra(), "steps_per_epoch": self.steps_per_epoch,
                               "total_steps": self.total_steps, "eval": self.last_eval})

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Writes ``<folder>/<name>`` (rank 0, atomically); all ranks meet afterwards."""
        if self.dist.is_main:
            atomic_write_text(self.folder / name, json.dumps(data, indent=2) + "\n")
        barrier(self.dist)

    # ------------------------------------------------------------------------------------ loop
    def train(self, recipe: Recipe, *, examples: int, batch_size: int, epochs: float, cadence: Cadence,
              max_steps: int | None = None) -> dict[str, Any]:
        """Runs the loop from the current step to the end of the schedule (or ``max_steps``).

        Args:
            examples: size of the training split; an epoch has ``examples // batch_size`` steps.
            batch_size: the global batch size.
            epochs: the schedule's length (may be fractional).

        Returns:
            ``{"step", "total_steps", "steps_per_epoch", "checkpoint", **last_eval}``.

        Raises:
            ConfigError: ``max_steps`` below 1.
            DataError: the split is smaller than one batch.
            TrainingDiverged: a loss became NaN/inf (the last good checkpoint is named).
        """
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
        steps_per_epoch, total_steps = self.schedule(examples, batch_size, epochs)
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        last_step = total_steps if max_steps is None else min(total_steps, max_steps)
        out = self._open_progress(last_step)
        try:
            for batch in self._batches(recipe, steps_per_epoch, last_step):
                try:
                    losses = recipe.step(batch, self.step)
                except TrainingDiverged as exc:
                    raise exc.naming_checkpoint(self.checkpoint_path) from None
                self.step += 1
                out.speed.add(recipe.batch_size(batch) * self.dist.world_size)
                self._after_step(recipe, out, losses, steps_per_epoch, total_steps, cadence)
                if self.step == last_step:  # the end, or a ``max_steps`` stop: keep what was reached
                    self.save(recipe)
        finally:
            out.close()
        return {"step": self.step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                "checkpoint": str(self.checkpoint_path), **self.last_eval}

    @staticmethod
    def schedule(examples: int, batch_size: int, epochs: float, *, key: str = "the batch size") -> tuple[int, int]:
        """``(steps_per_epoch, total_steps)`` of a schedule; refuses a split smaller than one batch (naming the
        config ``key`` to lower)."""
        require_one_batch(examples, batch_size, key=key)
        steps_per_epoch = examples // batch_size
        return steps_per_epoch, max(1, math.ceil(epochs * steps_per_epoch))

    def _batches(self, recipe: Recipe, steps_per_epoch: int, last_step: int) -> Iterator[Any]:
        while self.step < last_step:
            epoch, start = divmod(self.step, steps_per_epoch)
            produced = False
            for batch in recipe.batches(epoch, start):
                if self.step >= last_step:
                    return
                produced = True
                yield batch
            if not produced:  # a plan that yields nothing would spin here forever
                raise DataError(f"epoch {epoch} produced no batch at step {self.step}")

    def _open_progress(self, last_step: int) -> _Progress:
        out = _Progress()
        if not self.dist.is_main:
            return out
        out.metrics = MetricsWriter(self.folder, resume_step=self.step if self.resume else None)
        if self.progress:
            from tqdm.auto import tqdm

            out.bar = tqdm(total=last_step, initial=self.step, unit="step", desc=self.desc, dynamic_ncols=True)
        return out

    def _after_step(self, recipe: Recipe, out: _Progress, losses: dict[str, torch.Tensor], steps_per_epoch: int,
                    total_steps: int, cadence: Cadence) -> None:
        """Logging and evaluation follow the schedule only (a ``max_steps`` stop adds no record, so an
        interrupted and resumed run logs exactly what an uninterrupted one does); checkpoints also."""
        step, last = self.step, self.step == total_steps
        if out.bar is not None:
            out.bar.update(1)
        if step % cadence.log_every == 0 or last:
            rec = step_record(step, steps_per_epoch, recipe.optimizer.param_groups[0]["lr"], losses, out.speed.read())
            if out.metrics is not None:
                out.metrics.write(rec)
            if out.bar is not None:
                out.bar.set_postfix(loss=f"{rec['loss']:.3f}", img_s=f"{rec['images_per_s']:.0f}")
        periodic = cadence.eval_every is not None and step % cadence.eval_every == 0
        if periodic or (last and cadence.eval_at_end):
            if self.dist.is_main:
                self.last_eval = recipe.evaluate()
                if out.metrics is not None:
                    out.metrics.write({"step": step, "eval": self.last_eval})
            barrier(self.dist)
        if (step % cadence.checkpoint_every == 0 or periodic) and not last:
            self.save(recipe)  # also after each evaluation, so a resume keeps the figures it reports
