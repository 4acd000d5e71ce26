"""biomx: deep learning for healthcare and biomedical research, on PyTorch.

Two doors to the same engine:

    biomx train experiment.yaml                 # declarative

    from biomx import Trainer, TrainConfig      # imperative
    history = Trainer(model, loss_fn, train_ds, val_data=val_ds,
                      settings=TrainConfig(epochs=5)).fit()
"""

from biomx.config import ExperimentConfig, TrainConfig, load_config  # noqa: E402
from biomx.data.batching import collate_batch  # noqa: E402
from biomx.engine.trainer import Trainer, TrainingInterrupted  # noqa: E402
from biomx.errors import BiomxError, ConfigError, DataError  # noqa: E402
from biomx.experiment import evaluate_run, prepare, resume_run, train  # noqa: E402
from biomx.modalities.common.gradcam import gradcam  # noqa: E402
from biomx.modalities.common.tensor_dataset import ImageTensorDataset  # noqa: E402
from biomx.modalities.image.augment import Augment  # noqa: E402
from biomx.modalities.image.decode import read_image  # noqa: E402
from biomx.modalities.sequence.dataset import SequenceDataset  # noqa: E402
from biomx.modalities.sequence.encoding import encode, one_hot  # noqa: E402
from biomx.modalities.sequence.readers import records_from_fasta  # noqa: E402
from biomx.models.registry import build_model, list_models, register  # noqa: E402
from biomx.predict import predict_files  # noqa: E402
from biomx.runs import load_run_model  # noqa: E402
from biomx.tasks.classification.task import ClassificationTask, build_task  # noqa: E402
from biomx.tasks.regression.task import RegressionTask, build_regression_task  # noqa: E402
from biomx.version import __version__  # noqa: E402

__all__ = [
    "Augment",
    "BiomxError",
    "ClassificationTask",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "ImageTensorDataset",
    "RegressionTask",
    "SequenceDataset",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "__version__",
    "build_model",
    "build_regression_task",
    "build_task",
    "collate_batch",
    "encode",
    "evaluate_run",
    "gradcam",
    "list_models",
    "load_config",
    "load_run_model",
    "one_hot",
    "predict_files",
    "prepare",
    "read_image",
    "records_from_fasta",
    "register",
    "resume_run",
    "train",
]
