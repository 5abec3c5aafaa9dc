"""Typed run configuration: YAML files, dotted ``a.b=c`` overrides, validation, dumping.

Schemas are pydantic models that forbid unknown keys; YAML parsing and dotted overrides are
OmegaConf's. ``load_config(RunConfig, "configs/fashion-mnist.yaml", ["train.epochs=2"])`` merges the
schema defaults, the file and the overrides (in that order) and validates the result; any problem is
a one-line :class:`ConfigError` naming the key and what is valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .space import MAX_RESOLUTION
from .utils.io import atomic_write_text

__all__ = [
    "MAX_EPOCHS",
    "AdamBetas",
    "BudgetConfig",
    "DataConfig",
    "Epochs",
    "EvalConfig",
    "ExportConfig",
    "FinetuneConfig",
    "ModelConfig",
    "PipelineConfig",
    "RunBase",
    "RunConfig",
    "SearchConfig",
    "SpaceConfig",
    "SyntheticDataConfig",
    "TrainConfig",
    "WarmupEpochs",
    "dump_config",
    "load_config",
]

M = TypeVar("M", bound=BaseModel)


def _amp_alias(value: Any) -> Any:
    """YAML and dotted overrides read a bare ``off`` as false; ``fp32`` names the same choice."""
    return "off" if value is False or value == "fp32" else value


AmpMode = Annotated[Literal["auto", "bf16", "off"], BeforeValidator(_amp_alias)]

#: Most epochs of any schedule: far beyond any recipe, and small enough that steps stay exact integers.
MAX_EPOCHS = 100_000
#: A training length in epochs (may be fractional).
Epochs = Annotated[float, Field(gt=0, le=MAX_EPOCHS)]
#: A warm-up length in epochs (0: none).
WarmupEpochs = Annotated[float, Field(ge=0, le=MAX_EPOCHS)]
#: Adam's moment decay rates, each in [0, 1).
AdamBetas = tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]


class Strict(BaseModel):
    """Base of all config sections: unknown keys and wrong types are errors, and every float is finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SpaceConfig(Strict):
    """Which search space; ``name`` is a preset (``nasbnn spaces``) or a YAML/JSON file."""

    name: str = "fashion-mnist"
    num_classes: int | None = Field(None, ge=1, description="default: the dataset's class count")
    resolution: int | None = Field(None, ge=8, le=MAX_RESOLUTION, description="default: the preset's resolution")


class SyntheticDataConfig(Strict):
    """A learnable random dataset generated from a seed, for tests and smoke runs."""

    num_train: int = Field(512, ge=8)
    num_test: int = Field(128, ge=8)
    num_classes: int = Field(5, ge=2)
    channels: int = Field(3, ge=1)
    resolution: int = Field(16, ge=4, le=MAX_RESOLUTION)


#: Images per class upstream's ``split_imagenet.py`` holds out of ImageNet-train for the search.
IMAGEFOLDER_HOLDOUT = 50


class DataConfig(Strict):
    """Dataset, splits and loading.

    The search-validation split is ``holdout_per_class`` images per class moved out of the
    training set; supernet training uses the rest. Unset, it follows the dataset: 50 for image
    folders (what upstream's ``split_imagenet.py`` holds out per ImageNet class), 500 otherwise.
    """

    name: Literal["fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic"] = "fashion-mnist"
    root: str | None = Field(None, description="dataset folder; fashion-mnist/mnist default to the Debian package")
    batch_size: int = Field(256, ge=1, description="global batch size (divided across ranks)")
    eval_batch_size: int = Field(1000, ge=1)
    workers: int = Field(0, ge=0, description="data-loading worker processes per process (imagefolder): every "
                                              "loader of the run decodes with this many")
    holdout_per_class: int = Field(500, ge=0, description="search-validation images per class; default: 50 for "
                                                           "imagefolder (as upstream), 500 otherwise")
    augment: bool = True
    crop_padding: int | None = Field(None, ge=0, description="random-crop padding; default: the dataset's")
    flip: bool | None = Field(None, description="random horizontal flip; default: the dataset's")
    resolution: int | None = Field(None, ge=8, le=MAX_RESOLUTION, description="imagefolder crop size; default: "
                                                                                "the space's")
    limit_train: int | None = Field(None, ge=1, description="use only this many training images (quick runs)")
    manifest: str | None = Field(None, description="imagefolder split manifest; default: <run>/split.json")
    jpeg_draft: bool = Field(True, description="imagefolder training crops: decode a JPEG at 1/2, 1/4 or 1/8 scale "
                                               "when the crop stays at least the output size (faster, see docs)")
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)

    @model_validator(mode="before")
    @classmethod
    def _dataset_holdout(cls, data: Any) -> Any:
        """An unset (or null) ``holdout_per_class`` takes the dataset's default."""
        if isinstance(data, dict) and data.get("holdout_per_class") is None:
            data = {**data, "holdout_per_class": IMAGEFOLDER_HOLDOUT if data.get("name") == "imagefolder" else 500}
        return data


