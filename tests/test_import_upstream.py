"""``nasbnn import-upstream`` and ``nasbnn upstream-split``: official artifacts as run folders, the official
split, the warning on another split, bad input; parity of exported members with the official code."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from test_upstream_import import _to_upstream_state
from upstream_files import HAVE_FIXTURES, make_imagenet_folder, make_official_split

from nasbnn.cli import main
from nasbnn.config import DataConfig, RunConfig, load_config
from nasbnn.data import build_data
from nasbnn.data.upstream_split import manifest_from_upstream_split
from nasbnn.errors import DataError
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space
from nasbnn.upstream import arch_to_upstream

REPO = Path(__file__).resolve().parents[1]
TINY = helpers.TINY
SEARCH = [*helpers.TINY_SEARCH, "search.population=6", "search.generations=1", "search.num_mutations=3",
          "search.num_crossovers=3", "search.budget.min=0.001", "search.budget.max=0.014", "search.calib_batches=1",
          "search.calib_batch_size=16", "--no-progress"]


def _tiny_official(tmp: Path, *, members: int = 3, seed: int = 0) -> tuple[Path, Path, dict]:
    """An upstream-format checkpoint and info.pth.tar of the tiny space (the format, at toy size)."""
    space = create_space("tiny")
    ck = tmp / "checkpoint.pth.tar"
    torch.save({"epoch": 7, "arch": "superbnn", "state_dict": _to_upstream_state(SuperBNN(space, seed=seed))}, ck)
    rng = random.Random(seed)
    archs = [space.smallest(), *(space.sample(rng) for _ in range(members - 1))]
    pareto = {10 * (i + 1): arch_to_upstream(a, space) for i, a in enumerate(archs)}
    vis = {t: {"ops": 0.5 + b, "acc": 40.0 + b / 10, "visited": True} for b, t in pareto.items()}
    info = tmp / "info.pth.tar"
    torch.save({"memory": [], "candidates": list(pareto.values()), "vis_dict": vis, "epoch": 20,
                "pareto_global": pareto}, info)
    return ck, info, {b: a for b, a in zip(pareto, archs)}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_holdout_follows_the_dataset():
    assert DataConfig(name="imagefolder").holdout_per_class == 50
    assert DataConfig(name="cifar10").holdout_per_class == 500
    assert DataConfig(name="imagefolder", holdout_per_class=7).holdout_per_class == 7
    assert load_config(RunConfig, None, ["data.name=imagefolder"]).data.holdout_per_class == 50
    assert load_config(RunConfig, "imagenet").data.holdout_per_class == 50


def test_import_writes_a_run_folder_that_search_continues(tmp_path, capsys):
    ck, info, members = _tiny_official(tmp_path)
    run = tmp_path / "run"
    rc, _out, err = _run(["import-upstream", "--checkpoint", str(ck), "--search", str(info), "--to", str(run), *TINY],
                        capsys)
    assert rc == 0, err
    from nasbnn.cost import arch_cost
    from nasbnn.runs import load_supernet

    model, state = load_supernet(run)
    assert state["extra"]["upstream_epoch"] == 7 and state["config"]["data"]["holdout_per_class"] == 8
    ref = SuperBNN(create_space("tiny"), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
    doc = json.loads((run / "search" / "pareto.json").read_text())
    assert [f["bucket"] for f in doc["family"]] == [10.0, 20.0, 30.0]
    for f in doc["family"]:
        arch = members[int(f["bucket"])]
        assert f["arch"] == str(arch) and f["top1"] == pytest.approx(40.0 + f["bucket"] / 10)
        assert f["mops"] == pytest.approx(arch_cost(arch, model.space).mops, rel=1e-12)
    # `search` continues from the imported family (its members open generation 0, rescored here) ...
    rc, _out, err = _run(["search", *TINY, *SEARCH, f"out={run}"], capsys)
    assert rc == 0, err
    hist = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines()]
    gen0 = [h["arch"] for h in hist if h["generation"] == 0]
    assert gen0[:3] == [str(a) for a in members.values()]
    assert max(h["generation"] for h in hist) == 1
    # ... and --resume with more generations adds generation 2 without re-evaluating anything.
    rc, _out, err = _run(["search", *TINY, *SEARCH, "search.generations=2", "--resume", f"out={run}"], capsys)
    assert rc == 0, err
    hist2 = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines()]
    assert hist2[: len(hist)] == hist and max(h["generation"] for h in hist2) == 2
    assert len({h["arch"] for h in hist2}) == len(hist2)


def _assert_one_line_error(rc: int, err: str, what: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasbnn import-upstream: error:"), err
    assert what in lines[0], lines[0]


def test_bad_input_is_refused_and_nothing_is_written(tmp_path, capsys):
    ck, _info, _ = _tiny_official(tmp_path)
    base = ["import-upstream", *TINY]
    # --to an existing non-empty folder: left exactly as it was.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    rc, _, err = _run([*base, "--checkpoint", str(ck), "--to", str(busy)], capsys)
    _assert_one_line_error(rc, err, "not an empty folder")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    # An info.pth.tar whose architectures do not fit the space.
    bad_info = tmp_path / "bad_info.pth.tar"
    t = list(arch_to_upstream(create_space("tiny").largest(), create_space("tiny")))
    t[2] = 40  # a stem width the space does not have
    torch.save({"pareto_global": {20: tuple(t)}, "vis_dict": {tuple(t): {"ops": 1.0, "acc": 1.0}}}, bad_info)
    rc, _, err = _run([*base, "--checkpoint", str(ck), "--search", str(bad_info), "--to", str(tmp_path / "a")], capsys)
    _assert_one_line_error(rc, err, "outside space")
    # A truncated checkpoint, and a foreign one.
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    rc, _, err = _run([*base, "--checkpoint", str(cut), "--to", str(tmp_path / "b")], capsys)
    _assert_one_line_error(rc, err, "cannot read")
    foreign = tmp_path / "foreign.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module.encoder.layer1.weight": torch.zeros(3, 3)}}, foreign)
    rc, _, err = _run([*base, "--checkpoint", str(foreign), "--to", str(tmp_path / "c")], capsys)
    _assert_one_line_error(rc, err, "NAS-BNN supernet")
    other = tmp_path / "other.pth.tar"
    torch.save({"state_dict": _to_upstream_state(SuperBNN(create_space("tiny").with_overrides(num_classes=9)))}, other)
    rc, _, err = _run([*base, "--checkpoint", str(other), "--to", str(tmp_path / "d")], capsys)
    _assert_one_line_error(rc, err, "another search space")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not any(n in left for n in "abcd") and not any(n.startswith(".") for n in left), left


def test_split_folder_resolved_by_file_name(tmp_path, capsys):
    root = make_imagenet_folder(tmp_path / "ImageNet", classes=3, train_per_class=6, val_per_class=2)
    split = make_official_split(tmp_path / "ImageNet_split", root, per_class=2)
    # Every link dangles (relative to a folder that does not exist from where it sits) ...
    assert all(not p.exists() and p.is_symlink() for p in (split / "val").rglob("*.JPEG"))
    man = manifest_from_upstream_split(split, root, seed=0)
    held = sorted(f"train/{p.parent.name}/{p.name}" for p in (split / "val").rglob("*.JPEG"))
    assert man["holdout"] == held and len(held) == 6 and man["holdout_per_class"] == 2
    assert sorted(man["train"] + man["holdout"]) == sorted(
        p.relative_to(root).as_posix() for p in (root / "train").rglob("*.JPEG"))
    # ... yet the manifest drives the data split, whatever the run's seed.
    path = tmp_path / "official.json"
    rc, _out, err = _run(["upstream-split", "--split", str(split), "--to", str(path), f"data.root={root}"], capsys)
    assert rc == 0, err
    b = build_data(DataConfig(name="imagefolder", root=str(root), manifest=str(path)), resolution=16, seed=5,
                   run_dir=None)
    assert sorted(b.search_val.files) == held and len(b.train) == 12
    # Links pointing nowhere and files that cannot be found: one line, nothing written.
    elsewhere = make_imagenet_folder(tmp_path / "other", classes=3, train_per_class=6, val_per_class=2, seed=1)
    for f in (elsewhere / "train").rglob("*_train_1.JPEG"):
        f.rename(f.with_name("renamed.JPEG"))
    rc, _, err = _run(["upstream-split", "--split", str(split), "--to", str(tmp_path / "x.json"),
                       f"data.root={elsewhere}"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "name no image under" in err, err
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(DataError, match=r"is not a split_imagenet\.py output"):
        manifest_from_upstream_split(tmp_path / "other" / "train", root, seed=0)


def test_search_of_an_imported_supernet_warns_off_the_official_split(tmp_path, capsys, caplog):
    root = make_imagenet_folder(tmp_path / "ImageNet", classes=5, train_per_class=6, val_per_class=1)
    split = make_official_split(tmp_path / "ImageNet_split", root, per_class=2)
    ck, _, _ = _tiny_official(tmp_path)
    common = ["space.name=tiny", f"data.root={root}", "data.name=imagefolder", "data.holdout_per_class=2",
              "data.eval_batch_size=16", "data.workers=0"]
    search = [*SEARCH, "search.population=3", "search.generations=0"]
    for name, extra in (("ours", []), ("official", ["--split", str(split)])):
        rc, _, err = _run(["import-upstream", "--config", "imagenet", "--checkpoint", str(ck), *extra,
                           "--to", str(tmp_path / name), *common], capsys)
        assert rc == 0, err
    with caplog.at_level(logging.WARNING, logger="nasbnn.search.run"):
        rc, _, err = _run(["search", "--config", "imagenet", *common, *search, f"out={tmp_path / 'ours'}"], capsys)
    assert rc == 0, err
    warned = [r.getMessage() for r in caplog.records if "official" in r.getMessage()]
    assert len(warned) == 1 and "96%" in warned[0] and "--split" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nasbnn.search.run"):
        rc, _, err = _run(["search", "--config", "imagenet", *common, *search, f"out={tmp_path / 'official'}"],
                          capsys)
    assert rc == 0, err
    assert not [r for r in caplog.records if "official" in r.getMessage()]
    hist = [json.loads(x) for x in (tmp_path / "official" / "search" / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 3


_PARITY = r"""
import json, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2] + "/tests")
from upstream_files import logits_cases, ops_by_arch, write_official_checkpoint, write_official_search
from nasbnn.bundle import load_bundle
from nasbnn.cli import main
from nasbnn.cost import arch_cost
from nasbnn.presets import create_space
from nasbnn.upstream import arch_from_upstream
from nasbnn.upstream_import import _family

