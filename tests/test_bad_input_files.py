"""Damaged or ill-typed input files and out-of-range options: a one-line error, exit status 2, nothing damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import one_line_error as _one_line_error
from test_data_imagefolder import cfg_for, make_folder
from test_upstream_import import _to_upstream_state

from nasbnn.cli import main
from nasbnn.data import build_data
from nasbnn.errors import DataError, SearchError
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space
from nasbnn.train.checkpoint import load_checkpoint, save_checkpoint
from nasbnn.upstream import arch_to_upstream
from nasbnn.upstream_import import IMPORTED_FAMILY

# ------------------------------------------------------------------ search --resume over damaged files
SEARCH = ["search.population=8", "search.generations=1", "search.num_mutations=2", "search.num_crossovers=2",
          "--no-progress"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A random tiny supernet and a finished search on it."""
    root = tmp_path_factory.mktemp("search")
    space = create_space("tiny")
    save_checkpoint(root / "super.pt", kind="supernet", model_state=SuperBNN(space, seed=3).state_dict(), space=space,
                    config={}, step=0)
    assert main(_search_argv(root, root / "done")) == 0
    return root


def _search_argv(root: Path, run: Path, *extra: str) -> list[str]:
    return ["search", "--config", "tiny", "--checkpoint", str(root / "super.pt"), f"out={run}", *SEARCH, *extra]


def _copy_search(searched: Path, dest: Path) -> Path:
    shutil.copytree(searched / "done", dest)
    return dest / "search"


def _first_line(text: str, fn) -> str:  # type: ignore[no-untyped-def]
    first, rest = text.split("\n", 1)
    return fn(first) + "\n" + rest


@pytest.mark.parametrize(("name", "damage", "needles"), [
    ("meta.json", lambda t: t[:30], ["meta.json", "not valid JSON", "line 2"]),
    ("meta.json", lambda t: "[1, 2]\n", ["meta.json", "JSON array, not an object"]),
    ("history.jsonl", lambda t: _first_line(t, lambda s: s[:25]), ["history.jsonl", "line 1 is damaged"]),
    ("history.jsonl", lambda t: "[1]\n" + t, ["history.jsonl", "line 1 is a JSON array"]),
    ("history.jsonl", lambda t: _first_line(t, lambda s: s.replace('"top1"', '"tops"')),
     ["history.jsonl", "line 1", "no 'top1'"]),
    ("history.jsonl", lambda t: _first_line(t, lambda s: json.dumps({**json.loads(s), "top1": "high"})),
     ["history.jsonl", "line 1", "'top1' is \"high\", not a finite number"]),
    ("history.jsonl", lambda t: _first_line(t, lambda s: json.dumps({**json.loads(s), "arch": 7})),
     ["history.jsonl", "line 1", "'arch' is a number"]),
    ("history.jsonl", lambda t: _first_line(t, lambda s: json.dumps({**json.loads(s), "arch": "c4k3|x"})),
     ["history.jsonl", "line 1", "malformed block"]),
    ("generations.jsonl", lambda t: '{"generation": \n' + t, ["generations.jsonl", "line 1 is damaged"]),
    ("generations.jsonl", lambda t: "3\n" + t, ["generations.jsonl", "line 1 is a JSON number"]),
    ("generations.jsonl", lambda t: '{"evaluated": 3}\n' + t, ["generations.jsonl", "line 1", "no generation number"]),
])
def test_resume_over_a_damaged_search_file(searched, tmp_path, capsys, name, damage, needles):
    folder = _copy_search(searched, tmp_path / "run")
    path = folder / name
    path.write_text(damage(path.read_text()))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _one_line_error(capsys, _search_argv(searched, tmp_path / "run", "--resume"), "cannot resume", "--force",
                    *needles)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("name", ["history.jsonl", "generations.jsonl"])
