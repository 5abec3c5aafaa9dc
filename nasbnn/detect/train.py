"""Detector training and evaluation runs: the optimizer step, the resumable training loop around it
(run folder, checkpoints, metrics, torchrun), and the COCO evaluation of a trained run."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from ..config import load_config
from ..data.augment import Normalize
from ..errors import CheckpointError, ConfigError, DataError, OutputError
from ..models.static import StaticBNN
from ..space import Arch
from ..train.checkpoint import load_checkpoint, space_from_checkpoint
from ..train.distributed import DistInfo, all_reduce_gradients, average_buffers, barrier
from ..train.optim import build_scheduler, param_groups
from ..train.run import Cadence, StepTrainer, TrainingRun, check_finite, load_training_state, training_state
from ..utils.io import atomic_write_text, check_outside, check_replaceable
from ..utils.seeding import derive_seed
from .coco import CategoryMap, CocoSplit, load_coco_split
from .config import DetectDataConfig, DetectRunConfig, DetectTrainConfig
from .cost import DetectorGeometry, detector_geometry
from .data import DetectionDataset, detection_batches
from .evaluate import evaluate_detector
from .fcos import fcos_losses, make_locations
from .model import BinaryDetector

__all__ = ["CHECKPOINT_KIND", "DetectorTrainer", "build_detector", "build_detector_optimizer", "checkpoint_geometry",
           "eval_config", "evaluate_run", "load_detector", "load_splits", "train_detector"]

_logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "detector"


# ------------------------------------------------------------------------------------------- data
def ensure_synthetic(cfg: DetectDataConfig) -> None:
    """Generates the configured synthetic dataset into ``data.root`` unless it is already there.

    Raises:
        DataError: no ``data.root``, or the folder holds a synthetic dataset made with other settings.
    """
    syn = cfg.synthetic
    if syn is None:
        return
    if cfg.root is None:
        raise DataError("data.synthetic needs data.root (the folder to generate the dataset into)")
    from .synthetic import generate_split

    if cfg.train == cfg.val:
        raise DataError(f"data.train and data.val are both {cfg.train!r}; a synthetic dataset needs two split names")
    for which, split, n, first in (("train", cfg.train, syn.train_images, 1),
                                   ("val", cfg.val, syn.val_images, syn.train_images + 1)):
        ann, _ = cfg.split_paths(which)  # type: ignore[arg-type]
        want = {"seed": syn.seed, "size": syn.size, "classes": syn.classes, "max_objects": syn.max_objects,
                "images": n}
        if ann.is_file():
            try:
                have = json.loads(ann.read_text()).get("info", {}).get("settings")
            except (json.JSONDecodeError, OSError, AttributeError):
                have = None
            if have == want:
                continue
            raise DataError(f"{str(ann)!r} exists but was not generated with data.synthetic={want}; delete "
                            f"{str(Path(cfg.root))!r} or choose another data.root")
        _logger.info("generating %d synthetic %s images into %s", n, split, cfg.root)
        generate_split(cfg.root, split, images=n, size=syn.size, seed=syn.seed, classes=syn.classes,
                       max_objects=syn.max_objects, first_image_id=first)


def load_splits(cfg: DetectDataConfig, *, train: bool = True) -> tuple[CocoSplit | None, CocoSplit]:
    """The validated training (if ``train``) and evaluation splits, with limits applied.

    Raises:
        DataError: any problem of the files (see :func:`load_coco_split`), or splits whose categories differ.
    """
    val = load_coco_split(*cfg.split_paths("val"), skip_missing_images=cfg.skip_missing_images)
    if cfg.limit_val is not None:
        val = val.subset(cfg.limit_val)
    if not train:
        return None, val
    tr = load_coco_split(*cfg.split_paths("train"), skip_missing_images=cfg.skip_missing_images)
    if cfg.limit_train is not None:
        tr = tr.subset(cfg.limit_train)
    if tr.categories.ids != val.categories.ids:
        raise DataError(f"the training split's category ids ({list(tr.categories.ids)[:10]}) differ from the "
                        f"evaluation split's ({list(val.categories.ids)[:10]})")
    return tr, val


def _fill(cfg: DetectDataConfig, channels: int) -> tuple[int, ...]:
    mean = cfg.mean if len(cfg.mean) == channels else (sum(cfg.mean) / len(cfg.mean),) * channels
    return tuple(min(255, max(0, round(m * 255))) for m in mean)


def _normalize(cfg: DetectDataConfig, channels: int) -> Normalize:
    if len(cfg.mean) == channels:
        return Normalize(tuple(cfg.mean), tuple(cfg.std))
    return Normalize((sum(cfg.mean) / len(cfg.mean),), (sum(cfg.std) / len(cfg.std),))


def make_dataset(split: CocoSplit, cfg: DetectDataConfig, in_channels: int) -> DetectionDataset:
    return DetectionDataset(split, canvas=cfg.canvas, in_channels=in_channels, fill=_fill(cfg, in_channels))


# ------------------------------------------------------------------------------------------ model
def build_detector(backbone: StaticBNN, categories: CategoryMap, cfg: DetectRunConfig) -> BinaryDetector:
    """The detector of ``cfg`` around ``backbone`` (used in place), frozen if configured."""
    model = BinaryDetector(backbone, categories.num_classes, cfg.detect, cfg.data.canvas, seed=cfg.seed)
    if cfg.detect.freeze_backbone:
        model.freeze_backbone()
    return model


def _detector_extra(model: BinaryDetector, categories: CategoryMap, source: dict[str, Any]) -> dict[str, Any]:
    return {"arch": str(model.backbone.arch), "categories": categories.to_list(), "canvas": model.canvas,
            "in_channels": model.backbone.space.in_channels, "backbone_source": source,
            "backbone_weight_norm": bool(model.backbone.weight_norm)}


def config_of_checkpoint(state: dict[str, Any], path: str | Path) -> DetectRunConfig:
    """The run config stored in a detector checkpoint.

    Raises:
        CheckpointError: the stored config does not validate (e.g. written by another nasbnn version).
    """
    from pydantic import ValidationError

    try:
        return DetectRunConfig.model_validate(state["config"])
    except ValidationError as err:
        e = err.errors()[0]
        raise CheckpointError(f"the config stored in {str(path)!r} does not validate: "
                              f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}") from None


def _detector_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """The detector checkpoint at ``checkpoint`` (file or run folder).

    Raises:
        CheckpointError: not a checkpoint, or one of another kind (a supernet's is named as such).
    """
    state = load_checkpoint(checkpoint)
    kind = state.get("kind")
    if kind != CHECKPOINT_KIND:
        p = Path(checkpoint)
        p = p / "checkpoint.pt" if p.is_dir() else p
        hint = (" (a supernet can be a detector's backbone: nasbnn detect train --backbone-checkpoint)"
                if kind == "supernet" else "")
        raise CheckpointError(f"{str(p)!r} is a {kind} checkpoint, not a detector{hint}")
    return state


def load_detector(checkpoint: str | Path, device: torch.device | str = "cpu"
                  ) -> tuple[BinaryDetector, CategoryMap, DetectRunConfig, dict[str, Any]]:
    """A trained detector from a run's checkpoint (file or run folder), in eval mode.

    Returns:
        ``(model, categories, config, checkpoint)``.

    Raises:
        CheckpointError: not a detector checkpoint, or weights that do not fit its description.
    """
    state = _detector_checkpoint(checkpoint)
    cfg = config_of_checkpoint(state, checkpoint)
    extra = state["extra"]
    space = space_from_checkpoint(state)
    categories = CategoryMap.from_list(extra["categories"])
    model = build_detector(StaticBNN.build(space, Arch.parse(extra["arch"]),
                                           weight_norm=bool(extra.get("backbone_weight_norm", True))),
                           categories, cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not fit its detector: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), categories, cfg, state


def checkpoint_geometry(checkpoint: str | Path, *, canvas: int | None = None,
                        num_classes: int | None = None) -> DetectorGeometry:
    """What the cost of a trained detector depends on, read from its checkpoint; ``canvas`` and
    ``num_classes``, when given, replace the trained input side and class count.

    Raises:
        CheckpointError: not a detector checkpoint, or a stored config that does not validate.
    """
    state = _detector_checkpoint(checkpoint)
    cfg = config_of_checkpoint(state, checkpoint)
    space, arch = space_from_checkpoint(state), Arch.parse(state["extra"]["arch"])
    trained_classes = len(state["extra"]["categories"])
    return detector_geometry(space, arch, cfg.detect, trained_classes if num_classes is None else num_classes,
                             cfg.data.canvas if canvas is None else canvas)


def eval_config(checkpoint: str | Path | None, config: str | Path | None, overrides: Sequence[str], *,
                default_config: str) -> tuple[Path, DetectRunConfig | None]:
    """The detector checkpoint (or run folder) to evaluate, and the config to evaluate it with.

    Without ``checkpoint``, the run folder ``out`` of ``config`` (default: ``default_config``). The config
    is the run's saved ``config.yaml`` with ``overrides``, else ``config`` with them, else ``None`` (the
    checkpoint's own).

    Raises:
        NasbnnError: ``overrides`` but no config to apply them to.
        CheckpointError: the checkpoint is not a detector's (e.g. a supernet run's).
    """
    if checkpoint is not None:
        ckpt = Path(checkpoint)
    else:
        ckpt = Path(load_config(DetectRunConfig, config or default_config, overrides).out)
    run = ckpt if ckpt.is_dir() else ckpt.parent
    if (run / "config.yaml").is_file():
        try:
            return ckpt, load_config(DetectRunConfig, run / "config.yaml", overrides)
        except ConfigError:
            if (ckpt / "checkpoint.pt" if ckpt.is_dir() else ckpt).is_file():
                _detector_checkpoint(ckpt)  # another kind of run is named as such
            raise
    if config is not None:
        return ckpt, load_config(DetectRunConfig, config, overrides)
    if overrides:
        raise ConfigError(f"no config.yaml in {str(run)!r} to apply the overrides to; pass --config FILE")
    return ckpt, None


def build_detector_optimizer(model: BinaryDetector, cfg: DetectTrainConfig) -> torch.optim.Optimizer:
    """Adam with L2 on conv kernels only (the classification runs' policy, ``param_groups``); the neck and
    head learn at ``lr``, the backbone at ``lr · backbone_lr_scale``. Frozen parameters are left out."""
    groups = []
    for part, scale in ((model.neck, 1.0), (model.head, 1.0), (model.backbone, cfg.backbone_lr_scale)):
        for group in param_groups(part, cfg.weight_decay):
            if group["params"]:
                groups.append({**group, "lr": cfg.lr * scale})
    return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)


# ------------------------------------------------------------------------------------------- step
class DetectorTrainer(StepTrainer[BinaryDetector]):
    """One optimizer step of the detector; no logging, no I/O.

    Raises (from :meth:`step`):
        TrainingDiverged: the loss is not finite (the step is not applied).
    """

    def __init__(self, model: BinaryDetector, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, grad_clip: float | None = None,
                 dist: DistInfo | None = None, autocast: AbstractContextManager | None = None) -> None:
        super().__init__(model, optimizer, scheduler, dist=dist, autocast=autocast)
        self.grad_clip = grad_clip

    def step(self, images: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor],
             step: int) -> dict[str, torch.Tensor]:
        model = self.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = model(images)
        loc = make_locations(out.sizes, model.strides, model.cfg.range_scale, images.device)
        losses = fcos_losses(out, loc, boxes, labels, model.cfg, self.dist)
        losses["loss"].backward()
        all_reduce_gradients(model, self.dist)
        check_finite(losses["loss"], step, model.parameters())
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        average_buffers(model, self.dist)
        return {k: v.detach() for k, v in losses.items()}


# -------------------------------------------------------------------------------------------- run
def _eval_paths(run: Path, split_name: str, json_out: str | Path | None = None) -> tuple[Path, Path]:
    """Where an evaluation writes its metrics and its detections."""
    if json_out is None:
        return run / "eval.json", run / f"detections_{split_name}.json"
    path = Path(json_out)
    return path, path.with_name(path.stem + "_detections.json")


def _refuse_overwriting_inputs(outputs: Sequence[Path], inputs: Sequence[str | Path | None]) -> None:
    """Refuses (OutputError) an output file that is one of the evaluation's inputs, before it starts."""
    protected = {Path(p).resolve() for p in inputs if p is not None}
    for out in outputs:
        if out.resolve() in protected:
            raise OutputError(f"{str(out)!r} is one of this evaluation's inputs; choose another --json-out")


def _write_eval(run: Path, split_name: str, stats: dict[str, float], results: list[dict[str, Any]],
                info: dict[str, Any], json_out: str | Path | None = None) -> Path:
    path, detections = _eval_paths(run, split_name, json_out)
    atomic_write_text(detections, json.dumps(results) + "\n")
    atomic_write_text(path, json.dumps({**info, "split": split_name, "metrics": stats}, indent=2) + "\n")
    return path


class DetectorRecipe:
    """The detector's recipe on the run skeleton: :class:`DetectorTrainer`'s step on detection batches;
    evaluation is COCO mAP on the validation split."""

    kind = CHECKPOINT_KIND

    def __init__(self, cfg: DetectRunConfig, model: BinaryDetector, device: torch.device, dist_info: DistInfo,
                 splits: tuple[CocoSplit, CocoSplit], source: dict[str, Any], total_steps: int,
                 steps_per_epoch: int) -> None:
        from ..utils.device import autocast as make_autocast

        dcfg, tcfg = cfg.data, cfg.train
        self.cfg, self.model, self.device, self.dist = cfg, model, device, dist_info
        self.train_split, self.val_split = splits
        self.space = model.backbone.space
        self.optimizer = build_detector_optimizer(model, tcfg)
        self.scheduler = build_scheduler(self.optimizer, total_steps=total_steps,
                                         warmup_steps=round(tcfg.warmup_epochs * steps_per_epoch),
                                         start_factor=tcfg.warmup_start_factor, min_lr=tcfg.min_lr)
        self.autocast = make_autocast(device, tcfg.amp)
        in_channels = self.space.in_channels
        self.norm = _normalize(dcfg, in_channels)
        self.train_set = make_dataset(self.train_split, dcfg, in_channels)
        self.val_set = make_dataset(self.val_split, dcfg, in_channels)
        self.trainer = DetectorTrainer(model, self.optimizer, self.scheduler, grad_clip=tcfg.grad_clip,
                                       dist=dist_info, autocast=self.autocast)
        self.extra = {**_detector_extra(model, self.train_split.categories, source), "epochs": tcfg.epochs}
        self.data_seed = derive_seed(cfg.seed, "detect-data")
        self.results: list[dict[str, Any]] = []

    def batches(self, epoch: int, start_batch: int) -> Any:
        dcfg = self.cfg.data
        return detection_batches(self.train_set, batch_size=dcfg.batch_size, train=True, flip=dcfg.flip,
                                 seed=self.data_seed, epoch=epoch, start_batch=start_batch, rank=self.dist.rank,
                                 world_size=self.dist.world_size, device=self.device, workers=dcfg.workers,
                                 norm=self.norm)

    def batch_size(self, batch: Any) -> int:
        return len(batch)

    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        return self.trainer.step(batch.images, batch.boxes, batch.labels, step)

    def evaluate(self) -> dict[str, float]:
        dcfg = self.cfg.data
        batches = detection_batches(self.val_set, batch_size=dcfg.eval_batch_size, train=False, flip=False, seed=0,
                                    device=self.device, workers=dcfg.workers, norm=self.norm)
        stats, self.results = evaluate_detector(self.model, self.val_split, batches, self.cfg.eval, self.autocast)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return training_state(self.model, self.optimizer, self.scheduler)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_training_state(state, self.model, self.optimizer, self.scheduler)

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra


def _resumed_backbone(state: dict[str, Any], categories: CategoryMap, path: Path) -> tuple[StaticBNN, dict[str, Any]]:
    """The (untrained) backbone network a detector checkpoint was made with and where it came from; its
    weights come with the detector's state.

    Raises:
        CheckpointError: the checkpoint was trained on other categories than ``categories``.
    """
    extra = state["extra"]
    if extra.get("categories") != categories.to_list():
        raise CheckpointError(f"{str(path)!r} was trained on other categories than the configured data")
    backbone = StaticBNN.build(space_from_checkpoint(state), Arch.parse(extra["arch"]),
                               weight_norm=bool(extra.get("backbone_weight_norm", True)))
    return backbone, extra.get("backbone_source", {})


def train_detector(cfg: DetectRunConfig, *, run_dir: str | Path | None = None, resume: bool = False,
                   force: bool = False, progress: bool = True, max_steps: int | None = None,
                   model_out: list[BinaryDetector] | None = None) -> dict[str, Any]:
    """Trains the configured detector; writes the run folder; returns the final metrics.

    Args:
        resume: continue from ``<run_dir>/checkpoint.pt``; the batches, flips and weights of the
            continued run equal those of an uninterrupted one.
        force: a fresh run may replace the folder's checkpoint (see :class:`~nasbnn.train.run.TrainingRun`).
        max_steps: stop after this global step (the schedule still spans ``train.epochs``).
        model_out: if given, the trained in-memory detector is appended to it.

    Raises:
        DataError: unusable annotation files or images (found before training starts).
        CheckpointError: ``resume`` without a usable checkpoint.
        OutputError: a fresh run without ``force`` into a folder that holds a checkpoint.
        TrainingDiverged: a loss became NaN/inf (the last good checkpoint is kept).
    """
    from ..train.distributed import setup
    from ..utils.device import configure_backends
    from .backbone import build_backbone

    dist_info, device = setup(cfg.device)
    configure_backends(device)
    run = TrainingRun(Path(run_dir or cfg.out), cfg, dist=dist_info, resume=resume, force=force, progress=progress,
                      desc="detector", kind=CHECKPOINT_KIND)
    if dist_info.is_main:
        ensure_synthetic(cfg.data)
    barrier(dist_info)
    train_split, val_split = load_splits(cfg.data)
    assert train_split is not None
    categories = train_split.categories
    steps_per_epoch, total_steps = run.schedule(len(train_split), cfg.data.batch_size, cfg.train.epochs,
                                                key="data.batch_size")
    state = run.load(CHECKPOINT_KIND)
    if state is not None:
        backbone, source = _resumed_backbone(state, categories, run.checkpoint_path)
    else:
        backbone, source = build_backbone(cfg.backbone, seed=cfg.seed)
    model = build_detector(backbone, categories, cfg).to(device)
    recipe = DetectorRecipe(cfg, model, device, dist_info, (train_split, val_split), source, total_steps,
                            steps_per_epoch)
    run.start(recipe, state)
    tcfg = cfg.train
    eval_every = None if tcfg.eval_every_epochs is None else max(1, round(tcfg.eval_every_epochs * steps_per_epoch))
    summary = run.train(recipe, examples=len(train_split), batch_size=cfg.data.batch_size, epochs=tcfg.epochs,
                        cadence=Cadence(tcfg.log_every, tcfg.checkpoint_every, eval_every, eval_at_end=False),
                        max_steps=max_steps)
    if dist_info.is_main:  # the final evaluation, with the detections written beside the metrics
        run.last_eval = recipe.evaluate()
        _write_eval(run.folder, cfg.data.val, run.last_eval, recipe.results,
                    {"checkpoint": str(run.checkpoint_path), "step": run.step, "images": len(val_split)})
    summary = {**summary, "backbone": source, **run.last_eval}
    run.write_json("train_summary.json", summary)
    if model_out is not None:
        model_out.append(model)
    return summary


def evaluate_run(checkpoint: str | Path, cfg: DetectRunConfig | None = None, *,
                 json_out: str | Path | None = None, inputs: Sequence[str | Path | None] = ()) -> dict[str, Any]:
    """COCO evaluation of a trained detector on its (or ``cfg``'s) evaluation split; writes JSON.

    Args:
        checkpoint: a detector checkpoint or run folder.
        cfg: the data/eval settings to use (default: the run's own config).
        json_out: where to write the metrics (default: ``eval.json`` beside the checkpoint); the detections
            go beside it (``<stem>_detections.json``).
        inputs: other files the caller read (a config file): never overwritten.

    Raises:
        OutputError: an output would replace an input (the checkpoint, the run's config, an annotation
            file, ``inputs``); checked before the evaluation.
    """
    from ..utils.device import autocast as make_autocast
    from ..utils.device import resolve_device

    ck = Path(checkpoint)
    run = ck if ck.is_dir() else ck.parent
    model, categories, saved_cfg, state = load_detector(ck)
    cfg = cfg or saved_cfg
    outputs = _eval_paths(run, cfg.data.val, json_out)
    _refuse_overwriting_inputs(outputs, [ck / "checkpoint.pt" if ck.is_dir() else ck, run / "config.yaml",
                                         cfg.data.split_paths("val")[0], cfg.data.split_paths("train")[0], *inputs])
    for out in outputs:  # the images and annotations of both splits; devices and pipes
        check_outside(out, [*cfg.data.split_paths("val"), *cfg.data.split_paths("train")], option="--json-out")
        check_replaceable(out)
    device = resolve_device(cfg.device)
    model = model.to(device)
    _, val_split = load_splits(cfg.data, train=False)
    if val_split.categories.ids != categories.ids:
        raise DataError(f"the evaluation split's category ids ({list(val_split.categories.ids)[:10]}) differ from "
                        f"the detector's ({list(categories.ids)[:10]})")
    in_channels = model.backbone.space.in_channels
    batches = detection_batches(make_dataset(val_split, cfg.data, in_channels), batch_size=cfg.data.eval_batch_size,
                                train=False, flip=False, seed=0, device=device, workers=cfg.data.workers,
                                norm=_normalize(cfg.data, in_channels))
    stats, results = evaluate_detector(model, val_split, batches, cfg.eval, make_autocast(device, cfg.train.amp))
    info = {"checkpoint": str(ck), "step": int(state["step"]), "images": len(val_split)}
    path = _write_eval(run, cfg.data.val, stats, results, info, json_out)
    return {**info, "metrics": stats, "json": str(path)}
