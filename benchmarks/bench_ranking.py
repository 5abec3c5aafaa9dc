"""How well a trained supernet ranks whole architectures: Kendall's tau against stand-alone training.

    python benchmarks/bench_ranking.py --config fashion-mnist --k 12 --out benchmarks/results/ranking \
        [--supernet RUN_DIR] [--standalone-epochs 1] [KEY=VALUE ...]

K architectures (seeded) are spread over the space's OPs range. Each gets a supernet accuracy
(inherited weights, BN recalibrated, on the search-validation split, exactly as the search scores
candidates) and a stand-alone accuracy (``nasbnn train-arch`` from scratch for ``--standalone-epochs``
with the paper's switches, then the test split). Reports Kendall's tau and Spearman's rho with
percentile bootstrap intervals over the architectures, and the top-k overlap. A finished supernet run
and finished stand-alone runs found on disk are reused (stand-alone runs are keyed by the
architecture and the resolved config, so several supernets can share them). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from nasbnn.config import RunConfig, atomic_write_text, config_to_dict, load_config
from nasbnn.cost import arch_cost
from nasbnn.errors import NasbnnError
from nasbnn.space import Arch, SearchSpace
from nasbnn.utils.seeding import derive_rng, derive_seed
from nasbnn.utils.stats import kendall_tau, spearman_rho


def count_members(space: SearchSpace) -> int:
    """The number of architectures in ``space`` (widths non-decreasing inside a stage, as sampled)."""
    stages = space.stages

    @cache
    def blocks(s: int, in_ch: int, left: int, lo: int) -> int:
        if left == 0:
            return stage(s + 1, in_ch)
        widths = stages[s].widths
        return sum(len(space._choices(s, in_ch, w)) * blocks(s, w, left - 1, i)
                   for i, w in enumerate(widths) if i >= lo)

    @cache
    def stage(s: int, in_ch: int) -> int:
        if s == len(stages):
            return 1
        return sum(blocks(s, in_ch, d, 0) for d in stages[s].depths)

    return stage(0, space.in_channels)


def check_k(cfg: RunConfig, k: int) -> None:
    """Raises :class:`NasbnnError` when the configured space has fewer than ``k`` members (or k < 2)."""
    from nasbnn.context import base_space

    if k < 2:
        raise NasbnnError(f"a ranking needs at least 2 architectures, got k={k}")
    space = base_space(cfg)
    n = count_members(space)
    if k > n:
        raise NasbnnError(f"asked for {k} architectures but search space {space.name!r} has only {n}")


def spread_archs(space: SearchSpace, k: int, *, seed: int, convention: str = "upstream",
                 pool: int | None = None) -> list[Arch]:
    """``k`` distinct members whose OPs are spread evenly from the smallest's to the largest's.

    For each of ``k`` evenly spaced OPs targets, the unused member of a seeded random pool (plus the
    smallest and largest) nearest to it.

    Raises:
        NasbnnError: the space has fewer than ``k`` members, or ``k`` < 2.
    """
    if k < 2:
        raise NasbnnError(f"a ranking needs at least 2 architectures, got k={k}")
    n = count_members(space)
    if k > n:
        raise NasbnnError(f"asked for {k} architectures but search space {space.name!r} has only {n}")
    rng = derive_rng(seed, "ranking-archs")
    found = {space.smallest(), space.largest()}
    for _ in range(max(pool or 0, 60 * k)):
        found.add(space.sample(rng))
        if len(found) >= n:
            break
    cands = sorted(found, key=str)
    mops = np.array([arch_cost(a, space, convention=convention).mops for a in cands])  # type: ignore[arg-type]
    if len(cands) < k:
        raise NasbnnError(f"found only {len(cands)} distinct architectures of {space.name!r} for k={k}")
    chosen: list[int] = []
    for target in np.linspace(mops.min(), mops.max(), k):
        order = np.argsort(np.abs(mops - target), kind="stable")
        chosen.append(next(int(i) for i in order if int(i) not in chosen))
    return [cands[i] for i in sorted(chosen, key=lambda i: (mops[i], str(cands[i])))]


def bootstrap_ci(x: list[float], y: list[float], stat: Any, *, seed: int, n: int = 2000,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of ``stat(x, y)`` over resampled (x_i, y_i) pairs."""
    gen = np.random.default_rng(derive_seed(seed, "ranking-bootstrap"))
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    vals = [stat(xa[idx], ya[idx]) for idx in gen.integers(0, len(xa), size=(n, len(xa)))]
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def top_k_overlap(x: list[float], y: list[float], k: int) -> float:
    """|top-k by x ∩ top-k by y| / k (ties broken by position)."""
    k = max(1, min(k, len(x)))
    tx = set(np.argsort(-np.asarray(x, float), kind="stable")[:k].tolist())
    ty = set(np.argsort(-np.asarray(y, float), kind="stable")[:k].tolist())
    return len(tx & ty) / k