class ModelConfig(Strict):
    """Switches of the binary convolutions (ablations; the defaults are the paper's method)."""

    bi_transformation: bool = Field(True, description="learnable K²xK² matrix on the binary path of the "
                                                      "largest kernel (off: the latent filter is binarised as is)")
    weight_norm: bool = Field(True, description="standardise each filter before the sign and the scale "
                                                "(off: sign and mean-|w| scale of the raw weight)")


class TrainConfig(Strict):
    """Supernet training (the Bi-Teacher sandwich). Defaults are the upstream ImageNet recipe."""

    epochs: Epochs = Field(512, description="may be fractional for short runs")
    lr: float = Field(2.5e-3, gt=0, description="Adam learning rate (upstream: 2.5e-3 at global batch 512)")
    weight_decay: float = Field(5e-6, ge=0, description="L2 on conv and classifier weights only")
    betas: AdamBetas = Field((0.9, 0.999), description="Adam's moment decay rates, each in [0, 1)")
    warmup_epochs: WarmupEpochs = 0
    warmup_start_factor: float = Field(0.01, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)
    num_random: int = Field(2, ge=0, description="random subnets per step besides the smallest")
    largest_student: bool = Field(False, description="also distil the largest subnet with binary weights each "
                                                     "step (not in the official recipe)")
    bi_teacher: bool = Field(True, description="teacher = largest subnet with real-valued weights (off: with "
                                               "binary weights, the plain sandwich rule)")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    kd_temperature: float = Field(1.0, gt=0)
    weight_distill: bool = False
    weight_distill_scale: float = Field(0.1, ge=0)
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    log_every: int = Field(20, ge=1)
    eval_every_epochs: Epochs = Field(1.0, description="teacher/smallest test accuracy cadence")
    eval_images: int | None = Field(None, ge=1, description="cap of test images per periodic evaluation")
    grad_clip: float | None = Field(None, gt=0)
    amp: AmpMode = Field("off", description="numerics of the training passes: off (float32, PyTorch's default TF32, "
                                            "as upstream), bf16 (autocast, also on CPU), auto (bf16 on CUDA only); "
                                            "every evaluation (search fitness included) runs float32")
    channels_last: bool | None = Field(None, description="default: on for CUDA")
    compile: bool = Field(False, description="fuse each block's element-wise tail with torch.compile "
                                            "(recommended on CUDA; a one-time compile cost per process)")


class BudgetConfig(Strict):
    """The cost range of the search and the width of its buckets, in the unit of ``search.cost``: MOPs for
    ``ops``, predicted engine milliseconds for ``latency``. Every consumer (the search, the family's buckets,
    the random baseline of the main job) measures architectures by that same cost."""

    min: float = Field(20.0, ge=0)
    max: float = Field(180.0, gt=0)
    step: float = Field(2.0, gt=0)


#: Keys of earlier releases whose names claimed MOPs whatever ``search.cost`` said.
_RENAMED_SEARCH_KEYS = {"min_mops": "budget.min", "max_mops": "budget.max", "step_mops": "budget.step"}


class SearchConfig(Strict):
    """Evolutionary search. Defaults are the upstream ImageNet protocol (README of the official code)."""

    population: int = Field(512, ge=2)
    generations: int = Field(20, ge=0)
    num_mutations: int = Field(128, ge=0)
    num_crossovers: int = Field(128, ge=0)
    mutate_prob: float = Field(0.2, ge=0, le=1)
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig())
    cost: Literal["ops", "latency"] = Field("ops", description="what the budget counts: MOPs (ops) or predicted "
                                            "engine milliseconds (latency)")
    latency_model: str | None = Field(None, description="fitted latency model JSON for cost=latency")
    latency_threads: int | None = Field(None, ge=1, description="engine threads of the deployment: cost=latency "
                                        "uses the model fitted at this count (None: the file's only model)")
    convention: Literal["upstream", "standard"] = "upstream"
    calib_batches: int = Field(10, ge=1)
    calib_batch_size: int = Field(2048, ge=1)
    val_images: int | None = Field(None, ge=1, description="cap of search-validation images (None: all)")
    random_baseline: int = Field(0, ge=0, description="random architectures per bucket to compare the family to")
    max_attempts: int = Field(100_000, ge=1, description="tries to find a new in-range candidate")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in _RENAMED_SEARCH_KEYS.items():
                if old in data:
                    raise ValueError(f"search.{old} is now search.{new} (its unit follows search.cost: MOPs or ms)")
        return data


