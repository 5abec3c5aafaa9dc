"""The detector run configuration (backbone source, COCO-format data, detector, training, decoding),
loaded like every nasbnn config with :func:`nasbnn.config.load_config` (YAML + dotted overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..config import AdamBetas, AmpMode, Epochs, RunBase, Strict, WarmupEpochs

__all__ = [
    "BackboneConfig",
    "DetectConfig",
    "DetectDataConfig",
    "DetectEvalConfig",
    "DetectRunConfig",
    "DetectTrainConfig",
    "SyntheticDetectConfig",
]

#: ImageNet channel statistics (images are read as uint8 RGB, or grey when the backbone wants 1 channel).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneConfig(Strict):
    """Where the backbone comes from: a supernet checkpoint + architecture, a bundle, or a random init.

    With neither ``checkpoint`` nor ``bundle``, the backbone is the architecture ``arch`` of ``space``
    with randomly initialised weights (a supernet built from ``seed`` and exported).
    """

    space: str = Field("fashion-mnist", description="search space of a random-init backbone (preset or file)")
    in_channels: int | None = Field(3, ge=1, description="input channels of a random-init backbone "
                                                         "(null: the space's)")
    checkpoint: str | None = Field(None, description="supernet checkpoint (file or run folder)")
    arch: str = Field("largest", description="with a checkpoint or a random init: an architecture string, "
                                             "'largest' or 'smallest'")
    bundle: str | None = Field(None, description="an exported bundle folder (nasbnn export)")
    zero_init_residual: bool = Field(True, description="random init only: every binary block starts as its "
                                                       "shortcut (zero BN scales at the end of its branches)")

    @model_validator(mode="after")
    def _one_source(self) -> BackboneConfig:
        if self.checkpoint is not None and self.bundle is not None:
            raise ValueError("give either backbone.checkpoint or backbone.bundle, not both")
        return self


class SyntheticDetectConfig(Strict):
    """A synthetic shapes dataset generated into ``data.root`` when its files are missing."""

    train_images: int = Field(400, ge=1)
    val_images: int = Field(100, ge=1)
    size: int = Field(128, ge=16, description="image side in pixels")
    classes: int = Field(3, ge=1, le=4, description="shape kinds: rectangle, ellipse, triangle, diamond")
    max_objects: int = Field(4, ge=1)
    seed: int = 0


class DetectDataConfig(Strict):
    """COCO-format data: ``root/annotations/instances_<split>.json`` with images in ``root/<split>/``.

    Explicit ``*_annotations`` / ``*_images`` paths override the layout (e.g. for other folder names).
    """

    root: str | None = Field(None, description="dataset folder in the COCO layout")
    train: str = Field("train2017", description="training split name")
    val: str = Field("val2017", description="evaluation split name")
    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    canvas: int = Field(128, ge=16, le=8192, description="images are resized (aspect kept) and padded to canvas×canvas")
    batch_size: int = Field(16, ge=1, description="global batch size (divided across ranks)")
    eval_batch_size: int = Field(32, ge=1)
    workers: int = Field(0, ge=0, description="data-loading worker processes")
    flip: bool = Field(True, description="random horizontal flip when training")
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    skip_missing_images: bool = Field(False, description="drop listed images whose files are missing "
                                                         "(default: refuse the annotation file)")
    limit_train: int | None = Field(None, ge=1, description="use only the first N training images")
    limit_val: int | None = Field(None, ge=1, description="evaluate on the first N images only")
    synthetic: SyntheticDetectConfig | None = Field(None, description="generate a synthetic dataset into root")

    def split_paths(self, split: Literal["train", "val"]) -> tuple[Path, Path]:
        """``(annotation file, image folder)`` of ``split``."""
        name = self.train if split == "train" else self.val
        ann = self.train_annotations if split == "train" else self.val_annotations
        img = self.train_images if split == "train" else self.val_images
        root = Path(self.root) if self.root is not None else Path(".")
        return (Path(ann) if ann else root / "annotations" / f"instances_{name}.json",
                Path(img) if img else root / name)

    @model_validator(mode="after")
    def _check(self) -> DetectDataConfig:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError("data.mean and data.std need 1 or 3 entries each, the same number")
        if any(s <= 0 for s in self.std):
            raise ValueError("data.std entries must be positive")
        explicit = (self.train_annotations, self.train_images, self.val_annotations, self.val_images)
        if self.synthetic is not None and any(p is not None for p in explicit):
            raise ValueError("data.synthetic generates the root/annotations + root/<split> layout; leave "
                             "data.*_annotations and data.*_images unset (or set data.synthetic=null)")
        return self



class DetectConfig(Strict):
    """The detector around the backbone: FPN-lite neck, FCOS head, loss and assignment settings."""

    num_levels: int = Field(2, ge=1, description="backbone stages used as pyramid levels (the last ones)")
    extra_levels: int = Field(1, ge=0, description="stride-2 levels added above the last stage")
    neck_width: int = Field(32, ge=4, description="common width of the neck and head")
    head_convs: int = Field(2, ge=0, description="3x3 convs in each head tower (classification, box)")
    binary_towers: bool = Field(False, description="binary head towers (RSign, binary 3x3 conv, shortcut)")
    norm: Literal["group", "batch"] = "group"
    gn_groups: int = Field(8, ge=1)
    freeze_backbone: bool = Field(False, description="keep the backbone's weights and BN statistics fixed")
    center_sampling_radius: float = Field(1.5, ge=0, description="in strides; 0 disables centre sampling")
    range_scale: float = Field(8.0, gt=0, description="level i takes objects whose largest ltrb distance is "
                                                      "in (range_scale·stride_{i-1}, range_scale·stride_i]")
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    box_loss: Literal["giou", "iou"] = "giou"
    box_loss_weight: float = Field(1.0, ge=0)
    prior_prob: float = Field(0.01, gt=0, lt=1, description="initial foreground probability of the classifier")

    @model_validator(mode="after")
    def _check(self) -> DetectConfig:
        if self.norm == "group" and self.neck_width % self.gn_groups:
            raise ValueError(f"detect.neck_width={self.neck_width} is not divisible by "
                             f"detect.gn_groups={self.gn_groups}")
        return self


class DetectTrainConfig(Strict):
    """Adam with L2 on conv kernels, linear warm-up and cosine decay (as the classification runs)."""

    epochs: Epochs = Field(12, description="may be fractional")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate of the neck and head")
    backbone_lr_scale: float = Field(1.0, gt=0, description="the backbone learns at lr × this (binary latent "
                                                            "weights flip sign at high rates)")
    weight_decay: float = Field(1e-4, ge=0)
    betas: AdamBetas = Field((0.9, 0.999), description="Adam's moment decay rates, each in [0, 1)")
    warmup_epochs: WarmupEpochs = 0.5
    warmup_start_factor: float = Field(0.01, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    log_every: int = Field(10, ge=1)
    eval_every_epochs: Epochs | None = Field(None, description="mAP on the val split this often "
                                                                    "(null: at the end only)")
    amp: AmpMode = "auto"


class DetectEvalConfig(Strict):
    """Decoding of the head's outputs into detections."""

    score_threshold: float = Field(0.05, ge=0, le=1)
    nms_threshold: float = Field(0.6, ge=0, le=1)
    pre_nms_topk: int = Field(1000, ge=1, description="candidates per level and image before NMS")
    max_detections: int = Field(100, ge=1, description="detections per image")


class DetectRunConfig(RunBase):
    """Everything a detector run needs."""

    out: str = Field("nasbnn-detect", description="run folder")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    data: DetectDataConfig = Field(default_factory=DetectDataConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    train: DetectTrainConfig = Field(default_factory=DetectTrainConfig)
    eval: DetectEvalConfig = Field(default_factory=DetectEvalConfig)
