"""Reading runs back: architecture specs, carried data settings."""

from __future__ import annotations

import json

import pytest

from nasbnn.config import RunConfig, load_config
from nasbnn.errors import InvalidArch, SearchError
from nasbnn.presets import create_space
from nasbnn.runs import CARRIED_DATA_KEYS, explicit_override, resolve_archs, trained_data_config
from nasbnn.upstream import arch_to_upstream


@pytest.fixture
def space():
    return create_space("tiny")


def test_every_spec_form_names_the_same_architectures(space, tmp_path):
    small, large = space.smallest(), space.largest()
    family = [{"bucket": 0.003, "arch": str(small)}, {"bucket": 0.012, "arch": str(large)}]
    (tmp_path / "search").mkdir()
    pareto = tmp_path / "search" / "pareto.json"
    pareto.write_text(json.dumps({"family": family}))
    (tmp_path / "arch.json").write_text(json.dumps({"arch": large.to_dict()}))
    assert resolve_archs(space, "largest") == [("largest", large)]
    assert resolve_archs(space, "smallest") == [("smallest", small)]
    assert resolve_archs(space, str(small)) == [("arch", small)]
    assert resolve_archs(space, str(pareto)) == [("mops_0.003", small), ("mops_0.012", large)]
    assert resolve_archs(space, str(tmp_path)) == resolve_archs(space, str(pareto))  # a run folder
    assert resolve_archs(space, f"{pareto}@0.012") == [("mops_0.012", large)]
    assert resolve_archs(space, str(tmp_path / "arch.json")) == [("arch", large)]
    ints = ",".join(str(i) for i in arch_to_upstream(large, space))
    assert resolve_archs(space, f"upstream:{ints}") == [("upstream", large)]


def test_bad_specs(space, tmp_path):
    pareto = tmp_path / "pareto.json"
    pareto.write_text(json.dumps({"family": [{"bucket": 0.003, "arch": str(space.smallest())}]}))
    with pytest.raises(SearchError, match=r"no family member in bucket 0\.5; buckets: 0\.003"):
        resolve_archs(space, f"{pareto}@0.5")
    with pytest.raises(SearchError, match="bad bucket 'x'"):
        resolve_archs(space, f"{pareto}@x")
    with pytest.raises(SearchError, match=r"no search result at '.*missing\.json'"):
        resolve_archs(space, str(tmp_path / "missing.json"))
    with pytest.raises(InvalidArch):
        resolve_archs(space, "c999k3g1.1|c8k3g1.1|c16k3g1.1")


def test_the_split_settings_come_from_the_run():
    cfg = load_config(RunConfig, "tiny", ["data.holdout_per_class=3", "data.limit_train=50", "seed=1"])
    trained = {"config": {"seed": 7, "data": {"name": "synthetic", "holdout_per_class": 8, "limit_train": 99,
                                              "synthetic": {"num_train": 200}, "batch_size": 4}}}
    carried, seed = trained_data_config(cfg, trained)
    assert seed == 7
    assert (carried.data.holdout_per_class, carried.data.limit_train, carried.data.synthetic.num_train) == (8, 99, 200)
    assert carried.data.batch_size == cfg.data.batch_size  # not a split setting: the command's own
    assert set(CARRIED_DATA_KEYS) == {"name", "holdout_per_class", "limit_train", "synthetic"}


def test_explicit_override():
    assert explicit_override(["a=1", "space.name=cifar", "b=2"], "space.name") == "cifar"
    assert explicit_override(["space.resolution=32"], "space.name") is None
    assert explicit_override(None, "space.name") is None
