"""DP-SGD for the Trainer (Opacus): Poisson sampling, per-sample clipping, calibrated noise.

`make_private(trainer)` is the Trainer's one hook: it refuses in one line what DP-SGD cannot do
here, then swaps in
  - a Poisson batch sampler: every sample joins each batch with probability q = batch_size / N,
    drawn from (seed, epoch), so a resumed epoch sees the same batches;
  - per-sample gradients (Opacus' GradSampleModule hooks on the model's own layers; the model
    object is unchanged, so checkpoints, evaluation and predict see a plain model);
  - Opacus' DPOptimizer around the trainer's optimizer: clip each sample's gradient to
    `max_grad_norm`, sum, add Gaussian noise of std `noise_multiplier * max_grad_norm`;
and adds the privacy ledger (`biomx.privacy.ledger`) as a callback.

The noise multiplier is calibrated (opacus' get_noise_multiplier) so that `train.epochs` epochs of
`N // batch_size` steps spend the target epsilon under `train.privacy.accountant`.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from biomx.data.batching import collate_batch
from biomx.engine.logging import console
from biomx.errors import BiomxError, ConfigError
from biomx.models.norms import batchnorm_layers, groups_for
from biomx.models.registry import build_model, build_recorded, get_entry
from biomx.plugins import import_extra
from biomx.privacy.config import PrivacyConfig
from biomx.privacy.ledger import History, PrivacyLedger, read_ledger
from biomx.protocols import FittedModel

if TYPE_CHECKING:
    from biomx.engine.trainer import Trainer

MIN_BATCH = 16  # expected batch size below which an empty Poisson draw stops being negligible


@dataclass
class PrivateTraining:
    """What a DP run is running with; the ledger reads it."""

    config: PrivacyConfig
    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    planned_steps: int
    n_samples: int


def refuse_unsupported(settings: Any, *, solver: bool, world: int) -> None:
    """One line for what DP-SGD cannot do here (the settings are a `TrainConfig`)."""
    if solver:
        raise ConfigError("train.privacy: this model is fitted by a solver, not by gradient steps; "
                          "DP-SGD needs a network trained by gradients (remove train.privacy or pick such a model)")
    problems = {
        "train.accumulate": (settings.accumulate != 1, "set it to 1 (use a larger train.batch_size instead)"),
        "train.compile": (settings.compile, "set it to false (per-sample gradient hooks)"),
        "train.precision": (settings.precision != "fp32", "set it to fp32"),
        "torchrun": (world > 1, "run on one process (distributed DP-SGD is not supported yet)"),
    }
    for key, (bad, fix) in problems.items():
        if bad:
            raise ConfigError(f"{key}: not supported with train.privacy; {fix}")
    if settings.batch_size < MIN_BATCH:
        raise ConfigError(f"train.batch_size: at least {MIN_BATCH} with train.privacy (the expected Poisson "
                          f"batch size); got {settings.batch_size}")


def check_model(model: nn.Module, name: str) -> None:
    """Refuse, in one line naming the model and the layer, a model DP-SGD cannot train: BatchNorm
    mixes samples within a batch, so no per-sample gradient exists; Opacus lacks per-sample
    gradients for a few other layers (plain LSTM, MultiheadAttention)."""
    for layer, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            fix = "set model.args.norm: group" if _takes(name, "norm") else "pick a model without BatchNorm"
            raise ConfigError(f"model.name: {name} has BatchNorm (layer {layer!r}), which mixes the samples of a "
                              f"batch: DP-SGD needs per-sample gradients; {fix}")  # fmt: skip
    validators = import_extra("opacus.validators", "train.privacy")
    errors = validators.ModuleValidator.validate(model, strict=False)
    if errors:
        first = str(errors[0]).splitlines()[0].split(". ")[0]  # opacus' first sentence names the layer type
        where = next((f", layer {path!r}" for path, m in model.named_modules() if path
                      and f"nn.{type(m).__name__} " in first), "")  # fmt: skip
        raise ConfigError(f"model.name: {name} cannot be trained with DP-SGD ({first}{where}); pick another model "
                          "(docs/privacy.md lists those that train with DP)")  # fmt: skip


def _takes(name: str, argument: str) -> bool:
    """Whether the zoo builder `name` takes `argument` (a model outside the zoo: no)."""
    try:
        return argument in inspect.signature(get_entry(name).builder).parameters
    except BiomxError:
        return False


class PoissonBatches(Sampler[list[int]]):
    """Batches of a Poisson sample: each index joins with probability `q`, independently per
    batch; `steps` batches per epoch. The draws depend only on (seed, epoch): a resumed epoch
    skips the batches already done (`start`, in samples, as the Trainer sets it).

    An empty draw (probability (1 - q)^N, about e^-batch_size) is drawn again: a batch needs at
    least one sample to run the model; batch_size >= 16 keeps that below 1e-7."""

    def __init__(self, n: int, q: float, steps: int, seed: int, expected_batch: int):
        self.n, self.q, self.steps, self.seed, self.expected_batch = n, q, steps, seed, expected_batch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        skip = self.start // self.expected_batch
        for step in range(self.steps):
            index = np.flatnonzero(rng.random(self.n) < self.q)
            while not len(index):
                index = np.flatnonzero(rng.random(self.n) < self.q)
            if step >= skip:
                yield index.tolist()

    def __len__(self) -> int:
        return self.steps - self.start // self.expected_batch


def noise_for(config: PrivacyConfig, sample_rate: float, steps: int) -> float:
    """The noise multiplier that spends `config.epsilon` in `steps` steps at `sample_rate`."""
    utils = import_extra("opacus.accountants.utils", "train.privacy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # opacus' note on its range of RDP orders
            return float(utils.get_noise_multiplier(target_epsilon=config.epsilon, target_delta=config.delta,
                                                    sample_rate=sample_rate, steps=steps,
                                                    accountant=config.accountant))
    except ValueError as err:  # opacus: the target cannot be reached
        raise ConfigError(f"train.privacy.epsilon: {config.epsilon} cannot be reached ({err}); raise it") from None


def check_run(cfg: Any, model_info: dict[str, Any], world: int, data: Dataset | None = None) -> dict[str, Any]:
    """Before any run file is written: the run.json model entry a DP run trains (`model_info`
    with its BatchNorm converted, see `convert_batchnorm`), or one line refusing a DP run that
    cannot train (`cfg` an ExperimentConfig; `data` the training split, for `check_per_sample`).
    Without train.privacy: `model_info` unchanged."""
    if cfg.train.privacy is None:
        return model_info
    if cfg.model.ensemble > 1:
        raise ConfigError("model.ensemble: not supported with train.privacy yet (every member sees the same "
                          "patients, so their budgets add up); set it to 1")
    if cfg.model.name == "auto":
        raise ConfigError("model.name: auto trains many candidates on the same data, which DP-SGD does not "
                          "account for; name one model with train.privacy")
    notes: list[str] = []
    if cfg.train.privacy.batchnorm == "convert":
        model_info = convert_batchnorm(model_info, notes)
    model = build_recorded(model_info)
    refuse_unsupported(cfg.train, solver=isinstance(model, FittedModel), world=world)
    check_model(model, model_info["name"])
    if data is not None:
        check_per_sample(model, model_info["name"], data)
    for note in notes:  # said once the run is accepted
        console.print(note)
    return model_info


def check_per_sample(model: nn.Module, name: str, data: Dataset) -> None:
    """Refuse, in one line, a model whose trainable layers do not see one row per sample (a graph
    network's layers see one row per node): Opacus takes a layer input's first dimension as the
    sample, so its per-sample gradients, clipping and privacy would be those of the rows. Checked
    on two real training samples, without gradients."""
    if len(data) < 2:
        return
    getitems = getattr(data, "__getitems__", None)
    x, _ = collate_batch(getitems([0, 1]) if getitems is not None else [data[0], data[1]])
    rows: dict[str, int] = {}

    def seen(path: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].ndim:
                rows.setdefault(path, int(inputs[0].shape[0]))
        return hook

    hooks = [m.register_forward_hook(seen(path)) for path, m in model.named_modules()
             if any(p.requires_grad for p in m.parameters(recurse=False))]  # fmt: skip
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in hooks:
            handle.remove()
    layer, n = next(((path, n) for path, n in rows.items() if n != 2), (None, 2))
    if layer is not None:
        raise ConfigError(f"model.name: {name} cannot be trained with DP-SGD: its layer {layer!r} sees {n} rows for "
                          "2 samples (rows are parts of a sample, e.g. graph nodes), and per-sample gradients need "
                          "one row per sample; pick another model (docs/privacy.md lists those that train with "
                          "DP)")  # fmt: skip


NORM_CHOICES = ("group", "layer", "instance")  # a builder's `norm` values without batch statistics, tried in order


def convert_batchnorm(model_info: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """The run.json model entry without BatchNorm: the builder's own `norm` argument where one of
    `NORM_CHOICES` builds the model without it (small_cnn: norm: group), else every BatchNorm
    swapped for GroupNorm after building (`"batchnorm": "group"`, which `build_recorded` applies
    again wherever the run's model is rebuilt). A model without BatchNorm is returned as it is.
    What was replaced, as a line for the user, is appended to `notes`."""
    name, args = model_info["name"], model_info["args"]
    model = build_recorded(model_info)
    layers = batchnorm_layers(model)
    if not layers or isinstance(model, FittedModel):
        return model_info
    converted = {**model_info, "batchnorm": "group"}
    widths = sorted({model.get_submodule(path).num_features for path in layers})
    how = "GroupNorm (" + ", ".join(f"{groups_for(c)} groups of {c}" for c in widths) + " channels)"
    if _takes(name, "norm"):
        for norm in NORM_CHOICES:
            try:
                if not batchnorm_layers(build_model(name, **{**args, "norm": norm})):
                    converted, how = {**model_info, "args": {**args, "norm": norm}}, f"model.args.norm: {norm}"
                    break
            except ConfigError:  # not one of this builder's values
                continue
    if notes is not None:
        notes.append(f"train.privacy: {name}'s {len(layers)} BatchNorm layer(s) replaced by {how} for DP-SGD "
                     "(train.privacy.batchnorm: refuse to refuse instead)")
    return converted


def make_private(trainer: Trainer, *, config: PrivacyConfig | None = None, planned_steps: int | None = None,
                 prior: History | None = None) -> PrivateTraining:  # fmt: skip
    """Turn the trainer's model, optimizer and training loader into DP-SGD (see the module doc).

    The Trainer calls it with its settings alone. A caller that trains the same data in several
    trainers (a federated site, one per round) passes `config`, the noise's `planned_steps` over
    all of them, and `prior`, the history its earlier trainers spent: the ledger goes on from it."""
    s = trainer.settings
    config = config or s.privacy
    refuse_unsupported(s, solver=trainer.solver, world=trainer.world)
    check_model(trainer.model, str(trainer.model_config.get("model", {}).get("name", type(trainer.model).__name__)))
    opacus = import_extra("opacus", "train.privacy")
    # torch notes that the first layer's input needs no gradient: true, and harmless here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    n = len(trainer.train_data)
    steps_per_epoch = trainer.batches_per_epoch  # N // batch_size, as without DP: the schedule is unchanged
    q = s.batch_size / n
    previous = read_ledger(trainer.run_dir) if trainer.run_dir is not None else None
    if previous is not None:  # a resumed run goes on with the noise it started with
        sigma, q = float(previous["noise_multiplier"]), float(previous["sample_rate"])
    else:
        sigma = noise_for(config, q, planned_steps or s.epochs * steps_per_epoch)
    for module in trainer.model.modules():  # an in-place activation would overwrite what the hooks keep
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    # Hooks on the model's own layers: trainer.net stays the model (checkpoints unchanged).
    trainer.grad_sample_module = opacus.GradSampleModule(trainer.model, loss_reduction="mean")
    trainer.optimizer = opacus.optimizers.DPOptimizer(
        trainer.optimizer, noise_multiplier=sigma, max_grad_norm=config.max_grad_norm,
        expected_batch_size=s.batch_size, loss_reduction="mean")  # fmt: skip
    trainer.sampler = PoissonBatches(n, q, steps_per_epoch, s.seed, s.batch_size)
    trainer.train_loader = DataLoader(trainer.train_data, batch_sampler=trainer.sampler, collate_fn=trainer.collate_fn,
                                      num_workers=s.num_workers, generator=torch.Generator().manual_seed(s.seed))
    private = PrivateTraining(config, sigma, q, steps_per_epoch, planned_steps or s.epochs * steps_per_epoch, n)
    trainer.callbacks.append(PrivacyLedger(private, prior))
    return private
