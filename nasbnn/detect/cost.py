"""Analytic cost of a whole detector with the classifier's conventions (FLOPs = MACs, OPs = FLOPs + BOPs/64):
the backbone rows of :func:`nasbnn.cost.layer_costs`, then the neck and the per-level head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ..cost import Convention, Cost, LayerCost, layer_costs
from ..cost_tables import format_cost_table, layers_json
from ..errors import ConfigError, DataError
from ..space import Arch, SearchSpace
from .config import DetectConfig, DetectDataConfig, DetectRunConfig
from .model import level_specs

__all__ = [
    "MAX_CANVAS",
    "DetectorCost",
    "DetectorGeometry",
    "check_canvas",
    "config_geometry",
    "detector_cost",
    "detector_cost_report",
    "detector_cost_table",
    "detector_cost_text",
    "detector_geometry",
    "detector_layer_costs",
]

#: The widest canvas a detector's cost is computed for (pixels).
MAX_CANVAS = 8192


def _conv(name: str, kind: str, cin: int, cout: int, k: int, stride: int, res: int) -> LayerCost:
    macs = float(k * k * cin * cout * res * res)
    cost = Cost(0.0, macs) if kind == "binary conv" else Cost(macs, 0.0)
    return LayerCost(name, kind, cin, cout, k, 1, stride, res, cost)


def detector_layer_costs(space: SearchSpace, arch: Arch, cfg: DetectConfig, num_classes: int, canvas: int,
                         convention: Convention = "upstream") -> list[LayerCost]:
    """Every counted layer of the detector, in order: backbone, neck, then the head level by level."""
    rows = [lc for lc in layer_costs(arch, space, canvas, convention) if lc.name != "classifier"]
    levels = level_specs(space, arch, cfg, canvas)
    w = cfg.neck_width
    for lv in levels:
        if lv.stage >= 0:
            rows.append(_conv(f"neck.lateral.{lv.name}", "fp conv", lv.in_channels, w, 1, 1, lv.size))
    for lv in levels:
        if lv.stage >= 0:
            rows.append(_conv(f"neck.smooth.{lv.name}", "fp conv", w, w, 3, 1, lv.size))
    for lv in levels:
        if lv.stage < 0:
            rows.append(_conv(f"neck.extra.{lv.name}", "fp conv", w, w, 3, 2, lv.size))
    tower_kind = "binary conv" if cfg.binary_towers else "fp conv"
    for lv in levels:
        for tower in ("cls_tower", "box_tower"):
            for i in range(cfg.head_convs):
                rows.append(_conv(f"head.{tower}.{i}@{lv.name}", tower_kind, w, w, 3, 1, lv.size))
        rows.append(_conv(f"head.cls_pred@{lv.name}", "fp conv", w, num_classes, 3, 1, lv.size))
        rows.append(_conv(f"head.box_pred@{lv.name}", "fp conv", w, 4, 3, 1, lv.size))
        rows.append(_conv(f"head.ctr_pred@{lv.name}", "fp conv", w, 1, 3, 1, lv.size))
    return rows


@dataclass(frozen=True)
class DetectorCost:
    """Totals of the backbone, the neck + head, and the whole detector."""

    backbone: Cost
    neck_head: Cost
    total: Cost

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"backbone": self.backbone.to_dict(), "neck_head": self.neck_head.to_dict(),
                "total": self.total.to_dict()}


def _sum(rows: list[LayerCost]) -> Cost:
    total = Cost(0.0, 0.0)
    for r in rows:
        total = total + r.cost
    return total


def detector_cost(space: SearchSpace, arch: Arch, cfg: DetectConfig, num_classes: int, canvas: int,
                  convention: Convention = "upstream") -> DetectorCost:
    """Backbone, neck + head and total cost of the detector at a ``canvas × canvas`` input."""
    rows = detector_layer_costs(space, arch, cfg, num_classes, canvas, convention)
    back = [r for r in rows if not r.name.startswith(("neck.", "head."))]
    rest = [r for r in rows if r.name.startswith(("neck.", "head."))]
    return DetectorCost(_sum(back), _sum(rest), _sum(rows))


def detector_cost_table(space: SearchSpace, arch: Arch, cfg: DetectConfig, num_classes: int, canvas: int,
                        convention: Convention = "upstream") -> str:
    """The per-layer table in the format of ``nasbnn cost``, with the backbone total beside the detector's."""
    dc = detector_cost(space, arch, cfg, num_classes, canvas, convention)
    return format_cost_table(detector_layer_costs(space, arch, cfg, num_classes, canvas, convention),
                             [("backbone total", dc.backbone), ("neck+head total", dc.neck_head),
                              ("detector total", dc.total)])