tmp = Path(sys.argv[1]); space = create_space("imagenet")
x, cases = logits_cases()
ops = ops_by_arch()


def family(pool):  # one architecture per 2-MOPs bucket, as upstream's pareto_global
    members, accs, mops = {}, {}, {}
    for t in pool:
        m = arch_cost(arch_from_upstream(t, space, nondecreasing=False), space).mops
        b = int(round(m / 2) * 2)
        if b not in members:
            members[b], accs[b], mops[b] = t, 60.0 + b / 100, ops[t]["mops"] if t in ops else m
    return members, accs, mops


write_official_checkpoint(tmp / "checkpoint.pth.tar")
res = {}
# every binary case but the largest (its export alone costs as much as the other six)
students = [tuple(c["arch"]) for c in cases if c["weights"] == "binary" and c["name"] != "biggest"]
for name, pool in (("logits", students), ("ops", list(ops))):
    members, accs, mops = family(pool)
    write_official_search(tmp / f"info_{name}.pth.tar", members, accs, mops)
    if name == "logits":  # the whole command; for the 62 OPs architectures, the family it would write
        run = tmp / name
        assert main(["import-upstream", "--checkpoint", str(tmp / "checkpoint.pth.tar"), "--search",
                     str(tmp / f"info_{name}.pth.tar"), "--to", str(run)]) == 0
        fam = json.loads((run / "search" / "pareto.json").read_text())["family"]
    else:
        fam = _family(tmp / f"info_{name}.pth.tar", space, "upstream")[0]
    by_bucket = {int(f["bucket"]): f for f in fam}
    res[name] = {"members": len(by_bucket), "top1_ok": all(by_bucket[b]["top1"] == accs[b] for b in members),
                 "mops_err": [abs(by_bucket[b]["mops"] - ops[t]["mops"]) / ops[t]["mops"]
                              for b, t in members.items() if t in ops]}
