"""``nasbnn search``: evolutionary search on a trained supernet, with resumable on-disk state.

Outputs in ``<run>/search/``: ``history.jsonl`` (every evaluated candidate, appended as evaluated),
``generations.jsonl`` (one line per completed generation), ``meta.json`` (the settings a resume must
match), ``pareto.json``, ``family.csv``, ``history.csv`` and ``pareto.png``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..config import RunConfig
from ..cost import arch_cost
from ..errors import ConfigError, SearchError
from ..runs import eval_batches, first_train_batches, load_supernet, trained_data_config
from ..space import Arch, SearchSpace
from ..train.distributed import DistInfo, barrier
from ..utils.io import atomic_write_text, ensure_dir, read_json
from ..utils.metrics import json_kind, read_jsonl_strict
from ..utils.seeding import derive_seed
from .evaluator import SupernetEvaluator
from .evolution import EvolutionSearch, SearchState
from .result import REFERENCE_POINTS, Budget, Candidate, write_results

if TYPE_CHECKING:
    from ..context import RunContext

__all__ = ["SearchCost", "SearchSettingsChanged", "format_search_summary", "run_search", "search_cost"]

_logger = logging.getLogger(__name__)


class SearchSettingsChanged(SearchError):
    """A resumed search whose settings differ from those the folder's search ran with."""


class SearchCost(NamedTuple):
    """What the search's budget counts (``search.cost``), and the description recorded for every candidate."""

    fn: Callable[[Arch], float]
    describe: Callable[[Arch], tuple[float, float, float]]  # (MFLOPs, MBOPs, MOPs)
    unit: str  # "MOPs" or "ms"
    latency_threads: int | None  # the engine threads a latency model was measured at


def search_cost(cfg: RunConfig, space: SearchSpace) -> SearchCost:
    """The cost of ``search.cost`` on ``space``: MOPs, or a latency model's predicted milliseconds.

    Raises:
        NasbnnError: ``search.cost=latency`` without a usable latency model.
    """
    scfg = cfg.search
    conv = scfg.convention

    def describe(a: Arch) -> tuple[float, float, float]:
        c = arch_cost(a, space, convention=conv)
        return c.mflops, c.mbops, c.mops

    if scfg.cost == "ops":
        return SearchCost(lambda a: arch_cost(a, space, convention=conv).mops, describe, "MOPs", None)
    if scfg.latency_model is None:
        raise ConfigError("search.cost=latency needs search.latency_model=<file> (fit one with `nasbnn latency fit`)")
    from ..engine.latency import LatencyModel, latency_cost_fn

    model = LatencyModel.load(scfg.latency_model, threads=scfg.latency_threads)
    return SearchCost(latency_cost_fn(model, space), describe, "ms", model.threads)


def _distributed_evaluate(evaluator: SupernetEvaluator, dist_info):  # type: ignore[no-untyped-def]
    """Each rank scores its share of the candidates; all ranks receive every score, in order."""
    if not dist_info.enabled:
        return evaluator

    import torch.distributed as dist

    def evaluate(archs: Sequence[Arch]) -> list[float]:
        mine = {i: evaluator.score(a) for i, a in enumerate(archs) if i % dist_info.world_size == dist_info.rank}
        gathered: list[dict[int, float]] = [{} for _ in range(dist_info.world_size)]
        dist.all_gather_object(gathered, mine)
        merged: dict[int, float] = {}
        for part in gathered:
            merged.update(part)
        return [merged[i] for i in range(len(archs))]

    return evaluate


def _warn_if_not_official_split(state: dict[str, Any], cfg: RunConfig, run_dir: Path) -> None:
    """An imported official supernet trained on all of ImageNet-train except upstream's 50 images per
    class; on any other hold-out, most search-validation images are training images."""
    from ..data.upstream_split import is_upstream_manifest
    from ..upstream_import import UPSTREAM_ORIGIN

    if (state.get("extra") or {}).get("origin") != UPSTREAM_ORIGIN:
        return
    manifest = Path(cfg.data.manifest) if cfg.data.manifest else run_dir / "split.json"
    if cfg.data.name == "imagefolder" and is_upstream_manifest(manifest):
        return
    _logger.warning(
        "warning: this supernet is the official one, trained on all of ImageNet-train except the 50 images per "
        "class upstream's split_imagenet.py held out; the search-validation images here (%s) are another draw, so "
        "about 96%% of them were training images and the accuracies are inflated. Import with --split "
        "<split_imagenet.py folder> (or set data.manifest to such a manifest) to validate on the official hold-out",
        manifest if cfg.data.name == "imagefolder" else f"data.name={cfg.data.name}")


