"""`train.strategy: fsdp`: parameters, gradients and optimizer state sharded across torchrun's ranks.

DDP keeps a full copy of the model, its gradients and the optimizer state on every rank; FSDP2
(`torch.distributed.fsdp.fully_shard`) keeps 1/N of each and all-gathers a unit's parameters only
while it runs. The Trainer calls this module in a few places and is otherwise unchanged:

- `setup` refuses what cannot be sharded (DP-SGD, solver models, `train.fairness`), then shards
  the model in place (innermost large modules first, then the root) before the optimizer is made.
  With one process there is nothing to shard: training is plain, with a warning, and checkpoints are
  still sharded ones (one shard), so the run can be resumed under torchrun on several processes.
- Checkpoints: every rank writes its shards of the model and optimizer with
  torch.distributed.checkpoint (DCP) into a fresh folder `checkpoints/.sharded-<tag>.biomx-tmp`;
  after a barrier rank 0 renames it to `checkpoints/sharded-<tag>` and then writes
  `last.safetensors` (atomic, as for DDP) with the gathered full weights, the trainer's progress
  (epoch, step, sampler position, RNG, scheduler, history), the optimizer's hyper-parameters and
  the folder's name and the SHA-256 of its `.metadata`. That file is the commit point: a crash
  leaves it naming a complete folder; older folders are removed only after it is written.
  DCP reshards on load, so a run resumes on any number of ranks.
- `best.safetensors` and `last.safetensors` hold full, unsharded weights (gathered to rank 0), so
  evaluate, predict, export and the report read the same files as for DDP. After training the
  Trainer's model is swapped for an unsharded copy with the final weights (`finish`), because the
  evaluation and explanations run the whole model on every rank, as `biomx predict` does.

Safety: DCP reads tensors with `torch.load(weights_only=True)`, but non-tensor values it would
unpickle freely (`DefaultLoadPlanner.load_bytes`), and its `.metadata` file is a pickle that
`FileSystemReader.read_metadata` loads with plain `pickle.load`. So only tensors go into DCP (the
rest is JSON in `last.safetensors`), `.metadata` is read with an unpickler that builds only DCP's
own metadata classes, and only after its SHA-256 matches the one `last.safetensors` recorded.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import pickle
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.utils.data import Sampler

from biomx.engine import distributed as dist
from biomx.engine.logging import console
from biomx.errors import BiomxError, ConfigError
from biomx.protocols import FittedModel

UNIT_FRACTION = 16  # a module holding >= 1/16 of the parameters (outside inner units) is its own FSDP unit
_FOLDER = re.compile(r"sharded-[0-9a-f]{16}")
_TMP = ".biomx-tmp"


def check_settings(settings: Any, model: nn.Module, extra: Any = None) -> None:
    """Refuse what FSDP cannot shard; `biomx train` calls this before any run file is written.

    Raises:
        ConfigError: DP-SGD (`train.privacy`), a model fitted by a solver, `train.fairness` or `train.ema`.
    """
    if settings.privacy is not None:
        raise ConfigError("train.strategy: fsdp cannot be combined with train.privacy (DP-SGD clips each sample's "
                          "gradient of whole parameters, which FSDP shards); use train.strategy: ddp")  # fmt: skip
    if isinstance(model, FittedModel):
        raise ConfigError(f"train.strategy: fsdp: model {type(model).__name__!r} is fitted by a solver in one call "
                          "(no gradient steps to shard); use train.strategy: ddp")  # fmt: skip
    if extra is not None or settings.fairness is not None:
        raise ConfigError("train.strategy: fsdp cannot be combined with train.fairness (its sampler and adversary "
                          "are not sharded); use train.strategy: ddp")  # fmt: skip
    if settings.ema is not None:
        raise ConfigError("train.strategy: fsdp cannot be combined with train.ema (the average would need its own "
                          "shards); use train.strategy: ddp")  # fmt: skip


def setup(trainer: Any, extra: Any) -> Sharding:
    """Check that this run can be sharded (`check_settings`) and shard `trainer.model` in place
    (before its optimizer)."""
    s = trainer.settings
    check_settings(s, trainer.model, extra)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)
    sharding = Sharding(trainer.model, trainer.device, trainer.world, amp)
    if trainer.world == 1 and dist.is_main():
        console.print("[yellow]warning: train.strategy: fsdp with one process: nothing to shard, training "
                      "unsharded; checkpoints are sharded ones, so torchrun can resume the run on more processes[/]")
    return sharding


def grad_scaler(sharding: Sharding | None, device_type: str, enabled: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler; with sharded gradients an inf in any rank's shard skips the step on every rank."""
    sharded = sharding is not None and sharding.active
    return (ShardedGradScaler if sharded else torch.amp.GradScaler)(device_type, enabled=enabled)