run = tmp / "logits"
assert main(["export", "--config", "imagenet", f"out={run}", "--family", f"{run}/search/pareto.json",
             "--no-recalibrate"]) == 0
ref = {str(arch_from_upstream(c["arch"], space, nondecreasing=False)): c for c in cases if c["weights"] == "binary"}
logits = {}
for f in json.loads((run / "search" / "pareto.json").read_text())["family"]:
    net = load_bundle(run / "export" / f"mops_{f['bucket']:g}").eval()
    with torch.no_grad():
        y = net(torch.from_numpy(x))
    r = torch.tensor(ref[f["arch"]]["logits"])
    logits[f["bucket"]] = float((y - r).norm() / r.norm())
res["logits"]["rel_l2"] = logits
print(json.dumps(res))
"""


@pytest.mark.skipif(not HAVE_FIXTURES, reason="no upstream parity fixtures (../shared/fixtures/upstream)")
def test_imported_family_matches_the_official_code(tmp_path):
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _PARITY, str(tmp_path), str(REPO)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["logits"]["top1_ok"] and res["ops"]["top1_ok"]
    mops_err = res["logits"]["mops_err"] + res["ops"]["mops_err"]
    assert res["ops"]["members"] >= 20 and len(mops_err) >= 20
    assert max(mops_err) <= 1e-9  # identical MOPs, but for float rounding
    rel = res["logits"]["rel_l2"]
    assert len(rel) == 6 and max(rel.values()) <= 1e-3, rel


def test_split_manifest_never_written_over_the_images_it_names(tmp_path, capsys):
    import os

    root = make_imagenet_folder(tmp_path / "ImageNet", classes=3, train_per_class=6, val_per_class=2)
    split = make_official_split(tmp_path / "ImageNet_split", root, per_class=2)
    image = next((root / "train").rglob("*.JPEG"))
    before = image.read_bytes()
    for target, needle in ((image, "inside the dataset or split folder"),
                           (split / "val" / "x.json", "inside the dataset or split folder")):
        rc, _, err = _run(["upstream-split", "--split", str(split), "--to", str(target), f"data.root={root}"], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert image.read_bytes() == before
    fifo = tmp_path / "m.json"
    os.mkfifo(fifo)
    rc, _, err = _run(["upstream-split", "--split", str(split), "--to", str(fifo), f"data.root={root}"], capsys)
    assert rc == 2 and "not a regular file" in err, err


def test_split_folder_missing_a_class_names_it(tmp_path):
    import shutil

    root = make_imagenet_folder(tmp_path / "ImageNet", classes=3, train_per_class=6, val_per_class=2)
    split = make_official_split(tmp_path / "ImageNet_split", root, per_class=2)
    gone = sorted(p.name for p in (split / "train").iterdir())[0]
    shutil.rmtree(split / "train" / gone)
    with pytest.raises(DataError, match=rf"classes missing there: \['{gone}'\]"):
        manifest_from_upstream_split(split, root, seed=0)
