"""Deployment of searched architectures: export with BN recalibration, evaluation, family export.

The paper's "direct" path: export the static network of a family member, recalibrate its BN
statistics on training images, evaluate on the test set. (The "fine-tuned" path continues with
``nasbnn finetune`` on the exported bundle.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import save_bundle
from .config import RunConfig, config_to_dict
from .errors import CheckpointError, ConfigError, OutputError, SearchError
from .export import export_subnet
from .models import StaticBNN, SuperBNN
from .registry import Registry
from .search.result import family_entries
from .space import Arch
from .train.bn import evaluate_top1, recalibrate_bn
from .utils.io import read_json, staging_folder
from .utils.torch_files import first_non_finite

__all__ = ["EXPORT_FORMATS", "check_export_folder", "evaluate_network", "evaluate_spec", "export_arch",
           "export_from_checkpoint", "read_family"]

#: What an export writes into its folder (the bundle, and the files of ``--format onnx|packed``).
EXPORT_FILES = ("bundle.json", "model.safetensors", "config.yaml", "model.onnx", "model.nbp")


def evaluate_network(net: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                     calib: Sequence[torch.Tensor] | None = None, autocast=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Top-1/top-5 (%) over ``batches``, after BN recalibration on ``calib`` when given."""
    with torch.inference_mode():
        if calib:
            recalibrate_bn(net, calib, autocast=autocast)
        return evaluate_top1(net, batches, autocast=autocast)


def export_arch(model: SuperBNN, arch: Arch, folder: str | Path, *, calib: Sequence[torch.Tensor] | None,
                config: dict[str, Any], source: dict[str, Any],
                test: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                autocast: Any = None, metrics: dict[str, Any] | None = None) -> tuple[StaticBNN, dict[str, Any]]:
    """Exports ``arch``, recalibrates its BN (when ``calib``), evaluates (when ``test``), writes a bundle
    whose metrics are these and ``metrics``."""
    net = export_subnet(model, arch).eval()
    metrics = dict(metrics or {})
    with torch.inference_mode():
        if calib:
            recalibrate_bn(net, calib, autocast=autocast)
            metrics["bn_recalibrated_images"] = sum(int(x.shape[0]) for x in calib)
        if test is not None:
            metrics.update({f"test_{k}": v for k, v in evaluate_top1(net, test, autocast=autocast).items()})
    net = net.cpu()
    save_bundle(net, folder, config=config, source=source, metrics=metrics)
    return net, metrics


def read_family(pareto_json: str | Path) -> list[dict[str, Any]]:
    """The ``family`` entries of a search's ``pareto.json``, each with a numeric ``bucket`` and an ``arch`` string."""
    p = Path(pareto_json)
    if p.is_dir():
        p = p / "pareto.json" if (p / "pareto.json").is_file() else p / "search" / "pareto.json"
    doc = read_json(p, error=SearchError, missing=f"no search result at {str(p)!r} (run `nasbnn search` first)")
    return family_entries(doc, repr(str(p)))


#: Files written beside a bundle's weights: ``fn(net, folder, dataset) -> description``.
EXPORT_FORMATS: Registry[str] = Registry("export format", error=ConfigError)


@EXPORT_FORMATS.register("bundle")
def _bundle_only(net: StaticBNN, folder: Path, dataset: str) -> str:
    return ""


@EXPORT_FORMATS.register("onnx")
def _write_onnx(net: StaticBNN, folder: Path, dataset: str) -> str:
    from .engine.onnx_export import export_onnx

    path = folder / "model.onnx"
    export_onnx(net, path)
    return str(path)


@EXPORT_FORMATS.register("packed")
def _write_packed(net: StaticBNN, folder: Path, dataset: str) -> str:
    from .data.build import preprocess_info
    from .engine.packed import pack_model

    path = folder / "model.nbp"
    packed = pack_model(net, preprocess=preprocess_info(dataset))
    packed.save(path)
    return f"{path} ({packed.nbytes / 1e6:.2f} MB packed vs {packed.float_bytes / 1e6:.2f} MB float)"