class FinetuneConfig(Strict):
    """Fine-tuning one exported network. Defaults are the upstream ImageNet values."""

    epochs: Epochs = 25
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1, description="default: data.batch_size")
    warmup_epochs: WarmupEpochs = 0
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(20, ge=1)


class EvalConfig(Strict):
    """BN recalibration before deployment evaluation (upstream test.py: 10 batches of 2048)."""

    calib_batches: int = Field(10, ge=0)
    calib_batch_size: int = Field(2048, ge=1)


class ExportConfig(Strict):
    format: Literal["bundle", "onnx", "packed"] = "bundle"


class PipelineConfig(Strict):
    """What ``nasbnn run`` adds after exporting the family: the two deployment paths, shown end to end."""

    finetune_members: int = Field(1, ge=0, description="fine-tune this many of the largest family members "
                                  "(0: none)")
    finetune_epochs: Epochs = Field(2.0, description="epochs per fine-tuned member (the other settings: "
                                   "finetune.*)")
    bench_repeats: int = Field(5, ge=0, description="timed batch-1 runs per member, packed engine vs PyTorch "
                               "float (0: pack only)")
    bench_threads: int | None = Field(None, ge=1, description="threads of both sides (default: all cores)")


class RunBase(Strict):
    """The top-level settings of every kind of run (classification and detection): seed, device, folder."""

    seed: int = Field(0, ge=0, lt=2**63, description="seed of every random choice of the run")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    out: str = Field("nasbnn-run", description="run folder")


class RunConfig(RunBase):
    """Everything a run needs; each command reads the sections it uses."""

    space: SpaceConfig = Field(default_factory=SpaceConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)


# ------------------------------------------------------------------------------------------ loading
def _format_error(err: ValidationError, schema: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        section: Any = schema
        for part in e["loc"][:-1]:
            field = section.model_fields.get(str(part)) if isinstance(section, type) else None
            ann = getattr(field, "annotation", None)
            section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if section is None:
                break
        valid = ", ".join(section.model_fields) if section is not None else "?"
        return f"unknown config key {loc!r}; valid keys here: {valid}"
    got = e.get("input")
    got_s = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    return f"config key {loc!r}: {e['msg']}{got_s}"


def _check_override_value(override: str) -> None:
    """Raises a :class:`ConfigError` naming ``override`` when its value is not valid YAML."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.from_dotlist([override])
    except (yaml.YAMLError, OmegaConfBaseException, ValueError) as exc:
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        value = override.split("=", 1)[1]
        raise ConfigError(f"override {override!r}: {value!r} is not a valid YAML value ({problem}); quote a "
                          "string value, e.g. key='...'") from None


def load_config(schema: type[M], path: str | Path | None = None, overrides: Sequence[str] = ()) -> M:
    """Schema defaults, then the YAML file, then ``key=value`` overrides, validated.

    Raises:
        ConfigError: missing or malformed file, malformed override, unknown key, wrong type.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    data: dict[str, Any] = {}
    if path is not None:
        p = resolve_config_path(path)
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
        except Exception as exc:
            raise ConfigError(f"cannot parse {str(p)!r}: {str(exc).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
        data = loaded  # type: ignore[assignment]
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. train.epochs=2)")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except (yaml.YAMLError, OmegaConfBaseException, ValueError) as exc:
        for override in overrides:  # name the override whose value is not YAML, when one is
            _check_override_value(override)
        raise ConfigError(f"cannot apply overrides: {str(exc).splitlines()[0]}") from None
    try:
        merged = OmegaConf.merge(OmegaConf.create(data), dotlist)
        data = OmegaConf.to_container(merged, resolve=True)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot apply overrides: {str(exc).splitlines()[0]}") from None
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, schema)) from None


BUILTIN_CONFIGS = Path(__file__).resolve().parent / "configs"


def builtin_configs() -> list[str]:
    """Names of the configs shipped with the package (``--config imagenet`` etc.)."""
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the built-in config of that name.

    Raises:
        ConfigError: a folder, or neither a file nor a built-in name.
    """
    p = Path(path)
    if p.is_file():
        return p
    builtin = BUILTIN_CONFIGS / f"{p.name.removesuffix('.yaml')}.yaml"
    if p.parent == Path(".") and builtin.is_file():
        return builtin
    if p.is_dir():
        raise ConfigError(f"config {str(p)!r} is a folder, not a config file; give a YAML file or a built-in config: "
                          f"{', '.join(builtin_configs())}")
    if p.exists():
        raise ConfigError(f"config {str(p)!r} is not a regular file (a pipe, device or socket)")
    raise ConfigError(f"config file {str(p)!r} does not exist; built-in configs: {', '.join(builtin_configs())}")


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Writes the resolved config as YAML, atomically."""
    import yaml

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_text(Path(path), text)