def test_resume_drops_a_last_line_cut_short_by_a_kill(searched, tmp_path, caplog, name):
    folder = _copy_search(searched, tmp_path / "run")
    path = folder / name
    path.write_text(path.read_text()[:-15])  # a writer killed mid-line: no newline at the end
    assert main(_search_argv(searched, tmp_path / "run", "--resume")) == 0
    assert "unfinished last line" in caplog.text
    lines = path.read_text().splitlines()
    assert all(isinstance(json.loads(x), dict) for x in lines)
    assert (folder / "pareto.json").read_text() == (searched / "done" / "search" / "pareto.json").read_text()
    assert len(lines) == len((searched / "done" / "search" / name).read_text().splitlines())


def test_a_damaged_imported_family(searched, tmp_path, capsys):
    folder = _copy_search(searched, tmp_path / "run")
    (folder / IMPORTED_FAMILY).write_text(json.dumps({"family": [{"bucket": 10.0, "arch": 5}]}))
    _one_line_error(capsys, _search_argv(searched, tmp_path / "run", "--force"), IMPORTED_FAMILY, "family entry 0",
                    "'arch' is a number")


@pytest.mark.parametrize(("doc", "needle"), [
    ({"family": 3}, "no 'family' list"),
    ({"family": ["c4k3g1.1"]}, "family entry 0 is a string"),
    ({"family": [{"arch": "c4k3g1.1|c8k3g1.1|c16k3g2.2"}]}, "needs 'bucket' and 'arch'"),
    ({"family": [{"bucket": "ten", "arch": "c4k3g1.1|c8k3g1.1|c16k3g2.2"}]}, "'bucket' is \"ten\""),
])
def test_family_entries_are_checked(doc, needle):
    from nasbnn.search.result import family_entries

    with pytest.raises(SearchError) as info:
        family_entries(doc, "'run/pareto.json'")
    assert needle in str(info.value) and "'run/pareto.json'" in str(info.value)