def check_export_folder(folder: str | Path) -> None:
    """Refuses an export destination that is not a missing or empty folder, a bundle (replaced), or the files
    of an unfinished export (a bundle's ``model.safetensors`` and other export files, without ``bundle.json``).

    Raises:
        OutputError: the folder holds a training run (``checkpoint.pt``), export files that are not a bundle's,
            or anything else.
    """
    p = Path(folder)
    if not p.is_dir():
        if p.exists() or p.is_symlink():
            raise OutputError(f"export folder {str(p)!r} is a file, not a folder; export to another folder (--to)")
        return
    if (p / "checkpoint.pt").exists():
        raise OutputError(f"export folder {str(p)!r} holds a training run (checkpoint.pt); export to another "
                          "folder (--to)")
    for name in EXPORT_FILES:
        f = p / name
        if (f.exists() or f.is_symlink()) and (f.is_symlink() or not f.is_file()):
            raise OutputError(f"export folder {str(p)!r}: {name} there is not a regular file; remove it or export to "
                              "another folder (--to)")
    if (p / "bundle.json").is_file():
        return
    names = sorted(e.name for e in p.iterdir())
    if not names:
        return
    if "model.safetensors" in names and set(names) <= set(EXPORT_FILES) and _bundle_weights(p / "model.safetensors"):
        return  # an export stopped before its bundle.json: finish it
    taken = [name for name in EXPORT_FILES if name in names]
    if taken:
        raise OutputError(f"export folder {str(p)!r} holds {taken[0]} but is not a bundle (no bundle.json); "
                          "export to another folder (--to)")
    raise OutputError(f"export folder {str(p)!r} is not empty and not a bundle (it holds {names[0]!r}); export to a "
                      "missing or empty folder, or over a bundle (--to)")


def _check_finite(net: StaticBNN, arch: Arch) -> None:
    """Refuses a network with NaN or infinite weights or statistics (a damaged or diverged supernet)."""
    bad = first_non_finite(net.state_dict())
    if bad is not None:
        raise CheckpointError(f"architecture {arch}: {bad} holds NaN or infinite values; the supernet checkpoint is "
                              "damaged or its training diverged")


def _commit_export(stage: Path, dest: Path) -> None:
    """Moves the complete export in ``stage`` to ``dest``, replacing a bundle there file by file.

    ``bundle.json`` goes first and comes back last: until then the folder reads as an unfinished export (which
    a re-run finishes), never as a bundle whose files disagree. Export files that this export did not write
    (the ``model.nbp`` of an earlier ``--format packed``) are removed.
    """
    if not dest.exists():
        os.rename(stage, dest)
        return
    (dest / "bundle.json").unlink(missing_ok=True)
    for name in (n for n in EXPORT_FILES if n != "bundle.json"):
        if (stage / name).exists():
            os.replace(stage / name, dest / name)
        else:
            (dest / name).unlink(missing_ok=True)
    os.replace(stage / "bundle.json", dest / "bundle.json")
    stage.rmdir()


def _bundle_weights(path: Path) -> bool:
    """Whether ``path`` is a safetensors file written by :func:`nasbnn.bundle.save_bundle` (its header says so)."""
    from safetensors import safe_open

    from .bundle import BUNDLE_FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == BUNDLE_FORMAT
    except Exception:  # not a safetensors file at all: somebody else's
        return False


