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

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, atomic_write_text, config_to_dict, dump_config
from ..errors import InvalidArch, NasbnnError
from ..space import Arch, SearchSpace
from ..utils.seeding import derive_seed
from .bn import evaluate_top1
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .distributed import all_reduce_gradients, average_buffers, barrier
from .losses import smooth_cross_entropy
from .optim import build_optimizer, build_scheduler

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


def _setup(cfg: RunConfig, arch_text: str, run: Path, resume: bool) -> dict[str, Any]:
    from ..context import build_data_and_space

    ckpt_path = run / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise NasbnnError(f"cannot resume: no checkpoint in {str(run)!r}")
    data, space = build_data_and_space(cfg, run)
    arch = parse_space_arch(space, arch_text)
    batch = cfg.data.batch_size
    if data.train is None or len(data.train) < batch:
        raise NasbnnError(f"training split has {len(data.train)} images, fewer than one batch of {batch}; "
                          "lower data.batch_size")
    steps_per_epoch = len(data.train) // batch
    return {"data": data, "space": space, "arch": arch, "ckpt": ckpt_path, "steps_per_epoch": steps_per_epoch,
            "total_steps": max(1, math.ceil(cfg.train.epochs * steps_per_epoch))}


def _restore(state: dict[str, Any], net: torch.nn.Module, optimizer: Any, scheduler: Any, arch: Arch,
             cfg: RunConfig) -> int:
    from ..strategies import check_strategies, strategies_from_config, strategies_from_record

    extra = state.get("extra", {})
    if extra.get("arch") != str(arch):
        raise NasbnnError(f"cannot resume: the checkpoint trains {extra.get('arch')!r}, not {str(arch)!r}")
    check_strategies(strategies_from_record(state.get("config")), strategies_from_config(cfg), "the checkpoint")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def train_arch(cfg: RunConfig, arch: str | Arch, *, run_dir: str | Path | None = None, resume: bool = False,
               progress: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Trains ``arch`` from scratch; writes ``<run>/bundle``, ``standalone_summary.json``; returns the metrics.

    Raises:
        InvalidArch: ``arch`` is not in the configured space.
        CheckpointError: ``resume`` from a checkpoint of other strategy switches or another space.
    """
    from ..context import make_context, move_model

    ctx = make_context(cfg, run_dir)
    run = ctx.run_dir
    s = _setup(cfg, str(arch), run, resume)
    tcfg = cfg.train
    net = move_model(initial_network(s["space"], s["arch"], cfg), ctx)
    optimizer = build_optimizer(net, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tcfg.betas)
    scheduler = build_scheduler(optimizer, total_steps=s["total_steps"],
                                warmup_steps=round(tcfg.warmup_epochs * s["steps_per_epoch"]),
                                start_factor=tcfg.warmup_start_factor, min_lr=tcfg.min_lr)
    if ctx.dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run)
    step = 0
    if resume:
        state = load_checkpoint(s["ckpt"], kind=CHECKPOINT_KIND, space=s["space"])
        step = _restore(state, net, optimizer, scheduler, s["arch"], cfg)
    elif ctx.dist.is_main:
        dump_config(cfg, run / "config.yaml")
    barrier(ctx.dist)
    last_step = s["total_steps"] if max_steps is None else min(s["total_steps"], max_steps)
    step = _loop(cfg, ctx, s, net, optimizer, scheduler, step, last_step, progress)
    return _finish(cfg, ctx, s, net, step)


def _loop(cfg: RunConfig, ctx: Any, s: dict[str, Any], net: torch.nn.Module, optimizer: Any, scheduler: Any,
          step: int, last_step: int, progress: bool) -> int:
    from ..utils.metrics import MetricsWriter

    tcfg, spe = cfg.train, s["steps_per_epoch"]
    metrics = MetricsWriter(ctx.run_dir, resume_step=step or None, tensorboard=False) if ctx.dist.is_main else None
    bar = None
    if progress and ctx.dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=last_step, initial=step, unit="step", desc="train-arch", dynamic_ncols=True)
    autocast = ctx.autocast()
    try:
        while step < last_step:
            epoch, start = divmod(step, spe)
            loader = s["data"].train.loader(batch_size=cfg.data.batch_size, train=True, seed=cfg.seed, epoch=epoch,
                                            start_batch=start, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                                            device=ctx.device, channels_last=ctx.channels_last)
            for images, labels in loader:
                if step >= last_step:
                    break
                net.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = smooth_cross_entropy(net(images).float(), labels, tcfg.label_smoothing)
                loss.backward()
                all_reduce_gradients(net, ctx.dist)
                if not bool(torch.isfinite(loss)):
                    raise NasbnnError(f"loss became {float(loss)} at step {step}; lower train.lr")
                if tcfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), tcfg.grad_clip)
                optimizer.step()
                scheduler.step()
                average_buffers(net, ctx.dist)
                step += 1
                if bar is not None:
                    bar.update(1)
                if metrics is not None and (step % tcfg.log_every == 0 or step == last_step):
                    metrics.write({"step": step, "loss": round(float(loss.detach()), 5),
                                   "lr": optimizer.param_groups[0]["lr"]})
                if (step % tcfg.checkpoint_every == 0 or step == last_step) and ctx.dist.is_main:
                    save_checkpoint(s["ckpt"], kind=CHECKPOINT_KIND, model_state=net.state_dict(), space=s["space"],
                                    config=config_to_dict(cfg), step=step, optimizer=optimizer.state_dict(),
                                    scheduler=scheduler.state_dict(),
                                    extra={"arch": str(s["arch"]), "total_steps": s["total_steps"]})
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    return step


def _finish(cfg: RunConfig, ctx: Any, s: dict[str, Any], net: torch.nn.Module, step: int) -> dict[str, Any]:
    """Test top-1 of the trained network (its own running BN statistics) and the bundle."""
    from ..bundle import save_bundle

    run = ctx.run_dir
    summary: dict[str, Any] = {"arch": str(s["arch"]), "step": step, "total_steps": s["total_steps"],
                               "bundle": str(run / "bundle")}
    if ctx.dist.is_main:
        test = s["data"].test.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=ctx.device,
                                     channels_last=ctx.channels_last)
        result = evaluate_top1(net, test, autocast=ctx.autocast())
        summary["test_top1"] = result["top1"]
        save_bundle(net.cpu(), run / "bundle", config=config_to_dict(cfg),
                    source={"trained_from_scratch": True, "steps": step}, metrics={"test_top1": result["top1"]})
        atomic_write_text(run / "standalone_summary.json", json.dumps(summary, indent=2) + "\n")
    barrier(ctx.dist)
    return summary