def rank_stats(supernet_acc: list[float], standalone_acc: list[float], *, seed: int, top: int) -> dict[str, Any]:
    return {
        "kendall_tau": round(kendall_tau(supernet_acc, standalone_acc), 4),
        "kendall_tau_ci95": bootstrap_ci(supernet_acc, standalone_acc, kendall_tau, seed=seed),
        "spearman_rho": round(spearman_rho(supernet_acc, standalone_acc), 4),
        "spearman_rho_ci95": bootstrap_ci(supernet_acc, standalone_acc, spearman_rho, seed=seed),
        "top_k": top,
        "top_k_overlap": round(top_k_overlap(supernet_acc, standalone_acc, top), 4),
    }


# ------------------------------------------------------------------------------------------ the runs
def load_space(checkpoint: Path) -> SearchSpace:
    """The (dataset-adapted) search space a supernet checkpoint was trained on."""
    from nasbnn.train.checkpoint import load_checkpoint, space_from_checkpoint

    return space_from_checkpoint(load_checkpoint(checkpoint, kind="supernet"))


def ensure_supernet(cfg: RunConfig, run: Path) -> Path:
    """A finished supernet checkpoint in ``run``: reused, resumed or trained."""
    from nasbnn.pipeline import _supernet_done
    from nasbnn.train.supernet import train_supernet

    if not _supernet_done(run):
        resume = (run / "checkpoint.pt").is_file() and (run / "config.yaml").is_file()
        train_supernet(cfg.model_copy(update={"out": str(run)}), run_dir=run, resume=resume, force=not resume,
                       progress=False)
    return run / "checkpoint.pt"


def supernet_scores(checkpoint: Path, cfg: RunConfig, archs: list[Arch]) -> list[float]:
    """Search-validation top-1 of each architecture with inherited weights, BN recalibrated."""
    from nasbnn.data import build_data
    from nasbnn.runs import load_supernet, trained_data_config
    from nasbnn.search.evaluator import SupernetEvaluator
    from nasbnn.utils.device import autocast, resolve_device

    dev = resolve_device(cfg.device)
    model, state = load_supernet(checkpoint, dev)
    dcfg, seed = trained_data_config(cfg, state)
    data = build_data(dcfg.data, resolution=model.space.resolution, seed=seed)
    s = cfg.search
    loader = data.train.loader(batch_size=s.calib_batch_size, train=True, device=dev, drop_last=False,
                               seed=derive_seed(seed, "search-calibration"))
    calib = [x for _, (x, _y) in zip(range(s.calib_batches), loader)]
    val = list(data.search_val.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=dev))
    return SupernetEvaluator(model, calib, val, autocast=autocast(dev, cfg.train.amp))(archs)


def standalone_cfg(cfg: RunConfig, epochs: float, seed: int = 0) -> RunConfig:
    """The stand-alone recipe: ``cfg``'s knobs, ``epochs``, the paper's switches and a fixed seed, so the
    ground truth is shared by every supernet (ablation variant, supernet seed) it judges."""
    return cfg.model_copy(update={
        "seed": seed,
        "train": cfg.train.model_copy(update={"epochs": epochs, "bi_teacher": True}),
        "model": cfg.model.model_copy(update={"bi_transformation": True, "weight_norm": True}),
    })