def _search_meta(cfg: RunConfig, space: SearchSpace, state: dict[str, Any], *, seeds: int,
                 latency_threads: int | None) -> dict[str, Any]:
    """The settings written to ``meta.json``: a resumed search must find the same ones (``seeds`` is the
    size of an imported family that opens the search, 0 for none)."""
    scfg = cfg.search
    meta = {
        "title": f"NAS-BNN search on {space.name}",
        "space": space.name,
        "space_fingerprint": space.fingerprint,
        "supernet_step": int(state.get("step", 0)),
        "supernet": weights_digest(state["model"]),
        "seed": cfg.seed,
        "cost": scfg.cost,
        "convention": scfg.convention,
        "population": scfg.population,
        "generations": scfg.generations,
        "num_mutations": scfg.num_mutations,
        "num_crossovers": scfg.num_crossovers,
        "mutate_prob": scfg.mutate_prob,
        "calib_batches": scfg.calib_batches,
        "calib_batch_size": scfg.calib_batch_size,
        "val_images": scfg.val_images,
        "budget": scfg.budget.model_dump(mode="json"),
    }
    if seeds:
        meta["initial"] = f"imported official family ({seeds} members)"
    if latency_threads is not None:  # the engine thread count the latency model was measured at
        meta["latency_threads"] = latency_threads
    return meta


_RESUME = "cannot resume: "
#: meta.json keys that earlier releases did not write.
_LATER_KEYS = ("supernet", "budget")
_START_OVER = "; pass --force to start the search over"


def weights_digest(model_state: dict[str, Any]) -> str:
    """A digest of a supernet's weights (names, dtypes, shapes and bytes): a search resumes only on the same
    supernet, not on one retrained in the same folder to the same step."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=16)
    for name in sorted(model_state):
        t = model_state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _resumed_history(out: Path, meta: dict[str, Any]) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """The candidates the search in ``out`` evaluated and the lines of its ``generations.jsonl``, provided
    it ran with the settings in ``meta``.

    Raises:
        SearchError: ``out`` holds no search, or its files are damaged.
        SearchSettingsChanged: the search in ``out`` used other settings.
    """
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        raise SearchError(f"cannot resume: no search in {str(out)!r} (meta.json missing)")
    try:
        old = read_json(meta_path, error=SearchError)
    except SearchError as exc:
        raise SearchError(f"cannot resume: {exc}{_START_OVER}") from None
    if not isinstance(old, dict):
        raise SearchError(f"cannot resume: {str(meta_path)!r} is a JSON {json_kind(old)}, not an object"
                          f"{_START_OVER}")
    # More generations continue the same search: generation g depends only on the generations before it.
    grows = isinstance(old.get("generations"), int) and meta["generations"] >= old["generations"]
    # Searches written before the supernet's digest and the budget were recorded resume on the other settings.
    diff = [k for k in meta if k != "title" and old.get(k) != meta[k] and not (k == "generations" and grows)
            and not (k in _LATER_KEYS and k not in old)]
    if diff:
        raise SearchSettingsChanged(f"cannot resume: the search in {str(out)!r} used other settings "
                                    f"({', '.join(diff)})")
    hist = out / "history.jsonl"
    history = [_record(hist, n, Candidate.from_json, r) for n, r in _read_lines(hist, _RESUME)]
    return history, _generation_lines(out / "generations.jsonl")


def _read_lines(path: Path, lead: str) -> list[tuple[int, dict[str, Any]]]:
    """The numbered records of one of the search's JSON-lines files (a line cut short at the end dropped)."""
    try:
        return read_jsonl_strict(path, error=SearchError, hint=_START_OVER)
    except SearchError as exc:
        raise SearchError(f"{lead}{exc}") from None


def _record(path: Path, n: int, parse: Callable[[dict[str, Any]], Any], record: dict[str, Any], *,
            lead: str = _RESUME) -> Any:
    try:
        return parse(record)
    except SearchError as exc:
        raise SearchError(f"{lead}{str(path)!r} line {n}: {exc}{_START_OVER}") from None


def _generation_line(record: dict[str, Any]) -> dict[str, Any]:
    g = record.get("generation")
    if isinstance(g, bool) or not isinstance(g, int) or g < 0:
        raise SearchError("no generation number" if g is None else f"'generation' is {json.dumps(g)[:40]}, "
                          "not a generation number")
    return record


