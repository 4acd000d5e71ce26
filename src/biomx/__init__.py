"""biomx: deep learning for healthcare and biomedical research, on PyTorch.

Two doors to the same engine:

    biomx train experiment.yaml                 # declarative

    from biomx import Trainer, TrainConfig      # imperative
    history = Trainer(model, loss_fn, train_ds, val_data=val_ds,
                      settings=TrainConfig(epochs=5)).fit()

Every public name below is imported on first use (PEP 562): `import biomx` and `biomx --help`
load neither torch nor any modality's packages, and a name whose modality needs a package of an
extra that is not installed says which `pip install` brings it, when it is used.
"""

from __future__ import annotations

from typing import Any

from biomx.version import __version__

# module -> the public names it provides (inverted below into name -> module)
_PROVIDERS: dict[str, tuple[str, ...]] = {
    "biomx.config": ("ExperimentConfig", "TrainConfig", "load_config", "validate"),
    "biomx.data.batching": ("collate_batch",),
    "biomx.data.samples": ("Samples",),
    "biomx.engine.sliding_window": ("sliding_window_predict",),
    "biomx.engine.trainer": ("Trainer", "TrainingInterrupted"),
    "biomx.errors": ("BiomxError", "ConfigError", "DataError"),
    "biomx.experiment": ("evaluate_run", "prepare", "resume_run", "train"),
    "biomx.modalities": ("get_modality", "modality_names", "register_modality"),
    "biomx.modalities.common.gradcam": ("gradcam",),
    "biomx.modalities.common.tensor_dataset": ("ImageTensorDataset",),
    "biomx.modalities.image.augment": ("Augment",),
    "biomx.modalities.image.decode": ("read_image",),
    "biomx.modalities.molecule.featurize": ("featurize",),
    "biomx.modalities.molecule.interpret": ("atom_attributions", "molecule_explanations"),
    "biomx.modalities.molecule.readers": ("read_molecule_table", "read_sdf"),
    "biomx.modalities.molecule.standardize": ("standardize",),
    "biomx.modalities.sequence.dataset": ("SequenceDataset",),
    "biomx.modalities.sequence.encoding": ("encode", "one_hot"),
    "biomx.modalities.sequence.interpret": ("in_silico_mutagenesis", "integrated_gradients"),
    "biomx.modalities.sequence.readers": ("records_from_fasta",),
    "biomx.modalities.sequence.variants": ("read_variants", "score_variants"),
    "biomx.modalities.volume.files": ("read_volume", "write_nifti"),
    "biomx.models.registry": ("build_model", "list_models", "register"),
    "biomx.predict": ("predict_files",),
    "biomx.predictor": ("load",),
    "biomx.protocols": ("Modality", "SpatialModality", "Task", "TaskType"),
    "biomx.runs": ("load_run_model",),
    "biomx.tasks": ("get_task", "register_task", "task_from_info", "task_names"),
    "biomx.tasks.classification.task": ("ClassificationTask", "build_task"),
    "biomx.tasks.regression.task": ("RegressionTask", "build_regression_task"),
    "biomx.tasks.segmentation.task": ("SegmentationTask", "build_segmentation_task"),
}
_LAZY: dict[str, str] = {name: module for module, names in _PROVIDERS.items() for name in names}

__all__ = [
    # doors: the experiment and the engine
    "ExperimentConfig", "TrainConfig", "load_config", "validate", "prepare", "train", "resume_run", "evaluate_run",
    "predict_files", "load", "load_run_model", "Trainer", "TrainingInterrupted", "collate_batch", "Samples",
    "BiomxError", "ConfigError", "DataError", "__version__",
    # plug-ins: protocols and registries
    "Modality", "SpatialModality", "Task", "TaskType", "get_modality", "modality_names", "register_modality",
    "get_task", "task_names", "register_task", "task_from_info", "build_model", "list_models", "register",
    # image and volume
    "read_image", "Augment", "ImageTensorDataset", "gradcam", "read_volume", "write_nifti", "sliding_window_predict",
    # sequence
    "records_from_fasta", "encode", "one_hot", "SequenceDataset", "integrated_gradients", "in_silico_mutagenesis",
    "read_variants", "score_variants",
    # molecule
    "read_molecule_table", "read_sdf", "standardize", "featurize", "atom_attributions", "molecule_explanations",
    # tasks
    "ClassificationTask", "build_task", "RegressionTask", "build_regression_task", "SegmentationTask",
    "build_segmentation_task",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """Import the module that provides `name` on first use, then keep the value here (later
    look-ups do not come back). A package of an extra that is missing: one line (MissingExtra)."""
    module_path = _LAZY.get(name)
    if module_path is None:
        raise AttributeError(f"module 'biomx' has no attribute {name!r}")
    from biomx.plugins import import_extra  # light: the registries' own importer

    value = getattr(import_extra(module_path, f"biomx.{name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
