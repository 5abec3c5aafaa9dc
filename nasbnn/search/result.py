"""Search results: evaluated candidates, cost buckets, the per-bucket family and the Pareto front.

Everything is plain JSON/JSONL/CSV so results are diffable and resumable.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArch, SearchError
from ..space import Arch
from ..utils.io import atomic_write_text, ensure_dir
from ..utils.metrics import json_kind

__all__ = ["Budget", "Candidate", "family_entries", "family_from", "pareto_front", "write_results"]


@dataclass(frozen=True)
class Candidate:
    """One evaluated architecture. ``cost`` is the search's cost axis (MOPs, or ms for latency)."""

    arch: Arch
    mflops: float
    mbops: float
    mops: float
    cost: float
    top1: float
    generation: int

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = str(self.arch)
        return d

    @classmethod
    def from_json(cls, d: Any) -> Candidate:
        """The candidate of a :meth:`to_json` dict.

        Raises:
            SearchError: not an object, a missing field, a field of the wrong type or a malformed architecture.
        """
        if not isinstance(d, dict):
            raise SearchError(f"a candidate must be a JSON object, got a {json_kind(d)}")
        missing = [k for k in _CANDIDATE_FIELDS if k not in d]
        if missing:
            raise SearchError(f"the candidate has no {', '.join(repr(k) for k in missing)}")
        return cls(_arch_field(d["arch"]), *(_finite(d, k) for k in ("mflops", "mbops", "mops", "cost", "top1")),
                   _generation(d["generation"]))


_CANDIDATE_FIELDS = ("arch", "mflops", "mbops", "mops", "cost", "top1", "generation")


def _arch_field(value: Any) -> Arch:
    if not isinstance(value, str):
        raise SearchError(f"'arch' is a {json_kind(value)}, not an architecture string")
    try:
        return Arch.parse(value)
    except InvalidArch as exc:
        raise SearchError(f"'arch' {value!r}: {exc}") from None


def _finite(d: dict[str, Any], key: str) -> float:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchError(f"{key!r} is {json.dumps(value)[:40]}, not a finite number")
    return float(value)


