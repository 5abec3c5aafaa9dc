"""Images per second of the image-folder training loader (224² random-resized crops, flips, normalisation)
with 0, 1 and 2 workers, beside a plain PIL decode + random-resized-crop loop on the same files; the cost
and pixel change of JPEG draft decoding; and the loader's JPEG path (simplejpeg + numpy resize) against
Pillow alone. Prints one JSON object.

    python benchmarks/bench_data.py                       # 0, 1, 2 workers, generated 500x375 JPEGs
    python benchmarks/bench_data.py --workers all --images 1024 --batch 64   # every core of a larger node

The JPEGs (about 500x375 and 100 KB, like ImageNet's typical photo) are generated with a fixed seed in a
temporary folder (or ``--root``, reused when it already holds them). Timings interleave the configurations
round by round, so a load change on a shared machine hits all of them alike; the median round is reported.
A pass ends with workers idle while the last batches are finished (once per epoch in training, where an
epoch is far longer): with 2 workers on 1,024 images that costs about 3 %, on 4,096 under 1 %.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from random import Random

import numpy as np
import torch
from PIL import Image

from nasbnn.data.augment import random_resized_crop_box
from nasbnn.data.imagefolder import FolderSplit, decode_train
from nasbnn.data.jpeg import pillow_only
from nasbnn.data.workers import available_cores
from nasbnn.utils.sysinfo import cpu_name

RES = 224


def make_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth colour regions, mid-frequency texture and fine grain (about 100 KB at
    500x375, quality 90)."""
    low = (rng.random((height // 25 + 2, width // 25 + 2, 3)) * 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    mid = (rng.standard_normal((height // 3 + 1, width // 3 + 1, 3)) * 40 + 128).clip(0, 255).astype(np.uint8)
    mid_up = np.asarray(Image.fromarray(mid).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    grain = rng.standard_normal((height, width, 1)).astype(np.float32) * 8
    pixels = (base + mid_up - 128 + grain).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_folder(root: Path, n: int, width: int, height: int, classes: int = 8) -> list[str]:
    """``n`` JPEGs under ``root/train/<class>/`` (kept when already there); their paths relative to ``root``."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        rel = f"train/c{i % classes}/img{i:05d}_{width}x{height}.jpg"
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(make_jpeg(rng, width, height))
        files.append(rel)
    return files


def reference_pass(root: Path, files: list[str], epoch: int) -> None:
    """The usual per-image PIL pipeline: open, convert to RGB, random-resized crop, to an array."""
    for i, f in enumerate(files):
        with Image.open(root / f) as opened:
            img = opened.convert("RGB")
        box = random_resized_crop_box(Random(epoch * 1_000_003 + i), img.width, img.height)
        np.asarray(img.resize((RES, RES), Image.Resampling.BILINEAR, box=box))


def loader_pass(split: FolderSplit, batch: int, epoch: int) -> None:
    for x, _ in split.loader(batch_size=batch, train=True, seed=0, epoch=epoch):
        assert x.shape[1:] == (3, RES, RES)


def children_cpu_s() -> float:
    """CPU seconds used so far by this process' live children (the loader workers), from /proc."""
    me, total = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def timed(run: Callable[[], None], images: int) -> tuple[float, float, float]:
    """(images/s, CPU ms per image in this process, CPU ms per image in the workers) of one pass."""
    wall, cpu, kids = time.perf_counter(), time.process_time(), children_cpu_s()
    run()
    wall, cpu, kids = time.perf_counter() - wall, time.process_time() - cpu, children_cpu_s() - kids
    return images / wall, cpu / images * 1e3, kids / images * 1e3


def throughput(root: Path, files: list[str], workers: list[int], batch: int, rounds: int) -> dict:
    labels = torch.tensor([int(f.split("/")[1][1:]) for f in files])
    splits = {n: FolderSplit(root, files, labels, resolution=RES, workers=n) for n in workers}
    runs: dict[str, list[tuple[float, float, float]]] = {"reference": [], **{f"workers_{n}": [] for n in workers}}
    images = len(files) // batch * batch
    for split in splits.values():  # warm-up: page cache, persistent workers started
        loader_pass(split, batch, 0)
    reference_pass(root, files[:batch], 0)
    for r in range(1, rounds + 1):
        runs["reference"].append(timed(partial(reference_pass, root, files[:images], r), images))
        for n, split in splits.items():
            runs[f"workers_{n}"].append(timed(partial(loader_pass, split, batch, r), images))

    def summary(v: list[tuple[float, float, float]]) -> dict:
        rate = [x[0] for x in v]
        return {"median": round(statistics.median(rate), 1), "min": round(min(rate), 1), "max": round(max(rate), 1),
                "cpu_ms_per_image_main": round(statistics.median(x[1] for x in v), 2),
                "cpu_ms_per_image_workers": round(statistics.median(x[2] for x in v), 2)}

    return {k: summary(v) for k, v in runs.items()}


def best_cpu_ms(variants: dict[str, Callable[[], object]], views: int, repeats: int) -> dict[str, float]:
    """Per variant, the best over ``repeats`` interleaved runs of CPU ms per view (each run makes ``views``
    views). CPU time: one process, so a loaded machine does not skew it."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            t = time.process_time()
            run()
            times[name].append((time.process_time() - t) / views * 1e3)
    return {k: min(v) for k, v in times.items()}


def draft_effect(root: Path, files: list[str], repeats: int = 3) -> dict:
    """CPU ms per training view decoded in full vs through JPEG draft mode, the share of crops that drafting
    reduced, and the mean absolute pixel difference (0-255 scale) between the two views."""
    def views(draft: bool) -> None:
        for i, f in enumerate(files):
            decode_train(root / f, RES, Random(i), flip=False, draft=draft)

    best = best_cpu_ms({"full": partial(views, False), "draft": partial(views, True)}, len(files), repeats)
    diffs, reduced = [], 0
    for i, f in enumerate(files):
        full = decode_train(root / f, RES, Random(i), flip=False, draft=False).astype(np.float32)
        fast = decode_train(root / f, RES, Random(i), flip=False, draft=True).astype(np.float32)
        diff = float(np.abs(full - fast).mean())
        reduced += diff > 0
        diffs.append(diff)
    changed = [d for d in diffs if d > 0]
    return {"full_cpu_ms": round(best["full"], 2), "draft_cpu_ms": round(best["draft"], 2),
            "speedup": round(best["full"] / best["draft"], 2), "crops_drafted": f"{reduced}/{len(files)}",
            "mean_abs_diff_all": round(float(np.mean(diffs)), 3),
            "mean_abs_diff_drafted": round(float(np.mean(changed)), 3) if changed else 0.0}


def decoder_effect(root: Path, files: list[str], repeats: int = 3) -> dict:
    """CPU ms per full-decode training view (no draft) through the loader's JPEG path (simplejpeg + the
    numpy resize) and through Pillow alone, and the largest pixel difference between the two (expected: 0)."""
    def views() -> list[np.ndarray]:
        return [decode_train(root / f, RES, Random(i), flip=i % 2 == 1, draft=False) for i, f in enumerate(files)]

    def plain_views() -> list[np.ndarray]:
        with pillow_only():
            return views()

    best = best_cpu_ms({"fast": views, "pillow": plain_views}, len(files), repeats)
    diff = max(int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(views(), plain_views()))
    return {"fast_cpu_ms": round(best["fast"], 3), "pillow_cpu_ms": round(best["pillow"], 3),
            "speedup": round(best["pillow"] / best["fast"], 2), "max_abs_pixel_diff": diff,
            "simplejpeg": _version("simplejpeg")}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2048,
                   help="images per timed pass (each pass ends with workers idling while the last batches finish, "
                        "once per epoch in training: short passes understate the workers' rate)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts, or 'all' (0, 1, 2, 4, ... "
                                                     "up to the available cores)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", default="500x375", help="image size of the throughput folder")
    p.add_argument("--large", default="1200x900", help="a large photo size for the draft-mode comparison")
    p.add_argument("--root", default=None, help="folder for the generated JPEGs (default: a temporary one)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the main process, which only normalises the batches here (on a GPU it "
                        "does not even do that); idle OpenMP threads would spin on the workers' cores")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.workers == "all":  # 0, 1, 2, 4, ... up to the cores this process may use
        cores = available_cores()
        workers = sorted({0, 1, cores} | {2**k for k in range(1, cores.bit_length()) if 2**k < cores})
    else:
        workers = [int(w) for w in a.workers.split(",")]
    width, height = (int(v) for v in a.size.split("x"))
    lw, lh = (int(v) for v in a.large.split("x"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root or tmp)
        files = make_folder(root, a.images, width, height)
        large = make_folder(root, 24, lw, lh)
        kb = statistics.mean((root / f).stat().st_size for f in files) / 1e3
        rates = throughput(root, files, workers, a.batch, a.rounds)
        drafts = {a.size: draft_effect(root, files[:48]), a.large: draft_effect(root, large)}
        decoder = decoder_effect(root, files[:96])
    one = rates.get("workers_1", {}).get("median")
    two = rates.get("workers_2", {}).get("median")
    out = {
        "benchmark": "imagefolder_loader",
        "machine": cpu_name(), "cores_available": available_cores(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "images": {"count": len(files), "size": a.size, "mean_kb": round(kb, 1)},
        "resolution": RES, "batch": a.batch, "rounds": a.rounds, "main_threads": a.threads,
        "images_per_s": rates,
        "one_worker_vs_reference": round(one / rates["reference"]["median"], 2) if one else None,
        "two_vs_one_worker": round(two / one, 2) if one and two else None,
        "targets": {"one_worker_vs_reference": 1.0, "two_vs_one_worker": 1.8},
        "draft": drafts,
        "decoder": decoder,
        "torch": torch.__version__, "pillow": Image.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