def _generation_lines(path: Path, *, lead: str = _RESUME) -> list[dict[str, Any]]:
    """The checked lines of ``generations.jsonl``."""
    return [_record(path, n, _generation_line, r, lead=lead) for n, r in _read_lines(path, lead)]


def _open_results(out: Path, meta: dict[str, Any], *, resume: bool, force: bool, dist_info: DistInfo,
                  ) -> list[Candidate]:
    """Readies the results folder and returns the candidates a resumed search already evaluated.

    Rank 0 writes ``meta.json`` and either empties ``history.jsonl`` and ``generations.jsonl`` or rewrites
    them as resumed (without a last line a killed writer cut short); every rank has read the folder before,
    and waits for the writes after.

    Raises:
        SearchError: results exist and neither ``resume`` nor ``force`` is set, or nothing to resume.
    """
    hist_path = out / "history.jsonl"
    history: list[Candidate] = []
    generations: list[dict[str, Any]] = []
    if resume:
        history, generations = _resumed_history(out, meta)
    elif hist_path.exists() and not force:
        raise SearchError(f"search results already exist in {str(out)!r}; pass --resume to continue or --force "
                          "to start over")
    barrier(dist_info)  # every rank has read the folder before rank 0 writes to it
    if dist_info.is_main:
        ensure_dir(out)
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
        if not resume:
            for name in ("history.jsonl", "generations.jsonl"):
                if (out / name).exists():
                    (out / name).unlink()
            atomic_write_text(hist_path, "")
        else:  # drop lines a killed writer may have cut short
            atomic_write_text(hist_path, "".join(json.dumps(c.to_json()) + "\n" for c in history))
            if (out / "generations.jsonl").exists():
                atomic_write_text(out / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in generations))
    barrier(dist_info)
    return history


def _build_evaluator(cfg: RunConfig, model: Any, state: dict[str, Any], ctx: RunContext) -> SupernetEvaluator:
    """The search's fitness: top-1 on the search-validation split (the first ``search.val_images``) after
    recalibrating BN on training batches, the split rebuilt as the supernet's run made it.

    Raises:
        SearchError: the search-validation split is empty.
    """
    from ..data import build_data

    scfg = cfg.search
    data_cfg, split_seed = trained_data_config(cfg, state)
    data = build_data(data_cfg.data, resolution=model.space.resolution, seed=split_seed, run_dir=ctx.run_dir)
    if ctx.dist.is_main:
        _warn_if_not_official_split(state, data_cfg, ctx.run_dir)
    if len(data.search_val) == 0:
        raise SearchError("the search-validation split is empty: train the supernet with data.holdout_per_class > 0")
    val_split = data.search_val
    if scfg.val_images is not None and scfg.val_images < len(val_split):
        val_split = val_split.subset(range(scfg.val_images))
    calib = first_train_batches(data, scfg.calib_batches, scfg.calib_batch_size, ctx.device,
                                seed=derive_seed(split_seed, "search-calibration"), channels_last=ctx.channels_last)
    val = eval_batches(val_split, cfg, ctx.device, channels_last=ctx.channels_last)
    return SupernetEvaluator(model, calib, val)  # float32 whatever train.amp: as export and eval score


class _Recorder:
    """The search's callbacks. Rank 0 appends every evaluated candidate to ``history.jsonl`` as it comes (a
    killed search loses none) and, per generation, a line to ``generations.jsonl`` and the result files; a
    progress bar counts generations."""

    def __init__(self, out: Path, *, meta: dict[str, Any], budget: Budget,
                 reference: Sequence[tuple[float, float, str]], generations: int, resumed: int, main: bool,
                 progress: bool) -> None:
        self.out, self.meta, self.budget, self.reference = out, meta, budget, reference
        self.generations, self.resumed, self.main = generations, resumed, main
        self.new = 0  # candidates evaluated by this run
        self._hist = open(out / "history.jsonl", "a") if main else None  # noqa: SIM115 - appended during the search
        self._bar = None
        if progress and main:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=generations + 1, unit="gen", desc="search", dynamic_ncols=True)

    def on_candidate(self, c: Candidate) -> None:
        """Records one newly evaluated candidate."""
        self.new += 1
        if self._hist is not None:
            self._hist.write(json.dumps(c.to_json()) + "\n")
            self._hist.flush()
        if self._bar is not None:
            self._bar.set_postfix(evaluated=self.new + self.resumed, refresh=False)

    def on_generation(self, g: int, st: SearchState) -> None:
        """Records a completed generation and the results so far (the plot only after the last one)."""
        if self.main:
            best = max(st.history, key=lambda c: c.top1)
            line = {"generation": g, "evaluated": len(st.history), "frontier": len(st.frontier),
                    "best_top1": best.top1, "best_arch": str(best.arch)}
            with open(self.out / "generations.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            write_results(self.out, frontier=st.frontier, history=st.history, budget=self.budget, meta=self.meta,
                          reference=self.reference, plot=(g == self.generations))
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        """Ends the progress bar and the history file, however the search ended."""
        if self._bar is not None:
            self._bar.close()
        if self._hist is not None:
            self._hist.close()