def _generation(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SearchError(f"'generation' is {json.dumps(value)[:40]}, not a generation number")
    return value


def family_entries(doc: Any, where: str) -> list[dict[str, Any]]:
    """The ``family`` entries of a ``pareto.json``-like document, each checked to have a finite numeric
    ``bucket`` and an architecture string ``arch`` (other fields pass through).

    Raises:
        SearchError: no ``family`` list, or an entry that lacks those fields (the message names ``where``).
    """
    fam = doc.get("family") if isinstance(doc, dict) else None
    if not isinstance(fam, list):
        raise SearchError(f"{where} has no 'family' list; is it a nasbnn pareto.json?")
    for i, entry in enumerate(fam):
        if not isinstance(entry, dict):
            raise SearchError(f"{where}: family entry {i} is a {json_kind(entry)}, not an object")
        try:
            if "bucket" not in entry or "arch" not in entry:
                raise SearchError("it needs 'bucket' and 'arch'")
            _finite(entry, "bucket")
            _arch_field(entry["arch"])
        except SearchError as exc:
            raise SearchError(f"{where}: family entry {i}: {exc}") from None
    return fam


@dataclass(frozen=True)
class Budget:
    """The cost range of the search and its buckets (``step`` wide, centred on multiples of ``step``)."""

    min_cost: float
    max_cost: float
    step: float
    unit: str = "MOPs"

    def __post_init__(self) -> None:
        if not (self.step > 0 and math.isfinite(self.step)):
            raise SearchError(f"search bucket step must be positive, got {self.step}")
        if self.min_cost > self.max_cost:
            raise SearchError(f"search range is empty: minimum {self.min_cost} {self.unit} is above maximum "
                              f"{self.max_cost} {self.unit}")

    def contains(self, cost: float) -> bool:
        return self.min_cost <= cost <= self.max_cost

    def bucket(self, cost: float) -> float:
        """The bucket of ``cost``: the nearest multiple of ``step`` (upstream: ``round(ops/step)*step``)."""
        return round(round(cost / self.step) * self.step, 10)

    def check_feasible(self, lowest: float, highest: float) -> None:
        """Raises unless some member of cost in [lowest, highest] can fall in the range."""
        if self.max_cost < lowest or self.min_cost > highest:
            raise SearchError(
                f"no architecture fits [{self.min_cost:g}, {self.max_cost:g}] {self.unit}; the space spans "
                f"[{lowest:.6g}, {highest:.6g}] {self.unit}"
            )


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other candidate dominates (cost <= and top-1 >=, one strictly), by cost."""
    ordered = sorted(candidates, key=lambda c: (c.cost, -c.top1, str(c.arch)))
    front: list[Candidate] = []
    best = -math.inf
    for c in ordered:
        if c.top1 > best:
            if front and front[-1].cost == c.cost:
                continue  # same cost, lower accuracy (sorted by -top1 within a cost)
            front.append(c)
            best = c.top1
    return front


def family_from(frontier: dict[float, Candidate]) -> list[tuple[float, Candidate]]:
    """The per-bucket best candidates, by bucket."""
    return sorted(frontier.items())


def _csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in fields})
    return buf.getvalue()


def write_results(folder: str | Path, *, frontier: dict[float, Candidate], history: Sequence[Candidate],
                  budget: Budget, meta: dict[str, Any], reference: Sequence[tuple[float, float, str]] = (),
                  plot: bool = True) -> dict[str, Path]:
    """Writes ``pareto.json``, ``family.csv``, ``history.csv`` and ``pareto.png`` (atomically).

    ``pareto.json`` depends only on the evaluated candidates and the settings (no timestamps), so a
    resumed search writes the same file as an uninterrupted one.
    """
    folder = Path(folder)
    ensure_dir(folder)
    fam = family_from(frontier)
    front = pareto_front(history)
    doc = {
        **meta,
        "budget": {"min": budget.min_cost, "max": budget.max_cost, "step": budget.step, "unit": budget.unit},
        "evaluated": len(history),
        "family": [{"bucket": b, **c.to_json()} for b, c in fam],
        "pareto_front": [c.to_json() for c in front],
    }
    paths = {"pareto": folder / "pareto.json", "family_csv": folder / "family.csv",
             "history_csv": folder / "history.csv"}
    atomic_write_text(paths["pareto"], json.dumps(doc, indent=2) + "\n")
    fields = ["bucket", "arch", "mflops", "mbops", "mops", "cost", "top1", "generation"]
    atomic_write_text(paths["family_csv"], _csv(doc["family"], fields))
    atomic_write_text(paths["history_csv"], _csv([c.to_json() for c in history], fields[1:]))
    if plot and history:
        paths["plot"] = folder / "pareto.png"
        plot_pareto(paths["plot"], history=history, family=[c for _, c in fam], front=front, reference=reference,
                    unit=budget.unit, title=str(meta.get("title", "")))
    return paths


def plot_pareto(path: Path, *, history: Sequence[Candidate], family: Sequence[Candidate],
                front: Sequence[Candidate], reference: Sequence[tuple[float, float, str]] = (),
                unit: str = "MOPs", title: str = "") -> None:
    """Top-1 against cost: every evaluated candidate, the family, the Pareto front, reference points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    ax.scatter([c.cost for c in history], [c.top1 for c in history], s=7, c="0.7", label="evaluated", zorder=1)
    if front:
        ax.step([c.cost for c in front], [c.top1 for c in front], where="post", c="tab:blue", lw=1.2,
                label="Pareto front", zorder=2)
    if family:
        ax.plot([c.cost for c in family], [c.top1 for c in family], "o", c="tab:red", ms=5,
                label="family (best per bucket)", zorder=3)
    if reference:
        ax.plot([r[0] for r in reference], [r[1] for r in reference], "*", c="k", ms=10,
                label="official NAS-BNN (paper)", zorder=4)
        for x, y, text in reference:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel(unit)
    ax.set_ylabel("top-1 (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


#: Points of the official NAS-BNN family on ImageNet (abstract: 68.2 % at 57 M OPs; 70.8 % at
#: 180 M OPs from a secondary summary), for plots of the ``imagenet`` space.
REFERENCE_POINTS: dict[str, list[tuple[float, float, str]]] = {
    "imagenet": [(57.0, 68.2, "68.2% @ 57M"), (180.0, 70.8, "70.8% @ 180M")],
}
