"""Ablation of the three supernet training strategies on the main job, with the ranking tau of each.

    python benchmarks/bench_ablation.py --config fashion-mnist --epochs 1 --seeds 0 1 \
        --out benchmarks/results/ablation [--k 8] [--standalone-epochs 1] [KEY=VALUE ...]

For each seed and each variant (all strategies on; ``train.bi_teacher``, ``model.bi_transformation``,
``model.weight_norm`` switched off in turn) it runs the main job (``nasbnn run``: supernet, search,
family, random baseline) with the same seed and budget, then reports the test top-1 (BN
recalibrated) of the space's smallest and largest subnets and the median of ``--random`` seeded
random subnets (the same architectures for every variant), the family's gap over random, and
Kendall's tau of the supernet's ranking against stand-alone training (benchmarks/bench_ranking.py;
the stand-alone runs use the paper's recipe and are shared by all variants). Finished runs found
under ``--out`` are reused. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ranking

from nasbnn.config import RunConfig, atomic_write_text, load_config
from nasbnn.errors import NasbnnError
from nasbnn.space import Arch
from nasbnn.utils.seeding import derive_rng

VARIANTS = {
    "full": [],
    "no_bi_teacher": ["train.bi_teacher=false"],
    "no_bi_transformation": ["model.bi_transformation=false"],
    "no_weight_norm": ["model.weight_norm=false"],
}


def subnet_accuracies(cfg: RunConfig, checkpoint: Path, archs: dict[str, list[Arch]]) -> dict[str, list[float]]:
    """Test top-1 of each named group of architectures, BN recalibrated as for deployment."""
    from nasbnn.data import build_data
    from nasbnn.runs import calibration_batches, load_supernet, trained_data_config
    from nasbnn.search.evaluator import SupernetEvaluator
    from nasbnn.utils.device import autocast, resolve_device

    dev = resolve_device(cfg.device)
    model, state = load_supernet(checkpoint, dev, expect=cfg)
    dcfg, seed = trained_data_config(cfg, state)
    data = build_data(dcfg.data, resolution=model.space.resolution, seed=seed)
    calib = calibration_batches(data, cfg, dev, seed=seed)
    test = list(data.test.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=dev))
    tester = SupernetEvaluator(model, calib, test, autocast=autocast(dev, cfg.train.amp))
    return {name: tester(group) for name, group in archs.items()}


def run_variant(name: str, cfg: RunConfig, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    from nasbnn.pipeline import run_pipeline

    t0 = time.perf_counter()
    done = run / "summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
    else:
        summary = run_pipeline(cfg, progress=False, log=lambda m: print(f"  {name}: {m}", file=sys.stderr))
    ckpt = run / "checkpoint.pt"
    space = bench_ranking.load_space(ckpt)
    rng = derive_rng(args.rank_seed, "ablation-random")  # the same architectures for every variant
    random_archs = list(dict.fromkeys(space.sample(rng) for _ in range(args.random)))
    acc = subnet_accuracies(cfg, ckpt, {"smallest": [space.smallest()], "largest": [space.largest()],
                                        "random": random_archs})
    ranking = bench_ranking.run_ranking(cfg, checkpoint=ckpt, k=args.k, seed=args.rank_seed,
                                        standalone_epochs=args.standalone_epochs,
                                        standalone_root=Path(args.out) / "standalone", top=args.top,
                                        log=lambda m: print(f"  {name}: {m}", file=sys.stderr))
    return {
        "variant": name, "seed": cfg.seed, "run": str(run),
        "smallest_top1": acc["smallest"][0], "largest_top1": acc["largest"][0],
        "random_median_top1": statistics.median(acc["random"]), "random_top1": acc["random"],
        "family_gap_over_random": summary.get("gap_over_random_median"),
        "family_largest_top1": summary.get("largest_top1"),
        "kendall_tau": ranking["kendall_tau"], "kendall_tau_ci95": ranking["kendall_tau_ci95"],
        "spearman_rho": ranking["spearman_rho"], "top_k_overlap": ranking["top_k_overlap"],
        "ranking": ranking, "pipeline_seconds": summary.get("seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _fmt(v: Any, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def render(paths: list[str]) -> str:
    """A Markdown table (one row per variant and seed, then the mean over seeds) from result JSON files."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    head = ("| variant | seed | smallest % | largest % | median random % | family gap (pts) | Kendall τ [95 % CI] |\n"
            "|---|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in sorted(rows, key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"])):
        ci = r["kendall_tau_ci95"]
        lines.append(f"| {r['variant']} | {r['seed']} | {_fmt(r['smallest_top1'])} | {_fmt(r['largest_top1'])} | "
                     f"{_fmt(r['random_median_top1'])} | {_fmt(r['family_gap_over_random'], True)} | "
                     f"{r['kendall_tau']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}] |")
    for name in VARIANTS:
        group = [r for r in rows if r["variant"] == name]
        if len(group) < 2:
            continue
        mean = {k: statistics.mean(r[k] for r in group) for k in ("smallest_top1", "largest_top1",
                                                                    "random_median_top1", "kendall_tau")}
        gaps = [r["family_gap_over_random"] for r in group if r["family_gap_over_random"] is not None]
        lines.append(f"| **{name}** (mean of {len(group)}) | | {_fmt(mean['smallest_top1'])} | "
                     f"{_fmt(mean['largest_top1'])} | {_fmt(mean['random_median_top1'])} | "
                     f"{_fmt(statistics.mean(gaps) if gaps else None, True)} | {mean['kendall_tau']:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from nasbnn.utils.sysinfo import machine_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="fashion-mnist")
    p.add_argument("--epochs", type=float, default=None, help="supernet epochs (default: the config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--random", type=int, default=5, help="random subnets for the median-random accuracy")
    p.add_argument("--k", type=int, default=8, help="architectures of the ranking")
    p.add_argument("--rank-seed", type=int, default=0)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--standalone-epochs", type=float, default=1.0)
    p.add_argument("--out", default="benchmarks/results/ablation")
    p.add_argument("--json", default=None, help="also write the JSON here; rewritten after every variant")
    p.add_argument("--render", nargs="+", metavar="JSON", help="only print the Markdown table of result files")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = p.parse_args(argv)
    if a.render:
        print(render(a.render))
        return 0
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"benchmark": "ablation", "config": a.config, "epochs": a.epochs,
                              "overrides": a.overrides, "machine": machine_info(), "rows": rows}
    try:
        for seed in a.seeds:
            for name in a.variants:
                extra = [f"train.epochs={a.epochs}"] if a.epochs is not None else []
                run = Path(a.out) / f"{name}-s{seed}"
                cfg = load_config(RunConfig, a.config, [*a.overrides, *extra, *VARIANTS[name], f"seed={seed}",
                                                        f"out={run}"])
                rows.append(run_variant(name, cfg, run, a))
                print(f"{name} seed {seed}: " + json.dumps({k: rows[-1][k] for k in (
                    "smallest_top1", "largest_top1", "random_median_top1", "family_gap_over_random",
                    "kendall_tau")}), file=sys.stderr)
                if a.json:
                    atomic_write_text(Path(a.json), json.dumps(result, indent=2) + "\n")
    except NasbnnError as exc:
        print(f"bench_ablation: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
