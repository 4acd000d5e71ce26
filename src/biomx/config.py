"""The experiment schema: what a YAML file may say, checked before anything runs.

Every section forbids unknown keys. Errors come back as one line per problem, naming the
key path, the bad value and what is allowed (with the closest valid name for a typo).
Configs are data: nothing in them is evaluated or imported.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from biomx.errors import ConfigError

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Section):
    """How samples are divided into train / val / test."""

    method: Literal["stratified", "random", "group", "predefined", "chromosome", "scaffold", "cluster"] = (
        "stratified"
    )
    val: Fraction = 0.1  # fraction of all samples (of train, for `predefined` without a val split)
    test: Fraction = 0.15
    seed: int = 0
    val_chromosomes: list[str] = []  # chromosome: held out for validation (e.g. [chr8])
    test_chromosomes: list[str] = []  # chromosome: held out for testing (e.g. [chr9])
    column: str = "split"  # predefined, csv sources: column of train/val/test per row
    cluster_cutoff: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.6  # cluster: Tanimoto distance (Butina)
    # predefined: the source's split held out as the test set. "val" for sources that ship only
    # official train and val splits (e.g. the MedMNIST copies): val then comes from train.
    holdout: Literal["test", "val"] = "test"

    @model_validator(mode="after")
    def _chromosomes_named(self) -> SplitConfig:
        if self.method == "chromosome" and not self.test_chromosomes:
            raise ValueError("method 'chromosome' needs test_chromosomes, e.g. [chr8, chr9]")
        overlap = set(self.val_chromosomes) & set(self.test_chromosomes)
        if overlap:
            raise ValueError(f"chromosomes {sorted(overlap)} are in both val_chromosomes and test_chromosomes")
        return self


class AugmentConfig(Section):
    """Random augmentations applied to each training batch (off by default)."""

    hflip: Fraction = 0.0  # probability
    vflip: Fraction = 0.0
    rotate: Annotated[float, Field(ge=0.0, le=180.0)] = 0.0  # max degrees
    scale: tuple[PositiveFloat, PositiveFloat] | None = None  # e.g. [0.9, 1.1]
    translate: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0  # fraction of the image size
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    gamma: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    noise: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # Gaussian std on [0, 1] intensities


class SequenceConfig(Section):
    """How DNA, RNA or protein sequences are read and encoded (data.modality: sequence)."""

    alphabet: Literal["dna", "rna", "protein"] = "dna"
    length: PositiveInt | None = None  # pad / centre-crop to this length; None = the longest
    files: dict[str, str] | None = None  # source fasta, labels from files: {label: file in data.path}
    label_from: Literal["file", "header", "csv"] = "file"  # source fasta: where labels come from
    labels_csv: str | None = None  # label_from csv: id,label table
    sequence_column: str = "sequence"  # source csv
    id_column: str = "id"
    genome: str | None = None  # source intervals: indexed genome FASTA
    flank: Annotated[int, Field(ge=0)] = 0  # source intervals: bases added on each side
    rc_augment: bool = False  # DNA/RNA: reverse-complement half the training samples
    shift: Annotated[int, Field(ge=0)] = 0  # random shift by up to this many bases
    strand_average: bool = True  # DNA/RNA: average both strands at test and prediction
    known_motifs: dict[str, str] = {}  # class -> consensus (IUPAC), compared in the report


class MoleculeConfig(Section):
    """How molecules are read, standardised and featurised (data.modality: molecule)."""

    smiles_column: str = "smiles"  # source csv
    id_column: str | None = None  # csv column or SDF property naming each molecule
    standardize: bool = True  # largest fragment, neutralised, canonical SMILES (RDKit)
    features: list[Literal["morgan", "descriptors"]] = []  # molecule-level vectors for the model
    morgan_radius: Annotated[int, Field(ge=0, le=6)] = 2
    morgan_size: PositiveInt = 2048
    morgan_counts: bool = False  # counts instead of bits
    cache: bool = True  # keep featurised molecules on disk, keyed by content and settings
    cache_dir: str | None = None  # default: $BIOMX_CACHE or ~/.cache/biomx
    workers: Annotated[int, Field(ge=0)] = 0  # featurisation processes; 0 = automatic


class VolumeAugmentConfig(Section):
    """Random 3D (or 2D) augmentations of training volumes and patches (off by default).

    Spatial transforms move image and mask together (the mask with nearest neighbours)."""

    flip: Fraction = 0.0  # probability of a flip, drawn per spatial axis
    rotate90: Fraction = 0.0  # probability of a quarter turn in the first two spatial axes
    rotate: Annotated[float, Field(ge=0.0, le=180.0)] = 0.0  # affine: max degrees about each axis
    scale: tuple[PositiveFloat, PositiveFloat] | None = None  # affine zoom range, e.g. [0.9, 1.1]
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # intensity shift, in std units
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # intensity scale 1 +/- this
    gamma: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    noise: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # Gaussian std, in std units


class VolumeConfig(Section):
    """How volumes (and segmentation images) are read, preprocessed, cached and patched."""

    spacing: list[PositiveFloat] | None = None  # resample to this voxel size (mm); None keeps it
    intensity: Literal["zscore", "ct", "minmax", "none"] = "zscore"  # ct: clip ct_window, scale
    ct_window: tuple[float, float] = (-175.0, 250.0)  # HU [low, high] for intensity: ct
    nonzero: bool = False  # zscore: statistics of non-zero voxels only (skull-stripped MR)
    crop_foreground: bool = True  # crop to the bounding box of voxels above the image minimum
    patch_size: list[PositiveInt] | None = None  # segmentation: training patch, e.g. [96, 96, 96]
    pos_ratio: Fraction = 0.5  # segmentation: share of patches centred on a foreground voxel
    patches_per_case: PositiveInt = 4  # segmentation: training patches per case per epoch
    val_patches_per_case: PositiveInt = 2
    overlap: Fraction = 0.5  # sliding-window inference: overlap of neighbouring windows
    sw_batch_size: PositiveInt = 4  # sliding-window inference: windows per forward pass
    geometry_tolerance_mm: PositiveFloat = 0.01  # mask vs image origin/spacing tolerance
    nan_policy: Literal["raise", "zero"] = "raise"  # NaN voxels: an error, or set to 0
    cache: bool = True  # keep preprocessed samples on disk, keyed by content and settings
    cache_dir: str | None = None  # default: $BIOMX_CACHE or ~/.cache/biomx
    augment: VolumeAugmentConfig = VolumeAugmentConfig()


class DataConfig(Section):
    """Where the samples come from and how they become tensors."""

    source: Literal["folder", "csv", "npz", "dataset", "fasta", "intervals", "sdf", "msd"]
    # folder, CSV, .npz, FASTA (or folder of FASTA), BED, SDF, an embedded dataset name, or an
    # MSD-style folder (dataset.json + imagesTr/ + labelsTr/) of images and masks
    path: str
    modality: Literal["image", "sequence", "molecule", "volume"] = "image"
    image_size: tuple[PositiveInt, PositiveInt] | None = None  # [H, W]; None keeps the npz size
    channels: Literal[1, 3] = 1
    window: tuple[float, PositiveFloat] | None = None  # DICOM VOI window [center, width]
    dicom_frames: Literal["first", "all"] = "first"
    path_column: str = "path"
    label_column: str | list[str] = "label"  # several columns: multi-task (empty cells = missing)
    group_column: str = "patient_id"
    normalize: bool = True  # standardise with the training split's mean and std
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    sequence: SequenceConfig = SequenceConfig()
    molecule: MoleculeConfig = MoleculeConfig()
    volume: VolumeConfig = VolumeConfig()
    on_error: Literal["raise", "skip"] = "raise"  # skip = drop unreadable files, list them in the run
    cache: bool = True  # image files: keep decoded images on disk, keyed by content and settings
    num_workers: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _sources_fit_the_modality(self) -> DataConfig:
        sources = {"image": ("folder", "csv", "npz", "dataset", "msd"), "sequence": ("fasta", "csv", "intervals"),
                   "molecule": ("csv", "sdf"), "volume": ("npz", "msd")}  # fmt: skip
        if self.source not in sources[self.modality]:
            raise ValueError(f"source {self.source!r} does not hold {self.modality} data; "
                             f"use one of {', '.join(sources[self.modality])}")  # fmt: skip
        if self.modality == "image" and self.source in ("folder", "csv") and self.image_size is None:
            raise ValueError("image_size is required for folder and csv sources, e.g. [224, 224]")
        if self.source == "intervals" and not self.sequence.genome:
            raise ValueError("source 'intervals' needs sequence.genome (an indexed FASTA)")
        if isinstance(self.label_column, list) and self.modality != "molecule":
            raise ValueError("several label columns (multi-task) are supported for molecules only, so far")
        if self.split.method in ("scaffold", "cluster") and self.modality != "molecule":
            raise ValueError(f"split method {self.split.method!r} needs molecules (data.modality: molecule)")
        return self


class ModelConfig(Section):
    name: str = "small_cnn"  # see `biomx models`
    args: dict[str, Any] = {}
    ensemble: PositiveInt = 1  # deep ensemble: members trained with seeds train.seed + k


class TaskConfig(Section):
    kind: Literal["classification", "regression", "segmentation"] = "classification"
    type: Literal["auto", "binary", "multiclass", "multilabel"] = "auto"  # classification
    # regression: mse (default), huber, mae on standardised targets;
    # segmentation: dice_ce (default), dice, focal
    loss: Literal["mse", "huber", "mae", "dice", "dice_ce", "focal"] | None = None
    target_name: str | None = None  # regression: name shown in reports (default: the label column)
    classes: list[str] | None = None  # class names in label order; default: from the data
    class_weights: Literal["none", "balanced"] | list[PositiveFloat] = "none"
    label_smoothing: Fraction = 0.0
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    # segmentation: predicted connected components smaller than this (mm^3 for volumes, pixels
    # for 2D images) become background; 0 keeps them all
    min_component_size: Annotated[float, Field(ge=0.0)] = 0.0

    @model_validator(mode="after")
    def _loss_fits_the_kind(self) -> TaskConfig:
        allowed = {"regression": ("mse", "huber", "mae"), "segmentation": ("dice", "dice_ce", "focal"),
                   "classification": ()}  # fmt: skip
        if self.loss is not None and self.loss not in allowed[self.kind]:
            hint = f"use one of {', '.join(allowed[self.kind])}" if allowed[self.kind] else "remove it"
            raise ValueError(f"loss {self.loss!r} does not fit kind {self.kind!r}; {hint}")
        if self.min_component_size and self.kind != "segmentation":
            raise ValueError("min_component_size applies to kind 'segmentation' only; remove it")
        return self


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


class TrainConfig(Section):
    """Settings of the training engine (also the `Trainer`'s settings in Python)."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64  # global: split across distributed ranks
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: PositiveFloat | None = 1.0  # max gradient norm
    accumulate: PositiveInt = 1  # gradient accumulation steps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False  # torch.compile
    channels_last: bool = False  # memory format for conv nets (fast on GPUs with tensor cores)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    deterministic: bool = False  # bitwise-reproducible kernels (slower)
    monitor: str = "val_loss"  # metric for the best checkpoint and early stopping
    early_stopping: PositiveInt | None = None  # patience, in epochs
    checkpoint_every: PositiveInt | None = None  # also save every N steps (epochs always)
    num_workers: Annotated[int, Field(ge=0)] = 0
    progress: bool = True


class EvalConfig(Section):
    bootstrap: Annotated[int, Field(ge=0)] = 1000  # resamples for 95% CIs (0 = none)
    ci: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    explain: Annotated[int, Field(ge=0)] = 8  # test samples explained in the report
    mc_dropout: Annotated[int, Field(ge=0)] = 0  # Monte Carlo dropout passes at test/predict (0 = off)
    batch_size: PositiveInt = 256
    surface_tolerance_mm: PositiveFloat = 1.0  # segmentation: surface Dice tolerance


class OutputConfig(Section):
    dir: str = "runs"
    name: str | None = None  # default: <experiment name>-<timestamp>
    tensorboard: bool = True


class ExperimentConfig(Section):
    """A whole experiment; `biomx train FILE.yaml` reads one of these."""

    name: str = "experiment"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()


# ---------------------------------------------------------------- loading and errors


def _fields_at(loc: tuple) -> list[str]:
    """The valid key names of the section at `loc` (for 'did you mean' hints)."""
    cls: type[BaseModel] = ExperimentConfig
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        cls = field.annotation
    return list(cls.model_fields)


def _describe(error: dict) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{path}: unknown key{hint} (allowed: {', '.join(allowed)})"
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    value = error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a whole section failed a cross-field check
        return f"{path}: {message}"
    return f"{path}: {message} (got {value!r})"


def format_validation_error(err: ValidationError) -> str:
    return "\n".join(_describe(e) for e in err.errors())


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    """Check a raw config dict; raise ConfigError listing every problem, one per line."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping of sections (data, model, task, train, ...)")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML: 3, 1e-3, true, [1, 2])."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


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
    if data.get("source") != "dataset" and "path" in data:
        data["path"] = _resolve(data["path"], base)
    sequence = data.get("sequence")
    if isinstance(sequence, dict):
        for key in ("genome", "labels_csv"):
            if key in sequence:
                sequence[key] = _resolve(sequence[key], base)
    for section in ("molecule", "volume"):
        settings = data.get(section)
        if isinstance(settings, dict) and settings.get("cache_dir"):
            settings["cache_dir"] = _resolve(settings["cache_dir"], base)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(err, 'problem', err)}") from None
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, task, train, ...)")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML.

    Args:
        path: the YAML file.
        overrides: `key.path=value` strings, applied before validation.

    Returns:
        The validated `ExperimentConfig`.

    Raises:
        ConfigError: missing file, bad YAML, unknown key or invalid value (all listed).

    Example:
        >>> cfg = load_config("examples/pneumonia_demo.yaml", ["train.epochs=1"])
    """
    raw = read_yaml(path)
    apply_overrides(raw, overrides or [])
    _resolve_paths(raw, Path(path).resolve().parent)
    return validate(raw)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
