"""The main job: train a supernet, search it, export and evaluate the family, compare with random.

``nasbnn run`` with no arguments runs it on the embedded default (Fashion-MNIST, ``fashion-mnist``
space) on whatever device is there, in ``./nasbnn-run``. Re-running continues an interrupted run:
a finished supernet is reused, an interrupted search resumes.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, atomic_write_text, config_to_dict, load_config
from .cost import arch_cost
from .errors import NasbnnError
from .space import Arch, SearchSpace
from .utils.seeding import derive_rng

__all__ = ["DEFAULT_CONFIG", "random_in_bucket", "run_pipeline"]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "fashion-mnist.yaml"


def default_config(overrides: list[str] | None = None, path: str | Path | None = None) -> RunConfig:
    return load_config(RunConfig, path or DEFAULT_CONFIG, overrides or [])


def random_in_bucket(space: SearchSpace, lo: float, hi: float, count: int, *, seed: int, convention: str = "upstream",
                     exclude: set[Arch] | None = None, max_tries: int = 200_000) -> list[Arch]:
    """``count`` distinct random members (the upstream sampler) with lo <= MOPs < hi."""
    rng = derive_rng(seed, "random-baseline", round(lo, 9), round(hi, 9))
    out: list[Arch] = []
    seen = set(exclude or ())
    for _ in range(max_tries):
        if len(out) >= count:
            break
        a = space.sample(rng)
        if a in seen:
            continue
        m = arch_cost(a, space, convention=convention).mops  # type: ignore[arg-type]
        if lo <= m < hi:
            out.append(a)
            seen.add(a)
    return out


def _supernet_done(run: Path) -> bool:
    from .train.checkpoint import load_checkpoint

    ck = run / "checkpoint.pt"
    if not ck.is_file():
        return False
    state = load_checkpoint(ck, kind="supernet")
    extra = state.get("extra", {})
    return int(state["step"]) >= int(extra.get("total_steps", 1 << 62))


def run_pipeline(cfg: RunConfig, *, progress: bool = True, log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Runs every stage; returns (and writes to ``<out>/summary.json``) the summary."""
    from .bundle import save_bundle
    from .context import make_context
    from .deploy import calibration_batches
    from .export import export_subnet
    from .search.evaluator import SupernetEvaluator
    from .search.run import load_supernet, run_search, search_data_config
    from .train.bn import evaluate_top1, preserved_bn_state, recalibrate_bn
    from .train.supernet import train_supernet

    run = Path(cfg.out)
    ckpt = run / "checkpoint.pt"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        seconds[stage] = round(now - t0, 1)
        t0 = now

    # 1. supernet
    if _supernet_done(run):
        log(f"[1/4] supernet: reusing the finished checkpoint {ckpt}")
    else:
        resume = ckpt.is_file() and (run / "config.yaml").is_file()
        log(f"[1/4] supernet: {'resuming' if resume else 'training'} ({cfg.train.epochs:g} epochs of "
            f"{cfg.data.name}) -> {run}")
        train_supernet(cfg, run_dir=run, resume=resume, progress=progress)
    lap("supernet")
    # 2. search
    search_dir = run / "search"
    resume_search = (search_dir / "meta.json").is_file() and (search_dir / "history.jsonl").is_file()
    log(f"[2/4] search: {'resuming' if resume_search else 'evolutionary search'} "
        f"({cfg.search.population} + {cfg.search.generations} x "
        f"{cfg.search.num_mutations + cfg.search.num_crossovers} candidates)")
    try:
        res = run_search(cfg, checkpoint=ckpt, run_dir=run, resume=resume_search, progress=progress)
    except NasbnnError as exc:
        if resume_search and "other settings" in str(exc):
            res = run_search(cfg, checkpoint=ckpt, run_dir=run, force=True, progress=progress)
        else:
            raise
    lap("search")
    # 3. family export + test evaluation; 4. random baseline per bucket
    ctx = make_context(cfg, run)
    model, state = load_supernet(ckpt, ctx.device)
    space = model.space
    dcfg, seed = search_data_config(cfg, state)
    from .data import build_data

    data = build_data(dcfg.data, resolution=space.resolution, seed=seed, run_dir=run)
    calib = calibration_batches(data, cfg, ctx.device, seed=seed)
    test = list(data.test.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=ctx.device))
    tester = SupernetEvaluator(model, calib, test)  # float32, as the search and eval
    family = res["family"]
    step = cfg.search.step_mops
    log(f"[3/4] family: exporting and testing {len(family)} members")
    fam_out = []
    for f in family:
        arch = Arch.parse(f["arch"])
        net = export_subnet(model, arch)
        with torch.inference_mode():
            recalibrate_bn(net, calib)
            top1 = evaluate_top1(net, test, topk=(1, 5))
        folder = run / "family" / f"mops_{float(f['bucket']):g}"
        save_bundle(net.cpu(), folder, config=config_to_dict(cfg),
                    source={"checkpoint": str(ckpt), "search": res["pareto"], "bucket": f["bucket"]},
                    metrics={"test_top1": top1["top1"], "test_top5": top1["top5"], "search_val_top1": f["top1"]})
        fam_out.append({"bucket": f["bucket"], "arch": f["arch"], "mflops": f["mflops"], "mbops": f["mbops"],
                        "mops": f["mops"], "top1": top1["top1"], "top5": top1["top5"], "search_val_top1": f["top1"],
                        "bundle": str(folder)})
    lap("family")
    k = cfg.search.random_baseline
    gaps = []
    if k > 0:
        log(f"[4/4] random baseline: {k} random architectures per bucket, evaluated the same way")
        for f in fam_out:
            lo, hi = float(f["bucket"]) - step / 2, float(f["bucket"]) + step / 2
            member = Arch.parse(f["arch"])
            rand = random_in_bucket(space, lo, hi, k, seed=cfg.seed, convention=cfg.search.convention,
                                    exclude={member})
            scores = []
            for a in rand:
                with preserved_bn_state(model):
                    scores.append(tester.score(a))
            f["random_top1"] = scores
            if scores:
                med = statistics.median(scores)
                f["random_median_top1"] = med
                f["gap_over_random_median"] = f["top1"] - med
                gaps.append(f["top1"] - med)
    lap("random_baseline")
    largest_member = max(fam_out, key=lambda f: f["mops"]) if fam_out else None
    summary = {
        "dataset": data.name,
        "space": space.name,
        "device": str(ctx.device),
        "family": fam_out,
        "largest_top1": largest_member["top1"] if largest_member else None,
        "gap_over_random_median": (sum(gaps) / len(gaps)) if gaps else None,
        "buckets_compared": len(gaps),
        "evaluated_in_search": res["evaluated"],
        "pareto_json": res["pareto"],
        "plot": res["plot"],
        "supernet": str(ckpt),
        "seconds": seconds,
    }
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    from .utils.table import format_table

    rows = []
    for f in summary["family"]:
        rows.append([f["mops"], f["top1"], f.get("random_median_top1", float("nan")),
                     f.get("gap_over_random_median", float("nan")), f["arch"]])
    lines = [format_table(["MOPs", "test top-1 %", "random median %", "gap (pts)", "architecture"], rows,
                          align="rrrrl")]
    if summary.get("largest_top1") is not None:
        lines.append(f"largest member: {summary['largest_top1']:.2f}% test top-1")
    if summary.get("gap_over_random_median") is not None:
        lines.append(f"family vs random (median per bucket): {summary['gap_over_random_median']:+.2f} points on "
                     f"average over {summary['buckets_compared']} buckets")
    secs = summary.get("seconds") or {}
    if secs:
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in secs.items())
        lines.append(f"minutes: {parts} (total {sum(secs.values()) / 60:.1f})")
    lines.append(f"plot: {summary['plot']}")
    lines.append(f"bundles: {Path(summary['supernet']).parent / 'family'!s}/")
    lines.append(f"summary: {Path(summary['supernet']).parent / 'summary.json'!s}")
    return "\n".join(lines)
