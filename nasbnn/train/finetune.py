"""Fine-tuning one exported network (the paper's second deployment path).

As the official ``train_single.py``: plain cross-entropy, binary weights and activations, Adam
(lr 1e-5, no weight decay), cosine schedule over 25 epochs by default; evaluation on the test set
every epoch; resumable checkpoints; the result is written as a bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F

from ..bundle import load_bundle, read_bundle_info, save_bundle
from ..config import RunConfig, config_to_dict
from ..errors import OutputError
from ..utils.seeding import derive_seed
from .network import NetworkRecipe, Optimization
from .run import Cadence, TrainingRun

__all__ = ["finetune", "finish_network"]


def finetune(cfg: RunConfig, *, bundle: str | Path, run_dir: str | Path, resume: bool = False,
             force: bool = False, progress: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    """Fine-tunes the network of ``bundle``; writes ``<run_dir>/bundle`` and returns final metrics.

    The data split is the one the bundle's run used (:data:`nasbnn.runs.CARRIED_DATA_KEYS`).
    """
    from ..context import make_context, move_model
    from ..runs import run_data

    info = read_bundle_info(bundle)
    if Path(run_dir).resolve() == Path(bundle).resolve():
        raise OutputError(f"the fine-tuning run folder {str(run_dir)!r} is the input bundle; choose another --to")
    ctx = make_context(cfg, run_dir)
    run = TrainingRun(ctx.run_dir, cfg, dist=ctx.dist, resume=resume, force=force,
                      progress=progress, desc="finetune", kind="finetune")
    net = load_bundle(bundle)
    space = net.space
    data, seed = run_data(cfg, {"config": info.get("config") or {}}, space, run_dir=ctx.run_dir)
    fcfg = cfg.finetune
    batch = fcfg.batch_size or cfg.data.batch_size
    steps_per_epoch, total_steps = run.schedule(len(data.train), batch, fcfg.epochs,
                                                key="finetune.batch_size" if fcfg.batch_size else "data.batch_size")
    opt = Optimization(lr=fcfg.lr, weight_decay=fcfg.weight_decay,
                       warmup_steps=round(fcfg.warmup_epochs * steps_per_epoch))
    recipe = NetworkRecipe("finetune", move_model(net, ctx).train(), space, ctx, data, loss_fn=F.cross_entropy,
                           opt=opt, total_steps=total_steps, batch=batch, seed=derive_seed(seed, "finetune"),
                           eval_batch=cfg.data.eval_batch_size, extra={"bundle": str(bundle)})
    run.start(recipe, run.load("finetune", space))
    summary = run.train(recipe, examples=len(data.train), batch_size=batch, epochs=fcfg.epochs,
                        cadence=Cadence(fcfg.log_every, fcfg.checkpoint_every, eval_every=steps_per_epoch),
                        max_steps=max_steps)
    result = finish_network(run, recipe, cfg, "finetune_summary.json",
                            source={"finetuned_from": str(bundle), "steps": run.step})
    return {"step": run.step, "total_steps": summary["total_steps"], "bundle": str(run.folder / "bundle"), **result}


def finish_network(run: TrainingRun, recipe: NetworkRecipe, cfg: RunConfig, summary_name: str, *,
                   source: dict[str, Any], record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test metrics of the trained network (evaluated again unless the run's last evaluation was at its
    final step), the ``<run>/bundle`` and the summary file; returns the metrics."""
    result = dict(run.last_eval)
    if run.dist.is_main:
        if run.step != run.total_steps or not result:  # stopped early: evaluate the weights it stopped with
            result = recipe.evaluate()
        save_bundle(recipe.net.cpu(), run.folder / "bundle", config=config_to_dict(cfg), source=source,
                    metrics=result)
    run.write_json(summary_name, {**(record or {}), "step": run.step, **result})
    return result
