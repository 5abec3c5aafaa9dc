"""Two gloo processes on CPU (torchrun) end with identical weights and BN statistics."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import TINY, TINY_SEARCH, torchrun

HERE = Path(__file__).resolve().parent


def test_two_ranks_hold_identical_weights(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    cmd = [*torchrun(2), str(HERE / "ddp_worker.py"), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and they trained: the checkpoint (rank 0 only) is at step 6
    from nasbnn.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6


def test_search_split_across_two_ranks_matches_one_process(tmp_path):
    """Candidates are scored on different ranks; calibration does not depend on the rank count."""
    from nasbnn.config import RunConfig, load_config
    from nasbnn.train.supernet import train_supernet

    tiny = [*TINY, "data.synthetic.num_test=32", "train.epochs=1", "train.eval_images=32"]
    search = [*TINY_SEARCH, "search.population=12", "search.generations=2", "search.num_mutations=5",
              "search.num_crossovers=5"]
    sup = tmp_path / "sup"
    train_supernet(load_config(RunConfig, None, [*tiny, f"out={sup}"]), progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    ck = str(sup / "checkpoint.pt")
    one = subprocess.run([sys.executable, "-m", "nasbnn", "search", *tiny, *search, f"out={tmp_path / 'one'}",
                          "--checkpoint", ck, "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*torchrun(2), "-m", "nasbnn", "search", *tiny, *search,
                          f"out={tmp_path / 'two'}", "--checkpoint", ck, "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = (tmp_path / "one" / "search" / "pareto.json").read_text()
    b = (tmp_path / "two" / "search" / "pareto.json").read_text()
    assert a == b


def _unused_record(tmp_path, world: int):
    """Per step: {unused parameter: value/Adam state before and after} from ddp_unused_worker."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    worker = str(HERE / "ddp_unused_worker.py")
    cmd = [sys.executable, worker, str(tmp_path)] if world == 1 else [*torchrun(2), worker, str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(tmp_path / f"unused_rank{r}_of{world}.pt", weights_only=True) for r in range(world)]


def test_unused_parameters_keep_value_and_adam_state_under_torchrun(tmp_path):
    """A parameter no pass of a step used is not stepped, on 2 ranks exactly as in 1 process."""
    (one,) = _unused_record(tmp_path, 1)
    two = _unused_record(tmp_path, 2)
    names = [sorted(step) for step in one]
    for rank_record in two:
        assert [sorted(step) for step in rank_record] == names  # the same parameters go unused
    assert all(names), names
    stale = 0
    for record in (one, *two):
        for step in record:
            for name, r in step.items():
                assert torch.equal(r["after"], r["value"]), name
                assert r["state"].keys() == r["state_after"].keys(), name
                for k, v in r["state"].items():
                    assert torch.equal(r["state_after"][k], v), (name, k)
                # used in an earlier step: non-zero momentum that a zero gradient would have applied
                stale += bool(r["state"]) and bool(r["state"]["exp_avg"].abs().sum() > 0)
    assert stale >= 3, stale  # the 1-process and both 2-rank records hit the stale-momentum case
