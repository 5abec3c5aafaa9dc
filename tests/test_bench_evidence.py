"""The ranking and ablation benchmarks' pieces: space size, spread sample, rank statistics, reuse, errors."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_ranking

from nasbnn.cost import arch_cost
from nasbnn.errors import NasbnnError
from nasbnn.presets import create_space
from nasbnn.space import SearchSpace


def test_count_members_closed_form():
    # tiny: stem 2 widths; stage 1 depth 1 (2 widths) or 2 (3 non-decreasing pairs); stage 2 the same
    # width patterns, each block with 2 kernels x 2 groups x 2 pw-groups = 8 options.
    assert bench_ranking.count_members(create_space("tiny")) == 2 * (2 + 3) * (2 * 8 + 3 * 8 * 8)
    d = create_space("tiny").to_dict()
    d["stages"][2].update(widths=[16], depths=[1], kernel_sizes=[3], groups=[1], pw_groups=[1])
    small = SearchSpace.from_dict(d)
    assert bench_ranking.count_members(small) == 2 * 5 * 1
    with pytest.raises(NasbnnError, match="has only 10"):
        bench_ranking.spread_archs(small, 11, seed=0)
    assert len(set(bench_ranking.spread_archs(small, 10, seed=0))) == 10  # the whole space


def test_spread_archs_cover_the_ops_range():
    space = create_space("tiny")
    archs = bench_ranking.spread_archs(space, 6, seed=3)
    assert archs == bench_ranking.spread_archs(space, 6, seed=3)  # seeded
    mops = [arch_cost(a, space).mops for a in archs]
    assert len(set(archs)) == 6 and mops == sorted(mops)
    assert mops[0] == arch_cost(space.smallest(), space).mops
    assert mops[-1] == arch_cost(space.largest(), space).mops
    gaps = [b - a for a, b in itertools.pairwise(mops)]
    assert max(gaps) < 2.5 * (mops[-1] - mops[0]) / 5  # roughly even, no cluster


def test_rank_statistics():
    x, y = [1, 2, 3, 4, 5], [1, 3, 2, 5, 4]
    s = bench_ranking.rank_stats(x, y, seed=0, top=2)
    assert s["kendall_tau"] == pytest.approx(0.6)  # 8 concordant, 2 discordant pairs
    assert s["spearman_rho"] == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert s["top_k_overlap"] == 1.0  # {4, 5} both ways
    assert bench_ranking.top_k_overlap(x, [5, 4, 3, 2, 1], 2) == 0.0
    lo, hi = s["kendall_tau_ci95"]
    assert -1 <= lo <= s["kendall_tau"] <= hi <= 1
    assert s == bench_ranking.rank_stats(x, y, seed=0, top=2)
    assert bench_ranking.bootstrap_ci(x, x, bench_ranking.kendall_tau, seed=1, n=200)[1] == 1.0


def test_ranking_benchmark_runs_reuses_and_refuses_too_many(tmp_path, capsys):
    args = ["--config", "tiny", "--k", "3", "--standalone-epochs", "0.5", "--out", str(tmp_path),
            "--json", str(tmp_path / "r.json"), "train.epochs=1"]
    assert bench_ranking.main(args) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    assert first["k"] == 3 and len(first["archs"]) == 3 and first["standalone_reused"] == 0
    assert first["space_members"] == 2080
    assert all(0 <= r["supernet_val_top1"] <= 100 and 0 <= r["standalone_test_top1"] <= 100 for r in first["archs"])
    assert bench_ranking.main(args) == 0  # everything from disk now
    second = json.loads((tmp_path / "r.json").read_text())
    assert second["standalone_reused"] == 3
    for key in ("kendall_tau", "spearman_rho", "kendall_tau_ci95", "top_k_overlap"):
        assert second[key] == first[key]
    assert [r["supernet_val_top1"] for r in second["archs"]] == [r["supernet_val_top1"] for r in first["archs"]]
    capsys.readouterr()
    assert bench_ranking.main(["--config", "tiny", "--k", "2081", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bench_ranking: error: asked for 2081 architectures but search space 'tiny' has only 2080"
    assert not (tmp_path / "x").exists()


def test_ablation_table_rows_and_means(tmp_path):
    import bench_ablation

    def row(variant, seed, small, gap, tau):
        return {"variant": variant, "seed": seed, "smallest_top1": small, "largest_top1": 80.0,
                "random_median_top1": 70.0, "family_gap_over_random": gap, "kendall_tau": tau,
                "kendall_tau_ci95": [tau - 0.5, min(1.0, tau + 0.5)]}

    (tmp_path / "a.json").write_text(json.dumps({"rows": [row("no_weight_norm", 0, 50.0, 1.0, 0.2),
                                                          row("full", 0, 60.0, 2.0, 0.6)]}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": [row("full", 1, 62.0, None, 0.4)]}))
    lines = bench_ablation.render([str(tmp_path / "a.json"), str(tmp_path / "b.json")]).splitlines()
    assert len(lines) == 2 + 3 + 1  # header, 3 rows, one mean (only "full" has two seeds)
    assert lines[2].startswith("| full | 0 | 60.00 |") and lines[3].startswith("| full | 1 | 62.00 |")
    assert lines[4].startswith("| no_weight_norm | 0 | 50.00 |")
    assert lines[5] == "| **full** (mean of 2) | | 61.00 | 80.00 | 70.00 | +2.00 | +0.50 |"
    assert "| – |" in lines[3]  # a missing gap is shown as such, not as 0