def standalone_acc(cfg: RunConfig, arch: Arch, root: Path) -> tuple[float, bool, Path]:
    """Test top-1 of ``arch`` trained from scratch; (accuracy, reused from disk, run folder)."""
    from nasbnn.train.standalone import train_arch

    d = config_to_dict(cfg)
    d.pop("out", None)
    key = hashlib.blake2b(json.dumps([str(arch), d], sort_keys=True).encode(), digest_size=6).hexdigest()
    run = root / key
    done = run / "standalone_summary.json"
    if done.is_file():
        s = json.loads(done.read_text())
        if s.get("arch") == str(arch) and s.get("step") == s.get("total_steps"):
            return float(s["test_top1"]), True, run
    resume = (run / "checkpoint.pt").is_file() and (run / "config.yaml").is_file()
    out = train_arch(cfg.model_copy(update={"out": str(run)}), arch, run_dir=run, resume=resume, force=not resume,
                     progress=False)
    return float(out["test_top1"]), False, run


def run_ranking(cfg: RunConfig, *, checkpoint: Path, k: int, seed: int, standalone_epochs: float,
                standalone_root: Path, top: int, log: Any = print) -> dict[str, Any]:
    """Scores ``k`` spread architectures both ways and compares the rankings."""
    space = load_space(checkpoint)
    archs = spread_archs(space, k, seed=seed, convention=cfg.search.convention)
    t0 = time.perf_counter()
    sup = supernet_scores(checkpoint, cfg, archs)
    t_sup = time.perf_counter() - t0
    scfg = standalone_cfg(cfg, standalone_epochs)
    rows, reused = [], 0
    t0 = time.perf_counter()
    for i, (a, s) in enumerate(zip(archs, sup)):
        acc, was_reused, run = standalone_acc(scfg, a, standalone_root)
        reused += was_reused
        log(f"  [{i + 1}/{k}] {arch_cost(a, space).mops:.4f} MOPs: supernet {s:.2f}%, stand-alone {acc:.2f}%"
            f"{' (reused)' if was_reused else ''}")
        rows.append({"arch": str(a), "mops": round(arch_cost(a, space, convention=cfg.search.convention).mops, 6),
                     "supernet_val_top1": s, "standalone_test_top1": acc, "standalone_run": str(run)})
    stats = rank_stats(sup, [r["standalone_test_top1"] for r in rows], seed=seed, top=top)
    return {"k": k, "seed": seed, "space": space.name, "space_members": count_members(space),
            "supernet": str(checkpoint), "standalone_epochs": standalone_epochs, **stats,
            "standalone_reused": reused, "seconds": {"supernet_scores": round(t_sup, 1),
                                                     "standalone": round(time.perf_counter() - t0, 1)},
            "archs": rows}


def main(argv: list[str] | None = None) -> int:
    from nasbnn.utils.sysinfo import machine_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="fashion-mnist")
    p.add_argument("--k", type=int, default=12, help="architectures to rank")
    p.add_argument("--seed", type=int, default=0, help="seed of the architecture sample and the bootstrap")
    p.add_argument("--top", type=int, default=3, help="k of the top-k overlap")
    p.add_argument("--supernet", default=None, help="run folder of a trained supernet (default: <out>/supernet)")
    p.add_argument("--standalone-epochs", type=float, default=1.0)
    p.add_argument("--out", default="benchmarks/results/ranking")
    p.add_argument("--json", default=None, help="also write the JSON here (atomically)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = p.parse_args(argv)
    try:
        cfg = load_config(RunConfig, a.config, a.overrides)
        check_k(cfg, a.k)  # before any training
        out = Path(a.out)
        ckpt = ensure_supernet(cfg, Path(a.supernet) if a.supernet else out / "supernet")
        res = run_ranking(cfg, checkpoint=ckpt, k=a.k, seed=a.seed, standalone_epochs=a.standalone_epochs,
                          standalone_root=out / "standalone", top=a.top, log=lambda m: print(m, file=sys.stderr))
    except NasbnnError as exc:
        print(f"bench_ranking: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps({"benchmark": "ranking", "machine": machine_info(), **res}, indent=2)
    if a.json:
        atomic_write_text(Path(a.json), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
