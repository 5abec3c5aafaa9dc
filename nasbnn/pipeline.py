"""The main job: train a supernet, search it, export and evaluate the family, compare with random, and
show both deployment paths: fine-tune the largest members, pack every member for the binary engine and
time it against PyTorch float at batch 1.

``nasbnn run`` with no arguments runs it on the embedded default (Fashion-MNIST, ``fashion-mnist``
space) on whatever device is there, in ``./nasbnn-run``. Re-running continues an interrupted run:
a finished supernet is reused, an interrupted search or fine-tuning resumes, finished fine-tunings are
reused.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, config_to_dict, load_config
from .errors import ConfigError
from .space import Arch, SearchSpace
from .utils.io import atomic_write_text
from .utils.seeding import derive_rng

__all__ = ["DEFAULT_CONFIG", "random_in_bucket", "run_pipeline"]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "fashion-mnist.yaml"


def default_config(overrides: list[str] | None = None, path: str | Path | None = None) -> RunConfig:
    return load_config(RunConfig, path or DEFAULT_CONFIG, overrides or [])


def random_in_bucket(space: SearchSpace, lo: float, hi: float, count: int, *, seed: int,
                     cost_fn: Callable[[Arch], float], exclude: set[Arch] | None = None,
                     max_tries: int = 200_000) -> list[Arch]:
    """``count`` distinct random members (the upstream sampler) with ``lo <= cost_fn(arch) < hi``: the cost
    that made the buckets (MOPs or predicted milliseconds), so a bucket's random members are its peers."""
    rng = derive_rng(seed, "random-baseline", round(lo, 9), round(hi, 9))
    out: list[Arch] = []
    seen = set(exclude or ())
    for _ in range(max_tries):
        if len(out) >= count:
            break
        a = space.sample(rng)
        if a in seen:
            continue
        if lo <= cost_fn(a) < hi:
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


class _Laps:
    """Wall-clock seconds per stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._t, 1)
        self._t = now


def run_pipeline(cfg: RunConfig, *, progress: bool = True, log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Runs every stage; returns (and writes to ``<out>/summary.json``) the summary."""
    run = Path(cfg.out)
    _check_same_supernet(cfg, run)
    lap = _Laps()
    _train_stage(cfg, run, progress=progress, log=log)
    lap("supernet")
    res = _search_stage(cfg, run, progress=progress, log=log)
    lap("search")
    ctx, model, data, calib, test = _deployment_data(cfg, run)
    fam_out = _family_stage(cfg, run, model, calib, test, res, log=log)
    lap("family")
    gaps = _random_baseline_stage(cfg, model, calib, test, fam_out, log=log)
    lap("random_baseline")
    del calib, test
    _finetune_members(cfg, run, fam_out, progress=progress, log=log)
    lap("finetune")
    bench = _deploy_members(cfg, fam_out, data.name, log=log)
    lap("deploy")
    largest = max(fam_out, key=lambda f: f["mops"]) if fam_out else {}
    summary = {
        "dataset": data.name, "space": model.space.name, "device": str(ctx.device), "family": fam_out,
        "largest_top1": largest.get("top1"), "largest_finetuned_top1": largest.get("finetuned_top1"),
        "gap_over_random_median": (sum(gaps) / len(gaps)) if gaps else None, "buckets_compared": len(gaps),
        "evaluated_in_search": res["evaluated"], "pareto_json": res["pareto"], "plot": res["plot"],
        "supernet": str(run / "checkpoint.pt"), "bench": bench, "seconds": lap.seconds,
    }
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


#: The sections of a config that decide the supernet a run trains.
_SUPERNET_SECTIONS = ("seed", "space", "data", "model", "train")