class DetectorGeometry(NamedTuple):
    """Everything a detector's cost depends on (build it with :func:`detector_geometry`, which checks it)."""

    space: SearchSpace
    arch: Arch
    detect: DetectConfig
    num_classes: int
    canvas: int


def check_canvas(canvas: int) -> int:
    """``canvas``, refused (ConfigError) unless it is between 16 and :data:`MAX_CANVAS` pixels."""
    if canvas < 16:
        raise ConfigError(f"the canvas must be at least 16 pixels wide, got {canvas}")
    if canvas > MAX_CANVAS:
        raise ConfigError(f"the canvas must be at most {MAX_CANVAS} pixels wide, got {canvas}")
    return canvas


def detector_geometry(space: SearchSpace, arch: Arch, detect: DetectConfig, num_classes: int,
                      canvas: int) -> DetectorGeometry:
    """A :class:`DetectorGeometry`, refusing a class count below 1 or a canvas outside 16 to
    :data:`MAX_CANVAS` pixels (ConfigError)."""
    if num_classes < 1:
        raise ConfigError(f"a detector needs at least 1 class, got --num-classes {num_classes}")
    check_canvas(canvas)
    return DetectorGeometry(space, arch, detect, num_classes, canvas)


def _data_num_classes(cfg: DetectDataConfig) -> int:
    """The class count of the configured data: the synthetic one's, else that of its annotation files.

    Raises:
        NasbnnError: neither a synthetic dataset nor an annotation file.
    """
    if cfg.synthetic is not None:
        return cfg.synthetic.classes
    from .coco import read_annotation_json

    for split in ("val", "train"):
        ann, _ = cfg.split_paths(split)
        if ann.is_file():
            return len(read_annotation_json(ann)["categories"])
    raise DataError("cannot tell the number of classes (no annotation file found); pass --num-classes")


def config_geometry(cfg: DetectRunConfig, *, num_classes: int | None = None) -> DetectorGeometry:
    """The detector ``cfg`` describes, with ``num_classes`` classes (default: those of its data)."""
    from .backbone import backbone_geometry

    space, arch = backbone_geometry(cfg.backbone)
    classes = _data_num_classes(cfg.data) if num_classes is None else num_classes
    return detector_geometry(space, arch, cfg.detect, classes, cfg.data.canvas)


def detector_cost_report(g: DetectorGeometry, convention: Convention = "upstream") -> dict[str, Any]:
    """Totals and per-layer costs of a detector (the JSON of ``nasbnn detect cost``)."""
    total = detector_cost(g.space, g.arch, g.detect, g.num_classes, g.canvas, convention)
    return {
        "space": g.space.name, "arch": str(g.arch), "canvas": g.canvas, "num_classes": g.num_classes,
        "convention": convention, **total.to_dict(),
        "layers": layers_json(detector_layer_costs(g.space, g.arch, g.detect, g.num_classes, g.canvas, convention)),
    }


def detector_cost_text(g: DetectorGeometry, convention: Convention = "upstream") -> str:
    """What a detector's cost is counted on, its backbone architecture, then its per-layer table."""
    table = detector_cost_table(g.space, g.arch, g.detect, g.num_classes, g.canvas, convention)
    towers = "binary" if g.detect.binary_towers else "full-precision"
    return (f"detector on space {g.space.name!r}, canvas {g.canvas}x{g.canvas}, {g.num_classes} classes, "
            f"OPs = FLOPs + BOPs/64, stem convention: {convention}; neck full precision, {towers} head towers\n"
            f"backbone arch {g.arch}\n{table}")
