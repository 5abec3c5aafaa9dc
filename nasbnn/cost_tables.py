"""Cost tables and JSON cost reports, as ``nasbnn cost``, ``nasbnn spaces`` and ``nasbnn detect cost`` print them.

Counting is :mod:`nasbnn.cost`'s; this module only lays the counts out, so that the classifier's and the
detector's tables share one format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cost import Convention, Cost, LayerCost, arch_cost, layer_costs
from .space import Arch, SearchSpace

__all__ = ["cost_report", "cost_text", "format_cost_table", "layers_json", "spaces_table"]


def format_cost_table(layers: Sequence[LayerCost], totals: Sequence[tuple[str, Cost]]) -> str:
    """One row per layer (geometry and MFLOPs, MBOPs, MOPs), then one row per labelled total."""
    from .utils.table import format_table

    rows: list[list[Any]] = []
    for lc in layers:
        rows.append([lc.name, lc.kind, f"{lc.in_channels}->{lc.out_channels}", lc.kernel_size, lc.groups,
                     lc.stride, lc.out_resolution, lc.cost.mflops, lc.cost.mbops, lc.cost.mops])
    for label, c in totals:
        rows.append([label, "", "", "", "", "", "", c.mflops, c.mbops, c.mops])
    return format_table(
        ["layer", "kind", "channels", "k", "groups", "stride", "out_res", "MFLOPs", "MBOPs", "MOPs"],
        rows, align="lllrrrrrrr",
    )


def layers_json(layers: Sequence[LayerCost]) -> list[dict[str, Any]]:
    """Name, kind and MFLOPs/MBOPs/MOPs of every layer, for JSON output."""
    return [{"name": lc.name, "kind": lc.kind, **lc.cost.to_dict()} for lc in layers]


def cost_report(arch: Arch, space: SearchSpace, convention: Convention = "upstream") -> dict[str, Any]:
    """Totals and per-layer costs of ``arch`` at the space's resolution (the JSON of ``nasbnn cost``)."""
    total = arch_cost(arch, space, None, convention)
    return {
        "space": space.name, "arch": str(arch), "resolution": space.resolution,
        "convention": convention, **total.to_dict(),
        "layers": layers_json(layer_costs(arch, space, None, convention)),
    }


def cost_text(arch: Arch, space: SearchSpace, convention: Convention = "upstream") -> str:
    """What the cost of ``arch`` is counted on, then its per-layer table with the total."""
    table = format_cost_table(layer_costs(arch, space, None, convention),
                              [("total", arch_cost(arch, space, None, convention))])
    return (f"space {space.name!r}, resolution {space.resolution}, OPs = FLOPs + BOPs/64, "
            f"stem convention: {convention}\narch {arch}\n{table}")


def spaces_table() -> str:
    """Every registered preset with its geometry and the MOPs of its smallest and largest member."""
    from .presets import create_space, list_spaces
    from .utils.table import format_table

    rows = []
    for name in list_spaces():
        s = create_space(name)
        rows.append([name, s.resolution, s.in_channels, s.num_classes, len(s.stages),
                     arch_cost(s.smallest(), s).mops, arch_cost(s.largest(), s).mops])
    return format_table(["space", "resolution", "in_ch", "classes", "stages", "min MOPs", "max MOPs"], rows)
