"""Analytic cost of a whole detector with the classifier's conventions (FLOPs = MACs, OPs = FLOPs + BOPs/64):
the backbone rows of :func:`nasbnn.cost.layer_costs`, then the neck and the per-level head."""

from __future__ import annotations

from dataclasses import dataclass

from ..cost import Convention, Cost, LayerCost, layer_costs
from ..space import Arch, SearchSpace
from .config import DetectConfig
from .model import level_specs

__all__ = ["DetectorCost", "detector_cost", "detector_cost_table", "detector_layer_costs"]


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
    from ..utils.table import format_table

    rows = []
    for lc in detector_layer_costs(space, arch, cfg, num_classes, canvas, convention):
        rows.append([lc.name, lc.kind, f"{lc.in_channels}->{lc.out_channels}", lc.kernel_size, lc.groups,
                     lc.stride, lc.out_resolution, lc.cost.mflops, lc.cost.mbops, lc.cost.mops])
    dc = detector_cost(space, arch, cfg, num_classes, canvas, convention)
    for label, c in (("backbone total", dc.backbone), ("neck+head total", dc.neck_head), ("detector total", dc.total)):
        rows.append([label, "", "", "", "", "", "", c.mflops, c.mbops, c.mops])
    return format_table(
        ["layer", "kind", "channels", "k", "groups", "stride", "out_res", "MFLOPs", "MBOPs", "MOPs"],
        rows, align="lllrrrrrrr",
    )
