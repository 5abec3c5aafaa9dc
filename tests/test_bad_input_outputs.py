"""Outputs that would damage inputs or runs, and out-of-range settings: one-line error, exit status 2, nothing
damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import one_line_error as _one_line_error

from nasbnn.bundle import save_bundle
from nasbnn.cli import main
from nasbnn.config import RunConfig
from nasbnn.errors import OutputError
from nasbnn.export import export_subnet
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space
from nasbnn.train.checkpoint import load_checkpoint, save_checkpoint
from nasbnn.train.run import TrainingRun

PRECIOUS = b"precious"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> Path:
    """A random tiny supernet checkpoint (with the run's config.yaml beside it) and a bundle of its smallest
    member."""
    root = tmp_path_factory.mktemp("files")
    space = create_space("tiny")
    supernet = SuperBNN(space, seed=3)
    save_checkpoint(root / "run" / "checkpoint.pt", kind="supernet", model_state=supernet.state_dict(), space=space,
                    config={}, step=0)
    shutil.copy(Path(__file__).resolve().parents[1] / "nasbnn" / "configs" / "tiny.yaml", root / "run" / "config.yaml")
    save_bundle(export_subnet(supernet, space.smallest()), root / "bundle", config={"seed": 0, "data": {}})
    return root


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A detector run folder trained for one step on a tiny synthetic dataset, and its overrides."""
    from nasbnn.detect.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("det")
    generate_synthetic_coco(root / "data", images=8, val_images=4, size=32, seed=3, classes=2, max_objects=2)
    overrides = detector_overrides(root / "data", root / "run")
    assert main(["detect", "train", "--no-progress", "--max-steps", "1", *overrides]) == 0
    return root / "run", overrides


def detector_overrides(data: Path, out: Path) -> list[str]:
    return ["device=cpu", f"out={out}", "backbone.space=tiny", "backbone.arch=smallest", f"data.root={data}",
            "data.train=train", "data.val=val", "data.canvas=32", "data.batch_size=4", "data.eval_batch_size=4",
            "detect.neck_width=8", "detect.gn_groups=4", "detect.head_convs=1", "train.epochs=1",
            "data.synthetic=null"]




def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# ----------------------------------------------------------------------------- outputs onto inputs
@pytest.mark.parametrize("name", ["bundle.json", "model.safetensors", "config.yaml"])
def test_eval_json_out_onto_a_file_of_the_bundle(tiny_files, tmp_path, capsys, name):
    bundle = _copy(tiny_files / "bundle", tmp_path / "bundle")
    before = _snapshot(bundle)
    _one_line_error(capsys, ["eval", "--config", "tiny", "--bundle", str(bundle), "--json-out", str(bundle / name)],
                    "--json-out", name, "input bundle")
    assert _snapshot(bundle) == before
    # a file of another name beside the bundle's files is an ordinary output
    assert main(["eval", "--config", "tiny", "--bundle", str(bundle), "--json-out", str(bundle / "eval.json")]) == 0
    assert json.loads((bundle / "eval.json").read_text())["images"] > 0


@pytest.mark.parametrize("which", ["checkpoint", "run-folder", "config"])
def test_eval_json_out_onto_the_checkpoint_or_the_config(tiny_files, tmp_path, capsys, which):
    run = _copy(tiny_files / "run", tmp_path / "run")
    before = _snapshot(run)
    ckpt = str(run) if which == "run-folder" else str(run / "checkpoint.pt")
    config = str(run / "config.yaml") if which == "config" else "tiny"
    target = run / ("config.yaml" if which == "config" else "checkpoint.pt")
    _one_line_error(capsys, ["eval", "--config", config, "--checkpoint", ckpt, "--smallest", f"out={run}",
                             "--json-out", str(target)], "is one of this command's inputs")
    assert _snapshot(run) == before


@pytest.mark.parametrize("which", ["checkpoint.pt", "config.yaml", "annotations", "detections-onto-checkpoint"])
def test_detect_eval_json_out_onto_an_input(detector_run, tmp_path, capsys, which):
    run = _copy(detector_run[0], tmp_path / "run")
    data = _copy(Path(next(o for o in detector_run[1] if o.startswith("data.root=")).split("=", 1)[1]),
                 tmp_path / "data")
    ann = data / "annotations" / "instances_val.json"
    ann_before, before = ann.read_bytes(), _snapshot(run)
    target = {"checkpoint.pt": run / "checkpoint.pt", "config.yaml": run / "config.yaml", "annotations": ann,
              "detections-onto-checkpoint": run / "checkpoint.json"}[which]
    if which == "detections-onto-checkpoint":  # the detections go to <stem>_detections.json
        (run / "checkpoint.pt").rename(run / "checkpoint_detections.json")
        before = _snapshot(run)
        ckpt = run / "checkpoint_detections.json"
    else:
        ckpt = run / "checkpoint.pt"
    _one_line_error(capsys, ["detect", "eval", "--checkpoint", str(ckpt), "--json-out", str(target),
                             f"data.root={data}"], "is one of this evaluation's inputs")
    assert _snapshot(run) == before and ann.read_bytes() == ann_before


# ----------------------------------------------------------------------------- fresh runs over runs
def _with_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.pt").write_bytes(PRECIOUS)
    return folder


@pytest.mark.parametrize("command", ["train-supernet", "train-arch", "finetune", "detect-train"])
def test_a_fresh_run_into_a_folder_with_a_checkpoint_is_refused(tiny_files, detector_run, tmp_path, capsys, command):
    run = _with_checkpoint(tmp_path / "run")
    argv = {
        "train-supernet": ["train-supernet", "--config", "tiny", f"out={run}"],
        "train-arch": ["train-arch", "--config", "tiny", "--arch", str(create_space("tiny").smallest()), f"out={run}"],
        "finetune": ["finetune", "--config", "tiny", "--bundle", str(tiny_files / "bundle"), "--to", str(run)],
        "detect-train": ["detect", "train", *detector_run[1], f"out={run}"],
    }[command]
    _one_line_error(capsys, [*argv, "--no-progress", "--max-steps", "1"], "already holds checkpoint.pt", "--resume",
                    "--force")
    assert (run / "checkpoint.pt").read_bytes() == PRECIOUS
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_force_starts_over_and_refuses_resume_with_it(tmp_path, capsys):
    run = _with_checkpoint(tmp_path / "run")
    argv = ["train-supernet", "--config", "tiny", f"out={run}", "--no-progress", "--max-steps", "1"]
    _one_line_error(capsys, [*argv, "--force", "--resume"], "--resume", "--force")
    assert (run / "checkpoint.pt").read_bytes() == PRECIOUS
    assert main([*argv, "--force"]) == 0
    assert load_checkpoint(run / "checkpoint.pt", kind="supernet")["step"] == 1


def test_training_run_refuses_to_replace_a_checkpoint_unless_forced(tmp_path):
    run = _with_checkpoint(tmp_path / "run")
    with pytest.raises(OutputError, match=r"already holds checkpoint\.pt"):
        TrainingRun(run, RunConfig(), progress=False)
    TrainingRun(run, RunConfig(), force=True, progress=False)
    TrainingRun(tmp_path / "fresh", RunConfig(), progress=False)  # no checkpoint: nothing to replace
    assert (run / "checkpoint.pt").read_bytes() == PRECIOUS


def test_pipeline_starts_stages_over_their_checkpoints_as_before(tiny_files, tmp_path, monkeypatch):
    from nasbnn import pipeline
    from nasbnn.config import load_config

    run = tmp_path / "sup"
    run.mkdir()
    shutil.copy(tiny_files / "run" / "checkpoint.pt", run / "checkpoint.pt")  # unfinished, without config.yaml
    started = []
    monkeypatch.setattr("nasbnn.train.supernet.train_supernet", lambda cfg, **kw: started.append(
        TrainingRun(kw["run_dir"], cfg, resume=kw["resume"], force=kw["force"], progress=False)))
    pipeline._train_stage(load_config(RunConfig, "tiny", [f"out={run}"]), run, progress=False, log=lambda *_: None)
    assert len(started) == 1 and not started[0].resume
    dest = _with_checkpoint(tmp_path / "finetune" / "bundle")
    (dest / "member.json").write_text(json.dumps({"arch": "another member"}))
    calls = []
    monkeypatch.setattr("nasbnn.train.finetune.finetune", lambda cfg, **kw: calls.append(
        TrainingRun(kw["run_dir"], cfg, resume=kw["resume"], force=kw["force"], progress=False)) or {"test_top1": 1.0})
    cfg = load_config(RunConfig, "tiny", [f"out={tmp_path}"])
    fam = [{"arch": "x", "bundle": str(tiny_files / "bundle"), "mops": 1.0, "top1": 1.0}]
    pipeline._finetune_members(cfg, tmp_path, fam, progress=False, log=lambda *_: None)
    assert len(calls) == 1 and not calls[0].resume
    with pytest.raises(OutputError):  # outside the pipeline the same folder is refused
        TrainingRun(dest, cfg, progress=False)


# ----------------------------------------------------------------------------- export destinations
@pytest.mark.parametrize("holds", [("checkpoint.pt", "config.yaml"), ("config.yaml",), ("model.safetensors",)])
def test_export_into_a_folder_that_is_not_a_bundle(tiny_files, tmp_path, capsys, holds):
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in holds:
        (dest / name).write_bytes(PRECIOUS)
    _one_line_error(capsys, ["export", "--config", "tiny", "--checkpoint", str(tiny_files / "run" / "checkpoint.pt"),
                             "--smallest", "--no-recalibrate", "--to", str(dest)], str(dest), holds[0])
    assert sorted(p.name for p in dest.iterdir()) == sorted(holds)
    assert all((dest / name).read_bytes() == PRECIOUS for name in holds)


def test_export_over_its_own_run_folder_is_refused_but_a_bundle_is_replaced(tiny_files, tmp_path, capsys):
    run = _copy(tiny_files / "run", tmp_path / "run")
    before = _snapshot(run)
    _one_line_error(capsys, ["export", "--config", "tiny", "--checkpoint", str(run), "--smallest", "--no-recalibrate",
                             "--to", str(run)], "holds a training run")
    assert _snapshot(run) == before
    bundle = _copy(tiny_files / "bundle", tmp_path / "bundle")
    assert main(["export", "--config", "tiny", "--checkpoint", str(run), "--largest", "--no-recalibrate",
                 "--to", str(bundle)]) == 0
    assert json.loads((bundle / "bundle.json").read_text())["arch"] == str(create_space("tiny").largest())


# ----------------------------------------------------------------------------- latency fit outputs
def test_latency_fit_with_one_file_for_model_and_report(tmp_path, capsys):
    same = tmp_path / "m.json"
    _one_line_error(capsys, ["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "1",
                             "--out", str(same), "--report", str(tmp_path / "." / "m.json")],
                    "--out and --report name the same file")
    assert not same.exists()


def test_latency_fit_with_an_unwritable_report_writes_no_model(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_bytes(PRECIOUS)
    model = tmp_path / "m.json"
    _one_line_error(capsys, ["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "1",
                             "--out", str(model), "--report", str(blocker / "r.json")], "--report", "is a file")
    assert not model.exists() and blocker.read_bytes() == PRECIOUS


# ----------------------------------------------------------------------------- values out of range
@pytest.mark.parametrize("steps", ["0", "-1"])
@pytest.mark.parametrize("command", ["train-supernet", "finetune"])
def test_max_steps_below_one(tiny_files, tmp_path, capsys, steps, command):
    run = tmp_path / "run"
    argv = (["train-supernet", "--config", "tiny", f"out={run}"] if command == "train-supernet" else
            ["finetune", "--config", "tiny", "--bundle", str(tiny_files / "bundle"), "--to", str(run)])
    _one_line_error(capsys, [*argv, "--no-progress", "--max-steps", steps],
                    f"--max-steps must be at least 1, got {steps}")
    assert not run.exists()


@pytest.mark.parametrize(("canvas", "needle"), [("0", "at least 16 pixels wide, got 0"),
                                                 ("9000", "at most 8192 pixels wide, got 9000")])
def test_detect_cost_canvas_out_of_range(capsys, canvas, needle):
    _one_line_error(capsys, ["detect", "cost", "--canvas", canvas], needle)


@pytest.mark.parametrize("extra", [["--arch", "c4k3g1.1|c8k3g1.1|c16k3g2.2"], ["--largest"], ["--smallest"]])
def test_eval_of_a_bundle_with_an_architecture(tiny_files, capsys, extra):
    _one_line_error(capsys, ["eval", "--config", "tiny", "--bundle", str(tiny_files / "bundle"), *extra],
                    f"{extra[0]} does not apply to --bundle")


def test_eval_of_a_bundle_warns_about_overrides_it_ignores(tiny_files, tmp_path, capsys):
    bundle = str(tiny_files / "bundle")
    for item in ("space.name=tiny", "train.epochs=3", f"out={tmp_path}", "eval.calib_batches=1"):
        assert main(["eval", "--config", "tiny", "--bundle", bundle, item, "--json-out", str(tmp_path / "w.json")]) == 0
        err = capsys.readouterr().err
        assert f"warning: {item!r} does not apply to --bundle" in err and "ignored" in err, err
    assert main(["eval", "--config", "tiny", "--bundle", bundle, "data.eval_batch_size=7", "--recalibrate",
                 "eval.calib_batches=1", "--json-out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["bn_recalibrated"] is True


@pytest.mark.parametrize("seed", [str(2**63), str(2**64), "-1"])
@pytest.mark.parametrize("command", ["bench", "latency"])
def test_seed_out_of_range(tmp_path, capsys, seed, command):
    model = tmp_path / "m.json"
    argv = (["bench", "--space", "tiny", "--smallest", "--repeats", "1", "--warmup", "0"] if command == "bench" else
            ["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "1", "--out", str(model)])
    _one_line_error(capsys, [*argv, "--seed", seed], "seed must be between 0 and 9223372036854775807", seed)
    assert not model.exists()


def test_bench_batch_that_cannot_fit_in_memory(capsys, monkeypatch):
    monkeypatch.setattr("nasbnn.engine.bench.available_memory", lambda: 2**30)
    _one_line_error(capsys, ["bench", "--space", "imagenet", "--largest", "--batch", "1", "1024"],
                    "batch 1024 at resolution 224 needs at least", "1.0 GiB of memory is available")


def test_bench_memory_estimate_grows_with_batch_and_resolution():
    from nasbnn.engine.bench import activation_bytes, available_memory

    space = create_space("tiny")
    arch = space.largest()
    one = activation_bytes(space, arch, 16, 1)
    assert one >= 4 * 2 * space.in_channels * 16 * 16
    assert activation_bytes(space, arch, 16, 10) == 10 * one and activation_bytes(space, arch, 32, 1) > 3 * one
    have = available_memory()
    assert have is None or have > 0


# ----------------------------------------------------------------------------- what a file is
def test_detect_eval_of_a_supernet_checkpoint(tiny_files, capsys):
    for ckpt in (tiny_files / "run", tiny_files / "run" / "checkpoint.pt"):
        _one_line_error(capsys, ["detect", "eval", "--checkpoint", str(ckpt)],
                        "is a supernet checkpoint, not a detector")


def test_latency_model_without_its_models(tmp_path, capsys):
    bad = tmp_path / "lat.json"
    for body in ({"format": "nasbnn-latency-model", "format_version": 2},
                 {"format": "nasbnn-latency-model", "format_version": 2, "models": []}):
        bad.write_text(json.dumps(body))
        err = _one_line_error(capsys, ["latency", "predict", "--model", str(bad), "--space", "tiny", "--smallest"],
                              "malformed", "'models'")
        assert "this nasbnn reads versions" not in err


@pytest.mark.parametrize("argv", [
    ["bench", "--space", "tiny", "--smallest", "--resolution", "5000"],
    ["latency", "predict", "--model", "m.json", "--space", "tiny", "--smallest", "--resolution", "2000"],
    ["latency", "fit", "--space", "tiny", "--samples", "4", "--out", "m.json", "--resolution", "9999"],
])
def test_engine_resolution_beyond_the_space_limit(capsys, argv):
    _one_line_error(capsys, argv, "resolution must be 1 to 1024")


@pytest.mark.parametrize("argv,message", [
    (["bench", "--space", "tiny", "--smallest", "--repeats", "1000000000"], "repeats must be 1 to 10000"),
    (["bench", "--space", "tiny", "--smallest", "--warmup", "20000"], "warmup 0 to 10000"),
    (["bench", "--space", "tiny", "--smallest", "--repeats", "0"], "repeats must be 1 to 10000"),
    (["latency", "fit", "--space", "tiny", "--samples", "1000000000", "--out", "m.json"], "samples 4 to 10000"),
    (["latency", "fit", "--space", "tiny", "--samples", "3", "--out", "m.json"], "samples 4 to 10000"),
    (["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "99999", "--out", "m.json"],
     "repeats must be 1 to 10000"),
])
def test_engine_timing_counts_beyond_limits(capsys, tmp_path, monkeypatch, argv, message):
    """Counts that would time for days (or sample a small space for ever) are refused before any work."""
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, argv, message)
    assert not (tmp_path / "m.json").exists()


def test_config_command_resolves_the_space(capsys):
    _one_line_error(capsys, ["config", "--config", "tiny", "space.name=nosuch"], "nosuch")


def test_export_finishes_an_export_stopped_before_its_bundle_json(tiny_files, tmp_path):
    """The weights of an interrupted export are the export's own (their header says so): a re-run completes it,
    where another program's safetensors file in the same place is refused."""
    import torch
    from safetensors.torch import save

    from nasbnn.deploy import check_export_folder

    dest = _copy(tiny_files / "bundle", tmp_path / "dest")
    for name in ("bundle.json", "config.yaml"):
        (dest / name).unlink(missing_ok=True)
    argv = ["export", "--config", "tiny", "--checkpoint", str(tiny_files / "run" / "checkpoint.pt"), "--largest",
            "--no-recalibrate", "--to", str(dest)]
    assert main(argv) == 0
    assert json.loads((dest / "bundle.json").read_text())["arch"] == str(create_space("tiny").largest())
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(save({"w": torch.zeros(2)}, metadata={"format": "pt"}))
    with pytest.raises(OutputError, match="not a bundle"):
        check_export_folder(other)


def test_failed_command_leaves_no_run_folder_it_created(capsys, tmp_path):
    """A command stopped by a user mistake after creating its run folder takes the empty folders back; a folder
    that existed, or that holds anything, stays."""
    missing = tmp_path / "nodata"
    argv = ["train-supernet", "--config", "tiny", "data.name=fashion-mnist", f"data.root={missing}"]
    _one_line_error(capsys, [*argv, f"out={tmp_path / 'new' / 'run'}"], "not found")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    _one_line_error(capsys, [*argv, f"out={tmp_path / 'kept'}"], "not found")
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_run_seed_out_of_range(capsys, seed):
    _one_line_error(capsys, ["config", "--config", "tiny", f"seed={seed}"], "'seed'")


def test_space_path_without_yaml_suffix_is_read_as_a_file(capsys, tmp_path):
    """A path given as the space is read as a space file whatever its suffix, so the error says what is wrong
    with it rather than calling it an unknown preset."""
    (tmp_path / "space.txt").write_text("- 1\n- 2\n")
    _one_line_error(capsys, ["cost", "--space", str(tmp_path / "space.txt"), "--largest"], "must hold a mapping")
    _one_line_error(capsys, ["cost", "--space", str(tmp_path), "--largest"], "is a folder")
    _one_line_error(capsys, ["cost", "--space", "nosuch", "--largest"], "unknown search space 'nosuch'")


# ----------------------------------------------------------------------------- export: staged, whole or nothing
def _export_argv(checkpoint: Path, dest: Path, *extra: str) -> list[str]:
    return ["export", "--config", "tiny", "--checkpoint", str(checkpoint), "--no-recalibrate", "--to", str(dest),
            *extra]


def test_failed_export_leaves_the_bundle_there_untouched(tiny_files, tmp_path, capsys):
    """An export that fails after the network was built (NaN weights in the checkpoint) changes nothing in the
    destination and leaves no staging folder."""
    state = load_checkpoint(tiny_files / "run" / "checkpoint.pt")
    model = state["model"]
    model[next(k for k, v in model.items() if v.is_floating_point() and k.endswith("bias"))].fill_(float("nan"))
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, kind="supernet", model_state=model, space=create_space("tiny"), config={}, step=0)
    dest = _copy(tiny_files / "bundle", tmp_path / "dest")
    before = _snapshot(dest)
    _one_line_error(capsys, _export_argv(bad, dest, "--largest", "--format", "packed"), "NaN or infinite")
    assert _snapshot(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "nan.pt"]


def test_export_over_a_packed_bundle_removes_its_stale_packed_model(tiny_files, tmp_path):
    ckpt = tiny_files / "run" / "checkpoint.pt"
    dest = tmp_path / "dest"
    assert main(_export_argv(ckpt, dest, "--largest", "--format", "packed")) == 0
    assert (dest / "model.nbp").is_file()
    assert main(_export_argv(ckpt, dest, "--smallest")) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["bundle.json", "config.yaml", "model.safetensors"]
    assert json.loads((dest / "bundle.json").read_text())["arch"] == str(create_space("tiny").smallest())


def test_export_into_a_folder_of_other_files_is_refused(tiny_files, tmp_path, capsys):
    dest = tmp_path / "photos"
    dest.mkdir()
    (dest / "a.png").write_bytes(PRECIOUS)
    _one_line_error(capsys, _export_argv(tiny_files / "run" / "checkpoint.pt", dest, "--smallest"),
                    "not empty and not a bundle", "a.png")
    assert [p.name for p in dest.iterdir()] == ["a.png"]


# ----------------------------------------------------------------------------- special files and paths
def test_outputs_onto_a_fifo_are_refused_before_any_work(tmp_path, capsys):
    import os
    import stat

    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    _one_line_error(capsys, ["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "1",
                             "--out", str(fifo)], "--out", "not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_report_where_nothing_can_be_written_fails_before_measuring(tmp_path, capsys):
    out = tmp_path / "m.json"
    _one_line_error(capsys, ["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "1",
                             "--out", str(out), "--report", "/proc/nasbnn-report.json"], "--report", "/proc")
    assert not out.exists()


def test_path_component_too_long(tmp_path, capsys):
    long = tmp_path / ("x" * 300)
    _one_line_error(capsys, ["config", "--config", f"{long}.yaml"], "too long")
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch-json", f"{long}.json"], "too long")


def test_closed_output_pipe_is_not_a_traceback():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "nasbnn", "cost", "--space", "imagenet", "--largest"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()  # the reader goes away, as `| head -c1` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err, err


@pytest.mark.parametrize(("text", "needle"), [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                                              ("1" * 5000, "digits")])
def test_latency_model_json_that_python_cannot_read(tmp_path, capsys, text, needle):
    f = tmp_path / "m.json"
    f.write_text(text)
    _one_line_error(capsys, ["latency", "predict", "--space", "tiny", "--largest", "--model", str(f)], needle)


@pytest.mark.parametrize(("entry", "value", "needle"), [("model", "weights", "'model' entry is not a mapping"),
                                                        ("config", "x", "'config' entry is not a mapping"),
                                                        ("step", -1, "its step is -1")])
def test_checkpoint_entries_of_the_wrong_type(tiny_files, tmp_path, capsys, entry, value, needle):
    import torch

    data = torch.load(tiny_files / "run" / "checkpoint.pt", weights_only=True)
    data[entry] = value
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    _one_line_error(capsys, _export_argv(bad, tmp_path / "dest", "--smallest"), needle)


def test_checkpoint_tensor_of_the_wrong_shape(tiny_files, tmp_path, capsys):
    import torch

    data = torch.load(tiny_files / "run" / "checkpoint.pt", weights_only=True)
    key = next(iter(data["model"]))
    data["model"][key] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    _one_line_error(capsys, _export_argv(bad, tmp_path / "dest", "--smallest"), "does not fit", key)


def test_latency_fit_for_more_threads_than_numba_has(tmp_path, capsys):
    """A model recorded for 100000 threads would claim a measurement that never ran."""
    out = tmp_path / "m.json"
    _one_line_error(capsys, ["latency", "fit", "--space", "tiny", "--samples", "4", "--repeats", "1", "--threads",
                             "100000", "--out", str(out)], "threads=100000 exceeds")
    assert not out.exists()


def test_export_records_the_data_the_supernet_was_trained_on(tiny_files, tmp_path):
    """A --config of another dataset must not end up in the bundle: eval and finetune read their data from it."""
    import yaml

    state = load_checkpoint(tiny_files / "run" / "checkpoint.pt")
    trained = RunConfig().model_dump(mode="json")
    trained["data"]["name"], trained["seed"] = "synthetic", 7
    ckpt = tmp_path / "run.pt"
    save_checkpoint(ckpt, kind="supernet", model_state=state["model"], space=create_space("tiny"), config=trained,
                    step=0)
    argv = _export_argv(ckpt, tmp_path / "b", "--smallest")
    argv[argv.index("tiny")] = "fashion-mnist"
    assert main(argv) == 0
    recorded = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert recorded["data"]["name"] == "synthetic" and recorded["seed"] == 7


@pytest.mark.parametrize(("field", "value", "needle"), [("c_ms_per_layer", True, "non-numeric"),
                                                        ("a_ms_per_gbop", "1.5", "non-numeric"),
                                                        ("b_ms_per_gflop", 1e308, "between 0 and")])
def test_latency_model_coefficients_of_the_wrong_kind(tmp_path, capsys, field, value, needle):
    from nasbnn.engine.latency import LatencyModel

    f = LatencyModel(1.0, 2.0, 0.01, meta={"threads": 1}).save(tmp_path / "m.json")
    data = json.loads(f.read_text())
    data[field] = value
    f.write_text(json.dumps(data))
    _one_line_error(capsys, ["latency", "predict", "--space", "tiny", "--largest", "--model", str(f)], needle)


def test_bench_batch_beyond_the_limit(capsys):
    _one_line_error(capsys, ["bench", "--space", "tiny", "--largest", "--batch", "100000", "--repeats", "1"],
                    "from 1 to 1024")


def test_eval_outputs_inside_the_dataset_are_refused(detector_run, tmp_path, capsys):
    """A --json-out among the images a command reads would replace one of them (or sit among them)."""
    run = _copy(detector_run[0], tmp_path / "run")
    data = _copy(Path(next(o for o in detector_run[1] if o.startswith("data.root=")).split("=", 1)[1]),
                 tmp_path / "data")
    image = next((data / "val").iterdir())
    before = _snapshot(data)
    _one_line_error(capsys, ["detect", "eval", "--checkpoint", str(run), "--json-out", str(image),
                             f"data.root={data}"], "lies inside the dataset folder")
    assert _snapshot(data) == before
    _one_line_error(capsys, ["eval", "--config", "tiny", "--checkpoint", str(run), "--smallest", f"data.root={data}",
                             "--json-out", str(data / "train" / "x.json")], "lies inside the dataset folder")


def test_bundle_with_nan_weights_is_refused(tiny_files, tmp_path, capsys):
    from safetensors.torch import load, save

    bundle = _copy(tiny_files / "bundle", tmp_path / "bundle")
    f = bundle / "model.safetensors"
    state = load(f.read_bytes())
    key = next(k for k in state if k.endswith("running_var"))
    state[key][0] = float("nan")
    f.write_bytes(save(state, metadata={"format": "nasbnn.bundle", "arch": str(create_space("tiny").smallest())}))
    _one_line_error(capsys, ["eval", "--bundle", str(bundle)], key, "NaN or infinite")


def test_latency_predict_for_zero_threads(tmp_path, capsys):
    from nasbnn.engine.latency import LatencyModel

    f = LatencyModel(1.0, 2.0, 0.01, meta={"threads": 1}).save(tmp_path / "m.json")
    err = _one_line_error(capsys, ["latency", "predict", "--space", "tiny", "--largest", "--model", str(f),
                                   "--threads", "0"], "threads must be >= 1")
    assert "latency fit" not in err


def test_detector_resume_with_another_backbone_is_refused(detector_run, tmp_path, capsys):
    """The resumed detector's backbone is the one in its checkpoint: a backbone option would be ignored."""
    run = _copy(detector_run[0], tmp_path / "run")
    bundle = tmp_path / "b"
    save_bundle(export_subnet(SuperBNN(create_space("tiny"), seed=1), create_space("tiny").largest()), bundle,
                config={"seed": 0, "data": {}})
    before = _snapshot(run)
    _one_line_error(capsys, ["detect", "train", f"out={run}", "--resume", "--no-progress", "--max-steps", "2",
                             "--backbone-bundle", str(bundle)], "--resume continues", "backbone.bundle")
    assert _snapshot(run) == before
    # the plain resume, without repeating the run's settings, continues it
    assert main(["detect", "train", f"out={run}", "--resume", "--no-progress", "--max-steps", "2"]) == 0
