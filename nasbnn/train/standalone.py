"""Stand-alone training of one architecture from scratch (the ground truth a supernet ranking is judged by).

The network is the :class:`~nasbnn.models.StaticBNN` of the architecture, initialised as a freshly
seeded supernet would be and exported, with the supernet recipe's knobs: Adam with ``train.lr``,
``train.weight_decay`` and ``train.betas``, the warmup + cosine schedule over ``train.epochs``,
label-smoothed cross-entropy on the labels, the same training split (the search hold-out is left out)
and augmentation. ``model.weight_norm`` is honoured by the binary convs; ``model.bi_transformation``
has no effect on a single network (at export the matrix is folded into the latent weight, and from
scratch it would only re-parametrise it), and ``train.bi_teacher`` none either (there is no supernet
teacher); both are recorded. The run resumes exactly from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import CheckpointError, InvalidArch
from ..space import Arch, SearchSpace
from ..utils.seeding import derive_seed
from .finetune import finish_network
from .losses import smooth_cross_entropy
from .network import NetworkRecipe, Optimization
from .run import Cadence, TrainingRun

__all__ = ["initial_network", "parse_space_arch", "train_arch"]

CHECKPOINT_KIND = "standalone"


def parse_space_arch(space: SearchSpace, text: str | Arch) -> Arch:
    """The architecture ``text`` if it is a member of ``space``.

    Raises:
        InvalidArch: malformed, or outside the space (the message says why, on one line).
    """
    try:
        arch = Arch.parse(text) if isinstance(text, str) else text
        return space.validate(arch)
    except InvalidArch as exc:
        raise InvalidArch(f"architecture is not in search space {space.name!r}: {exc}") from None


def initial_network(space: SearchSpace, arch: Arch, cfg: RunConfig) -> torch.nn.Module:
    """The untrained network: the architecture exported from a supernet seeded from ``cfg.seed``."""
    from ..export import export_subnet
    from ..models import SuperBNN
    from ..strategies import model_kwargs, strategies_from_config

    sup = SuperBNN(space, seed=derive_seed(cfg.seed, "standalone-init"), **model_kwargs(strategies_from_config(cfg)))
    return export_subnet(sup, arch).train()


def train_arch(cfg: RunConfig, arch: str | Arch, *, run_dir: str | Path | None = None, resume: bool = False,
               force: bool = False, progress: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Trains ``arch`` from scratch; writes ``<run>/bundle``, ``standalone_summary.json``; returns the metrics.

    Raises:
        InvalidArch: ``arch`` is not in the configured space.
        CheckpointError: ``resume`` from a checkpoint of another architecture, other strategy switches or
            another space.
    """
    from ..context import base_space, build_data_and_space, make_context, move_model
    from ..strategies import check_strategies, strategies_from_config, strategies_from_record

    base_space(cfg)  # a space that does not resolve fails before the run folder is made
    ctx = make_context(cfg, run_dir)
    run = TrainingRun(ctx.run_dir, cfg, dist=ctx.dist, resume=resume, force=force,
                      progress=progress, desc="train-arch", kind=CHECKPOINT_KIND)
    data, space = build_data_and_space(cfg, ctx.run_dir)
    parsed = parse_space_arch(space, str(arch))
    tcfg = cfg.train
    steps_per_epoch, total_steps = run.schedule(len(data.train), cfg.data.batch_size, tcfg.epochs,
                                                key="data.batch_size")
    opt = Optimization(lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas,
                       warmup_steps=round(tcfg.warmup_epochs * steps_per_epoch),
                       warmup_start_factor=tcfg.warmup_start_factor, min_lr=tcfg.min_lr, grad_clip=tcfg.grad_clip)
    net = move_model(initial_network(space, parsed, cfg), ctx)
    recipe = NetworkRecipe(CHECKPOINT_KIND, net, space, ctx, data,
                           loss_fn=lambda logits, labels: smooth_cross_entropy(logits, labels, tcfg.label_smoothing),
                           opt=opt, total_steps=total_steps, batch=cfg.data.batch_size, seed=cfg.seed,
                           eval_batch=cfg.data.eval_batch_size, extra={"arch": str(parsed)})
    state = run.load(CHECKPOINT_KIND, space)
    if state is not None:
        if state.get("extra", {}).get("arch") != str(parsed):
            raise CheckpointError(f"cannot resume: the checkpoint trains {state['extra'].get('arch')!r}, "
                              f"not {str(parsed)!r}")
        check_strategies(strategies_from_record(state.get("config")), strategies_from_config(cfg), "the checkpoint")
    run.start(recipe, state)
    run.train(recipe, examples=len(data.train), batch_size=cfg.data.batch_size, epochs=tcfg.epochs,
              cadence=Cadence(tcfg.log_every, tcfg.checkpoint_every), max_steps=max_steps)
    record = {"arch": str(parsed), "total_steps": total_steps, "bundle": str(run.folder / "bundle")}
    result = finish_network(run, recipe, cfg, "standalone_summary.json", record=record,
                            source={"trained_from_scratch": True, "steps": run.step})
    return {**record, "step": run.step, "test_top1": result.get("test_top1")}
