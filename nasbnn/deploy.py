"""Deployment of searched architectures: export with BN recalibration, evaluation, family export.

The paper's "direct" path: export the static network of a family member, recalibrate its BN
statistics on training images, evaluate on the test set. (The "fine-tuned" path continues with
``nasbnn finetune`` on the exported bundle.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import save_bundle
from .errors import NasbnnError
from .export import export_subnet
from .models import StaticBNN, SuperBNN
from .space import Arch
from .train.bn import evaluate_top1, recalibrate_bn

__all__ = ["evaluate_network", "export_arch", "parse_family_spec", "read_family"]


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
    """The ``family`` entries of a search's ``pareto.json``."""
    p = Path(pareto_json)
    if p.is_dir():
        p = p / "pareto.json" if (p / "pareto.json").is_file() else p / "search" / "pareto.json"
    if not p.is_file():
        raise NasbnnError(f"no search result at {str(p)!r} (run `nasbnn search` first)")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise NasbnnError(f"{str(p)!r} is not valid JSON: {exc.msg}") from None
    fam = doc.get("family")
    if not isinstance(fam, list):
        raise NasbnnError(f"{str(p)!r} has no 'family' list; is it a nasbnn pareto.json?")
    return fam


def parse_family_spec(spec: str) -> tuple[str, float | None]:
    """``"path/pareto.json@100"`` -> (path, 100.0); ``"path/pareto.json"`` -> (path, None)."""
    if "@" in spec:
        path, bucket = spec.rsplit("@", 1)
        try:
            return path, float(bucket)
        except ValueError:
            raise NasbnnError(f"bad bucket {bucket!r} in {spec!r}; expected e.g. pareto.json@57") from None
    return spec, None

