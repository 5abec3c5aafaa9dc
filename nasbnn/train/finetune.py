"""Fine-tuning one exported network (the paper's second deployment path).

As the official ``train_single.py``: plain cross-entropy, binary weights and activations, Adam
(lr 1e-5, no weight decay), cosine schedule over 25 epochs by default; evaluation on the test set
every epoch; resumable checkpoints; the result is written as a bundle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..bundle import load_bundle, read_bundle_info, save_bundle
from ..config import RunConfig, config_to_dict, dump_config
from ..data.base import require_one_batch
from ..errors import NasbnnError
from ..utils.io import atomic_write_text, ensure_dir
from ..utils.seeding import derive_seed
from .bn import evaluate_top1
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .distributed import all_reduce_gradients, average_buffers, barrier
from .optim import build_optimizer, build_scheduler

__all__ = ["finetune"]


def finetune(cfg: RunConfig, *, bundle: str | Path, run_dir: str | Path, resume: bool = False,
             progress: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Fine-tunes the network of ``bundle``; writes ``<run_dir>/bundle`` and returns final metrics."""
    from ..context import make_context, move_model
    from ..data import build_data
    from ..utils.metrics import MetricsWriter, Throughput

    info = read_bundle_info(bundle)
    ctx = make_context(cfg, run_dir)
    run = ctx.run_dir
    ckpt_path = run / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise NasbnnError(f"cannot resume: no checkpoint in {str(run)!r}")
    net = load_bundle(bundle)
    space = net.space
    trained = info.get("config", {}) or {}
    seed = int(trained.get("seed", cfg.seed))
    data_cfg = cfg.data
    tdata = trained.get("data", {})
    if tdata:
        data_cfg = data_cfg.model_copy(update={k: tdata[k] for k in ("name", "holdout_per_class") if k in tdata})
    if ctx.dist.is_main:
        ensure_dir(run, what="run folder")
        remove_stale_temporaries(run)
    barrier(ctx.dist)  # every rank may write split.json: none may start before the cleanup is over
    data = build_data(data_cfg, resolution=space.resolution, seed=seed, run_dir=run)
    if data.num_classes != space.num_classes:
        raise NasbnnError(f"bundle classifies {space.num_classes} classes but dataset {data.name!r} has "
                          f"{data.num_classes}")
    fcfg = cfg.finetune
    batch = fcfg.batch_size or cfg.data.batch_size
    require_one_batch(len(data.train), batch, key="finetune.batch_size" if fcfg.batch_size else "data.batch_size")
    steps_per_epoch = max(1, len(data.train) // batch)
    total_steps = max(1, math.ceil(fcfg.epochs * steps_per_epoch))
    net = move_model(net, ctx).train()
    optimizer = build_optimizer(net, lr=fcfg.lr, weight_decay=fcfg.weight_decay)
    scheduler = build_scheduler(optimizer, total_steps=total_steps,
                                warmup_steps=round(fcfg.warmup_epochs * steps_per_epoch))
    step = 0
    if resume:
        state = load_checkpoint(ckpt_path, kind="finetune", space=space)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    elif ctx.dist.is_main:
        dump_config(cfg, run / "config.yaml")
    barrier(ctx.dist)
    autocast = ctx.autocast()
    test = list(data.test.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=ctx.device,
                                 channels_last=ctx.channels_last))
    metrics = MetricsWriter(run, resume_step=step if resume else None) if ctx.dist.is_main else None
    last_step = total_steps if max_steps is None else min(total_steps, max_steps)
    bar = None
    if progress and ctx.dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=last_step, initial=step, unit="step", desc="finetune", dynamic_ncols=True)
    result: dict[str, Any] = {}
    speed = Throughput()
    try:
        while step < last_step:
            epoch, start = divmod(step, steps_per_epoch)
            loader = data.train.loader(batch_size=batch, train=True, seed=derive_seed(seed, "finetune"),
                                       epoch=epoch, start_batch=start, rank=ctx.dist.rank,
                                       world_size=ctx.dist.world_size, device=ctx.device,
                                       channels_last=ctx.channels_last)
            for images, labels in loader:
                if step >= last_step:
                    break
                net.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = F.cross_entropy(net(images).float(), labels)
                loss.backward()
                all_reduce_gradients(net, ctx.dist)
                if not bool(torch.isfinite(loss)):
                    raise NasbnnError(f"loss became {float(loss)} at step {step}; lower finetune.lr")
                optimizer.step()
                scheduler.step()
                average_buffers(net, ctx.dist)
                step += 1
                speed.add(images.shape[0] * ctx.dist.world_size)
                if bar is not None:
                    bar.update(1)
                if metrics is not None and (step % fcfg.log_every == 0 or step == last_step):
                    metrics.write({"step": step, "loss": round(float(loss.detach()), 5),
                                   "lr": optimizer.param_groups[0]["lr"], "images_per_s": speed.read()})
                end_of_epoch = step % steps_per_epoch == 0 or step == last_step
                if end_of_epoch and ctx.dist.is_main:
                    result = {f"test_{k}": v for k, v in evaluate_top1(net, test).items()}
                    if metrics is not None:
                        metrics.write({"step": step, "eval": result})
                if (step % fcfg.checkpoint_every == 0 or end_of_epoch) and ctx.dist.is_main:
                    save_checkpoint(ckpt_path, kind="finetune", model_state=net.state_dict(), space=space,
                                    config=config_to_dict(cfg), step=step, optimizer=optimizer.state_dict(),
                                    scheduler=scheduler.state_dict(), extra={"bundle": str(bundle)})
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    out_bundle = run / "bundle"
    if ctx.dist.is_main:
        if not result:
            result = {f"test_{k}": v for k, v in evaluate_top1(net, test).items()}
        save_bundle(net.cpu(), out_bundle, config=config_to_dict(cfg),
                    source={"finetuned_from": str(bundle), "steps": step}, metrics=result)
        atomic_write_text(run / "finetune_summary.json", json.dumps({"step": step, **result}, indent=2) + "\n")
    barrier(ctx.dist)
    return {"step": step, "total_steps": total_steps, "bundle": str(out_bundle), **result}