def _units(module: nn.Module, min_params: int, shard: Any) -> int:
    """Shard every child holding >= min_params parameters outside its own inner units, innermost
    first; return how many parameters of `module` are not in a unit yet."""
    left = sum(p.numel() for p in module.parameters(recurse=False))
    for child in module.children():
        inner = _units(child, min_params, shard)
        if inner >= min_params:
            shard(child)
            inner = 0
        left += inner
    return left


class Sharding:
    """The FSDP state of one Trainer: the sharded model's unsharded twin (on the meta device until
    `finish`), and the sharded checkpoints."""

    def __init__(self, model: nn.Module, device: torch.device, world: int, amp: torch.dtype | None):
        self.active, self.units = world > 1, 0
        if not self.active:
            return
        # Parameters on the meta device: the structure (and the small buffers) without a second copy
        # of the weights; `finish` fills it with the final weights for evaluation.
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
        self.template = copy.deepcopy(model, memo)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (world,))
        # On CUDA, parameters are all-gathered and computed in bf16/fp16, gradients reduced in fp32;
        # on CPU the Trainer's autocast does the mixed precision, as for DDP.
        policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp and device.type == "cuda" \
            else MixedPrecisionPolicy()  # fmt: skip

        def shard(module: nn.Module) -> None:
            fully_shard(module, mesh=mesh, mp_policy=policy)
            self.units += 1

        total = sum(p.numel() for p in model.parameters())
        _units(model, max(total // UNIT_FRACTION, 1), shard)
        shard(model)  # the root: whatever is left, and the hooks that order the units' all-gathers

    # ------------------------------------------------------------------ weights

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state dict on CPU, on rank 0 (empty elsewhere). Collective."""
        if not self.active:
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def finish(self, trainer: Any) -> None:
        """After training: the Trainer's model becomes an unsharded copy with the final weights on
        every rank (evaluation, explanations and predictions run the whole model, as `biomx predict` does)."""
        if not self.active:
            return
        full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
        self.template.load_state_dict({k: v.to(trainer.device) for k, v in full.items()}, assign=True)
        trainer.model = trainer.net = self.template
        self.active = False

    # ------------------------------------------------------------------ checkpoints

    def save(self, trainer: Any, progress: dict[str, Any]) -> Path | None:
        """Every rank: write this rank's shards; rank 0: commit them with `last.safetensors`. Collective."""
        from biomx.engine.checkpoint import save_checkpoint

        folder = trainer.checkpoint_dir
        if folder is None:
            return None
        model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _split("", {"model": model_state, "optimizer": optim_state}, tensors)
        tag = [secrets.token_hex(8) if dist.is_main() else None]
        if dist.is_distributed():
            torch_dist.broadcast_object_list(tag, src=0)
        tmp, final = folder / f".sharded-{tag[0]}{_TMP}", folder / f"sharded-{tag[0]}"
        tmp.mkdir(parents=True, exist_ok=True)
        with _one_process_quiet():
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True), no_dist=not dist.is_distributed())
        weights = self.full_state(trainer.model)
        dist.barrier()  # every rank's shards are on disk
        path = folder / "last.safetensors"
        if dist.is_main():
            os.replace(tmp, final)
            metadata = hashlib.sha256((final / ".metadata").read_bytes()).hexdigest()
            progress = {**progress, "sharded": {"folder": final.name, "metadata_sha256": metadata, "state": skeleton}}
            save_checkpoint(path, weights, progress)  # the commit point
            for old in folder.iterdir():  # superseded and half-written folders
                if old.is_dir() and old != final and old.name.startswith(("sharded-", ".sharded-")):
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return path if dist.is_main() else None

    def load(self, trainer: Any, path: Path, extra: dict[str, Any]) -> None:
        """Restore model, optimizer and RNG from the shards `path` names, on any number of ranks (DCP
        reshards: each rank reads the pieces of its own shards)."""
        record = extra["sharded"]
        name = str(record.get("folder"))
        if not _FOLDER.fullmatch(name):  # only a folder beside it, of the name biomx gives
            raise BiomxError(f"{path}: names {name!r} as its sharded state, not a biomx sharded folder")
        folder = path.parent / name
        if not (folder / ".metadata").is_file():
            raise BiomxError(f"{path}: its sharded state {name} is missing; restore the run folder or train again")
        model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)  # shapes and shards to fill
        tensors: dict[str, torch.Tensor] = {}
        _split("", {"model": model_state, "optimizer": optim_state}, tensors)
        saved: dict[str, torch.Tensor] = {}
        wanted = _join(record["state"], saved, tensors)
        if set(saved) != set(tensors):
            raise BiomxError(f"{path}: the sharded state does not fit this model and optimizer; resume without "
                             "changing the model or train.optimizer")  # fmt: skip
        reader = _TrustedReader(folder, read_metadata(folder, record.get("metadata_sha256"), path))
        with _one_process_quiet():
            dcp.load(saved, storage_reader=reader, no_dist=not dist.is_distributed())
        set_state_dict(trainer.model, trainer.optimizer, model_state_dict=wanted["model"],
                       optim_state_dict=wanted["optimizer"])  # fmt: skip
        _restore_rng(extra["rng"], trainer, int(extra["trainer"].get("step", 0)))


