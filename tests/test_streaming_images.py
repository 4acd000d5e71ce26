"""Image files streamed from disk (`data.image.storage: stream`): rows decoded lazily into the row
store by DataLoader workers give the same rows, batches, weights and metrics as the in-memory path;
the store survives concurrent writers and torn rows; a corrupt file fails in one line; resume works."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from biomx.cli import main
from biomx.config import TrainConfig
from biomx.data.batching import collate_batch
from biomx.engine.runtime import seed_everything
from biomx.engine.trainer import Trainer, TrainingInterrupted
from biomx.errors import ConfigError, DataError
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.modalities.image import pipeline
from biomx.modalities.image.augment import Augment
from biomx.modalities.image.config import ImageData, ImageSettings
from biomx.modalities.image.streaming import StreamedImages
from biomx.models.registry import build_model
from biomx.tasks.classification.task import build_task
from run_helpers import assert_same_runs

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = build_task("binary", ["normal", "pneumonia"])


def _load(root: Path, storage: str, **data):
    return pipeline.load(ImageData(source="folder", path=str(root), image=ImageSettings(size=(24, 24), storage=storage),
                                   **data))  # fmt: skip


def test_streamed_rows_are_the_decoded_rows_and_are_kept(xray_pngs):
    memory, streamed = _load(xray_pngs, "memory"), _load(xray_pngs, "stream")
    images = streamed.inputs
    assert isinstance(images, StreamedImages) and images.shape == memory.inputs.shape
    assert streamed.ids == memory.ids and streamed.labels == memory.labels and streamed.hashes == memory.hashes
    assert not images.store.filled().any()  # nothing decoded up front
    rows = torch.tensor([7, 3, 3, 150, 0])
    assert torch.equal(images[rows], memory.inputs[rows]) and images[rows].dtype == torch.float16
    assert images.store.filled().sum() == 4
    assert torch.equal(images[:], memory.inputs) and images.store.filled().all()

    # A later load reads the store: a row rewritten consistently (bytes and mark) is served as stored...
    again = _load(xray_pngs, "stream").inputs
    assert again.store.folder == images.store.folder
    again.store.write(5, np.full((1, 24, 24), 0.5, np.float16))
    assert bool((again[5] == 0.5).all())
    # ...while bytes that do not match their mark (a torn or unmarked write) are decoded again.
    with open(again.store.folder / "rows.npy", "r+b") as f:
        f.seek(again.store.offset + 6 * again.store.row_bytes)
        f.write(b"\x00" * 16)
    assert torch.equal(again[6], memory.inputs[6])

    # image.cache: false keeps no store: every read decodes its files.
    uncached = pipeline.load(ImageData(source="folder", path=str(xray_pngs), image=ImageSettings(
        size=(24, 24), storage="stream", cache=False))).inputs  # fmt: skip
    assert uncached.store is None and torch.equal(uncached[rows], memory.inputs[rows])


def test_streamed_and_in_memory_batches_are_identical(xray_pngs):
    memory, streamed = _load(xray_pngs, "memory"), _load(xray_pngs, "stream")
    targets = torch.arange(len(memory.ids), dtype=torch.float32)
    index = torch.arange(10, 150)
    augment = Augment(hflip=0.5, rotate=10, noise=0.02)
    a = ImageTensorDataset(memory.inputs, targets[index], augment=augment, normalize=(0.4, 0.2), seed=3, index=index)
    b = ImageTensorDataset(streamed.inputs, targets[index], augment=augment, normalize=(0.4, 0.2), seed=3, index=index)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for batch in ([5, 0, 99, 42], [1, 2, 3]):
            (xa, ya), (xb, yb) = a.__getitems__(batch), b.__getitems__(batch)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    train = np.arange(160)
    assert pipeline.channel_statistics(memory.inputs, train, 0) == pipeline.channel_statistics(streamed.inputs, train, 0)


def _load_and_read_all(root: Path, seed: int) -> None:
    images = _load(root, "stream").inputs  # both processes create the store: one rename wins
    images[torch.from_numpy(np.random.default_rng(seed).permutation(len(images)))]


def test_a_store_filled_by_two_processes_is_complete_and_correct(xray_pngs):
    memory = _load(xray_pngs, "memory").inputs
    # Two processes create the same store and decode every row at once, in different orders.
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_load_and_read_all, args=(xray_pngs, seed)) for seed in (1, 2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    images = _load(xray_pngs, "stream").inputs
    assert images.store.filled().all() and len(list(images.store.folder.parent.iterdir())) == 1  # no leftovers
    assert torch.equal(torch.from_numpy(images.store.read(np.arange(len(images)))), memory)  # no fill: all stored

    # DataLoader workers fill a fresh store (another image size) the same way.
    fresh = pipeline.load(ImageData(source="folder", path=str(xray_pngs), image=ImageSettings(size=(20, 20),
                                                                                           storage="stream"))).inputs
    data = ImageTensorDataset(fresh, torch.zeros(len(fresh)))
    loader = DataLoader(data, batch_size=16, num_workers=2, collate_fn=collate_batch, shuffle=True)
    assert sum(len(x) for x, _ in loader) == len(fresh)
    assert fresh.store.filled().all()


def _config(path: Path, root: Path, storage: str, workers: int = 0, name: str = "t") -> Path:
    path.write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {root}, image: {{size: [24, 24], storage: {storage}, "
        "augment: {hflip: 0.5, rotate: 10}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        f"train: {{epochs: 2, batch_size: 16, progress: false, deterministic: true, num_workers: {workers}}}\n"
        f"eval: {{bootstrap: 20, explain: 2, subgroups: [mean_intensity]}}\noutput: {{dir: {path.parent / 'runs'}, tensorboard: false}}\n"
    )
    return path


@pytest.mark.slow
def test_streamed_and_in_memory_runs_train_the_same_model(xray_pngs, tmp_path):
    for storage, workers in (("memory", 0), ("stream", 2)):
        cfg = _config(tmp_path / f"{storage}.yaml", xray_pngs, storage, workers)
        assert main(["train", str(cfg), "--set", f"output.name={storage}"]) == 0
    runs = tmp_path / "runs"
    assert_same_runs(runs, "memory", "stream")
    groups = [json.loads((runs / s / "subgroups.json").read_text()) for s in ("memory", "stream")]
    assert groups[0] == groups[1]  # mean_intensity read from the streamed rows
    pre = [json.loads((runs / s / "run.json").read_text())["preprocessing"] for s in ("memory", "stream")]
    assert pre[0] == pre[1]
    assert (runs / "stream" / "report.html").is_file()
    checks = {c["name"]: c["status"] for c in json.loads((runs / "stream" / "data_audit.json").read_text())["checks"]}
    assert checks["exact duplicates"] == "ok"  # by file hash: streamed pixels are not read back to hash them


def test_a_corrupt_file_found_mid_epoch_is_one_line_naming_it(xray_pngs, tmp_path, capsys):
    broken = sorted(xray_pngs.glob("pneumonia/*.png"))[3]
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG: the header reads, the pixels do not
    cfg = _config(tmp_path / "exp.yaml", xray_pngs, "stream", workers=2)
    # Found by the normalisation sample (decoded in the main process) or by a DataLoader worker:
    for normalize in ("true", "false"):
        assert main(["train", str(cfg), "--set", "train.epochs=1", "--set", f"data.image.normalize={normalize}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("error: ")]
        assert errors == err[-1:] and errors[0].startswith(f"error: {broken}: cannot read image"), err
        assert not any("Traceback" in line for line in err)
    with pytest.raises(ConfigError, match="on_error: skip"):
        _load(xray_pngs, "stream", on_error="skip")
    assert len(_load(xray_pngs, "auto", on_error="skip").skipped) == 1  # auto keeps skipping (in memory)


def _trainer(images: StreamedImages, run_dir: Path, seed_model: int = 0) -> Trainer:
    seed_everything(seed_model)
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, dropout=0.3)
    labels = torch.tensor([float("pneumonia" in p) for p in images.paths])
    train = ImageTensorDataset(images, labels[:128], augment=Augment(hflip=0.5, noise=0.02), seed=0,
                               index=torch.arange(128))  # fmt: skip
    val = ImageTensorDataset(images, labels[128:], index=torch.arange(128, len(images)))
    cfg = TrainConfig(epochs=2, batch_size=16, deterministic=True, progress=False, num_workers=2)
    return Trainer(model, TASK.loss, train, val_data=val, settings=cfg, run_dir=run_dir, collate_fn=collate_batch,
                   tensorboard=False)  # fmt: skip


def test_a_streamed_run_resumes_mid_epoch_to_the_same_weights(xray_pngs, tmp_path):
    images = _load(xray_pngs, "stream").inputs
    reference = _trainer(images, tmp_path / "a")
    reference.fit()

    def interrupt(trainer: Trainer) -> None:
        if trainer.state["step"] == 5:  # mid first epoch (8 steps per epoch)
            trainer.request_stop("SIGTERM")

    interrupted = _trainer(images, tmp_path / "b")
    interrupted.step_hook = interrupt
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    resumed = _trainer(_load(xray_pngs, "stream").inputs, tmp_path / "b", seed_model=123)
    resumed.fit(resume=True)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


# ---- volumes (data.volume.storage) ------------------------------------------------------------


def _volume_config(path: Path, out: Path, storage: str) -> dict:
    return {
        "name": "adrenal",
        "data": {"source": "npz", "path": str(path), "modality": "volume", "split": {"method": "predefined",
                 "holdout": "val"}, "volume": {"storage": storage, "augment": {"flip": 0.5, "rotate90": 0.5}}},
        "model": {"name": "small_cnn", "args": {"width": 4, "depth": 1}},
        "task": {"type": "binary"},
        "train": {"epochs": 1, "batch_size": 16, "progress": False, "device": "cpu", "deterministic": True},
        "eval": {"bootstrap": 20, "explain": 2},
        "output": {"dir": str(out), "name": storage, "tensorboard": False},
    }  # fmt: skip


def test_volumes_streamed_from_an_npz_train_the_same_model(tmp_path, monkeypatch):
    from biomx.config import validate
    from biomx.data.row_store import StoredRows
    from biomx.experiment import prepare, train
    from data_paths import MEDMNIST

    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:  # 40 + 16 real AdrenalMNIST3D volumes (28^3 uint8)
        arrays = {f"{s}_{k}": a[f"{s}_{k}"][:n] for s, n in (("train", 40), ("val", 16)) for k in ("images", "labels")}
    path = tmp_path / "adrenal.npz"
    np.savez_compressed(path, **arrays)
    memory, streamed = (prepare(validate(_volume_config(path, tmp_path, s))) for s in ("memory", "stream"))
    rows = streamed.data.inputs
    assert isinstance(rows, StoredRows) and rows.store.filled().all() and rows.dtype == torch.uint8
    assert torch.equal(rows[:], memory.data.inputs) and streamed.info == memory.info
    x_mem, _ = memory.datasets["train"].__getitems__([3, 1, 30])
    x_str, _ = streamed.datasets["train"].__getitems__([3, 1, 30])
    assert torch.equal(x_mem, x_str)

    runs = [train(validate(_volume_config(path, tmp_path / "runs", s))) for s in ("memory", "stream")]
    a, b = (load_file(r / "checkpoints" / "best.safetensors") for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Float volumes: NaN voxels are refused naming the array and row, as in memory.
    arrays["train_images"] = arrays["train_images"].astype(np.float32)
    arrays["train_images"][7, 0, 0, 0] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"train_images row 7 has NaN"):
        prepare(validate(_volume_config(path, tmp_path, "stream")))
