"""User mistakes in configs, overrides, architecture specs and space files: a one-line error, exit status 2."""

from __future__ import annotations

import json
import re

import pytest
from helpers import one_line_error as _one_line_error

from nasbnn.config import RunConfig, load_config
from nasbnn.detect.config import DetectRunConfig
from nasbnn.errors import ConfigError, InvalidArch, SearchError, SpaceError
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space, load_space_file
from nasbnn.runs import resolve_archs
from nasbnn.space import MAX_DEPTH, MAX_KERNEL, MAX_RESOLUTION, MAX_WIDTH, Arch, BlockArch, StageArch
from nasbnn.train.checkpoint import save_checkpoint
from nasbnn.upstream import arch_to_upstream


@pytest.fixture
def tiny():
    return create_space("tiny")


def _write_json(path, data) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) or not data.startswith("RAW:") else data[4:])
    return str(path)


# ------------------------------------------------------------------------------------------ overrides
@pytest.mark.parametrize("override", ["train.lr=[1,", "train.lr={a: 1", "data.name=]x", "train.lr=!!python/tuple [1]"])
def test_an_override_that_is_not_yaml_names_the_override(capsys, override):
    _one_line_error(capsys, ["train-supernet", "--config", "tiny", override, "--no-progress"], repr(override))


def test_an_override_that_is_not_yaml_raises_config_error():
    with pytest.raises(ConfigError, match=r"override 'train\.lr=\[1,'.*not a valid YAML value"):
        load_config(RunConfig, "tiny", ["train.epochs=1", "train.lr=[1,"])


# ------------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize(("override", "needle"), [
    ("train.epochs=inf", "train.epochs"),
    ("train.epochs=1e308", "train.epochs"),
    ("train.eval_every_epochs=inf", "train.eval_every_epochs"),
    ("train.warmup_epochs=inf", "train.warmup_epochs"),
    ("train.lr=inf", "train.lr"),
    ("train.betas=[0.9,1.0]", "train.betas.1"),
    ("train.betas=[-0.1,0.999]", "train.betas.0"),
    ("train.betas=[nan,0.999]", "train.betas.0"),
    ("search.budget.max=inf", "search.budget.max"),
    ("finetune.epochs=inf", "finetune.epochs"),
    ("finetune.warmup_epochs=1e309", "finetune.warmup_epochs"),
    ("pipeline.finetune_epochs=inf", "pipeline.finetune_epochs"),
    ("train.grad_clip=inf", "train.grad_clip"),
    ("space.resolution=100000", "space.resolution"),
])
def test_config_values_that_would_break_training_are_refused_up_front(capsys, tmp_path, override, needle):
    _one_line_error(capsys, ["train-supernet", "--config", "tiny", f"out={tmp_path / 'run'}", override,
                             "--no-progress"], needle)
    assert not (tmp_path / "run").exists()


def test_a_non_finite_search_budget_is_refused_before_the_checkpoint_is_read(capsys, tmp_path):
    _one_line_error(capsys, ["search", "--config", "tiny", f"out={tmp_path}", "search.budget.max=inf",
                             "--no-progress"], "search.budget.max", "finite")


@pytest.mark.parametrize(("override", "needle"), [
    ("train.betas=[1.0,0.999]", "train.betas.0"),
    ("train.betas=[0.9,-1]", "train.betas.1"),
    ("train.epochs=inf", "train.epochs"),
    ("train.eval_every_epochs=inf", "train.eval_every_epochs"),
    ("detect.range_scale=inf", "detect.range_scale"),
    ("data.mean=[nan]", "data.mean.0"),
    ("data.std=[inf]", "data.std.0"),
])
def test_detector_config_values_are_checked_like_the_classifier_s(capsys, override, needle):
    _one_line_error(capsys, ["detect", "cost", override], needle)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(DetectRunConfig, "detect-synthetic", [override])


# ------------------------------------------------------------------------------------------ config paths
def test_a_folder_given_as_config(capsys, tmp_path):
    _one_line_error(capsys, ["train-supernet", "--config", str(tmp_path), "--no-progress"],
                    "is a folder, not a config file")


def test_a_blank_architecture_string(capsys):
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch", " "], "empty architecture string")


# ------------------------------------------------------------------------------------------ arch strings
@pytest.mark.parametrize(("text", "needle"), [
    ("c4k3g0.1|c8k3|c16k3", "groups"),
    ("c4k3g1.0|c8k3|c16k3", "pw_groups"),
    ("c0k3|c8k3|c16k3", "width"),
    ("c4k0|c8k3|c16k3", "kernel_size"),
    ("c4k3|c8k3|c16k3g0", "groups"),
])
def test_zero_fields_in_an_arch_string(capsys, text, needle):
    err = _one_line_error(capsys, ["cost", "--space", "tiny", "--arch", text], needle)
    assert "positive integer" in err
    with pytest.raises(InvalidArch, match="positive integer"):
        Arch.parse(text)


