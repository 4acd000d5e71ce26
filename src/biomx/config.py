"""The experiment schema: what a YAML file may say, checked before anything runs.

Every section forbids unknown keys. Errors come back as one line per problem, naming the
key path, the bad value and what is allowed (with the closest valid name for a typo).
Configs are data: nothing in them is evaluated or imported.
"""

from __future__ import annotations

import reprlib
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from biomx.errors import ConfigError
from biomx.plugins import refuse_unknown_keys, suggest
from biomx.privacy.config import PrivacyConfig
from biomx.tune.config import TuneConfig
from biomx.yaml_config import MAX_SHOWN, apply_overrides, load_yaml_text, read_yaml, shorten

__all__ = ["MAX_SHOWN", "apply_overrides", "load_yaml_text", "read_yaml", "shorten"]  # moved; still importable here

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy and torch seeds must fit 32 bits

MAX_LINES = 20  # problems listed at most (then "... and N more problems")


class Section(BaseModel):
    # allow_inf_nan=False: `.inf`, `.nan` and 1e400 (inf) are rejected in every float field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def plain_name(value: str | None, what: str = "a plain folder name") -> str | None:
    """`value` if it names one folder inside another (no path separators, not `.`/`..`, not empty,
    no leading `-` or `~`, no control characters); ValueError otherwise."""
    if value is None:
        return value
    if (not value.strip() or value in (".", "..") or "/" in value or "\\" in value or value[0] in "-~"
            or any(ord(c) < 32 for c in value)):  # fmt: skip
        raise ValueError(f"must be {what}: no / or \\, not . or .., not starting with - or ~")
    return value


GENERIC_SPLIT_METHODS = ("stratified", "random", "group", "predefined")


class SplitConfig(Section):
    """How samples are divided into train / val / test (a modality may add methods of its own)."""

    method: str = "stratified"  # stratified, random, group, predefined, or one of the modality's own
    val: Fraction = 0.1  # fraction of all samples (of train, for `predefined` without a val split)
    test: Fraction = 0.15
    seed: Seed = 0
    column: str = "split"  # predefined, csv sources: column of train/val/test per row
    # predefined: the source's split held out as the test set. "val" for sources that ship only
    # official train and val splits (e.g. the MedMNIST copies): val then comes from train.
    holdout: Literal["test", "val"] = "test"

    moved: ClassVar[dict[str, str]] = {}  # keys that moved (a modality's subclass names its own)


class DataConfig(Section):
    """The `data:` keys every modality shares. A modality's config extends this class with its own
    section, `data.<modality>` (e.g. `data.image.size`), and names its sources and split methods."""

    modality: str = "image"  # a registered modality (see `biomx models` / docs/architecture.md)
    source: str  # a source the modality reads (its config lists them; e.g. folder, csv, npz)
    path: str
    label_column: str | list[str] = "label"  # several columns: multi-task (empty cells = missing)
    group_column: str = "patient_id"
    split: SplitConfig = SplitConfig()
    on_error: Literal["raise", "skip"] = "raise"  # skip = drop unreadable files, list them in the run
    num_workers: Annotated[int, Field(ge=0)] = 0

    sources: ClassVar[tuple[str, ...]] = ()
    split_methods: ClassVar[tuple[str, ...]] = ()  # the modality's own data.split.method values
    multi_label_columns: ClassVar[bool] = False  # may label_column list several columns?
    path_keys: ClassVar[tuple[str, ...]] = ()  # keys of the modality's section holding file paths
    local_sources: ClassVar[tuple[str, ...]] = ()  # sources whose path is a name (embedded datasets)
    moved: ClassVar[dict[str, str]] = {}  # old data.<key> -> its place now (a full key path)

    @model_validator(mode="after")
    def _fits_the_modality(self) -> DataConfig:
        if self.sources and self.source not in self.sources:
            raise ValueError(f"source {self.source!r} does not hold {self.modality} data; "
                             f"use one of {', '.join(self.sources)}")  # fmt: skip
        methods = GENERIC_SPLIT_METHODS + self.split_methods
        if self.split.method not in methods:
            hint = suggest(self.split.method, list(methods))
            raise ValueError(f"split method {self.split.method!r} is not available for {self.modality} data{hint}; "
                             f"use one of {', '.join(methods)}")  # fmt: skip
        if isinstance(self.label_column, list) and not self.multi_label_columns:
            raise ValueError(f"several label columns (multi-task) are not supported for {self.modality} data yet")
        return self