# ------------------------------------------------------------------ official info.pth.tar with wrong types
@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An upstream-format checkpoint of the tiny space and the candidate tuple of its smallest member."""
    root = tmp_path_factory.mktemp("official")
    space = create_space("tiny")
    ck = root / "checkpoint.pth.tar"
    torch.save({"epoch": 7, "arch": "superbnn", "state_dict": _to_upstream_state(SuperBNN(space, seed=0))}, ck)
    return ck, arch_to_upstream(space.smallest(), space)


def _info(t: tuple[int, ...], **fields) -> dict:  # type: ignore[no-untyped-def]
    info = {"vis_dict": {t: {"ops": 0.5, "acc": 40.0, "visited": True}}, "epoch": 20, "pareto_global": {10: t}}
    info.update(fields)
    return info


@pytest.mark.parametrize(("fields", "needle"), [
    (lambda t: {"pareto_global": "abc"}, "'pareto_global' is a string, not a dict"),
    (lambda t: {"pareto_global": {"ten": t}}, "'pareto_global' has the key 'ten'"),
    (lambda t: {"pareto_global": {float("nan"): t}}, "'pareto_global' has the key nan"),
    (lambda t: {"pareto_global": {10: "abc"}}, "'pareto_global'[10] is a string"),
    (lambda t: {"pareto_global": {10: ["x"] * len(t)}}, "'pareto_global'[10] holds 'x'"),
    (lambda t: {"pareto_global": {10: [0.5] * len(t)}}, "'pareto_global'[10] holds 0.5"),
    (lambda t: {"vis_dict": {t: "abc"}}, "'vis_dict' entry of candidate"),
    (lambda t: {"vis_dict": {t: {"ops": "x", "acc": 1.0}}}, "has 'ops' = a string, not a number"),
    (lambda t: {"vis_dict": {t: {"ops": 1.0, "acc": [1, 2]}}}, "has 'acc' = a list, not a number"),
    (lambda t: {"vis_dict": [t]}, "'vis_dict' is a list"),
    (lambda t: {"epoch": "twenty"}, "'epoch' is a string"),
    (lambda t: {"epoch": [1]}, "'epoch' is a list"),
])
def test_official_search_result_with_wrong_types(official, tmp_path, capsys, fields, needle):
    ck, t = official
    info = tmp_path / "info.pth.tar"
    torch.save(_info(t, **fields(t)), info)
    dest = tmp_path / "run"
    _one_line_error(capsys, ["import-upstream", "--config", "tiny", "--checkpoint", str(ck), "--search", str(info),
                             "--to", str(dest)], str(info), "not a valid upstream search result", needle)
    assert not dest.exists()


def test_official_search_result_with_tensor_candidates(official, tmp_path, capsys):
    ck, t = official
    info = tmp_path / "info.pth.tar"
    torch.save(_info(t, pareto_global={10: torch.tensor(t).view(-1, 6)}), info)
    assert main(["import-upstream", "--config", "tiny", "--checkpoint", str(ck), "--search", str(info), "--to",
                 str(tmp_path / "run")]) == 0, capsys.readouterr().err
    family = json.loads((tmp_path / "run" / "search" / "pareto.json").read_text())["family"]
    assert [(f["bucket"], f["top1"]) for f in family] == [(10.0, 40.0)]


def test_official_checkpoint_with_a_non_tensor_entry(tmp_path, capsys):
    ck = tmp_path / "checkpoint.pth.tar"
    state = _to_upstream_state(SuperBNN(create_space("tiny"), seed=0))
    state["module.fc.weight"] = "weights"
    torch.save({"state_dict": state}, ck)
    _one_line_error(capsys, ["import-upstream", "--config", "tiny", "--checkpoint", str(ck), "--to",
                             str(tmp_path / "run")], "'module.fc.weight' is a string, not a tensor")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ split manifests
@pytest.fixture
def manifest(tmp_path):
    root = make_folder(tmp_path / "data")
    build_data(cfg_for(root), resolution=16, seed=0, run_dir=tmp_path / "run")
    return root, tmp_path / "run" / "split.json"


def _rehash(data: dict) -> dict:
    from nasbnn.data.imagefolder import _files_hash

    return {**data, "hash": _files_hash(data["classes"], data["train"], data["holdout"])}


@pytest.mark.parametrize(("change", "needle"), [
    (lambda d: {**d, "train": [7, *d["train"][1:]]}, "'train' entry 0 is 7, not a file name"),
    (lambda d: {**d, "holdout": [*d["holdout"][:-1], None]}, "'holdout' entry 5 is null"),
    (lambda d: {**d, "classes": [1, 2, 3]}, "'classes' entry 0 is 1, not a class name"),
    (lambda d: {**d, "train": "train/cat/img00.png"}, "'train' is \"train/cat/img00.png\", not a list"),
    (lambda d: {**d, "seed": "0"}, "'seed' is \"0\", not an integer"),
    (lambda d: {**d, "hash": 5}, "'hash' is not a string"),
    (lambda d: _rehash({**d, "train": ["train/zebra/img00.png", *d["train"][1:]]}), "not under a class folder"),
])
def test_manifest_with_wrong_entries(manifest, change, needle):
    root, path = manifest
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))
    with pytest.raises(DataError) as info:
        build_data(cfg_for(root), resolution=16, seed=0, run_dir=path.parent)
    msg = str(info.value)
    assert needle in msg and f"delete the manifest file {str(path)!r}" in msg, msg


def test_manifest_given_as_a_folder_is_not_offered_for_deletion(manifest, tmp_path):
    root, _ = manifest
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(DataError) as info:
        build_data(cfg_for(root, manifest=str(folder)), resolution=16, seed=0)
    msg = str(info.value)
    assert "is a folder, not a file" in msg and "delete" not in msg, msg
    assert (folder / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------ parity fixtures and options
def _fixture(folder: Path, keys: object = None, cases: object = None) -> Path:
    folder.mkdir()
    # code that must never run: parity reads the folder's data, never its scripts
    (folder / "make_state.py").write_text(f"open({str(folder / 'RAN')!r}, 'w').close()\n")
    (folder / "state_keys.json").write_text(json.dumps({"fc.bias": [3]} if keys is None else keys))
    (folder / "logits_seed0.json").write_text(json.dumps({"seed": 0, "input": "x.npy",
                                                          "cases": [] if cases is None else cases}))
    return folder


@pytest.mark.parametrize(("keys", "needle"), [
    ([], "must map parameter names to shapes"),
    ({}, "must map parameter names to shapes"),
    ({"fc.bias": [-3]}, "must map parameter names to shapes"),
    ({"fc.bias": "3"}, "must map parameter names to shapes"),
])
def test_parity_fixture_with_damaged_state_keys(tmp_path, capsys, keys, needle):
    folder = _fixture(tmp_path / "fx", keys=keys)
    _one_line_error(capsys, ["parity", "--fixtures", str(folder)], needle)
    assert not (folder / "RAN").exists()


def test_parity_fixture_with_nothing_to_compare(tmp_path, capsys):
    folder = tmp_path / "fx"
    folder.mkdir()
    (folder / "state_keys.json").write_text(json.dumps({"fc.bias": [3]}))
    _one_line_error(capsys, ["parity", "--fixtures", str(folder)], "nothing to compare")
    _one_line_error(capsys, ["parity", "--fixtures", str(tmp_path / "nosuch")], "no state_keys.json")


def test_parity_fixture_without_cases_is_not_a_pass(tmp_path, capsys):
    """Files with empty case lists compare nothing: an error, never "parity: OK"."""
    folder = _fixture(tmp_path / "fx")
    (folder / "logits_seed0.json").unlink()
    (folder / "ops_seed0.json").write_text("[]")
    _one_line_error(capsys, ["parity", "--fixtures", str(folder)], "holds no cases")
    assert not (folder / "RAN").exists()


def test_parity_ops_with_a_nan_reference_fail(tmp_path, capsys):
    from nasbnn.cli import main
    from nasbnn.presets import create_space
    from nasbnn.upstream import arch_to_upstream

    space = create_space("imagenet")
    folder = _fixture(tmp_path / "fx")
    (folder / "logits_seed0.json").unlink()
    entry = {"arch": arch_to_upstream(space.smallest(), space), "mflops": float("nan"), "mbops": 1.0, "mops": 1.0}
    (folder / "ops_seed0.json").write_text(json.dumps([entry]))
    assert main(["parity", "--fixtures", str(folder)]) == 1
    assert "parity: FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(("option", "needle"), [
    (["--tolerance", "-1"], "--tolerance must be a finite number >= 0"),
    (["--tolerance", "nan"], "--tolerance must be a finite number >= 0"),
    (["--tolerance", "inf"], "--tolerance must be a finite number >= 0"),
    (["--isa", "FOO"], "AVX2, AVX2_VNNI"),
])
def test_parity_options_out_of_range(tmp_path, capsys, option, needle):
    folder = _fixture(tmp_path / "fx")
    _one_line_error(capsys, ["parity", "--fixtures", str(folder), *option], needle)


# ------------------------------------------------------------------ synthetic detection data
@pytest.mark.parametrize("below", ["", "d"])
def test_synthetic_detection_data_under_a_file(tmp_path, capsys, below):
    blocker = tmp_path / "taken"
    blocker.write_text("precious")
    out = blocker / below if below else blocker
    _one_line_error(capsys, ["detect", "synth", "--out", str(out), "--images", "2"], "is a file, not a folder")
    assert blocker.read_text() == "precious"


@pytest.mark.parametrize("synthetic", [[], ["data.synthetic=null"]])
def test_detect_train_on_a_file_as_data_root(tmp_path, capsys, synthetic):
    blocker = tmp_path / "hostname"
    blocker.write_text("precious")
    _one_line_error(capsys, ["detect", "train", f"data.root={blocker}", f"out={tmp_path / 'run'}", "--no-progress",
                             *synthetic], str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "precious"


def test_resumed_training_log_with_damaged_lines(tmp_path):
    from nasbnn.utils.metrics import MetricsWriter

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n[1]\n{"step": "x"}\n{"step": 5, "loss": 1.0}\n{"step": 2, "lo')
    MetricsWriter(tmp_path, resume_step=3, tensorboard=False).close()
    assert [json.loads(x) for x in log.read_text().splitlines()] == [{"step": 1, "loss": 2.0}]



def test_pipes_where_files_are_read_are_refused_not_waited_on(tmp_path):
    """A FIFO in place of a search's history or a split manifest would block the reader for ever."""
    import os

    from nasbnn.data.imagefolder import _read_manifest
    from nasbnn.errors import DataError, SearchError
    from nasbnn.utils.metrics import read_jsonl, read_jsonl_strict

    fifo = tmp_path / "history.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(SearchError, match="not a regular file"):
        read_jsonl_strict(fifo, error=SearchError)
    assert read_jsonl(fifo) == []
    with pytest.raises(DataError, match="not a regular file"):
        _read_manifest(fifo, tmp_path, 0, 1)


