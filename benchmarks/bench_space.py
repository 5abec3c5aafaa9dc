"""Sampling + OPs counting throughput (architectures per second on one CPU core). Prints JSON.

    python benchmarks/bench_space.py [--space imagenet] [--seconds 3]

The official code samples a [22, 6] tensor per candidate and counts OPs with per-row ``.item()``
calls, 300-500 architectures/s. Target here: >= 50,000/s for the imagenet space.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

from nasbnn.cost import arch_cost
from nasbnn.presets import create_space


def measure(space_name: str, seconds: float, seed: int = 0) -> dict:
    space = create_space(space_name)
    rng = random.Random(seed)
    # Warm the per-block cost memo as a search would have.
    for _ in range(2000):
        arch_cost(space.sample(rng), space)
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    total = 0.0
    while True:
        for _ in range(1000):
            a = space.sample(rng)
            total += arch_cost(a, space).ops
        n += 1000
        if time.perf_counter() >= deadline:
            break
    dt = time.perf_counter() - t0
    # Range sampling as the search's initial population does it (rejection into [40, 60] MOPs).
    t1 = time.perf_counter()
    accepted = tried = 0
    while time.perf_counter() - t1 < seconds / 2:
        a = space.sample(rng)
        tried += 1
        if 40e6 <= arch_cost(a, space).ops <= 60e6:
            accepted += 1
    dt2 = time.perf_counter() - t1
    return {
        "benchmark": "sample+ops",
        "space": space_name,
        "archs_per_s": round(n / dt),
        "range_sampling_tried_per_s": round(tried / dt2),
        "range_sampling_accepted_per_s": round(accepted / dt2),
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="imagenet")
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    print(json.dumps(measure(a.space, a.seconds)))


if __name__ == "__main__":
    main()