@contextlib.contextmanager
def _one_process_quiet() -> Iterator[None]:
    """DCP warns on every save and load in a single process (no process group), which is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _split(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Tensors (and DTensors) into `tensors` under dotted keys; the rest as a JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split(f"{prefix}/{k}", v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(f"{prefix}/{i}", v, tensors) for i, v in enumerate(obj)]
    return obj


def _join(skeleton: Any, used: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_split` with this run's tensors (to be filled by DCP); `used` collects the keys
    the saved state names (KeyError-free: a missing one is reported by the caller)."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        key = skeleton["__tensor__"]
        used[key] = tensors.get(key, torch.empty(0))
        return used[key]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: _join(v, used, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [_join(v, used, tensors) for v in skeleton]
    return skeleton


def _restore_rng(rng: dict[str, torch.Tensor], trainer: Any, step: int) -> None:
    """Each rank's saved RNG stream; a rank the saved run did not have starts its own from the seed,
    the rank and the step (a different number of ranks draws different dropout masks anyway)."""
    rank = trainer.rank
    fresh = torch.Generator().manual_seed(hash((trainer.settings.seed, rank, step)) % 2**63).get_state()
    # clone: set_rng_state of a row view (storage offset > 0) crashes in torch 2.13
    torch.set_rng_state(rng["torch"][rank].clone() if rank < len(rng["torch"]) else fresh)
    if "cuda" in rng and trainer.device.type == "cuda" and rank < len(rng["cuda"]):
        torch.cuda.set_rng_state(rng["cuda"][rank].clone(), trainer.device)


_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata dataclasses, torch.Size, dtypes and paths; refuses any other global
    (a forged `.metadata` cannot call anything)."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def read_metadata(folder: Path, sha256: str | None, owner: Path) -> Any:
    """A sharded folder's `.metadata`, if it is the one `owner` (last.safetensors) recorded."""
    try:
        data = (folder / ".metadata").read_bytes()
    except OSError as err:
        raise BiomxError(f"{owner}: cannot read {folder.name}/.metadata ({err})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise BiomxError(f"{owner}: {folder.name}/.metadata changed after it was written; restore the run folder "
                         "or train again")  # fmt: skip
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
        entries = metadata.state_dict_metadata.values()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, TypeError, KeyError, IndexError) as err:
        raise BiomxError(f"{owner}: {folder.name}/.metadata is not a biomx checkpoint's ({err})") from None
    if any(not hasattr(entry, "chunks") for entry in entries):
        raise BiomxError(f"{owner}: {folder.name} holds pickled objects, not only tensors; biomx never writes those")
    return metadata


class _TrustedReader(dcp.FileSystemReader):
    """DCP's file reader that hands DCP the metadata `read_metadata` above checked and built (DCP
    would unpickle `.metadata` itself, and log and wrap any error it raised)."""

    def __init__(self, folder: Path, metadata: Any):
        super().__init__(folder)
        self._metadata = metadata

    def read_metadata(self) -> Any:  # no **kwargs: DCP then never asks for per-rank metadata files
        from torch.distributed.checkpoint.metadata import StorageMeta

        self._metadata.storage_meta = self._metadata.storage_meta or StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata


class EvenShardSampler(Sampler[int]):
    """Evaluation shards for a sharded model: rank r takes every world-th sample from r, as
    `ShardSampler`, then repeats sample 0 until every rank has as many (each forward all-gathers
    parameters, so every rank must run the same number of batches). `indices` are the real ones; the
    caller drops the outputs past them."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))
        self.padded = self.indices + [0] * ((-(-n // world) if n else 0) - len(self.indices))

    def __iter__(self):
        return iter(self.padded)

    def __len__(self) -> int:
        return len(self.padded)


def check_strategy(path: Path, extra: dict[str, Any], sharded: bool) -> None:
    """A checkpoint is resumed with the strategy that wrote it (one line, not a KeyError)."""
    if ("sharded" in extra) != sharded:
        was, now = ("fsdp", "ddp") if "sharded" in extra else ("ddp", "fsdp")
        raise BiomxError(f"{path}: saved with train.strategy: {was}; resume with the same strategy "
                         f"(got {now}), e.g. biomx train --resume RUN --set train.strategy={was}")  # fmt: skip