def export_from_checkpoint(cfg: RunConfig, *, checkpoint: str | Path, spec: str, dest: str | Path | None = None,
                           fmt: str = "bundle", recalibrate: bool = True, evaluate: bool = False,
                           expect_space: str | None = None) -> list[dict[str, Any]]:
    """Exports the architectures of ``spec`` (see :func:`nasbnn.runs.resolve_archs`) from a supernet.

    Every architecture and destination (:func:`check_export_folder`) is validated before anything is
    written. One architecture with ``dest`` goes to ``dest``; otherwise each goes to
    ``<dest or <out>/export>/<name>``; a bundle already there is replaced. Returns one record per export.
    """
    from .runs import calibration_batches, eval_batches, load_supernet, resolve_archs, run_data, trained_data_config
    from .utils.device import resolve_device

    write = EXPORT_FORMATS.get(fmt)
    model, state = load_supernet(checkpoint, resolve_device(cfg.device), expect_space=expect_space)
    targets = resolve_archs(model.space, spec)
    root = Path(dest) if dest else Path(cfg.out) / "export"
    folders = [root if len(targets) == 1 and dest else root / name for name, _ in targets]
    for folder in folders:
        check_export_folder(folder)
    device = next(model.parameters()).device
    calib = test = None
    if recalibrate or evaluate:
        data, seed = run_data(cfg, state, model.space, run_dir=Path(cfg.out))
        calib = calibration_batches(data, cfg, device, seed=seed) if recalibrate else None
        test = eval_batches(data.test, cfg, device) if evaluate else None
    # The bundle's config.yaml records the data the supernet was trained on (what its classifier fits), not a
    # --config of another dataset: eval and finetune of the bundle read their data from it.
    trained_cfg, trained_seed = trained_data_config(cfg, state)
    recorded = config_to_dict(trained_cfg.model_copy(update={"seed": trained_seed}))
    out = []
    for (name, arch), folder in zip(targets, folders):
        # Written whole beside the destination, then moved in: a failure leaves what was there untouched.
        stage = staging_folder(folder, "export")
        try:
            net, metrics = export_arch(model, arch, stage, calib=calib, test=test, config=recorded,
                                       source={"checkpoint": str(checkpoint), "step": int(state.get("step", 0))})
            _check_finite(net, arch)
            files = write(net, stage, cfg.data.name)
            _commit_export(stage, folder)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        out.append({"name": name, "arch": str(arch), "folder": str(folder),
                    "files": files.replace(str(stage), str(folder)), "metrics": metrics})
    return out


def evaluate_spec(cfg: RunConfig, *, bundle: str | Path | None = None, checkpoint: str | Path | None = None,
                  spec: str | None = None, recalibrate: bool = False,
                  expect_space: str | None = None) -> dict[str, Any]:
    """Top-1/top-5 on the test split of a bundle's network, or of one architecture of a supernet (always BN
    recalibrated), on the data split its run used; with the architecture and its OPs."""
    from .bundle import load_bundle, read_bundle_info
    from .cost import arch_cost
    from .runs import calibration_batches, eval_batches, load_supernet, resolve_archs, run_data
    from .utils.device import resolve_device

    if bundle is not None:
        net = load_bundle(bundle)
        data, seed = run_data(cfg, {"config": read_bundle_info(bundle).get("config") or {}}, net.space)
        source: dict[str, Any] = {"bundle": str(bundle)}
    else:
        if checkpoint is None or spec is None:
            raise ConfigError("with --checkpoint, give --arch, --largest or --smallest")
        model, state = load_supernet(checkpoint, resolve_device(cfg.device), expect_space=expect_space)
        targets = resolve_archs(model.space, spec)
        if len(targets) != 1:
            raise ConfigError(f"{spec!r} names {len(targets)} architectures; evaluate one (pareto.json@BUCKET)")
        net = export_subnet(model, targets[0][1])
        data, seed = run_data(cfg, state, model.space, run_dir=Path(cfg.out))
        recalibrate, source = True, {"checkpoint": str(checkpoint), "arch": str(targets[0][1])}
    device = next(net.parameters()).device
    if recalibrate and cfg.eval.calib_batches < 1:
        raise ConfigError("BN recalibration needs eval.calib_batches >= 1 (a supernet architecture is always "
                          "recalibrated; a bundle with --recalibrate)")
    calib = calibration_batches(data, cfg, device, seed=seed) if recalibrate else None
    res = evaluate_network(net, eval_batches(data.test, cfg, device), calib=calib)
    c = arch_cost(net.arch, net.space)
    return {**source, "arch": str(net.arch), "mflops": c.mflops, "mbops": c.mbops, "mops": c.mops,
            "bn_recalibrated": bool(calib), **res}