def _compact_generations(path: Path) -> None:
    """Keeps one line per generation in ``generations.jsonl`` (a resumed run re-announces generations it
    replays), the last one written for each."""
    if not path.exists():
        return
    lines = {}
    for r in _generation_lines(path, lead="damaged search results: "):
        lines[r["generation"]] = r
    atomic_write_text(path, "".join(json.dumps(lines[g]) + "\n" for g in sorted(lines)))


def run_search(cfg: RunConfig, *, checkpoint: str | Path, run_dir: str | Path | None = None, resume: bool = False,
               force: bool = False, progress: bool = True, expect_space: str | None = None) -> dict[str, Any]:
    """Searches a trained supernet for the best architecture per cost bucket.

    Raises:
        SearchError: empty/infeasible range, bad step, or existing results without resume/force.
        CheckpointError: the checkpoint is missing or not a supernet checkpoint.
    """
    from ..context import make_context
    from ..upstream_import import imported_family

    scfg = cfg.search
    budget = Budget(scfg.budget.min, scfg.budget.max, scfg.budget.step,
                    "MOPs" if scfg.cost == "ops" else "ms")  # validates before any work
    ctx = make_context(cfg, run_dir)
    out = ctx.run_dir / "search"
    model, state = load_supernet(checkpoint, ctx.device, expect=cfg, expect_space=expect_space)
    space = model.space
    cost = search_cost(cfg, space)
    budget.check_feasible(cost.fn(space.smallest()), cost.fn(space.largest()))
    seeds = imported_family(out, space) or []
    meta = _search_meta(cfg, space, state, seeds=len(seeds), latency_threads=cost.latency_threads)
    history = _open_results(out, meta, resume=resume, force=force, dist_info=ctx.dist)
    evaluator = _build_evaluator(cfg, model, state, ctx)
    search = EvolutionSearch(space, cost_fn=cost.fn, describe_fn=cost.describe,
                             evaluate_fn=_distributed_evaluate(evaluator, ctx.dist), budget=budget,
                             population=scfg.population, generations=scfg.generations,
                             num_mutations=scfg.num_mutations, num_crossovers=scfg.num_crossovers,
                             mutate_prob=scfg.mutate_prob, seed=cfg.seed, max_attempts=scfg.max_attempts)
    reference = REFERENCE_POINTS.get(space.name, []) if scfg.cost == "ops" else []
    recorder = _Recorder(out, meta=meta, budget=budget, reference=reference, generations=scfg.generations,
                         resumed=len(history), main=ctx.dist.is_main, progress=progress)
    try:
        final = search.run(history=history, on_candidate=recorder.on_candidate,
                           on_generation=recorder.on_generation, seeds=seeds)
    finally:
        recorder.close()
    if ctx.dist.is_main:
        _compact_generations(out / "generations.jsonl")
    return {
        "folder": str(out),
        "evaluated": len(final.history),
        "newly_evaluated": recorder.new,
        "family": [{"bucket": b, **c.to_json()} for b, c in sorted(final.frontier.items())],
        "pareto": str(out / "pareto.json"),
        "plot": str(out / "pareto.png"),
    }


def format_search_summary(res: dict[str, Any]) -> str:
    """The family table of a :func:`run_search` result, how many architectures it evaluated and where its
    results are."""
    from ..utils.table import format_table

    rows = [[f["bucket"], f["mops"], f["top1"], f["arch"]] for f in res["family"]]
    return "\n".join([format_table(["bucket", "MOPs", "top-1 %", "arch"], rows),
                      f"evaluated {res['evaluated']} architectures ({res['newly_evaluated']} in this run)",
                      f"results: {res['pareto']}  plot: {res['plot']}"])
