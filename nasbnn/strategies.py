"""The three NAS-BNN supernet training strategies as switches, for ablations.

``train.bi_teacher``, ``model.bi_transformation`` and ``model.weight_norm`` all default to the paper's
method. They are part of the resolved config, so every checkpoint and bundle records them; a
checkpoint and a config that disagree on one are refused (the weights would be read into a network
that computes something else).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import CheckpointError

__all__ = ["STRATEGIES", "check_strategies", "model_kwargs", "strategies_from_config", "strategies_from_record"]

#: Switch name -> its dotted config key.
STRATEGIES = {"bi_teacher": "train.bi_teacher", "bi_transformation": "model.bi_transformation",
              "weight_norm": "model.weight_norm"}


def strategies_from_config(cfg: Any) -> dict[str, bool]:
    """The switches of a :class:`~nasbnn.config.RunConfig`."""
    return {"bi_teacher": bool(cfg.train.bi_teacher), "bi_transformation": bool(cfg.model.bi_transformation),
            "weight_norm": bool(cfg.model.weight_norm)}


def strategies_from_record(config: Mapping[str, Any] | None) -> dict[str, bool]:
    """The switches recorded in a checkpoint's or bundle's config dict; absent keys (files written
    before the switches existed, imported upstream weights) mean the paper's method."""
    config = config if isinstance(config, Mapping) else {}
    out = {}
    for name, key in STRATEGIES.items():
        section, field = key.split(".")
        part = config.get(section)
        value = part.get(field, True) if isinstance(part, Mapping) else True
        out[name] = bool(value)
    return out


def model_kwargs(strategies: Mapping[str, bool]) -> dict[str, bool]:
    """The switches :class:`~nasbnn.models.SuperBNN` takes."""
    return {"bi_transformation": bool(strategies.get("bi_transformation", True)),
            "weight_norm": bool(strategies.get("weight_norm", True))}


def check_strategies(found: Mapping[str, bool], expected: Mapping[str, bool], source: str) -> None:
    """Raises when ``source`` (a checkpoint) was trained with other switches than ``expected`` (the config).

    Raises:
        CheckpointError: naming every switch that differs, e.g. ``model.weight_norm: checkpoint false,
            config true``.
    """
    diffs = [f"{STRATEGIES[k]}: checkpoint {str(found[k]).lower()}, config {str(expected[k]).lower()}"
             for k in STRATEGIES if k in found and k in expected and bool(found[k]) != bool(expected[k])]
    if diffs:
        raise CheckpointError(f"{source} was trained with other strategy switches than configured ("
                              + "; ".join(diffs) + "); set them as in the checkpoint")
