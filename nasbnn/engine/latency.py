"""A fitted latency model of the binary engine: ``latency_ms ≈ a·BOPs + b·FLOPs + c·layers``.

Per-layer engine times of sampled architectures are fitted by non-negative least squares;
:func:`rank_correlations` compares how plain OPs and the fitted model rank architectures by measured
end-to-end latency; :func:`latency_cost_fn` turns a model into a search cost (milliseconds).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import numpy as np

from ..errors import CheckpointError, EngineError
from ..space import Arch, SearchSpace, check_resolution
from ..utils.io import JSONTextError, missing_file, parse_json
from ..utils.stats import kendall_tau, spearman_rho

__all__ = [
    "ArchLatency",
    "LatencyModel",
    "fit_latency",
    "fit_latency_models",
    "fit_summary",
    "format_fit",
    "kendall_tau",
    "latency_cost_fn",
    "measure_latency",
    "rank_correlations",
    "save_fit",
    "save_models",
    "spearman_rho",
]

#: The most architectures a latency fit samples (each is packed and timed).
MAX_SAMPLES = 10_000
LATENCY_FORMAT = "nasbnn-latency-model"
LATENCY_VERSION = 1
#: The largest coefficient a latency model file may hold (ms per G-op or per layer).
MAX_COEFFICIENT = 1e9

#: A file with one model per engine thread count (``nasbnn latency fit --threads 1 2``).
LATENCY_MULTI_VERSION = 2


def _layer_features(arch: Arch, space: SearchSpace, resolution: int | None = None) -> np.ndarray:
    """[layers, 3]: (BOPs, FLOPs, 1) of every engine layer; the stem counted as its real MACs."""
    from ..cost import layer_costs

    rows = [(lc.cost.bops, lc.cost.flops, 1.0) for lc in layer_costs(arch, space, resolution, "standard")]
    return np.asarray(rows, dtype=np.float64)


def _launch_features(feats: np.ndarray, spans: Sequence[int]) -> np.ndarray:
    """Per-layer features summed over each engine launch (``spans``: layers per launch; empty: one each)."""
    if not spans:
        return feats
    edges = np.concatenate([[0], np.cumsum(spans)])
    return np.asarray([feats[a:b].sum(axis=0) for a, b in itertools.pairwise(edges)])


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of columns: the best of every support's LS solution."""
    n = a.shape[1]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-300)
    an = a / scale
    best, best_err = np.zeros(n), float(np.sum(y**2))
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            sol, *_ = np.linalg.lstsq(an[:, cols], y, rcond=None)
            if np.any(sol < 0):
                continue
            x = np.zeros(n)
            x[list(cols)] = sol
            err = float(np.sum((an @ x - y) ** 2))
            if err < best_err - 1e-15 * max(best_err, 1.0):
                best, best_err = x, err
    return best / scale