def _check_same_supernet(cfg: RunConfig, run: Path) -> None:
    """Refuses, before any stage runs, a re-run whose settings would train another supernet than the one the
    run folder holds (a re-run reuses or continues it, and would silently ignore them or fail stages later)."""
    from .runs import RESUME_FREE_KEYS, config_changes

    saved = run / "config.yaml"
    if not (saved.is_file() and (run / "checkpoint.pt").is_file()):
        return
    old = load_config(RunConfig, saved, [f"out={cfg.out}"]).model_dump(mode="json")
    new = cfg.model_dump(mode="json")
    changes = config_changes({s: old[s] for s in _SUPERNET_SECTIONS}, {s: new[s] for s in _SUPERNET_SECTIONS},
                             ignore=RESUME_FREE_KEYS)
    if changes:
        key, was, now = changes[0]
        raise ConfigError(f"{str(run)!r} holds a supernet trained with {key}={was!r}, and this run asks for {now!r}; "
                          "re-running continues that run: use another --out to train with the new settings")


def _train_stage(cfg: RunConfig, run: Path, *, progress: bool, log) -> None:  # type: ignore[no-untyped-def]
    """1. The supernet: reused when finished, resumed when interrupted, else trained afresh (replacing a
    checkpoint without the run's config.yaml)."""
    from .train.supernet import train_supernet

    ckpt = run / "checkpoint.pt"
    if _supernet_done(run):
        log(f"[1/6] supernet: reusing the finished checkpoint {ckpt}")
        return
    resume = ckpt.is_file() and (run / "config.yaml").is_file()
    log(f"[1/6] supernet: {'resuming' if resume else 'training'} ({cfg.train.epochs:g} epochs of "
        f"{cfg.data.name}) -> {run}")
    train_supernet(cfg, run_dir=run, resume=resume, force=not resume, progress=progress)


def _search_stage(cfg: RunConfig, run: Path, *, progress: bool, log) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """2. The evolutionary search: resumed when interrupted, started over when its settings changed."""
    from .search.run import SearchSettingsChanged, run_search

    search_dir, ckpt = run / "search", run / "checkpoint.pt"
    resume = (search_dir / "meta.json").is_file() and (search_dir / "history.jsonl").is_file()
    log(f"[2/6] search: {'resuming' if resume else 'evolutionary search'} ({cfg.search.population} + "
        f"{cfg.search.generations} x {cfg.search.num_mutations + cfg.search.num_crossovers} candidates)")
    try:
        return run_search(cfg, checkpoint=ckpt, run_dir=run, resume=resume, progress=progress)
    except SearchSettingsChanged as exc:
        log(f"  {exc}: starting the search over")
        return run_search(cfg, checkpoint=ckpt, run_dir=run, force=True, progress=progress)


def _deployment_data(cfg: RunConfig, run: Path) -> tuple[Any, Any, Any, list[torch.Tensor], list[Any]]:
    """The supernet, its data split as it trained, the calibration images and the whole test split."""
    from .context import make_context
    from .runs import calibration_batches, eval_batches, load_supernet, run_data

    ctx = make_context(cfg, run)
    model, state = load_supernet(run / "checkpoint.pt", ctx.device)
    data, seed = run_data(cfg, state, model.space, run_dir=run)
    return ctx, model, data, calibration_batches(data, cfg, ctx.device, seed=seed), eval_batches(data.test, cfg,
                                                                                                ctx.device)


def _family_stage(cfg: RunConfig, run: Path, model: Any, calib: list[torch.Tensor], test: list[Any],
                  res: dict[str, Any], *, log) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """3. Every family member exported with recalibrated BN, tested on the whole test split, as a bundle."""
    from .deploy import export_arch

    family = res["family"]
    log(f"[3/6] family: exporting and testing {len(family)} members")
    out = []
    for f in family:
        folder = run / "family" / f"mops_{float(f['bucket']):g}"
        _, m = export_arch(model, Arch.parse(f["arch"]), folder, calib=calib, test=test, config=config_to_dict(cfg),
                           source={"checkpoint": str(run / "checkpoint.pt"), "search": res["pareto"],
                                   "bucket": f["bucket"]},
                           metrics={"search_val_top1": f["top1"]})
        out.append({"bucket": f["bucket"], "arch": f["arch"], "mflops": f["mflops"], "mbops": f["mbops"],
                    "mops": f["mops"], "top1": m["test_top1"], "direct_top1": m["test_top1"], "top5": m["test_top5"],
                    "search_val_top1": f["top1"], "bundle": str(folder)})
    return out


