"""Reading runs back: the supernet of a checkpoint, the data splits exactly as that run had them, the
calibration and evaluation batches, and architectures from any user spec.

Search, export, evaluation, fine-tuning, detection and the main job all start from a finished run; they
go through this module so that each rebuilds the same split, the same calibration images and the same
architecture from the same words.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import M, RunConfig, SyntheticDataConfig, load_config
from .errors import CheckpointError, ConfigError, InvalidArch, SearchError
from .models import SuperBNN
from .space import Arch, SearchSpace, value_kind
from .utils.io import read_json
from .utils.seeding import derive_seed

_logger = logging.getLogger(__name__)

__all__ = [
    "CARRIED_DATA_KEYS",
    "RESUME_FREE_KEYS",
    "calibration_batches",
    "config_changes",
    "eval_batches",
    "explicit_override",
    "load_supernet",
    "resolve_archs",
    "run_config",
    "run_data",
    "trained_data_config",
]

#: The data settings a run's split depends on: later stages take them from the checkpoint's config so
#: they rebuild the very split the supernet trained on (only the dataset's location may differ).
CARRIED_DATA_KEYS = ("name", "holdout_per_class", "limit_train", "synthetic")


def explicit_override(overrides: Sequence[str] | None, key: str) -> str | None:
    """The value the command line gave ``key`` (``key=value``), or ``None``."""
    for item in overrides or ():
        k, _, v = item.partition("=")
        if k.strip() == key:
            return v.strip()
    return None


def run_config(schema: type[M], path: str | Path | None, overrides: Sequence[str], *, resume: bool = False) -> M:
    """The config of a run: ``path`` with ``overrides``; on ``resume`` the config saved in the run folder
    (``out``) with the same overrides, so that a continued run keeps the settings it started with.

    Raises:
        CheckpointError: ``resume`` and the run folder has no saved config.
    """
    cfg = load_config(schema, path, overrides)
    if resume:
        out = cfg.out  # type: ignore[attr-defined]
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise CheckpointError(f"cannot resume: {str(saved)!r} does not exist (is out={out} a run folder?)")
        try:
            kept = load_config(schema, saved, [f"out={out}"])
        except ConfigError as exc:
            raise CheckpointError(f"cannot resume: {str(saved)!r} is not the config of a run of this command ({exc}); "
                                  f"is out={out} such a run?") from None
        resumed = load_config(schema, saved, [*(o for o in overrides if not o.startswith("out=")), f"out={out}"])
        # A resumed run continues exactly: only where it runs may change, not what it computes. An override
        # typed now that changes a saved setting is refused; a --config file that differs (a run started with
        # overrides differs from its file) is named, and the run keeps its own settings.
        changes = config_changes(kept.model_dump(mode="json"), resumed.model_dump(mode="json"), ignore=RESUME_FREE_KEYS)
        if changes:
            key, was, now = changes[0]
            raise ConfigError(f"--resume continues the run with the settings in {str(saved)!r}; {key} would change "
                              f"from {was!r} to {now!r}: drop that override, or start over with --force")
        if path is not None:
            differ = config_changes(resumed.model_dump(mode="json"), cfg.model_dump(mode="json"),
                                    ignore=RESUME_FREE_KEYS)
            if differ:
                key, was, now = differ[0]
                more = f" and {len(differ) - 1} more" if len(differ) > 1 else ""
                _logger.warning("warning: --config %s differs from the run's %s (%s: %r there, %r here%s); the resumed "
                                "run keeps its own settings", path, saved, key, was, now, more)
        cfg = resumed
    return cfg


#: Settings a resumed run may take from the command line: where it runs and reads, not what it computes.
RESUME_FREE_KEYS = ("out", "device", "data.root", "data.workers")


def config_changes(a: Any, b: Any, *, ignore: Sequence[str] = (), prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` wherever two config dicts differ, but for keys that start with one
    of ``ignore``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            out += config_changes(a.get(k), b.get(k), ignore=ignore, prefix=f"{prefix}{k}.")
        return out
    key = prefix[:-1]
    return [] if a == b or key.startswith(tuple(ignore)) else [(key, a, b)]


def load_supernet(checkpoint: str | Path, device: torch.device | str = "cpu", *, expect: RunConfig | None = None,
                  expect_space: str | None = None) -> tuple[SuperBNN, dict[str, Any]]:
    """A trained supernet from a checkpoint (file or run folder), in eval mode, and the checkpoint.

    The network is built with the strategy switches the checkpoint records.

    Args:
        expect: a config whose strategy switches must equal the checkpoint's.
        expect_space: a space name the user asked for explicitly; a checkpoint of another space is refused
            rather than silently winning.

    Raises:
        CheckpointError: not a supernet checkpoint, other switches than ``expect``, or another space than
            ``expect_space``.
    """
    from .strategies import check_strategies, model_kwargs, strategies_from_config, strategies_from_record
    from .train.checkpoint import load_checkpoint, restoring, space_from_checkpoint

    state = load_checkpoint(checkpoint, kind="supernet")
    space = space_from_checkpoint(state)
    if expect_space is not None and expect_space != space.name:
        raise CheckpointError(f"{str(checkpoint)!r} holds a supernet of space {space.name!r}, but space.name="
                              f"{expect_space} was asked for; drop the override or use a checkpoint of that space")
    found = strategies_from_record(state.get("config"))
    if expect is not None:
        check_strategies(found, strategies_from_config(expect), f"checkpoint {str(checkpoint)!r}")
    model = SuperBNN(space, **model_kwargs(found))
    with restoring(checkpoint, "the supernet of its space"):
        model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def trained_data_config(cfg: RunConfig, state: dict[str, Any]) -> tuple[RunConfig, int]:
    """``cfg`` with the data settings of the run that made ``state`` (:data:`CARRIED_DATA_KEYS`), and its seed."""
    trained = state.get("config", {}) or {}
    tdata = trained.get("data", {}) or {}
    update = {k: tdata[k] for k in CARRIED_DATA_KEYS if k in tdata}
    if isinstance(update.get("synthetic"), dict):
        update["synthetic"] = SyntheticDataConfig(**update["synthetic"])
    seed = int(trained.get("seed", cfg.seed))
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)}), seed


def run_data(cfg: RunConfig, state: dict[str, Any], space: SearchSpace, *, run_dir: str | Path | None = None,
             ) -> tuple[Any, int]:
    """The dataset split as the run of ``state`` split it, and that run's seed."""
    from .data import build_data

    dcfg, seed = trained_data_config(cfg, state)
    data = build_data(dcfg.data, resolution=space.resolution, seed=seed, run_dir=run_dir)
    if data.num_classes != space.num_classes:
        raise CheckpointError(f"the network classifies {space.num_classes} classes but dataset {data.name!r} has "
                          f"{data.num_classes}")
    return data, seed


