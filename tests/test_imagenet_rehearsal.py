"""The README's ImageNet command lines, run as written under torchrun (2 gloo processes) on a generated
ImageNet-layout JPEG folder. Only sizes are overridden (steps, images, batch sizes, crop size); the
commands, config and code paths are the README's. Once from scratch, once from official-format
artifacts (built from the parity fixture's state) through ``import-upstream``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from upstream_files import (
    HAVE_FIXTURES,
    logits_cases,
    make_imagenet_folder,
    make_official_split,
    write_official_checkpoint,
    write_official_search,
)

REPO = Path(__file__).resolve().parents[1]
#: Sizes only: a step or two, a handful of images, tiny batches (crop sizes are set per test). Fine-tuning takes
#: 4 images per process: BatchNorm over 2 images of the 1x1 maps that 16-pixel crops leave gives NaN gradients
#: in about a third of the steps, and training stops on them.
SIZES = ["data.batch_size=4", "data.workers=1",
         "train.epochs=0.25", "train.eval_images=8", "train.log_every=1",
         "search.population=3", "search.generations=1", "search.num_mutations=1", "search.num_crossovers=1",
         "search.calib_batches=1", "search.calib_batch_size=4", "search.val_images=8",
         "eval.calib_batches=1", "eval.calib_batch_size=4", "finetune.batch_size=8"]


def readme_block(marker: str) -> list[str]:
    """The command lines of the bash block that follows ``<!-- marker -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", text, re.S)
    assert m, f"README.md has no ```bash block after <!-- {marker} -->"
    return [line for line in m.group(1).splitlines() if line.strip() and not line.startswith("#")]


def translate(line: str, subst: dict[str, str], extra: list[str]) -> list[str]:
    """A README line as argv: 8 GPUs become 2 gloo processes, paths point into the test folder."""
    for old, new in subst.items():
        line = line.replace(old, new)
    words = shlex.split(line)
    if words[:4] == ["torchrun", "--nproc_per_node", "8", "-m"]:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
        return [*head, *words[4:], *extra]
    assert words[0] == "nasbnn", line
    return [sys.executable, "-m", "nasbnn", *words[1:], *extra]


def run_lines(lines: list[str], subst: dict[str, str], extra: list[str], cwd: Path,
              bucket_from: Path | None = None) -> list[subprocess.CompletedProcess]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = []
    for line in lines:
        if bucket_from is not None and ("mops_56" in line or "@56" in line):
            family = json.loads(bucket_from.read_text())["family"]
            bucket = f"{min(float(f['bucket']) for f in family):g}"  # the smallest member
            line = line.replace("mops_56", f"mops_{bucket}").replace("@56", f"@{bucket}")
        argv = translate(line, subst, extra)
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        print(f"{time.perf_counter() - start:6.1f} s  {line[:100]}")  # shown with pytest -s: where the time goes
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
        done.append(proc)
    return done


def test_readme_imagenet_protocol_from_scratch(tmp_path):
    data = make_imagenet_folder(tmp_path / "ILSVRC2012", classes=4, train_per_class=6, val_per_class=2)
    lines = readme_block("imagenet-protocol")
    assert [ln.split()[5 if ln.startswith("torchrun") else 1] for ln in lines] == [
        "train-supernet", "search", "export", "finetune", "eval"]
    subst = {"/data/ILSVRC2012": str(data)}
    run = tmp_path / "runs" / "imagenet"
    sizes = [*SIZES, "data.resolution=32", "data.eval_batch_size=50", "data.holdout_per_class=2",
             "finetune.epochs=0.25"]
    procs = run_lines(lines, subst, sizes, tmp_path,
                      bucket_from=run / "search" / "pareto.json")
    ckpt_cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert ckpt_cfg["space"]["name"] == "imagenet" and ckpt_cfg["train"]["lr"] == 2.5e-3  # the official recipe
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == summary["total_steps"] == 1  # 16 training images (2 held out per class) / 4 per step
    split = json.loads((run / "split.json").read_text())
    assert len(split["holdout"]) == 8 and len(split["train"]) == 16
    hist = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines()]
    assert {h["generation"] for h in hist} == {0, 1} and all(0 <= h["top1"] <= 100 for h in hist)
    family = json.loads((run / "search" / "pareto.json").read_text())["family"]
    assert family and all((run / "export" / f"mops_{f['bucket']:g}" / "bundle.json").is_file() for f in family)
    assert procs[2].stdout.count("test top-1") == len(family)
    res = json.loads(procs[4].stdout)
    assert res["images"] == 8 and 0 <= res["top1"] <= 100 and res["mops"] == pytest.approx(family[0]["mops"])


@pytest.mark.skipif(not HAVE_FIXTURES, reason="no upstream parity fixtures (../shared/fixtures/upstream)")
def test_readme_official_checkpoint_lines(tmp_path):
    from nasbnn.cost import arch_cost
    from nasbnn.presets import create_space
    from nasbnn.upstream import arch_from_upstream

    # ImageNet has 1000 classes, and so has the official supernet: 1000 class folders of tiny JPEGs.
    data = make_imagenet_folder(tmp_path / "ILSVRC2012", classes=1000, train_per_class=2, val_per_class=1,
                                size=(12, 10))
    split = make_official_split(tmp_path / "data" / "ImageNet_split", data, per_class=1)
    write_official_checkpoint(tmp_path / "checkpoint.pth.tar")
    space = create_space("imagenet")
    _, cases = logits_cases()
    chosen = [tuple(c["arch"]) for c in cases if c["name"] in ("smallest", "arch1") and c["weights"] == "binary"]
    buckets = {int(round(arch_cost(arch_from_upstream(t, space, nondecreasing=False), space).mops / 2) * 2): t
               for t in chosen}
    write_official_search(tmp_path / "info.pth.tar", buckets, {b: 60.0 + b / 10 for b in buckets},
                          {b: float(b) for b in buckets})
    lines = readme_block("imagenet-official")
    assert "import-upstream" in lines[0] and "test.py" not in lines[1]
    subst = {"/data/ILSVRC2012": str(data), "data/ImageNet_split": str(split)}
    run = tmp_path / "runs" / "official"
    # 16-pixel crops and big evaluation batches: every family member is evaluated on the 1000 val images
    sizes = [*SIZES, "data.resolution=16", "data.eval_batch_size=500", "data.holdout_per_class=1",
             "finetune.epochs=0.004"]
    procs = run_lines(lines, subst, sizes, tmp_path,
                      bucket_from=run / "search" / "pareto.json")
    imported = json.loads((run / "search" / "upstream_family.json").read_text())["family"]
    assert [f["bucket"] for f in imported] == sorted(float(b) for b in buckets)
    assert all(f["top1"] == pytest.approx(60.0 + f["bucket"] / 10) for f in imported)
    official_eval = json.loads(procs[1].stdout)  # the counterpart of upstream's test.py --ops <bucket>
    assert official_eval["images"] == 1000 and official_eval["bn_recalibrated"]
    assert official_eval["mops"] == pytest.approx(imported[0]["mops"])
    assert "96%" not in procs[2].stderr  # searched on the official split: no warning
    hist = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines()]
    assert [h["arch"] for h in hist[: len(imported)]] == [f["arch"] for f in imported]  # continues from them
    assert max(h["generation"] for h in hist) == 1
    res = json.loads(procs[5].stdout)
    assert res["images"] == 1000 and 0 <= res["top1"] <= 100