def _random_baseline_stage(cfg: RunConfig, model: Any, calib: list[torch.Tensor], test: list[Any],
                           fam_out: list[dict[str, Any]], *, log) -> list[float]:  # type: ignore[no-untyped-def]
    """4. ``search.random_baseline`` random members of each member's bucket, evaluated the same way; returns
    the gaps of the members over their bucket's median."""
    from .search.evaluator import SupernetEvaluator
    from .search.run import search_cost
    from .train.bn import preserved_bn_state

    k, step = cfg.search.random_baseline, cfg.search.budget.step
    if k <= 0:
        return []
    log(f"[4/6] random baseline: {k} random architectures per bucket, evaluated the same way")
    cost_fn = search_cost(cfg, model.space).fn  # the cost that made the buckets
    tester = SupernetEvaluator(model, calib, test)  # float32, as the search and eval
    gaps = []
    for f in fam_out:
        lo, hi = float(f["bucket"]) - step / 2, float(f["bucket"]) + step / 2
        rand = random_in_bucket(model.space, lo, hi, k, seed=cfg.seed, cost_fn=cost_fn,
                                exclude={Arch.parse(f["arch"])})
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
    return gaps


def _finetune_members(cfg: RunConfig, run: Path, fam_out: list[dict[str, Any]], *, progress: bool,
                      log) -> None:  # type: ignore[no-untyped-def]
    """Fine-tunes the ``pipeline.finetune_members`` largest members (the paper's second deployment path).

    Each goes to ``<run>/finetune/<member>/``; ``member.json`` there records what it fine-tunes, so that
    a re-run reuses a finished fine-tuning, resumes an interrupted one, and starts over when the member
    or the settings changed.
    """
    from .train.finetune import finetune

    chosen = sorted(fam_out, key=lambda f: f["mops"], reverse=True)[:cfg.pipeline.finetune_members]
    if not chosen:
        return
    epochs = cfg.pipeline.finetune_epochs
    ft_cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"epochs": epochs})})
    log(f"[5/6] fine-tuning the {len(chosen)} largest member(s) for {epochs:g} epochs each")
    for f in chosen:
        dest = run / "finetune" / Path(f["bundle"]).name
        what = {"arch": f["arch"], "bundle": f["bundle"], "finetune": config_to_dict(ft_cfg)["finetune"]}
        marker, done = dest / "member.json", dest / "finetune_summary.json"
        same = marker.is_file() and json.loads(marker.read_text()) == what
        if same and done.is_file() and (dest / "bundle" / "bundle.json").is_file():
            res = json.loads(done.read_text())
            log(f"  {dest.name}: reusing the finished fine-tuning ({res['test_top1']:.2f}%)")
        else:
            if not same:
                dest.mkdir(parents=True, exist_ok=True)
                done.unlink(missing_ok=True)
                atomic_write_text(marker, json.dumps(what, indent=2) + "\n")
            resume = same and (dest / "checkpoint.pt").is_file()
            # another member or other settings: start over
            res = finetune(ft_cfg, bundle=f["bundle"], run_dir=dest, resume=resume, force=not resume,
                           progress=progress)
            log(f"  {dest.name}: {f['top1']:.2f}% direct -> {res['test_top1']:.2f}% fine-tuned")
        f["finetuned_top1"] = res["test_top1"]
        f["finetuned_bundle"] = str(dest / "bundle")


