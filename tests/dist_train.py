"""Run by test_distributed.py under torchrun (or plainly, as the 1-process reference).

Trains a small CNN on real X-rays with a fixed global batch and writes this rank's final
weights and the per-step global loss to OUT_DIR/rank<r>.safetensors and losses<r>.json.
An optional second argument is `train.ema` (the final weights are then the average).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from safetensors.torch import save_file

from biomx.config import TrainConfig
from biomx.data.batching import collate_batch
from biomx.datasets import get_dataset
from biomx.engine import distributed as dist
from biomx.engine.runtime import seed_everything
from biomx.engine.trainer import Trainer
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.models.registry import build_model
from biomx.tasks.classification.task import build_task


def main(out_dir: Path, ema: float | None = None) -> None:
    with np.load(get_dataset("pneumoniamnist").path) as arrays:
        images = torch.from_numpy(arrays["train_images"][:512]).unsqueeze(1)
        labels = torch.from_numpy(arrays["train_labels"][:512, 0]).float()
    task = build_task("binary", ["normal", "pneumonia"])
    seed_everything(0)
    # No BatchNorm: per-rank batch statistics would differ from one big batch by design.
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, dropout=0.0, norm="none")
    settings = TrainConfig(epochs=2, batch_size=64, progress=False, device="cpu", grad_clip=None, ema=ema)
    losses: list[float] = []

    def record(trainer: Trainer) -> None:
        losses.append(float(dist.mean_across_ranks(torch.tensor(trainer.last_loss))))

    trainer = Trainer(model, task.loss, ImageTensorDataset(images[:448], labels[:448]),
                      val_data=ImageTensorDataset(images[448:], labels[448:]), settings=settings,
                      collate_fn=collate_batch, step_hook=record,
                      metrics_fn=lambda out, y: task.quick_metrics(task.probabilities(out).numpy(), y.numpy()))  # fmt: skip
    history = trainer.fit()
    rank = dist.rank()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / f"rank{rank}.safetensors")
    (out_dir / f"losses{rank}.json").write_text(json.dumps({"steps": losses, "history": history}))
    if torch_dist.is_initialized():
        torch_dist.barrier()  # both ranks done with their files and collectives before teardown
        dist.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else None)
