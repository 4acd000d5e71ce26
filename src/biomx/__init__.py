"""biomx: deep learning for healthcare and biomedical research, on PyTorch.

Two doors to the same engine:

    biomx train experiment.yaml                 # declarative

    from biomx import Trainer, TrainConfig      # imperative
    history = Trainer(model, loss_fn, train_ds, val_data=val_ds,
                      settings=TrainConfig(epochs=5)).fit()
"""

from biomx.config import ExperimentConfig, TrainConfig, load_config, validate  # noqa: E402
from biomx.data.batching import collate_batch  # noqa: E402
from biomx.data.samples import Samples  # noqa: E402
from biomx.engine.sliding_window import sliding_window_predict  # noqa: E402
from biomx.engine.trainer import Trainer, TrainingInterrupted  # noqa: E402
from biomx.errors import BiomxError, ConfigError, DataError  # noqa: E402
from biomx.experiment import evaluate_run, prepare, resume_run, train  # noqa: E402
from biomx.modalities import get_modality, modality_names, register_modality  # noqa: E402
from biomx.modalities.common.gradcam import gradcam  # noqa: E402
from biomx.modalities.common.tensor_dataset import ImageTensorDataset  # noqa: E402
from biomx.modalities.image.augment import Augment  # noqa: E402
from biomx.modalities.image.decode import read_image  # noqa: E402
from biomx.modalities.molecule.featurize import featurize  # noqa: E402
from biomx.modalities.molecule.interpret import atom_attributions, molecule_explanations  # noqa: E402
from biomx.modalities.molecule.readers import read_molecule_table, read_sdf  # noqa: E402
from biomx.modalities.molecule.standardize import standardize  # noqa: E402
from biomx.modalities.sequence.dataset import SequenceDataset  # noqa: E402
from biomx.modalities.sequence.encoding import encode, one_hot  # noqa: E402
from biomx.modalities.sequence.interpret import in_silico_mutagenesis, integrated_gradients  # noqa: E402
from biomx.modalities.sequence.readers import records_from_fasta  # noqa: E402
from biomx.modalities.sequence.variants import read_variants, score_variants  # noqa: E402
from biomx.modalities.volume.files import read_volume, write_nifti  # noqa: E402
from biomx.models.registry import build_model, list_models, register  # noqa: E402
from biomx.predict import predict_files  # noqa: E402
from biomx.protocols import Modality, SpatialModality, Task, TaskType  # noqa: E402
from biomx.runs import load_run_model  # noqa: E402
from biomx.tasks import get_task, register_task, task_from_info, task_names  # noqa: E402
from biomx.tasks.classification.task import ClassificationTask, build_task  # noqa: E402
from biomx.tasks.regression.task import RegressionTask, build_regression_task  # noqa: E402
from biomx.tasks.segmentation.task import SegmentationTask, build_segmentation_task  # noqa: E402
from biomx.version import __version__  # noqa: E402

__all__ = [
    # doors: the experiment and the engine
    "ExperimentConfig", "TrainConfig", "load_config", "validate", "prepare", "train", "resume_run", "evaluate_run",
    "predict_files", "load_run_model", "Trainer", "TrainingInterrupted", "collate_batch", "Samples",
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
