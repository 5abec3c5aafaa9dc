"""User mistakes in the commands that write run folders: a one-line error, exit status 2, nothing damaged."""

from __future__ import annotations

import pytest
from helpers import one_line_error as _one_line_error

from nasbnn.bundle import save_bundle
from nasbnn.export import export_subnet
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space
from nasbnn.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A random tiny supernet checkpoint and a bundle of its smallest member."""
    root = tmp_path_factory.mktemp("files")
    space = create_space("tiny")
    supernet = SuperBNN(space, seed=3)
    save_checkpoint(root / "super.pt", kind="supernet", model_state=supernet.state_dict(), space=space,
                    config={}, step=0)
    save_bundle(export_subnet(supernet, space.smallest()), root / "bundle")
    return root




def test_finetune_batch_larger_than_the_split_is_refused_before_training(tiny_files, tmp_path, capsys):
    dest = tmp_path / "ft"
    _one_line_error(capsys, ["finetune", "--config", "tiny", "--bundle", str(tiny_files / "bundle"), "--to", str(dest),
                             "finetune.batch_size=100000", "--no-progress"],
                    "fewer than one batch of 100000", "finetune.batch_size")
    assert not (dest / "checkpoint.pt").exists() and not (dest / "config.yaml").exists()


def test_train_batch_larger_than_the_split(tmp_path, capsys):
    out = tmp_path / "run"
    _one_line_error(capsys, ["train-supernet", "--config", "tiny", f"out={out}", "data.batch_size=4096",
                             "--no-progress"], "fewer than one batch of 4096", "data.batch_size")


@pytest.mark.parametrize("command", ["train-supernet", "run"])
def test_a_file_where_the_run_folder_belongs(tmp_path, capsys, command):
    blocker = tmp_path / "taken"
    blocker.write_text("precious")
    argv = [command, "--config", "tiny", "--no-progress"]
    argv += ["--out", str(blocker / "run")] if command == "run" else [f"out={blocker / 'run'}"]
    _one_line_error(capsys, argv, "is a file, not a folder")
    assert blocker.read_text() == "precious"


def test_export_to_a_file(tiny_files, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("precious")
    _one_line_error(capsys, ["export", "--config", "tiny", "--checkpoint", str(tiny_files / "super.pt"),
                             "--smallest", "--no-recalibrate", "--to", str(blocker)], "not a folder")
    assert blocker.read_text() == "precious"


def test_finetune_into_a_read_only_file_system(tiny_files, capsys):
    _one_line_error(capsys, ["finetune", "--config", "tiny", "--bundle", str(tiny_files / "bundle"),
                             "--to", "/sys/nasbnn-ft", "--no-progress"], "cannot be created")


@pytest.mark.parametrize("command", ["export", "search", "eval"])
def test_an_explicit_space_that_the_checkpoint_does_not_have(tiny_files, tmp_path, capsys, command):
    argv = [command, "--config", "tiny", "--checkpoint", str(tiny_files / "super.pt"), "space.name=fashion-mnist",
            f"out={tmp_path / 'out'}"]
    argv += {"export": ["--smallest", "--no-recalibrate"], "search": ["--no-progress"], "eval": ["--smallest"]}[command]
    _one_line_error(capsys, argv, "space 'tiny'", "space.name=fashion-mnist")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["detect", "cost", "--num-classes", "0"], "at least 1 class, got --num-classes 0"),
    (["detect", "cost", "--num-classes", "-1"], "at least 1 class"),
    (["detect", "cost", "--canvas", "-5"], "at least 16 pixels wide, got -5"),
])
def test_detector_cost_of_an_impossible_geometry(capsys, argv, needle):
    _one_line_error(capsys, argv, needle)


@pytest.mark.parametrize(("extra", "needle"), [
    (["--images", "-1"], "train split needs at least 1 image"),
    (["--images", "4", "--val-images", "0"], "val split needs at least 1 image"),
    (["--max-objects", "-2"], "max_objects=-2"),
    (["--max-objects", "0"], "max_objects=0"),
    (["--max-objects", "100000"], "1 to 100 objects"),
    (["--images", "100000000"], "at most 100000, got 100000000"),
    (["--images", "4", "--val-images", "100000000"], "val split needs at least 1 image and at most"),
    (["--size", "100000"], "at most 1024 pixels wide"),
])
def test_synthetic_detection_data_that_cannot_exist_writes_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "syn"
    _one_line_error(capsys, ["detect", "synth", "--out", str(out), *extra], needle)
    assert not out.exists()