def _deploy_members(cfg: RunConfig, fam_out: list[dict[str, Any]], dataset: str,
                    log) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Packs every member (and its fine-tuned version) as ``model.nbp`` beside its bundle, with what
    ``nasbnn infer`` needs, and times the packed engine against PyTorch float at batch 1 (medians)."""
    from .bundle import load_bundle
    from .data.build import preprocess_info
    from .engine.bench import benchmark, machine_info
    from .engine.packed import float_model_bytes, pack_model

    reps = cfg.pipeline.bench_repeats
    pre = preprocess_info(dataset)
    log(f"[6/6] deploy: packing {len(fam_out)} members" + (f", engine vs PyTorch float at batch 1 ({reps} runs "
                                                          "each)" if reps else ""))
    threads = None
    for f in fam_out:
        nets = {prefix: load_bundle(f[prefix + "bundle"]) for prefix in ("", "finetuned_") if f.get(prefix + "bundle")}
        for prefix, net in nets.items():
            path = Path(f[prefix + "bundle"]) / "model.nbp"
            pack_model(net, preprocess=pre).save(path)
            f[prefix + "packed"] = str(path)
            f[prefix + "packed_bytes"] = path.stat().st_size
        net = nets[""]  # the fine-tuned network has the same architecture: the same latency
        f["packed_mb"] = f["packed_bytes"] / 1e6
        f["float_mb"] = float_model_bytes(net) / 1e6
        if reps:
            r = benchmark(net, batch_sizes=(1,), threads=cfg.pipeline.bench_threads, repeats=reps, warmup=1,
                          seed=cfg.seed)
            b1, threads = r["batches"]["1"], r["threads"]
            f["engine_ms"], f["float_ms"] = b1["engine_ms"]["median"], b1["float_ms"]["median"]
            f["engine_ms_min"], f["float_ms_min"] = b1["engine_ms"]["min"], b1["float_ms"]["min"]
            f["engine_speedup"] = f["float_ms"] / f["engine_ms"]
            f["engine_agreement"] = r["agreement"]
    return {"batch": 1, "repeats": reps, "threads": threads, "statistic": "median wall clock of the repeats",
            "cpu": machine_info()["cpu"] if reps else None}


def format_summary(summary: dict[str, Any]) -> str:
    from .utils.table import format_table

    rows = []
    for f in summary["family"]:  # "-" where a stage did not run (no random baseline, pack only, ...)
        rows.append([f["mops"], f["top1"], f.get("finetuned_top1", "-"), f.get("random_median_top1", "-"),
                     f.get("gap_over_random_median", "-"), f"{f['packed_bytes'] / 1e3:.1f}" if "packed_bytes" in f
                     else "-", f.get("engine_ms", "-"), f.get("float_ms", "-"), f["arch"]])
    lines = [format_table(["MOPs", "direct top-1 %", "fine-tuned %", "random median %", "gap (pts)", "packed KB",
                           "engine ms", "float ms", "architecture"], rows, align="rrrrrrrrl")]
    if summary.get("largest_top1") is not None:
        ft = summary.get("largest_finetuned_top1")
        lines.append(f"largest member: {summary['largest_top1']:.2f}% test top-1 direct"
                     + (f", {ft:.2f}% fine-tuned" if ft is not None else ""))
    bench = summary.get("bench") or {}
    if bench.get("threads"):
        lines.append(f"latency: batch 1, {bench['threads']} thread(s) on both sides, median of {bench['repeats']} "
                     f"runs ({bench['cpu']})")
    if summary.get("gap_over_random_median") is not None:
        lines.append(f"family vs random (median per bucket): {summary['gap_over_random_median']:+.2f} points on "
                     f"average over {summary['buckets_compared']} buckets")
    secs = summary.get("seconds") or {}
    if secs:
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in secs.items())
        lines.append(f"minutes: {parts} (total {sum(secs.values()) / 60:.1f})")
    lines.append(f"plot: {summary['plot']}")
    lines.append(f"bundles: {Path(summary['supernet']).parent / 'family'!s}/")
    packed = [f["packed"] for f in summary["family"] if f.get("packed")]
    if packed:
        lines.append(f"packed models: model.nbp in each bundle (try: nasbnn infer --packed {packed[-1]} IMAGE...)")
    lines.append(f"summary: {Path(summary['supernet']).parent / 'summary.json'!s}")
    return "\n".join(lines)