class ModelConfig(Section):
    name: str = "small_cnn"  # see `biomx models`; `auto`: try several (`candidates`), stack or pick
    args: dict[str, Any] = {}
    ensemble: Annotated[int, Field(gt=0, le=100)] = 1  # deep ensemble: members trained with seeds train.seed + k
    candidates: list[str] = []  # name auto: the families tried (default: each solver-fitted one)
    select: Literal["stack", "best"] = "stack"  # name auto: blend the families, or keep the best one
    folds: Annotated[int, Field(ge=2, le=20)] = 5  # name auto: inner cross-validation on the training split
    init_from: str | None = None  # fine-tuning: a run folder or a .safetensors file whose weights start this run
    reinit: list[str] = []  # fine-tuning: module name prefixes (or "head") started fresh even where shapes match


class TaskConfig(Section):
    """The `task:` key every task shares; each task's config extends it (see `biomx.tasks`)."""

    kind: str = "classification"
    moved: ClassVar[dict[str, str]] = {}  # old task keys -> their place now (a full key path)


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-4
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd only
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)


class ScheduleConfig(Section):
    name: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    min_lr_ratio: Fraction = 0.01  # cosine floor, as a fraction of lr
    step_epochs: PositiveInt = 10  # step: decay every N epochs
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1


class OptionalSection(Section):
    """A section that may be absent (`X | None`): unknown keys are refused by its own check, since
    the config's error line for an unknown key looks up the enclosing section, which `| None` hides."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        return refuse_unknown_keys(value, list(cls.model_fields))


class AdversaryConfig(OptionalSection):
    """`train.fairness.adversary`: a head predicting `column` from the representation (the input of
    the model's last Linear layer), trained through gradient reversal (docs/trust.md)."""

    column: str  # a column of eval.subgroups
    weight: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0  # lambda: how hard the encoder fights the adversary
    hidden: PositiveInt = 32  # the adversary's hidden width


class FairnessConfig(OptionalSection):
    """`train.fairness` (docs/trust.md): mitigation during training."""

    reweight: str | None = None  # a column of eval.subgroups: Kamiran & Calders reweighing of the training split
    adversary: AdversaryConfig | None = None


class TrainConfig(Section):
    """Settings of the training engine (also the `Trainer`'s settings in Python)."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64  # global: split across distributed ranks
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: PositiveFloat | None = 1.0  # max gradient norm
    ema: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None  # average the weights, this decay per step (engine/ema.py)
    accumulate: PositiveInt = 1  # gradient accumulation steps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False  # torch.compile
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard parameters (FSDP)
    channels_last: bool = False  # memory format for conv nets (fast on GPUs with tensor cores)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: Seed = 0  # 0 .. 2**32 - 1
    deterministic: bool = False  # bitwise-reproducible kernels (slower)
    monitor: str = "val_loss"  # metric for the best checkpoint and early stopping
    early_stopping: PositiveInt | None = None  # patience, in epochs
    checkpoint_every: PositiveInt | None = None  # also save every N steps (epochs always)
    num_workers: Annotated[int, Field(ge=0)] = 0
    progress: bool = True  # a bar on a terminal; else (nohup, SLURM, CI) a line when either limit is reached:
    log_every_s: PositiveFloat = 30.0  # seconds between plain progress lines
    log_every_steps: PositiveInt | None = None  # batches between plain progress lines (None: by time only)
    privacy: PrivacyConfig | None = None  # DP-SGD with a privacy ledger (docs/privacy.md)
    fairness: FairnessConfig | None = None  # reweighting, adversarial debiasing (docs/trust.md)
    freeze: list[str] = []  # module name prefixes (or "backbone": all but the head) kept fixed
    lr_multipliers: dict[str, Annotated[float, Field(ge=0.0)]] = {}  # module prefix -> lr factor (discriminative)


class EvalConfig(Section):
    bootstrap: Annotated[int, Field(ge=0)] = 1000  # resamples for 95% CIs (0 = none)
    ci: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    explain: Annotated[int, Field(ge=0)] = 8  # test samples explained in the report
    mc_dropout: Annotated[int, Field(ge=0)] = 0  # Monte Carlo dropout passes at test/predict (0 = off)
    batch_size: PositiveInt = 256
    # Columns (of the manifest / table / metadata) whose groups get their own metrics, CIs and
    # disparity measures in the report (docs/trust.md); never written out raw.
    subgroups: list[str] = []
    min_group: PositiveInt = 30  # groups with fewer test samples are flagged as small (still shown)

    moved: ClassVar[dict[str, str]] = {"surface_tolerance_mm": "task.surface_tolerance_mm"}


class MlflowConfig(Section):  # `output.mlflow: {}` (or `true`): log the run to MLflow too (docs/runs.md)
    enabled: bool = False  # giving the section turns it on; written out, so a resume reads it back
    tracking_uri: str | None = None  # default: a file store in <run>/mlruns; any MLflow URI
    experiment: str | None = None  # default: the config's name


class OutputConfig(Section):
    dir: str = "runs"
    name: str | None = None  # default: <experiment name>-<timestamp>; a plain folder name inside dir
    tensorboard: bool = True
    mlflow: MlflowConfig = MlflowConfig()  # not `| None`: an unknown key inside gets the section's hint
    intended_use: str | None = None  # the model card's "intended use" (a placeholder says when it is missing)
    out_of_scope: str | None = None  # the model card's "out-of-scope uses"

    @field_validator("mlflow", mode="before")
    @classmethod
    def _given_means_on(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else {"enabled": True, **v} if isinstance(v, dict) else v

    @field_validator("name")
    @classmethod
    def _inside_dir(cls, value: str | None) -> str | None:
        return plain_name(value, "a plain folder name inside output.dir")

    @field_validator("dir")
    @classmethod
    def _a_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder, e.g. runs")
        path = Path(value).expanduser()
        try:
            for part in (path, *path.parents):  # the nearest part that exists must be a folder
                if part.exists() or part.is_symlink():
                    if not part.is_dir():
                        raise ValueError(f"{shorten(str(part))} exists and is not a folder")
                    break
        except OSError as err:  # a name too long, no permission
            raise ValueError(f"cannot be used as a folder ({err.strerror or err})") from None
        return value


class ExperimentConfig(Section):
    """A whole experiment; `biomx train FILE.yaml` reads one of these."""

    name: str = "experiment"  # runs are <output.dir>/<name>-<time>: a plain name, like output.name
    data: DataConfig
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    tune: TuneConfig | None = None  # `biomx tune CONFIG`: a hyperparameter search (docs/tuning.md)

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        return plain_name(value, "a plain name (runs are <output.dir>/<name>-<time>)")  # type: ignore[return-value]


# ---------------------------------------------------------------- loading and errors


def _section_at(cls: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], bool]:
    """The deepest section along `loc`, and whether every part of `loc` names a section."""
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return cls, False
        cls = field.annotation
    return cls, True


def _elsewhere(loc: tuple) -> str:
    """'; it belongs to task.kind: X' for a key of another task's (or modality's) section."""
    from biomx.modalities import MODALITIES
    from biomx.tasks import TASKS

    if len(loc) != 2 or loc[0] not in ("data", "task"):
        return ""
    registry, selector = (MODALITIES, "data.modality") if loc[0] == "data" else (TASKS, "task.kind")
    owners = [name for name in registry.available() if str(loc[1]) in registry.get(name).config.model_fields]
    return f"; it belongs to {selector}: {' or '.join(owners)}" if owners else ""


def _describe(cls: type[BaseModel], error: dict) -> str:
    loc = tuple(error["loc"])
    path = shorten(".".join(str(p) for p in loc), 2 * MAX_SHOWN) or "(top level)"
    if error["type"] == "extra_forbidden":
        key = shorten(str(loc[-1]))
        section, found = _section_at(cls, loc[:-1])
        moved = getattr(section, "moved", {}).get(key) if found else None
        if moved:
            return f"{path}: unknown key; it is {moved} now"
        allowed = list(section.model_fields)  # of the deepest section reached, for the hint
        hint = _elsewhere(loc) or suggest(key, allowed)
        return f"{path}: unknown key{hint} (allowed: {', '.join(allowed)})"
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    value = error.get("input")
    message = shorten(error["msg"].removeprefix("Value error, "), 4 * MAX_SHOWN)
    if isinstance(value, dict):  # a whole section failed a cross-field check
        return f"{path}: {message}"
    return f"{path}: {message} (got {_shown(value)})"


def _shown(value: Any) -> str:
    """repr(value), at most MAX_SHOWN characters; never builds the repr of a huge (alias-expanded)
    value in full."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > MAX_SHOWN:
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        return shorten(reprlib.repr(value) if isinstance(value, (list, tuple, dict, set)) else repr(value))
    except RecursionError:
        return "a recursive value"