def test_architecture_files_that_are_not_files_or_hold_no_member(tmp_path, capsys):
    import os

    fifo = tmp_path / "arch.json"
    os.mkfifo(fifo)
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch-json", str(fifo)], "--arch-json", "not a regular file")
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch-json", str(tmp_path / "arch")], "does not exist")
    _one_line_error(capsys, ["cost", "--space", "", "--largest"], "unknown search space ''")
    family = tmp_path / "pareto.json"
    family.write_text(json.dumps({"family": []}))
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch", f"{family}@"], "names no bucket after '@'")
    from nasbnn.presets import create_space
    from nasbnn.runs import resolve_archs

    with pytest.raises(SearchError, match="empty family"):
        resolve_archs(create_space("tiny"), str(family))


@pytest.mark.parametrize(("change", "needle"), [("supernet", "(supernet)"), ("search.budget.max=0.01", "(budget)")])
def test_resume_on_another_supernet_or_budget_is_refused(searched, tmp_path, capsys, change, needle):
    """A supernet retrained in the same folder to the same step, or a new budget, would mix two searches."""
    folder = _copy_search(searched, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    root = searched
    extra: list[str] = []
    if change == "supernet":
        root = tmp_path / "other"
        root.mkdir()
        space = create_space("tiny")
        save_checkpoint(root / "super.pt", kind="supernet", model_state=SuperBNN(space, seed=4).state_dict(),
                        space=space, config={}, step=0)
    else:
        extra = [change]
    _one_line_error(capsys, _search_argv(root, tmp_path / "run", "--resume", *extra), "used other settings", needle)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_resumed_training_keeps_its_settings(tmp_path, capsys, caplog):
    """--resume continues exactly: an override that changes what is computed is refused, a --config that differs
    from the run's is named (the run keeps its own); where it runs may change."""
    out = tmp_path / "run"
    base = ["train-supernet", "--config", "tiny", f"out={out}", "--no-progress"]
    assert main([*base, "--max-steps", "2"]) == 0
    _one_line_error(capsys, [*base, "--resume", "train.lr=0.2", "--max-steps", "3"],
                    "train.lr would change from 0.005 to 0.2", "--force")
    assert main(["train-supernet", "--config", "fashion-mnist", f"out={out}", "--resume", "--no-progress",
                 "--max-steps", "3"]) == 0
    assert "--config fashion-mnist differs from the run's" in caplog.text
    assert load_checkpoint(out / "checkpoint.pt")["config"]["data"]["name"] == "synthetic"
    assert main([*base, "--resume", "device=cpu", "--max-steps", "4"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4
    capsys.readouterr()
    _one_line_error(capsys, ["run", "--config", "tiny", "--out", str(out), "train.lr=0.2", "--no-progress"],
                    "holds a supernet trained with train.lr=0.005", "another --out")


def test_force_does_not_replace_a_run_of_another_kind(tmp_path, capsys):
    """--force starts the same kind of run over; over a supernet run, a fine-tuning or a detector must not
    replace hours of training it did not make. Nor may a fine-tuning run write into its input bundle."""
    out = tmp_path / "run"
    assert main(["train-supernet", "--config", "tiny", f"out={out}", "--no-progress", "--max-steps", "1"]) == 0
    assert main(["export", "--config", "tiny", "--checkpoint", str(out), "--smallest", "--no-recalibrate",
                 "--to", str(tmp_path / "b")]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    _one_line_error(capsys, ["finetune", "--config", "tiny", "--bundle", str(tmp_path / "b"), "--to", str(out),
                             "--force", "--no-progress"], "holds a supernet run", "choose another folder")
    assert (out / "checkpoint.pt").read_bytes() == before
    _one_line_error(capsys, ["finetune", "--config", "tiny", "--bundle", str(tmp_path / "b"), "--to",
                             str(tmp_path / "b"), "--no-progress"], "is the input bundle")
    assert main(["train-supernet", "--config", "tiny", f"out={out}", "--no-progress", "--max-steps", "1",
                 "--force"]) == 0


def test_eval_options_that_cannot_all_hold(tmp_path, capsys, searched):
    ckpt = str(searched / "super.pt")
    with pytest.raises(SystemExit):  # argparse: mutually exclusive
        main(["eval", "--config", "tiny", "--checkpoint", ckpt, "--largest", "--smallest"])
    assert "not allowed with" in capsys.readouterr().err
    _one_line_error(capsys, ["eval", "--config", "tiny", "--checkpoint", ckpt, "--largest", "eval.calib_batches=0"],
                    "eval.calib_batches >= 1")


def test_resume_of_another_commands_run_names_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-supernet", "--config", "tiny", f"out={out}", "--no-progress", "--max-steps", "1"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["detect", "train", f"out={out}", "--resume", "--no-progress"],
                    "cannot resume", "is not the config of a run of this command")


def test_synthetic_detection_data_over_a_dataset(tmp_path, capsys):
    """A real COCO folder has the synthetic one's layout: never written over. A synthetic one is regenerated,
    without the images of an earlier, larger draw."""
    real = tmp_path / "coco"
    (real / "annotations").mkdir(parents=True)
    (real / "annotations" / "instances_train.json").write_text('{"info": {"description": "COCO 2017"}}')
    _one_line_error(capsys, ["detect", "synth", "--out", str(real), "--images", "4", "--size", "32"],
                    "not a synthetic dataset's")
    assert json.loads((real / "annotations" / "instances_train.json").read_text())["info"]["description"] == "COCO 2017"
    synth = tmp_path / "shapes"
    assert main(["detect", "synth", "--out", str(synth), "--images", "8", "--size", "32"]) == 0
    assert main(["detect", "synth", "--out", str(synth), "--images", "4", "--val-images", "2", "--size", "32"]) == 0
    assert sorted(p.name for p in (synth / "train").iterdir()) == [f"{i:06d}.png" for i in range(1, 5)]


def test_family_with_two_members_in_one_bucket(tmp_path):
    from nasbnn.presets import create_space
    from nasbnn.runs import resolve_archs

    space = create_space("tiny")
    family = tmp_path / "pareto.json"
    entries = [{"bucket": 0.01, "arch": str(space.smallest())}, {"bucket": 0.01, "arch": str(space.largest())}]
    family.write_text(json.dumps({"family": entries}))
    with pytest.raises(SearchError, match=r"entries 0 and 1 are both in bucket 0\.01"):
        resolve_archs(space, str(family))
