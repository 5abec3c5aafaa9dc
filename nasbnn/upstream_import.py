"""Turning the official NAS-BNN artifacts into a nasbnn run folder.

``checkpoint.pth.tar`` (the supernet) becomes ``<run>/checkpoint.pt`` of the ``imagenet`` space, and
``info.pth.tar`` (the search result) becomes ``<run>/search/pareto.json`` holding the official family
(one member per OPs bucket, with its OPs and the top-1 upstream recorded). Every command that reads
a run folder (``export``, ``eval``, ``search``, ``finetune``, ``detect train``) then works unchanged.

The folder is assembled beside ``--to`` and renamed into place at the end, so an error leaves
nothing behind and an existing folder is never touched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from .config import RunConfig, atomic_write_text, config_to_dict, dump_config
from .cost import arch_cost
from .errors import CheckpointError, ConfigError, InvalidArch, OutputError, SearchError
from .space import SearchSpace
from .utils.io import staging_folder

__all__ = ["IMPORTED_FAMILY", "UPSTREAM_ORIGIN", "import_upstream", "imported_family"]

#: ``checkpoint.pt`` ``extra["origin"]`` and ``pareto.json`` ``origin`` of imported artifacts.
UPSTREAM_ORIGIN = "NAS-BNN official"
#: The imported search result, kept apart from the files a later search rewrites.
IMPORTED_FAMILY = "upstream_family.json"


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputError(f"--to {str(dest)!r} already exists and is not an empty folder; choose a new folder "
                          "(nothing was written)")


def _space(cfg: RunConfig) -> SearchSpace:
    from .context import base_space

    space = base_space(cfg)
    if cfg.space.num_classes is not None:
        space = space.with_overrides(num_classes=cfg.space.num_classes)
    return space


def _load_supernet(path: Path, space: SearchSpace) -> tuple[Any, dict[str, Any]]:
    from .models import SuperBNN
    from .upstream import load_upstream_checkpoint, safe_torch_load

    obj = safe_torch_load(path)
    model = SuperBNN(space)
    try:
        load_upstream_checkpoint(model, obj)
    except CheckpointError as exc:
        raise CheckpointError(f"{str(path)!r}: {exc}") from None
    meta = {k: obj[k] for k in ("epoch", "arch") if isinstance(obj, dict) and isinstance(obj.get(k), (int, str))}
    return model, meta


def _family(search: Path, space: SearchSpace, convention: str) -> tuple[list[dict[str, Any]], int | None]:
    """The members of ``info.pth.tar`` as ``pareto.json`` family entries (our OPs, upstream's top-1)."""
    from .upstream import arch_to_upstream, load_upstream_search

    try:
        res = load_upstream_search(search, space)
    except InvalidArch as exc:
        raise InvalidArch(f"{str(search)!r} holds an architecture outside space {space.name!r}: {exc}") from None
    if not res.family:
        raise CheckpointError(f"{str(search)!r} has an empty 'pareto_global': no family to import")
    out = []
    for m in res.family:
        if m.top1 is None or not math.isfinite(m.top1):
            raise CheckpointError(f"{str(search)!r}: the member of bucket {m.bin_mops} has no recorded accuracy in "
                                  "'vis_dict'; is it an upstream search result?")
        c = arch_cost(m.arch, space, convention=convention)
        out.append({"bucket": float(m.bin_mops), "arch": str(m.arch), "mflops": c.mflops, "mbops": c.mbops,
                    "mops": c.mops, "cost": c.mops, "top1": m.top1, "generation": 0,
                    "upstream_mops": m.mops, "upstream_arch": list(arch_to_upstream(m.arch, space)),
                    "nondecreasing": m.nondecreasing})
    return out, res.epoch


def _pareto_doc(family: list[dict[str, Any]], cfg: RunConfig, space: SearchSpace, search: Path,
                epoch: int | None) -> dict[str, Any]:
    from .search.result import Candidate, pareto_front

    cands = [Candidate.from_json(f) for f in family]
    return {
        "title": f"official NAS-BNN family on {space.name} (imported)",
        "origin": UPSTREAM_ORIGIN,
        "source": str(search),
        "upstream_epoch": epoch,
        "space": space.name,
        "space_fingerprint": space.fingerprint,
        "cost": "ops",
        "convention": cfg.search.convention,
        "note": "top1 is the accuracy upstream's search recorded on its own held-out split",
        "budget": {"min": cfg.search.budget.min, "max": cfg.search.budget.max, "step": cfg.search.budget.step,
                   "unit": "MOPs"},
        "evaluated": len(family),
        "family": family,
        "pareto_front": [c.to_json() for c in pareto_front(cands)],
    }


def import_upstream(cfg: RunConfig, *, checkpoint: str | Path, dest: str | Path, search: str | Path | None = None,
                    split: str | Path | None = None) -> dict[str, Any]:
    """Writes a run folder at ``dest`` from official artifacts; returns what it wrote.

    Args:
        cfg: the run config (``--config imagenet`` and overrides); saved as the folder's config.
        checkpoint: upstream ``checkpoint.pth.tar`` (or a bare state dict, keys with or without ``module.``).
        dest: the new run folder (must not exist, or be empty).
        search: upstream ``info.pth.tar``; its family goes to ``search/pareto.json``.
        split: the folder upstream's ``split_imagenet.py`` wrote; its partition of ``data.root`` becomes
            ``split.json``, so searches and exports validate on the official held-out images.

    Raises:
        NasbnnError: ``dest`` not empty; CheckpointError: unreadable, truncated or foreign files;
        InvalidArch: a searched architecture outside the space; DataError: a split folder that cannot be
        resolved against ``data.root``.
    """
    dest = Path(dest).expanduser().absolute()
    _check_dest(dest)
    cfg = cfg.model_copy(update={"out": str(dest)})
    space = _space(cfg)
    search_p = Path(search).expanduser() if search is not None else None
    family, epoch = _family(search_p, space, cfg.search.convention) if search_p is not None else ([], None)
    if split is not None and cfg.data.root is None:
        raise ConfigError("--split needs data.root=<the ImageNet folder the split was made from>")
    model, ck_meta = _load_supernet(Path(checkpoint).expanduser(), space)
    tmp = staging_folder(dest, "import")
    try:
        written = _write(tmp, cfg, space, model, ck_meta, checkpoint, family, epoch, search_p, split)
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"folder": str(dest), "family": family, "files": [str(dest / w) for w in written],
            "upstream_epoch": ck_meta.get("epoch")}


