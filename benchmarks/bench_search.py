"""Candidate evaluations per minute of the search fitness, and how well a cheaper protocol ranks.

    python benchmarks/bench_search.py --checkpoint nasbnn-run/checkpoint.pt [--samples 40]

The full protocol is the configured one (BN recalibration on ``calib_batches x calib_batch_size``
training images, then top-1 on the whole search-validation split); the fast protocol uses
``--fast-calib`` batches and ``--fast-val`` validation images. Both score the same random sample of
architectures; Kendall's tau between the two rankings says whether the fast one can replace it.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nasbnn.config import RunConfig, load_config
from nasbnn.data import build_data
from nasbnn.runs import load_supernet, trained_data_config
from nasbnn.search.evaluator import SupernetEvaluator
from nasbnn.utils.device import resolve_device
from nasbnn.utils.seeding import derive_rng, derive_seed
from nasbnn.utils.stats import kendall_tau
from nasbnn.utils.sysinfo import machine_info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="nasbnn-run/checkpoint.pt")
    p.add_argument("--config", default="fashion-mnist")
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--fast-calib", type=int, default=1, help="calibration batches of the fast protocol")
    p.add_argument("--fast-val", type=int, default=500, help="validation images of the fast protocol")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(RunConfig, a.config, a.overrides)
    dev = resolve_device(a.device)
    model, state = load_supernet(a.checkpoint, dev)
    space = model.space
    dcfg, seed = trained_data_config(cfg, state)
    data = build_data(dcfg.data, resolution=space.resolution, seed=seed)
    s = cfg.search
    loader = data.train.loader(batch_size=s.calib_batch_size, train=True, seed=derive_seed(seed, "search-calibration"),
                               device=dev, drop_last=False)
    calib = [x for _, (x, _y) in zip(range(s.calib_batches), loader)]
    val = list(data.search_val.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=dev))
    fast_val = list(data.search_val.subset(range(min(a.fast_val, len(data.search_val)))).loader(
        batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=dev))
    full = SupernetEvaluator(model, calib, val)  # float32, as the search scores
    fast = SupernetEvaluator(model, calib[: a.fast_calib], fast_val)
    rng = derive_rng(0, "bench-search")
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(a.samples)))
    full.score(archs[0])  # warm-up (kernel selection, allocator)
    fast.score(archs[0])
    full.cache.clear()
    fast.cache.clear()
    t0 = time.perf_counter()
    sf = full(archs)
    t_full = (time.perf_counter() - t0) / len(archs)
    t0 = time.perf_counter()
    sq = fast(archs)
    t_fast = (time.perf_counter() - t0) / len(archs)
    print(json.dumps({
        "benchmark": "search_fitness",
        "space": space.name,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "machine": machine_info(),
        "candidates": len(archs),
        "full_protocol": {"calib_images": sum(x.shape[0] for x in calib), "val_images": len(data.search_val),
                          "seconds_per_candidate": round(t_full, 3),
                          "evaluations_per_minute": round(60 / t_full, 1)},
        "fast_protocol": {"calib_images": sum(x.shape[0] for x in calib[: a.fast_calib]),
                          "val_images": min(a.fast_val, len(data.search_val)),
                          "seconds_per_candidate": round(t_fast, 3),
                          "evaluations_per_minute": round(60 / t_fast, 1)},
        "speedup": round(t_full / t_fast, 2),
        "kendall_tau": round(kendall_tau(sf, sq), 4),
    }))


if __name__ == "__main__":
    main()
