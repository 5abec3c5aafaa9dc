"""Evolutionary search: budget, determinism, no duplicates, Pareto front, resume equality."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

from nasbnn.cost import arch_cost
from nasbnn.errors import SearchError
from nasbnn.presets import create_space
from nasbnn.search import Budget, Candidate, EvolutionSearch, pareto_front
from nasbnn.space import Arch


def fake_score(arch: Arch, space) -> float:
    """A known function of the architecture: more compute helps, plus an arch-specific offset."""
    h = int(hashlib.sha1(str(arch).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return 50 + 100 * arch_cost(arch, space).mops / 0.3 ** 0.5 + 10 * h


def make_search(space, evaluated=None, **kw):
    def cost(a):
        return arch_cost(a, space).mops

    def describe(a):
        c = arch_cost(a, space)
        return c.mflops, c.mbops, c.mops

    def evaluate(archs):
        if evaluated is not None:
            evaluated.extend(archs)
        return [fake_score(a, space) for a in archs]

    params = dict(budget=Budget(0.002, 0.012, 0.002), population=20, generations=4, num_mutations=8,
                  num_crossovers=8, mutate_prob=0.3, seed=3)
    params.update(kw)
    return EvolutionSearch(space, cost_fn=cost, describe_fn=describe, evaluate_fn=evaluate, **params)


def test_search_respects_budget_and_never_evaluates_twice():
    space = create_space("tiny")
    seen = []
    state = make_search(space, seen).run()
    assert len(seen) == len(set(seen)) == len(state.history)
    anchors = {space.smallest(), space.largest()}
    for c in state.history:
        space.validate(c.arch)
        if c.arch not in anchors:
            assert 0.002 <= c.mops <= 0.012
    assert all(c.generation <= 4 for c in state.history)


def test_search_is_deterministic_and_improves_the_frontier():
    space = create_space("tiny")
    a = make_search(space).run()
    b = make_search(space).run()
    assert [c.to_json() for c in a.history] == [c.to_json() for c in b.history]
    init = [c for c in a.history if c.generation == 0]
    budget = Budget(0.002, 0.012, 0.002)
    best0 = {}
    for c in init:
        k = budget.bucket(c.cost)
        best0[k] = max(best0.get(k, 0), c.top1)
    final = {k: c.top1 for k, c in a.frontier.items()}
    assert all(final[k] >= v for k, v in best0.items())
    assert sum(final[k] - best0.get(k, 0) for k in final) > 0
    c = make_search(space, seed=4).run()
    assert [x.arch for x in c.history] != [x.arch for x in a.history]


def test_resume_from_partial_history_reproduces_the_result():
    space = create_space("tiny")
    full = make_search(space).run()
    partial = [c for c in full.history if c.generation < 2][:-3]  # killed mid-generation 1
    seen = []
    resumed = make_search(space, seen).run(history=partial)
    assert [c.to_json() for c in resumed.history] == [c.to_json() for c in full.history]
    assert resumed.frontier == full.frontier
    assert len(seen) == len(full.history) - len(partial)


def test_pareto_front_is_non_dominated():
    space = create_space("tiny")
    state = make_search(space).run()
    front = pareto_front(state.history)
    for f in front:
        for c in state.history:
            assert not (c.cost <= f.cost and c.top1 >= f.top1 and (c.cost < f.cost or c.top1 > f.top1))
    costs = [f.cost for f in front]
    assert costs == sorted(costs)
    tops = [f.top1 for f in front]
    assert tops == sorted(tops)


def test_budget_errors():
    with pytest.raises(SearchError, match="step must be positive"):
        Budget(1, 2, 0)
    with pytest.raises(SearchError, match="above maximum"):
        Budget(3, 2, 1)
    space = create_space("imagenet")
    with pytest.raises(SearchError, match=r"the space spans \[20.77"):
        make_search(space, budget=Budget(400, 500, 10))


def test_bucket_rounding():
    b = Budget(20, 180, 2)
    assert b.bucket(57.0) == 56 and b.bucket(57.2) == 58 and b.bucket(20.77) == 20
    assert Budget(0, 1, 0.03).bucket(0.1) == pytest.approx(0.09)


def test_candidate_json_round_trip():
    space = create_space("tiny")
    a = space.largest()
    c = Candidate(a, 1.0, 2.0, 3.0, 3.0, 55.5, 2)
    assert Candidate.from_json(json.loads(json.dumps(c.to_json()))) == c


# ------------------------------------------------------------------ the command, killed and resumed
TINY = [*helpers.TINY, "train.epochs=1", "train.eval_images=32", "train.log_every=5"]
SEARCH = helpers.TINY_SEARCH


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from nasbnn.config import RunConfig, load_config
    from nasbnn.train.supernet import train_supernet

    out = tmp_path_factory.mktemp("supernet")
    train_supernet(load_config(RunConfig, None, [*TINY, f"out={out}"]), progress=False)
    return out


def _search_cmd(out: Path, ckpt: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nasbnn", "search", *TINY, *SEARCH, f"out={out}", "--checkpoint", str(ckpt),
            "--no-progress", *extra]


def test_sigkill_mid_generation_then_resume_gives_the_same_pareto(trained, tmp_path):
    ckpt = trained / "checkpoint.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = subprocess.run(_search_cmd(tmp_path / "ref", ckpt), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    # Killed while scoring candidate 60: the population (24) and the first generation (20) are done, the
    # second generation is half way.
    status = helpers.run_frozen(tmp_path, "candidate", 60, _search_cmd(out, ckpt)[3:], env)
    assert status == -signal.SIGKILL
    hist = out / "search" / "history.jsonl"
    gens = [json.loads(x)["generation"] for x in hist.read_text().splitlines() if x.strip()]
    assert 44 <= len(gens) < 60 and max(gens) >= 1  # really killed mid-search, after some generations
    assert len((out / "search" / "generations.jsonl").read_text().splitlines()) < 5
    res = subprocess.run(_search_cmd(out, ckpt, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "search" / "pareto.json").read_text() == (tmp_path / "ref" / "search" / "pareto.json").read_text()
    hist_lines = [json.loads(x) for x in hist.read_text().splitlines()]
    assert len(hist_lines) == len({h["arch"] for h in hist_lines})  # nothing evaluated twice
    assert (out / "search" / "pareto.png").stat().st_size > 1000


def test_search_bad_input_writes_nothing(trained, tmp_path, capsys):
    from nasbnn.cli import main

    ckpt = str(trained / "checkpoint.pt")
    cases = [
        (["search.budget.min=5", "search.budget.max=6"], "no architecture fits"),
        (["search.budget.min=0.01", "search.budget.max=0.005"], "above maximum"),
        (["search.budget.step=0"], "config key 'search.budget.step'"),
    ]
    for extra, msg in cases:
        out = tmp_path / f"bad{len(extra[0])}"
        code = main(["search", *TINY, *SEARCH, *extra, f"out={out}", "--checkpoint", ckpt, "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and msg in err, err
        assert not (out / "search").exists()
    code = main(["search", *SEARCH, "--checkpoint", str(tmp_path / "nope.pt"), f"out={tmp_path / 'n'}"])
    assert code == 2 and "no checkpoint" in capsys.readouterr().err


def test_search_with_latency_cost(trained, tmp_path):
    from nasbnn.config import RunConfig, load_config
    from nasbnn.engine.latency import LatencyModel, latency_cost_fn, save_models
    from nasbnn.search.run import run_search

    # One file, models for 1 and 2 engine threads: the search uses the one of search.latency_threads.
    one = LatencyModel(a_ms_per_gbop=9.0, b_ms_per_gflop=1.0, c_ms_per_layer=0.5, meta={"threads": 1})
    model = LatencyModel(a_ms_per_gbop=2.0, b_ms_per_gflop=50.0, c_ms_per_layer=0.01, meta={"threads": 2})
    path = save_models([one, model], tmp_path / "lat.json")
    space = create_space("tiny")
    cost = latency_cost_fn(model, space)
    lo, hi = cost(space.smallest()), cost(space.largest())
    assert lo < hi
    step = (hi - lo) / 4
    cfg = load_config(RunConfig, None, [*TINY, *SEARCH, "search.cost=latency", f"search.latency_model={path}",
                                        "search.latency_threads=2",
                                        f"search.budget.min={lo}", f"search.budget.max={hi + 1e-9}",
                                        f"search.budget.step={step}", f"out={tmp_path}"])
    run_search(cfg, checkpoint=trained / "checkpoint.pt", progress=False)
    hist = [json.loads(x) for x in (tmp_path / "search" / "history.jsonl").read_text().splitlines()]
    assert hist
    for h in hist:  # every candidate's cost is its predicted latency, inside the range
        c = cost(space.parse(h["arch"]))
        assert h["cost"] == pytest.approx(c) and lo - 1e-9 <= c <= hi + 1e-9
    pareto = json.loads((tmp_path / "search" / "pareto.json").read_text())
    assert pareto["cost"] == "latency" and pareto["budget"]["unit"] == "ms" and pareto["family"]
    assert pareto["latency_threads"] == 2


def test_search_latency_cost_needs_a_model(trained, tmp_path, capsys):
    from nasbnn.cli import main

    code = main(["search", *TINY, *SEARCH, "search.cost=latency", f"out={tmp_path}", "--checkpoint",
                 str(trained / "checkpoint.pt"), "--no-progress"])
    assert code == 2 and "search.latency_model" in capsys.readouterr().err