def test_an_arch_string_with_a_number_too_long_to_read(capsys):
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch", f"c{'9' * 5000}k3|c8k3|c16k3"], "too large")


@pytest.mark.parametrize("column", [4, 5])
def test_zero_groups_through_upstream_ints(capsys, tiny, column):
    ints = list(arch_to_upstream(tiny.smallest(), tiny))
    ints[6 + column] = 0  # the first block of stage 1
    _one_line_error(capsys, ["cost", "--space", "tiny", "--upstream-arch", ",".join(map(str, ints))],
                    "positive integer")


@pytest.mark.parametrize("field", ["width", "kernel_size", "groups", "pw_groups"])
def test_check_reports_non_positive_fields_instead_of_dividing_by_them(tiny, field):
    small = tiny.smallest()
    block = small.stages[1].blocks[0]._replace(**{field: 0})
    arch = Arch((small.stages[0], StageArch((block,)), small.stages[2]))
    with pytest.raises(InvalidArch, match=f"{field} must be a positive integer, got 0") as err:
        tiny.validate(arch)
    assert err.value.rule == "format"


# ------------------------------------------------------------------------------------------ arch JSON
def _arch_dict(**first_block):
    return {"stages": [[{"width": 4, **first_block}], [{"width": 8}], [{"width": 16}]]}


@pytest.mark.parametrize(("content", "needles"), [
    ([1, 2], ("holds a list", "architecture dict")),
    ("abc", ("holds a string",)),
    (5, ("holds a number",)),
    (None, ("holds null",)),
    ({"stages": None}, ("'stages' must be a list",)),
    ({"stages": 3}, ("'stages' must be a list",)),
    ({"stages": []}, ("at least one stage",)),
    ({"stages": [[None]]}, ("stage 0 block 0 must be a mapping",)),
    ({"stages": [None]}, ("stage 0 must be a list of blocks",)),
    ({"stages": [[{"kernel_size": 3}]]}, ("stage 0 block 0", "'width'")),
    ({"arch": [1]}, ("architecture dict",)),
    ({"arch": None}, ("architecture dict",)),
    (_arch_dict(groups=0), ("groups must be a positive integer, got 0",)),
    (_arch_dict(kernel_size=0), ("kernel_size must be a positive integer, got 0",)),
    (_arch_dict(width=-4), ("width must be a positive integer, got -4",)),
    (_arch_dict(width=4.5), ("width must be a positive integer, got 4.5",)),
    (_arch_dict(width=4.0), ("width must be a positive integer, got 4.0",)),
    (_arch_dict(width=True), ("width must be a positive integer, got True",)),
    (_arch_dict(width="4"), ("width must be a positive integer, got '4'",)),
    ("RAW:" + json.dumps(_arch_dict()).replace('"width": 4', '"width": 1e400'), ("width must be a positive integer",)),
])
def test_arch_json_of_the_wrong_shape(capsys, tmp_path, content, needles):
    path = _write_json(tmp_path / "arch.json", content)
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch-json", path], path, *needles)


@pytest.mark.parametrize(("family", "needle"), [
    ([1, 2], "family entry 0 is a number, not an object"),
    ([None], "family entry 0 is a null, not an object"),
    ([{"bucket": "x", "arch": "c4k3|c8k3|c16k3"}], "family entry 0: 'bucket' is \"x\", not a finite number"),
    ([{"bucket": None, "arch": "c4k3|c8k3|c16k3"}], "family entry 0: 'bucket' is null, not a finite number"),
    ([{"bucket": 1, "arch": 3}], "family entry 0: 'arch' is a number, not an architecture string"),
    ([{"arch": "c4k3|c8k3|c16k3"}], "family entry 0: it needs 'bucket' and 'arch'"),
    ([{"bucket": 1, "arch": "c4k3g0|c8k3|c16k3"}], "block 'c4k3g0' (stage 0, block 0): groups must be"),
])
def test_a_family_of_the_wrong_shape(capsys, tiny, tmp_path, family, needle):
    path = _write_json(tmp_path / "pareto.json", {"family": family})
    _one_line_error(capsys, ["cost", "--space", "tiny", "--arch-json", path], path, needle)
    with pytest.raises((SearchError, InvalidArch), match=re.escape(needle)):
        resolve_archs(tiny, path)


def test_a_family_of_the_wrong_shape_through_export(capsys, tiny, tmp_path):
    ckpt = tmp_path / "super.pt"
    save_checkpoint(ckpt, kind="supernet", model_state=SuperBNN(tiny, seed=0).state_dict(), space=tiny, config={},
                    step=0)
    path = _write_json(tmp_path / "pareto.json", {"family": [None]})
    _one_line_error(capsys, ["export", "--config", "tiny", "--checkpoint", str(ckpt), "--family", path,
                             "--no-recalibrate", "--to", str(tmp_path / "out")], path, "family entry 0")
    assert not (tmp_path / "out").exists()