def calibration_batches(data: Any, cfg: RunConfig, device: torch.device | str, *, seed: int,
                        channels_last: bool = False) -> list[torch.Tensor]:
    """``cfg.eval.calib_batches`` batches of ``cfg.eval.calib_batch_size`` training images (train augmentation,
    as upstream's test.py), drawn once from ``seed``: the images that recalibrate BatchNorm before deployment."""
    return first_train_batches(data, cfg.eval.calib_batches, cfg.eval.calib_batch_size, device,
                               seed=derive_seed(seed, "deploy-calibration"), channels_last=channels_last)


def first_train_batches(data: Any, count: int, batch_size: int, device: torch.device | str, *, seed: int,
                        channels_last: bool = False) -> list[torch.Tensor]:
    """The images of the first ``count`` training batches of an epoch shuffled and augmented from ``seed``
    (a split smaller than ``batch_size`` gives one batch of all of it)."""
    loader = data.train.loader(batch_size=batch_size, train=True, seed=seed,
                               device=torch.device(device), channels_last=channels_last, drop_last=False)
    return [x for _, (x, _y) in zip(range(count), loader)]


def eval_batches(split: Any, cfg: RunConfig, device: torch.device | str, *, channels_last: bool = False,
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every image of ``split`` in file order, without augmentation, in ``data.eval_batch_size`` batches."""
    return list(split.loader(batch_size=cfg.data.eval_batch_size, train=False, seed=0, device=torch.device(device),
                             channels_last=channels_last))


def resolve_archs(space: SearchSpace, spec: str) -> list[tuple[str, Arch]]:
    """``(name, arch)`` pairs from any architecture spec, all validated against ``space``:

    ``largest``, ``smallest``, an architecture string, a ``pareto.json`` (its whole family) or
    ``pareto.json@BUCKET`` (one member), ``upstream:INTS`` (the official code's integer encoding) or a JSON
    file holding an architecture dict.

    Raises:
        InvalidArch: an empty spec, an architecture outside ``space``, or a JSON file that holds neither an
            architecture dict nor a family (the message names the file and what is wrong).
        NasbnnError: a missing file; SearchError: a bad bucket, one the family lacks, or a malformed family entry.
    """
    from .deploy import read_family

    spec = spec.strip()
    if not spec:
        raise InvalidArch("empty architecture string; expected e.g. 'c24k3g1.1|c48k3g1.1,c48k3g1.1|...', largest, "
                          "smallest, a pareto.json or an architecture JSON file")
    if spec in ("largest", "smallest"):
        return [(spec, space.largest() if spec == "largest" else space.smallest())]
    if spec.startswith("upstream:"):
        from .upstream import arch_from_upstream, parse_upstream_ints

        return [("upstream", arch_from_upstream(parse_upstream_ints(spec[9:]), space, nondecreasing=False))]
    path, _, bucket = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if not path.strip():
        raise SearchError(f"{spec!r} names no file before '@'; expected e.g. pareto.json@57")
    if "@" in spec and not bucket.strip():
        raise SearchError(f"{spec!r} names no bucket after '@'; expected e.g. {path}@57 (or {path} for the whole "
                          "family)")
    if path.endswith(".json") or _exists(path, "dir"):
        if path.endswith(".json") and _exists(path, "file"):
            data = read_json(path)
            if not (isinstance(data, dict) and "family" in data):
                return [("arch", _arch_from_json(space, data, path))]
        return _family_members(space, read_family(path), path, bucket)
    return [("arch", space.parse(spec))]


def _exists(path: str, kind: str) -> bool:
    """Whether ``path`` is a folder (``kind="dir"``) or a file; ``False`` for a name the system cannot look up
    (too long, say): such a spec is then read as an architecture string."""
    try:
        return Path(path).is_dir() if kind == "dir" else Path(path).is_file()
    except OSError:
        return False


def _arch_from_json(space: SearchSpace, data: Any, path: str) -> Arch:
    """The architecture of a JSON file's content: an architecture dict, or one under an ``arch`` key."""
    if not isinstance(data, dict):
        raise InvalidArch(f"{path!r} holds {value_kind(data)}, but is neither an architecture dict "
                          "{'stages': [[{'width': W, ...}, ...], ...]} nor a pareto.json with a 'family' list")
    try:
        return space.validate(Arch.from_dict(data.get("arch", data)), nondecreasing=False)
    except InvalidArch as exc:
        raise InvalidArch(f"{path!r}: {exc}", rule=exc.rule) from None


def _family_members(space: SearchSpace, family: list[dict[str, Any]], path: str, bucket: str,
                    ) -> list[tuple[str, Arch]]:
    """The members of a family read by :func:`nasbnn.deploy.read_family`, or the one of ``bucket``."""
    members = [(i, float(f["bucket"]), str(f["arch"])) for i, f in enumerate(family)]
    if not members:
        raise SearchError(f"{path!r} holds an empty family: no architecture to take")
    seen: dict[float, int] = {}
    for i, b, _ in members:
        if b in seen:  # both would be exported to the same mops_<bucket> folder
            raise SearchError(f"{path!r}: family entries {seen[b]} and {i} are both in bucket {b:g}")
        seen[b] = i
    if bucket:
        try:
            want = float(bucket)
        except ValueError:
            raise SearchError(f"bad bucket {bucket!r} in {path}@{bucket}; expected e.g. pareto.json@57") from None
        chosen = [m for m in members if abs(m[1] - want) < 1e-9]
        if not chosen:
            raise SearchError(f"no family member in bucket {want:g}; buckets: "
                              + ", ".join(f"{b:g}" for _, b, _ in members))
        members = chosen
    out = []
    for i, b, text in members:
        try:
            out.append((f"mops_{b:g}", space.validate(Arch.parse(text), nondecreasing=False)))
        except InvalidArch as exc:
            raise InvalidArch(f"{path!r}: family entry {i}: {exc}", rule=exc.rule) from None
    return out


