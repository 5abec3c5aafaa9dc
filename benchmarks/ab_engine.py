"""Whole-network engine time of two git revisions, in alternating processes. Prints JSON.

    python benchmarks/ab_engine.py --base HEAD~1 --head HEAD --pairs 8
    python benchmarks/ab_engine.py --base v1 --head HEAD --space imagenet --smallest --threads 1

Each revision is checked out in its own temporary worktree (its numba cache stays its own). Every pair
runs one process per revision, in an order that alternates from pair to pair: at a few per cent, the
order of the two sides shifts the result on a noisy machine. A process packs the same random-weight
network (seed 0), warms up, then times ``repeats`` calls at each thread count and reports the median.
Reported per thread count: each side's median over the pairs, and base / head (above 1: head is faster);
the same for each process's fastest call, which a noisy machine disturbs less (its slowdowns only add).
The logits' checksum of both sides is reported too: equal for revisions that compute the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time
import numpy as np
import nasbnn
from nasbnn.engine.bench import random_static
from nasbnn.engine.packed import pack_model
from nasbnn.engine.runtime import BinaryEngine
from nasbnn.presets import create_space
space_name, which, res, batch, repeats, *threads = sys.argv[1:]
space = create_space(space_name)
arch = space.smallest() if which == "smallest" else space.largest()
engine = BinaryEngine(pack_model(random_static(space, arch, seed=0)))
x = np.random.default_rng(0).standard_normal((int(batch), space.in_channels, int(res), int(res))).astype(np.float32)
out, best, logits = {}, {}, None
for t in map(int, threads):
    for _ in range(3):
        logits = engine.run(x, threads=t)
    times = []
    for _ in range(int(repeats)):
        t0 = time.perf_counter()
        engine.run(x, threads=t)
        times.append(time.perf_counter() - t0)
    out[t] = 1e3 * float(np.median(times))
    best[t] = 1e3 * min(times)
print(json.dumps({"ms": out, "best_ms": best, "checksum": float(np.abs(logits).sum()), "module": nasbnn.__file__}))
"""


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def _run(tree: Path, argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ab_engine: a run in {tree} failed: {proc.stderr.strip().splitlines()[-1:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(res["module"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"ab_engine: the run in {tree} imported nasbnn from {res['module']}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1", help="the revision to compare against")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per thread count in each process")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--space", default="imagenet")
    ap.add_argument("--smallest", action="store_true", help="the space's smallest member (default: largest)")
    ap.add_argument("--resolution", type=int, default=None, help="input size (default: the space's)")
    ap.add_argument("--batch", type=int, default=1, help="images per call (times are per call)")
    args = ap.parse_args()
    if args.pairs < 1 or args.repeats < 1 or args.batch < 1 or min(args.threads) < 1:
        raise SystemExit("ab_engine: --pairs, --repeats, --batch and --threads must be positive")
    revs = {}
    for side, rev in (("base", args.base), ("head", args.head)):
        try:
            revs[side] = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except subprocess.CalledProcessError:
            raise SystemExit(f"ab_engine: unknown revision {rev!r} for --{side}") from None
    if args.resolution is None:
        sys.path.insert(0, str(REPO))
        from nasbnn.presets import create_space

        args.resolution = create_space(args.space).resolution
    argv = [args.space, "smallest" if args.smallest else "largest", str(args.resolution), str(args.batch),
            str(args.repeats), *map(str, args.threads)]
    times: dict[str, dict[int, list[float]]] = {s: {t: [] for t in args.threads} for s in revs}
    bests: dict[str, dict[int, list[float]]] = {s: {t: [] for t in args.threads} for s in revs}
    checksums: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ab_engine_") as tmp:
        trees = {s: Path(tmp) / s for s in revs}
        for side, rev in revs.items():
            _git("worktree", "add", "--detach", str(trees[side]), rev)
        try:
            for i in range(args.pairs):
                order = ["base", "head"] if i % 2 == 0 else ["head", "base"]
                for side in order:
                    res = _run(trees[side], argv)
                    checksums[side] = res["checksum"]
                    for t in args.threads:
                        times[side][t].append(res["ms"][str(t)])
                        bests[side][t].append(res["best_ms"][str(t)])
        finally:
            for tree in trees.values():
                _git("worktree", "remove", "--force", str(tree))
    med = {s: {t: statistics.median(v) for t, v in d.items()} for s, d in times.items()}
    best = {s: {t: statistics.median(v) for t, v in d.items()} for s, d in bests.items()}
    print(json.dumps({
        "revisions": revs, "space": args.space, "member": "smallest" if args.smallest else "largest",
        "resolution": args.resolution, "batch": args.batch, "pairs": args.pairs, "repeats": args.repeats,
        "median_ms": {s: {str(t): v for t, v in d.items()} for s, d in med.items()},
        "base_over_head": {str(t): med["base"][t] / med["head"][t] for t in args.threads},
        "median_best_ms": {s: {str(t): v for t, v in d.items()} for s, d in best.items()},
        "base_over_head_best": {str(t): best["base"][t] / best["head"][t] for t in args.threads},
        "all_ms": {s: {str(t): v for t, v in d.items()} for s, d in times.items()},
        "checksums": checksums,
    }, indent=2))


if __name__ == "__main__":
    main()
