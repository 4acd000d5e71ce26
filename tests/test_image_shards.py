"""`data.source: shards` for 2D images: a folder packed by `biomx shards write` reads as the folder
does (labels, ids, content hashes, decoded rows), trains to the same weights and metrics when the
set keeps the folder's order, and a corrupt member fails in one line naming the shard member."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biomx.cli import main
from biomx.data.shards import open_shards
from biomx.errors import ConfigError
from biomx.modalities.image import pipeline
from biomx.modalities.image.config import ImageData, ImageSettings
from biomx.modalities.image.decode import read_image, read_image_bytes
from biomx.modalities.image.shard_source import ShardImages
from run_helpers import assert_same_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def _pack(folder: Path, out: Path, *flags: str) -> Path:
    assert main(["shards", "write", str(folder), str(out), "--max-count", "50", *flags]) == 0
    return out


def _load(source: str, path: Path, storage: str, cache: bool = True):
    return pipeline.load(ImageData(source=source, path=str(path), image=ImageSettings(size=(24, 24), storage=storage,
                                                                                    cache=cache)))  # fmt: skip


def test_bytes_decode_as_the_file_does(png_folder, dicom_folder):
    for path in [*sorted(png_folder.glob("*/*.png"))[:3], *sorted(dicom_folder.rglob("*.dcm"))[:3]]:
        ext = path.suffix[1:]
        from_bytes = read_image_bytes(path.read_bytes(), ext, f"SET: {path.name}", channels=1)
        assert from_bytes.dtype == read_image(path, channels=1).dtype
        assert (from_bytes == read_image(path, channels=1)).all()
    with pytest.raises(Exception, match=r"^SET: x\.png: cannot read image"):
        read_image_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "png", "SET: x.png")


def test_a_packed_folder_reads_as_the_folder(xray_pngs, tmp_path):
    kept = _pack(xray_pngs, tmp_path / "kept", "--no-shuffle")  # the folder's order
    shuffled = _pack(xray_pngs, tmp_path / "shuffled")  # the default: shuffled once at write time
    files = _load("folder", xray_pngs, "memory")
    relative = [Path(p).relative_to(xray_pngs).as_posix() for p in files.ids]

    streamed = _load("shards", kept, "stream", cache=False)  # every row decoded from its member's bytes
    assert isinstance(streamed.inputs, ShardImages) and streamed.inputs.store is None
    assert streamed.ids == relative and streamed.labels == files.labels and streamed.hashes == files.hashes
    assert torch.equal(streamed.inputs[:], files.inputs)
    memory = _load("shards", kept, "memory")
    assert torch.equal(memory.inputs, files.inputs)
    assert memory.where[0] == f"{kept / 'shard-000000.tar'}: {open_shards(kept).keys[0]}"

    other = _load("shards", shuffled, "stream")
    assert other.ids != relative  # another order, the same samples
    assert sorted(zip(other.ids, other.labels, strict=True)) == sorted(zip(relative, files.labels, strict=True))
    at = {ident: i for i, ident in enumerate(other.ids)}
    rows = torch.tensor([at[ident] for ident in relative])
    assert torch.equal(other.inputs[rows], files.inputs)

    with pytest.raises(Exception, match="image.size is required for folder, csv and shards"):
        ImageData(source="shards", path=str(kept))
    with pytest.raises(ConfigError, match="on_error: skip"):
        pipeline.load(ImageData(source="shards", path=str(kept), on_error="skip", image=ImageSettings(size=(24, 24))))


def _config(path: Path, source: str, root: Path, workers: int) -> Path:
    path.write_text(
        f"name: t\ndata: {{source: {source}, path: {root}, split: {{seed: 3}}, image: {{size: [24, 24], "
        "storage: stream, augment: {hflip: 0.5}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        f"train: {{epochs: 1, batch_size: 16, progress: false, deterministic: true, num_workers: {workers}}}\n"
        f"eval: {{bootstrap: 10, explain: 0}}\noutput: {{dir: {path.parent / 'runs'}, tensorboard: false}}\n"
    )
    return path


def test_shards_and_folder_train_the_same_model(xray_pngs, tmp_path, monkeypatch):
    kept = _pack(xray_pngs, tmp_path / "kept", "--no-shuffle")
    for source, root, workers in (("folder", xray_pngs, 0), ("shards", kept, 2)):
        monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / f"cache-{source}"))  # the shard run decodes its own rows
        cfg = _config(tmp_path / f"{source}.yaml", source, root, workers)
        assert main(["train", str(cfg), "--set", f"output.name={source}"]) == 0
    runs = tmp_path / "runs"
    assert_same_runs(runs, "folder", "shards")
    splits = [(runs / s / "split.csv").read_text().splitlines() for s in ("folder", "shards")]
    assert len(splits[0]) == len(splits[1]) == 161
    checks = {c["name"]: c["status"] for c in json.loads((runs / "shards" / "data_audit.json").read_text())["checks"]}
    assert checks["exact duplicates"] == "ok"


def test_a_corrupt_member_is_one_line_naming_it(xray_pngs, tmp_path, capsys):
    kept = _pack(xray_pngs, tmp_path / "kept", "--no-shuffle")
    index = open_shards(kept)
    i = 120  # in the third shard
    offset, size = index.members[i]["png"]
    shard = index.path(index.shard_for(i))
    with open(shard, "r+b") as f:  # same size, so the index still matches: the pixels are broken
        f.seek(offset + size // 2)
        f.write(b"\0" * 64)
    where = f"{shard}: {index.keys[i]}.png: cannot read image"
    cfg = _config(tmp_path / "exp.yaml", "shards", kept, workers=2)
    for normalize in ("true", "false"):  # found by the normalisation sample, or by a DataLoader worker
        assert main(["train", str(cfg), "--set", f"data.image.normalize={normalize}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("error: ")]
        assert errors == err[-1:] and errors[0].startswith(f"error: {where}"), err
        assert not any("Traceback" in line for line in err)