def test_a_json_file_that_is_neither_an_arch_nor_a_family(tiny, tmp_path):
    path = _write_json(tmp_path / "x.json", ["c4k3|c8k3|c16k3"])
    with pytest.raises(InvalidArch, match=r"neither an architecture dict .* nor a pareto\.json"):
        resolve_archs(tiny, path)


# ------------------------------------------------------------------------------------------ space files
def _space(**stage1):
    return {"stages": [{"widths": [4, 8], "stride": 2}, {"widths": [8, 16], "depths": [1, 2], **stage1}],
            "in_channels": 3, "num_classes": 5, "resolution": 16}


@pytest.mark.parametrize(("content", "needle"), [
    ({"stages": 5}, "'stages' must be a list of stage mappings"),
    ({"stages": None}, "'stages' must be a list of stage mappings"),
    ({"stages": "ab"}, "'stages' must be a list of stage mappings"),
    ({**_space(), "resolution": "x"}, "'resolution' must be an integer"),
    ({**_space(), "resolution": True}, "'resolution' must be an integer"),
    ({**_space(), "resolution": 16.5}, "'resolution' must be an integer"),
    ({**_space(), "num_classes": None}, "'num_classes' must be an integer"),
    ({**_space(), "in_channels": [3]}, "'in_channels' must be an integer"),
    ({**_space(), "name": [1]}, "'name' must be a string"),
    ("RAW:" + json.dumps(_space()).replace('"num_classes": 5', '"num_classes": 1e400'), "'num_classes' must be"),
    (_space(widths="816"), "widths must be a list of integers"),
    (_space(widths=[8, True]), "widths must be a list of integers"),
    (_space(widths=[8, 16.0]), "widths must be a list of integers"),
    (_space(widths=[8, None]), "widths must be a list of integers"),
    ("RAW:" + json.dumps(_space()).replace("[8, 16]", "[8, 1e400]"), "widths must be a list of integers"),
    (_space(depths=[1.5]), "depths must be a list of integers"),
    (_space(depths=3), "depths must be a list of integers"),
    (_space(stride=True), "stride must be 1 or 2"),
    (_space(stride=2.0), "stride must be 1 or 2"),
    (_space(stride="2"), "stride must be 1 or 2"),
    (_space(kernel_sizes=[MAX_KERNEL + 2]), f"kernel_sizes must be at most {MAX_KERNEL}"),
    (_space(widths=[8, MAX_WIDTH + 1]), f"widths must be at most {MAX_WIDTH}"),
    (_space(groups=[1, MAX_WIDTH + 1]), f"groups must be at most {MAX_WIDTH}"),
    (_space(depths=[1, MAX_DEPTH + 1]), f"depths must be at most {MAX_DEPTH}"),
    ({**_space(), "resolution": MAX_RESOLUTION + 1}, f"resolution must be 1 to {MAX_RESOLUTION}"),
    ({**_space(), "stages": [{"widths": [4]}] + [{"widths": [8]}] * 40}, "at most 16 stages"),
    ({**_space(), "stages": [None, {"widths": [8]}]}, "stage 0 must be a mapping"),
])
def test_space_files_of_the_wrong_types_or_sizes(capsys, tmp_path, content, needle):
    path = _write_json(tmp_path / "space.json", content)
    _one_line_error(capsys, ["cost", "--space", path, "--largest"], path, needle)


def test_a_space_too_big_to_allocate(tmp_path):
    stages = [{"widths": [64], "stride": 2}] + [{"widths": [MAX_WIDTH], "depths": [MAX_DEPTH],
                                                  "kernel_sizes": [MAX_KERNEL]}] * 2
    path = _write_json(tmp_path / "huge.json", {"stages": stages})
    with pytest.raises(SpaceError, match=r"about [0-9,]+ weights; at most 500,000,000"):
        load_space_file(path)


def test_a_space_with_too_many_block_options(tmp_path):
    widths = list(range(8, 8 + 8 * 300, 8))
    path = _write_json(tmp_path / "wide.json", {"stages": [{"widths": widths}] * 4})
    with pytest.raises(SpaceError, match="block options"):
        load_space_file(path)


def test_block_arch_from_a_program_is_checked(tiny):
    small = tiny.smallest()
    arch = Arch((small.stages[0], StageArch((BlockArch(8, 3, 1.0, 1),)), small.stages[2]))
    with pytest.raises(InvalidArch, match=r"groups must be a positive integer, got 1\.0"):
        tiny.validate(arch)


@pytest.mark.parametrize("command", ["train-supernet", "train-arch"])
def test_a_bad_space_leaves_no_run_folder(capsys, tmp_path, command):
    out = tmp_path / "run"
    argv = [command, "--config", "tiny", f"out={out}", "space.name=nosuch", "--no-progress"]
    argv += ["--arch", "c4k3|c8k3|c16k3"] if command == "train-arch" else []
    _one_line_error(capsys, argv, "unknown search space 'nosuch'")
    assert not out.exists()