def format_validation_error(err: ValidationError, cls: type[BaseModel] | None = None) -> str:
    errors = err.errors()
    lines = [_describe(cls or ExperimentConfig, e) for e in errors[:MAX_LINES]]
    if len(errors) > MAX_LINES:
        lines.append(f"... and {len(errors) - MAX_LINES} more problems")
    return "\n".join(lines)


def experiment_class(modality: str, kind: str) -> type[ExperimentConfig]:
    """The schema of an experiment on `modality` data with a `kind` task: the shared sections,
    with `data` and `task` taken from the two plug-ins' configs (a union discriminated by
    data.modality and task.kind, resolved by name through the registries)."""
    from biomx.modalities import get_modality
    from biomx.tasks import get_task

    return _experiment_class(get_modality(modality).config, get_task(kind).config)


@cache  # keyed by the classes, so a plug-in registered again with a new config gets a new schema
def _experiment_class(data_cls: type[DataConfig], task_cls: type[TaskConfig]) -> type[ExperimentConfig]:
    return create_model(f"ExperimentConfig_{data_cls.__name__}_{task_cls.__name__}", __base__=ExperimentConfig,
                        data=(data_cls, ...), task=(task_cls, task_cls()))  # fmt: skip


def _selected(raw: dict[str, Any], section: str, key: str, default: str) -> str:
    value = raw.get(section, {}).get(key, default) if isinstance(raw.get(section, {}), dict) else default
    return value if isinstance(value, str) else default


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    """Check a raw config dict; raise ConfigError listing every problem, one per line."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping of sections (data, model, task, train, ...)")
    if "data" not in raw:  # nothing to dispatch on: report it with everything else that is wrong
        cls: type[ExperimentConfig] = ExperimentConfig
    else:
        cls = experiment_class(_selected(raw, "data", "modality", "image"), _selected(raw, "task", "kind", "classification"))
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, cls)) from None


def _resolve(value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    # Relative data paths are relative to the config file, so a config works from any cwd.
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    from biomx.modalities import get_modality

    try:
        config = get_modality(_selected(raw, "data", "modality", "image")).config
    except ConfigError:
        return  # validation names the unknown modality
    if data.get("source") not in config.local_sources and "path" in data:
        data["path"] = _resolve(data["path"], base)
    for key in config.path_keys:  # dotted, inside the modality's section: e.g. scan.cache_dir
        node: Any = data.get(_selected(raw, "data", "modality", "image"))
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last):
            node[last] = _resolve(node[last], base)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML.

    Args:
        path: the YAML file.
        overrides: `key.path=value` strings, applied before validation.

    Returns the validated `ExperimentConfig`; raises ConfigError for a missing file, bad YAML,
    an unknown key or an invalid value (all listed).

    Example:
        >>> cfg = load_config("examples/pneumonia_demo.yaml", ["train.epochs=1"])
    """
    raw = read_yaml(path)
    apply_overrides(raw, overrides or [])
    _resolve_paths(raw, Path(path).resolve().parent)
    return validate(raw)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