def _write(tmp: Path, cfg: RunConfig, space: SearchSpace, model: Any, ck_meta: dict[str, Any],
           checkpoint: str | Path, family: list[dict[str, Any]], epoch: int | None, search: Path | None,
           split: str | Path | None) -> list[str]:
    from .train.checkpoint import save_checkpoint

    written = []
    if split is not None:
        from .data.upstream_split import write_upstream_manifest

        write_upstream_manifest(split, str(cfg.data.root), tmp / "split.json", seed=cfg.seed)
        written.append("split.json")
    extra = {"origin": UPSTREAM_ORIGIN, "upstream_checkpoint": str(checkpoint), **{f"upstream_{k}": v
                                                                                    for k, v in ck_meta.items()}}
    save_checkpoint(tmp / "checkpoint.pt", kind="supernet", model_state=model.state_dict(), space=space,
                    config=config_to_dict(cfg), step=0, extra=extra)
    dump_config(cfg, tmp / "config.yaml")
    written += ["checkpoint.pt", "config.yaml"]
    if search is not None:
        doc = _pareto_doc(family, cfg, space, search, epoch)
        text = json.dumps(doc, indent=2) + "\n"
        atomic_write_text(tmp / "search" / "pareto.json", text)
        atomic_write_text(tmp / "search" / IMPORTED_FAMILY, text)
        written += ["search/pareto.json", f"search/{IMPORTED_FAMILY}"]
    return written


def imported_family(search_dir: str | Path, space: SearchSpace) -> list[Any] | None:
    """The architectures of an imported official family in ``search_dir`` (None when there is none)."""
    from .search.result import family_entries
    from .space import Arch
    from .utils.io import read_json

    p = Path(search_dir) / IMPORTED_FAMILY
    if not p.is_file():
        return None
    fix = f"; import the official files again, or delete {str(p)!r} to search without them"
    try:
        family = family_entries(read_json(p, error=SearchError), repr(str(p)))
        archs = [space.validate(Arch.parse(f["arch"]), nondecreasing=False) for f in family]
    except (SearchError, InvalidArch) as exc:
        raise SearchError(f"cannot read the imported family: {exc}{fix}") from None
    return archs
