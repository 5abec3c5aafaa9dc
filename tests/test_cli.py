"""Every subcommand's help, the core commands, and every shipped config."""

from __future__ import annotations

import json

import pytest

from nasbnn.cli import build_parser, main
from nasbnn.config import RunConfig, builtin_configs, load_config, resolve_config_path


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = set(sub.choices)
    assert {"run", "train-supernet", "search", "export", "eval", "finetune", "cost", "spaces", "config",
            "parity"} <= names
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: nasbnn" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "needle"), [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["spaces", "--nosuch"], "unrecognized arguments: --nosuch"),
    (["cost", "--space", "tiny", "--resolution", "x", "--largest"], "invalid int value: 'x'"),
    (["cost", "--space", "tiny"], "one of the arguments --arch"),
    (["bench", "--threads"], "expected one argument"),
])
def test_usage_errors_take_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and needle in err and err.endswith("--help)"), err


@pytest.mark.parametrize("name", builtin_configs())
def test_every_shipped_config_validates(name):
    if name.startswith("detect"):
        pytest.skip("detection configs have their own schema (tests/test_detect.py)")
    cfg = load_config(RunConfig, resolve_config_path(name))
    assert cfg.search.budget.min <= cfg.search.budget.max


def test_cost_json_matches_library(capsys):
    assert main(["cost", "--space", "imagenet", "--smallest", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mops"] == pytest.approx(20.77276)
    assert sum(layer["mbops"] for layer in out["layers"]) == pytest.approx(out["mbops"])
    assert main(["cost", "--space", "imagenet", "--largest", "--convention", "standard"]) == 0
    text = capsys.readouterr().out
    assert "total" in text and "stage5.block2.conv5x5" in text


def test_cost_accepts_upstream_tuples(capsys):
    from nasbnn import arch_to_upstream, create_space

    space = create_space("imagenet")
    ints = ",".join(map(str, arch_to_upstream(space.largest(), space)))
    assert main(["cost", "--upstream-arch", ints, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mops"] == pytest.approx(331.814248)


def test_overrides_may_follow_options(capsys):
    assert main(["config", "--config", "tiny", "train.epochs=3", "seed=5"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3.0" in out and "seed: 5" in out
    with pytest.raises(SystemExit) as e:
        main(["config", "--config", "tiny", "--bogus"])
    assert e.value.code == 2


def test_spaces_lists_presets(capsys):
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    for name in ("imagenet", "cifar", "fashion-mnist", "tiny"):
        assert name in out