@dataclass
class LatencyModel:
    """``latency_ms = a_ms_per_gbop·GBOPs + b_ms_per_gflop·GFLOPs + c_ms_per_layer·layers``.

    FLOPs count the stem as its real MACs (the ``standard`` convention of :mod:`nasbnn.cost`), BOPs
    the binary MACs; one layer is the stem, each binary conv and the classifier.

    Attributes:
        a_ms_per_gbop, b_ms_per_gflop, c_ms_per_layer: the non-negative coefficients.
        meta: where and how it was measured (machine, threads, space, resolution, fit quality).
    """

    a_ms_per_gbop: float
    b_ms_per_gflop: float
    c_ms_per_layer: float
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, rows: Sequence[Sequence[float]] | np.ndarray, *, meta: dict[str, Any] | None = None) -> LatencyModel:
        """Fits the coefficients to per-layer measurements ``(BOPs, FLOPs, ms)`` (one row per layer), or
        ``(BOPs, FLOPs, layers, ms)`` for launches that ran several layers (a block in one pass).

        Raises:
            EngineError: fewer than 3 rows, or rows that are not finite triples or quadruples.
        """
        data = np.asarray(rows, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] not in (3, 4) or data.shape[0] < 3 or not np.isfinite(data).all():
            raise EngineError("latency fit needs at least 3 finite rows of (BOPs, FLOPs, milliseconds)")
        if data.shape[1] == 3:
            data = np.column_stack([data[:, :2], np.ones(len(data)), data[:, 2]])
        a = np.column_stack([data[:, 0] / 1e9, data[:, 1] / 1e9, data[:, 2]])
        coef = _nnls(a, data[:, 3])
        pred = a @ coef
        ss_res = float(np.sum((data[:, 3] - pred) ** 2))
        ss_tot = float(np.sum((data[:, 3] - data[:, 3].mean()) ** 2))
        info = {"layer_rows": len(data), "layer_r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), {**(meta or {}), **info})

    def predict_counts(self, bops: float, flops: float, layers: float) -> float:
        """Milliseconds for the given totals."""
        return self.a_ms_per_gbop * bops / 1e9 + self.b_ms_per_gflop * flops / 1e9 + self.c_ms_per_layer * layers

    def predict(self, arch: Arch, space: SearchSpace, resolution: int | None = None) -> float:
        """Predicted end-to-end engine latency of ``arch`` in milliseconds (batch 1)."""
        f = _layer_features(arch, space, resolution).sum(axis=0)
        return self.predict_counts(float(f[0]), float(f[1]), float(f[2]))

    @property
    def threads(self) -> int:
        """The engine thread count the model was measured at (1 for files that do not say)."""
        t = self.meta.get("threads", (self.meta.get("machine") or {}).get("threads", 1))
        return int(t) if isinstance(t, (int, float)) and t >= 1 else 1

    @property
    def bop_cost_in_flops(self) -> float:
        """What one binary MAC costs in float MACs according to the fit (the OPs model assumes 1/64)."""
        return self.a_ms_per_gbop / self.b_ms_per_gflop if self.b_ms_per_gflop > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {"format": LATENCY_FORMAT, "format_version": LATENCY_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Writes the model as JSON (atomically)."""
        from ..utils.io import atomic_write_text

        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> LatencyModel:
        """Reads a model written by :meth:`save` or :func:`save_models`.

        Args:
            threads: the engine thread count the model must have been measured at; needed to choose
                from a file with several (None: the file's only model).

        Raises:
            CheckpointError: missing file, not JSON, another format or version, bad coefficients, no
                model for ``threads``.
        """
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(missing_file(p, "latency model"))
        try:
            data = parse_json(p.read_bytes())
        except JSONTextError as exc:
            raise CheckpointError(f"{str(p)!r} is not a latency model (not JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != LATENCY_FORMAT:
            raise CheckpointError(f"{str(p)!r} is not a latency model (expected format {LATENCY_FORMAT!r}, "
                                  "as written by LatencyModel.save)")
        version = data.get("format_version")
        if version == LATENCY_MULTI_VERSION:
            if not isinstance(data.get("models"), list) or not data["models"]:
                raise CheckpointError(f"{str(p)!r} is malformed: a version {version} latency model file needs a "
                                      "non-empty 'models' list")
            models = [cls._from_dict(m, p) for m in data["models"]]
        elif version == LATENCY_VERSION:
            models = [cls._from_dict(data, p)]
        else:
            raise CheckpointError(f"{str(p)!r} is latency model version {version}; this nasbnn reads versions "
                                  f"{LATENCY_VERSION} and {LATENCY_MULTI_VERSION}")
        have = sorted(m.threads for m in models)
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise EngineError(f"threads must be >= 1, got {threads}")
        if threads is None:
            if len(models) > 1:
                raise CheckpointError(f"{str(p)!r} holds latency models for {have} engine threads; say which "
                                      "(search.latency_threads, or --threads)")
            return models[0]
        for m in models:
            if m.threads == int(threads):
                return m
        raise CheckpointError(f"{str(p)!r} has no latency model for {threads} engine thread(s) (it has {have}); "
                              f"measure one with `nasbnn latency fit --threads {threads}`")

    @classmethod
    def _from_dict(cls, data: Any, p: Path) -> LatencyModel:
        if not isinstance(data, dict):
            raise CheckpointError(f"{str(p)!r}: a model entry is not an object")
        raw = [data.get(k) for k in ("a_ms_per_gbop", "b_ms_per_gflop", "c_ms_per_layer")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            raise CheckpointError(f"{str(p)!r}: missing or non-numeric coefficients")
        coef = [float(v) for v in raw]
        # the bound keeps every prediction finite (a network has at most a few thousand G-ops and layers)
        if not all(np.isfinite(c) and 0 <= c <= MAX_COEFFICIENT for c in coef):
            raise CheckpointError(f"{str(p)!r}: coefficients must be between 0 and {MAX_COEFFICIENT:g}, got {coef}")
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        return cls(*coef, meta=meta)


def save_models(models: Sequence[LatencyModel], path: str | Path) -> Path:
    """Writes models of different thread counts to one file (a single model as :meth:`LatencyModel.save`)."""
    from ..config import atomic_write_text

    if not models:
        raise EngineError("no latency model to save")
    counts = [m.threads for m in models]
    if len(set(counts)) != len(counts):
        raise EngineError(f"latency models of the same thread count cannot share a file: {counts}")
    if len(models) == 1:
        return models[0].save(path)
    p = Path(path)
    body = {"format": LATENCY_FORMAT, "format_version": LATENCY_MULTI_VERSION,
            "models": [asdict(m) for m in models]}
    atomic_write_text(p, json.dumps(body, indent=2) + "\n")
    return p


def latency_cost_fn(model: LatencyModel, space: SearchSpace) -> Callable[[Arch], float]:
    """A search cost: the predicted latency of an architecture of ``space`` in milliseconds (memoised)."""
    memo: dict[Arch, float] = {}

    def cost(arch: Arch) -> float:
        v = memo.get(arch)
        if v is None:
            v = model.predict(arch, space)
            if len(memo) > 200_000:
                memo.clear()
            memo[arch] = v
        return v

    return cost


# --------------------------------------------------------------------------------------------- measuring
@dataclass
class ArchLatency:
    """Measured engine latency of one architecture (best of the repeats, milliseconds)."""

    arch: str
    total_ms: float
    layer_ms: list[float]  # per engine launch: one layer, or a block run in one pass
    bops: float
    flops: float
    layers: int
    ops: float  # FLOPs + BOPs / 64 as the project counts them (upstream stem convention)
    spans: list[int] = field(default_factory=list)  # layers per launch (empty: one each)


def measure_latency(space: SearchSpace, archs: Sequence[Arch], *, threads: int = 1, repeats: int = 5,
                    warmup: int = 1, resolution: int | None = None, seed: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> list[ArchLatency]:
    """Per-layer and end-to-end engine latency (batch 1, random weights) of each architecture."""
    return measure_latency_threads(space, archs, threads=(threads,), repeats=repeats, warmup=warmup,
                                   resolution=resolution, seed=seed, progress=progress)[int(threads)]


def measure_latency_threads(space: SearchSpace, archs: Sequence[Arch], *, threads: Sequence[int] = (1,),
                            repeats: int = 5, warmup: int = 1, resolution: int | None = None, seed: int = 0,
                            progress: Callable[[int, int], None] | None = None) -> dict[int, list[ArchLatency]]:
    """:func:`measure_latency` at several thread counts, interleaved within every repeat (same load)."""
    import torch

    from ..cost import arch_cost
    from .bench import SEED_LIMIT, check_memory, check_repeats, check_seed, check_threads, random_static
    from .runtime import BinaryEngine

    tlist = check_threads(threads)
    check_repeats(repeats, warmup)
    check_seed(seed)
    res = space.resolution if resolution is None else check_resolution(int(resolution))
    for arch in archs:
        check_memory(space, arch, res, 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, space.in_channels, res, res, generator=g).numpy()
    out: dict[int, list[ArchLatency]] = {t: [] for t in tlist}
    for i, arch in enumerate(archs):
        engine = BinaryEngine.from_static(random_static(space, arch, seed=(seed + i) % SEED_LIMIT))
        for _ in range(warmup):
            for t in tlist:
                engine(x, threads=t)
        totals: dict[int, list[float]] = {t: [] for t in tlist}
        layer_rows: dict[int, list[list[float]]] = {t: [] for t in tlist}
        spans: dict[int, list[int]] = {}
        for _ in range(repeats):
            for t in tlist:
                t0 = time.perf_counter()
                engine(x, threads=t)
                totals[t].append(time.perf_counter() - t0)
                timings: list[Any] = []
                engine.run(x, threads=t, timings=timings)
                layer_rows[t].append([v.seconds for v in timings])
                spans[t] = [v.layers for v in timings]
        feats = _layer_features(arch, space, res)
        cost = arch_cost(arch, space, res)
        for t in tlist:
            out[t].append(ArchLatency(str(arch), 1e3 * min(totals[t]),
                                      [1e3 * v for v in np.min(layer_rows[t], axis=0)], float(feats[:, 0].sum()),
                                      float(feats[:, 1].sum()), len(feats), cost.ops, spans[t]))
        if progress is not None:
            progress(i + 1, len(archs))
    return out


def rank_correlations(measured: Sequence[ArchLatency], model: LatencyModel | None = None,
                      space: SearchSpace | None = None, resolution: int | None = None) -> dict[str, Any]:
    """How well OPs (and the model, if given) rank the architectures by measured latency."""
    y = [m.total_ms for m in measured]
    ops = [m.ops for m in measured]
    out: dict[str, Any] = {"n": len(measured),
                           "ops": {"spearman": spearman_rho(ops, y), "kendall": kendall_tau(ops, y)}}
    if model is not None:
        pred = [model.predict_counts(m.bops, m.flops, m.layers) for m in measured]
        err = np.abs(np.asarray(pred) - np.asarray(y)) / np.asarray(y)
        out["model"] = {"spearman": spearman_rho(pred, y), "kendall": kendall_tau(pred, y),
                        "mean_abs_rel_err": float(err.mean()), "max_abs_rel_err": float(err.max())}
    return out


def fit_latency(space: SearchSpace, *, samples: int = 30, threads: int = 1, repeats: int = 5, warmup: int = 1,
                resolution: int | None = None, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> tuple[LatencyModel, dict[str, Any]]:
    """Measures ``samples`` architectures (the largest, the smallest and random members), fits a model.

    Returns:
        The model fitted on every layer of every sample, and a report with the rank correlations of OPs
        and of the model against measured end-to-end latency, over all samples and on a held-out half
        (a model fitted on the other half), plus the measurements.
    """
    models, report = fit_latency_models(space, samples=samples, threads=(threads,), repeats=repeats, warmup=warmup,
                                        resolution=resolution, seed=seed, progress=progress)
    return models[0], report["threads"][str(int(threads))]


def _sample_archs(space: SearchSpace, samples: int, seed: int) -> list[Arch]:
    """The largest, the smallest and distinct random members."""
    if not 4 <= samples <= MAX_SAMPLES:
        raise EngineError(f"a latency fit samples 4 to {MAX_SAMPLES} architectures, got {samples}")
    rng = Random(seed)
    archs: list[Arch] = [space.largest(), space.smallest()]
    seen = set(archs)
    tries = 0
    while len(archs) < samples and tries < 100 * samples:
        a = space.sample(rng)
        tries += 1
        if a not in seen:
            seen.add(a)
            archs.append(a)
    return archs


def fit_latency_models(space: SearchSpace, *, samples: int = 30, threads: Sequence[int] = (1,), repeats: int = 5,
                       warmup: int = 1, resolution: int | None = None, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> tuple[list[LatencyModel], dict[str, Any]]:
    """One model per engine thread count, from the same sampled architectures measured interleaved.

    Returns:
        The models (in the order of ``threads``) and a report: per thread count (``threads["2"]``) the
        rank correlations of OPs and of that model with measured latency (all samples and a held-out
        half) and the measurements, and ``cross`` — how each thread count's measured latency ranks the
        architectures against the others' (Kendall tau): whether a search needs the deployment's
        thread count at all.
    """
    from .bench import check_seed, check_threads, machine_info

    tlist = check_threads(threads)
    archs = _sample_archs(space, samples, check_seed(seed))
    measured = measure_latency_threads(space, archs, threads=tlist, repeats=repeats, warmup=warmup,
                                       resolution=resolution, seed=seed, progress=progress)
    res = space.resolution if resolution is None else int(resolution)

    def rows_of(ms: Sequence[ArchLatency]) -> np.ndarray:
        out = []
        for m in ms:
            feats = _launch_features(_layer_features(Arch.parse(m.arch), space, res), m.spans)
            out += [(*f, t) for f, t in zip(feats, m.layer_ms)]
        return np.asarray(out)

    order = list(range(len(archs)))
    Random(seed + 1).shuffle(order)
    half = len(order) // 2
    models, per = [], {}
    for t in tlist:
        ms = measured[t]
        meta = {"machine": machine_info(t), "threads": t, "space": space.name, "resolution": res, "batch": 1,
                "samples": len(ms), "repeats": repeats}
        model = LatencyModel.fit(rows_of(ms), meta=meta)
        held = LatencyModel.fit(rows_of([ms[i] for i in order[:half]]))
        per[str(t)] = {
            "all": rank_correlations(ms, model),
            "held_out": rank_correlations([ms[i] for i in order[half:]], held),
            "model": model.to_dict(),
            "measurements": [asdict(m) for m in ms],
        }
        model.meta["rank_correlation"] = {k: per[str(t)]["all"][k] for k in ("ops", "model")}
        models.append(model)
    cross = {f"{a}~{b}": kendall_tau([m.total_ms for m in measured[a]], [m.total_ms for m in measured[b]])
             for a, b in itertools.combinations(tlist, 2)}
    return models, {"threads": per, "cross_thread_kendall": cross}


# ------------------------------------------------------------------------------------------- reporting
def save_fit(models: Sequence[LatencyModel], report: dict[str, Any], path: str | Path,
             report_path: str | Path | None = None) -> None:
    """Writes the models of :func:`fit_latency_models` to ``path`` and, if asked, its full report (JSON)."""
    from ..utils.io import atomic_write_text

    save_models(models, path)
    if report_path:
        atomic_write_text(Path(report_path), json.dumps(report, indent=2) + "\n")


def fit_summary(report: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The model and rank correlations of the first thread count, those of every thread count, and how the
    thread counts rank architectures alike: the JSON of ``nasbnn latency fit`` (``path``: the model file)."""
    per = report["threads"]
    first = next(iter(per.values()))
    return {"model": first["model"], "all": first["all"], "held_out": first["held_out"], "out": path,
            "threads": {t: {k: r[k] for k in ("model", "all", "held_out")} for t, r in per.items()},
            "cross_thread_kendall": report["cross_thread_kendall"]}


def _format_model(space: str, model: LatencyModel, rep: dict[str, Any]) -> list[str]:
    """The coefficients of one thread count's model and how OPs and the model rank measured latency."""
    a, ho = rep["all"], rep["held_out"]
    return [
        f"space {space!r}: {a['n']} architectures, threads {model.threads}, batch 1",
        f"latency_ms = {model.a_ms_per_gbop:.4g}·GBOPs + {model.b_ms_per_gflop:.4g}·GFLOPs + "
        f"{model.c_ms_per_layer:.4g}·layers   (layer R^2 {model.meta['layer_r2']:.3f})",
        f"one binary MAC costs {model.bop_cost_in_flops:.3g} float MACs here (the OPs model assumes 1/64 = 0.0156)",
        f"rank correlation with measured latency, all {a['n']}: OPs spearman {a['ops']['spearman']:.3f} "
        f"kendall {a['ops']['kendall']:.3f}; model spearman {a['model']['spearman']:.3f} "
        f"kendall {a['model']['kendall']:.3f}",
        f"held-out half ({ho['n']}, model fitted on the other half): OPs spearman {ho['ops']['spearman']:.3f} "
        f"kendall {ho['ops']['kendall']:.3f}; model spearman {ho['model']['spearman']:.3f} "
        f"kendall {ho['model']['kendall']:.3f}, mean |error| {ho['model']['mean_abs_rel_err']:.1%}",
    ]


def format_fit(space: str, models: Sequence[LatencyModel], report: dict[str, Any], path: str | Path) -> str:
    """:func:`fit_latency_models`' models and report as text, ending with where the models were written."""
    lines: list[str] = []
    for model in models:
        lines += _format_model(space, model, report["threads"][str(model.threads)])
    for pair, tau in report["cross_thread_kendall"].items():
        lines.append(f"threads {pair.replace('~', ' vs ')}: measured latencies rank the architectures with Kendall "
                     f"tau {tau:.3f}")
    lines.append(f"wrote {path}")
    return "\n".join(lines)
