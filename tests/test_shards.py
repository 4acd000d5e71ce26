"""WebDataset-style tar shards (biomx.data.shards, shard_writer, shard_stream, shard_cli) on
real chest X-rays exported as PNG files: round trip, tar layout, ranks x workers, resume, and
the one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from biomx.cli import main
from biomx.data.shard_cli import parse_size, source_samples
from biomx.data.shard_stream import ShardStream, epoch_plan
from biomx.data.shard_writer import PARTIAL, tar_bytes, write_shards
from biomx.data.shards import (
    member_where,
    open_shards,
    payload_member,
    read_index,
    read_member,
    sample_digests,
    sample_table,
    scan_shards,
    verify_shards,
)
from biomx.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shard_set(png_folder, tmp_path_factory) -> Path:
    """The 160 exported PNGs (folder per class) in 7 shards of at most 25 samples."""
    out = tmp_path_factory.mktemp("shards") / "set"
    samples, meta, _ = source_samples(png_folder)
    write_shards(samples, out, max_count=25, meta=meta)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_round_trip_keeps_every_file_byte_for_byte(shard_set, png_folder):
    index = read_index(shard_set)
    assert len(index) == 160 and [s.count for s in index.shards] == [25] * 6 + [10]
    table = sample_table(index)
    assert Counter(table["label"]) == Counter(p.parent.name for p in png_folder.glob("*/*.png"))
    for i in range(len(index)):
        original = png_folder / table["id"][i]
        assert read_member(index, i, "png") == original.read_bytes()
        assert table["label"][i] == original.parent.name
        classes = index.meta["classes"]
        assert classes[int(read_member(index, i, "cls"))] == original.parent.name
    # the write shuffled once: the first shard mixes the classes
    assert len(set(table["label"][:25])) == 2
    # what a map-style image dataset reads: the packed file's format and bytes, and its file hash
    assert payload_member(index, 5) == ("png", (png_folder / table["id"][5]).read_bytes())
    digests = sample_digests(index)
    assert digests[9] == hashlib.sha256((png_folder / table["id"][9]).read_bytes()).hexdigest()
    assert member_where(index, 30, "png").endswith(f"shard-000001.tar: {index.keys[30]}.png")


def test_tars_open_with_tarfile_in_webdataset_layout(shard_set):
    index = read_index(shard_set)
    for number, shard in enumerate(index.shards):
        raw = index.path(number).read_bytes()
        assert len(raw) == shard.size and len(raw) % 10240 == 0
        with tarfile.open(index.path(number)) as tar:
            names = tar.getnames()
            infos = tar.getmembers()
        assert all(raw[i.offset + 257:i.offset + 263] == b"ustar\0" for i in infos)  # POSIX ustar headers
        keys = [name.partition(".")[0] for name in names]
        assert names == [f"{k}.{e}" for k in dict.fromkeys(keys) for e in ("png", "cls", "json")]  # contiguous
        assert list(dict.fromkeys(keys)) == index.keys[shard.start:shard.start + shard.count]
        for info in infos:  # the index's offsets are tarfile's
            i = index.keys.index(info.name.partition(".")[0])
            assert index.members[i][info.name.partition(".")[2]] == (info.offset_data, info.size)


def test_plain_tar_set_without_index_is_scanned(shard_set, tmp_path):
    foreign = _copy(shard_set, tmp_path / "foreign")
    (foreign / "index.json").unlink()
    with pytest.raises(DataError, match="no shard index here"):
        read_index(foreign)
    scanned, written = open_shards(foreign), read_index(shard_set)
    assert not scanned.checked and scanned.keys == written.keys and scanned.members == written.members
    assert read_member(scanned, 7, "png") == read_member(written, 7, "png")
    assert sample_table(scanned)["label"] == sample_table(written)["label"]
    with pytest.raises(DataError, match="no .*index.json.* to verify"):
        verify_shards(scanned)


def test_scanning_refuses_a_sample_split_in_two(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "a.tar").write_bytes(tar_bytes({"s1.png": b"x", "s2.png": b"y", "s1.cls": b"0"}))
    with pytest.raises(DataError, match=r"a\.tar: member s1\.cls: sample 's1' is split"):
        scan_shards(folder)
    (folder / "a.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(DataError, match="not a readable uncompressed tar"):
        scan_shards(folder)


def _labels(stream: ShardStream, workers: int) -> list[int]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [sample["__index__"] for sample in loader]


def test_two_ranks_two_workers_see_every_sample_once(shard_set):
    seen, per_rank = [], []
    for rank in range(2):
        stream = ShardStream(shard_set, seed=3, buffer_size=16, rank=rank, world_size=2)
        stream.set_epoch(1)
        indices = _labels(stream, workers=2)
        per_rank.append(len(indices))
        seen += indices
    assert sorted(seen) == list(range(160)) and per_rank == [80, 80]
    again = ShardStream(shard_set, seed=3, buffer_size=16, rank=0, world_size=2)
    again.set_epoch(1)
    assert _labels(again, 0) == _labels(again, 0)  # the same epoch: the same order
    again.set_epoch(2)
    first = ShardStream(shard_set, seed=3, buffer_size=16, rank=0, world_size=2)
    first.set_epoch(1)
    assert _labels(again, 0) != _labels(first, 0)  # a new epoch: a new order


def test_decode_gives_tensors_to_a_dataloader(shard_set):
    from io import BytesIO

    from PIL import Image

    def decode(sample: dict) -> tuple[torch.Tensor, int]:
        pixels = np.asarray(Image.open(BytesIO(sample["png"])))
        return torch.from_numpy(pixels.copy())[None], int(sample["cls"])

    loader = DataLoader(ShardStream(shard_set, decode, buffer_size=8), batch_size=32)
    batches = list(loader)
    assert len(batches) == 5 and batches[0][0].shape == (32, 1, 28, 28) and batches[0][0].dtype == torch.uint8
    assert sum(len(b[1]) for b in batches) == 160 and set(torch.cat([b[1] for b in batches]).tolist()) == {0, 1}


@pytest.mark.parametrize("uneven", ["pad", "drop"])
@pytest.mark.parametrize(("counts", "world", "workers"), [([25, 25, 25, 7], 3, 2), ([5, 40, 1], 4, 3),
                                                           ([3], 4, 2), ([10] * 9, 2, 4)])
def test_the_epoch_plan_splits_exactly_and_evenly(counts, world, workers, uneven):
    total = sum(counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for epoch in range(2):
        seen, batches = Counter(), set()
        for rank in range(world):
            sizes = []
            for worker in range(workers):
                plan = epoch_plan(counts, epoch=epoch, seed=0, shuffle=True, rank=rank, world=world,
                                  worker=worker, workers=workers, uneven=uneven)
                got = [int(starts[s]) + i for s, lo, hi in plan for i in range(lo, hi)]
                seen.update(got)
                sizes.append(len(got))
            batches.add(sum(-(-n // 4) for n in sizes))  # batches of 4 per worker, summed per rank
            assert max(sizes) - min(sizes) <= 1
        assert len(batches) == 1  # every rank the same number of batches: DDP never waits
        if uneven == "pad":
            assert set(seen) == set(range(total)) and sum(seen.values()) == world * -(-total // world)
        else:
            assert max(seen.values(), default=1) == 1 and sum(seen.values()) == world * (total // world)


def test_an_interrupted_write_resumes_keeping_finished_shards(png_folder, tmp_path):
    fresh = tmp_path / "fresh"
    write_shards(source_samples(png_folder)[0], fresh, max_count=30)

    class Killed(Exception):
        pass

    def killed_after(n: int):
        for position, sample in enumerate(source_samples(png_folder)[0]):
            if position == n:
                raise Killed
            yield sample

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        write_shards(killed_after(100), out, max_count=30)
    assert not (out / "index.json").exists() and len(list((out / PARTIAL).glob("*.json"))) == 3
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL, *[f"shard-00000{n}.tar" for n in range(3)]]
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    opened = Counter()

    def counted():
        for key, members in source_samples(png_folder)[0]:
            yield key, _Counting(members, opened, key)

    write_shards(counted(), out, max_count=30)
    assert sum(opened.values()) == 3 * (160 - 90)  # the 90 kept samples were not read again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-00000[0-2].tar")} == kept
    assert not (out / PARTIAL).exists()
    for a, b in zip(sorted(fresh.iterdir()), sorted(out.iterdir()), strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()  # the same set as one write
    write_shards(source_samples(png_folder)[0], out, max_count=30)  # a finished set: kept as it is
    assert verify_shards(read_index(out)) == []
    with pytest.raises(ConfigError, match="sample 0 is .*the samples changed"):
        write_shards(source_samples(png_folder, seed=9)[0], out, max_count=30)


class _Counting(dict):
    """A sample's members that count how many are read."""

    def __init__(self, members, opened: Counter, key: str) -> None:
        super().__init__()
        self.members, self.opened, self.key = members, opened, key

    def __iter__(self):
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def items(self):
        for ext in self.members:
            self.opened[self.key] += 1
            yield ext, self.members[ext]


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_truncated_or_corrupt_shards_are_one_line_errors(shard_set, tmp_path, capsys):
    broken = _copy(shard_set, tmp_path / "broken")
    index = read_index(broken)
    with open(index.path(1), "r+b") as f:
        f.truncate(index.shards[1].size - 10240)
    i = index.shards[1].start + 3
    with pytest.raises(DataError, match=r"shard-000001\.tar: \d+ bytes where the index says \d+: .*truncated") as err:
        read_member(index, i, "png")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"shard-000001\.tar.*truncated"):
        list(ShardStream(index, shuffle=False))
    index = read_index(broken)
    key = index.keys[index.shards[2].start]
    _flip(index.path(2), index.members[index.shards[2].start]["png"][0] - 512 + 3)  # a header byte
    with pytest.raises(DataError, match=rf"shard-000002\.tar: member {key}\.png is not where the index says"):
        read_member(index, index.shards[2].start, "png")
    _flip(index.path(3), index.members[index.shards[3].start]["png"][0] + 100)  # a pixel byte
    index.path(4).unlink()
    with pytest.raises(DataError, match=r"shard-000004\.tar: shard listed in .*index\.json is missing"):
        read_member(index, index.shards[4].start, "json")
    assert main(["shards", "verify", str(broken)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[1].rsplit("/", 1)[-1] for line in lines] == [f"shard-00000{n}.tar" for n in (1, 2, 3, 4)]
    assert "corrupt" in lines[2] and "truncated" in lines[0] and lines[3].endswith("missing")


def test_bad_keys_and_missing_index_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(DataError, match=r"sample 1 \(key 'a'\): duplicate key 'a'"):
        write_shards([("a", {"png": b"1"}), ("a", {"png": b"2"})], tmp_path / "dup")
    with pytest.raises(DataError, match=r"key 'a\.b'\): a key may not contain '\.' or '/'"):
        write_shards([("a.b", {"png": b"1"})], tmp_path / "dot")
    with pytest.raises(DataError, match="not bytes"):
        write_shards([("a", {"png": "text"})], tmp_path / "str")
    assert not list((tmp_path / "str").glob("*.tar")) and not list((tmp_path / "str").glob(".*.tmp-*"))
    assert main(["shards", "verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'index.json'}: no shard index here") and "\n" not in err


def test_cli_writes_lists_and_verifies(png_folder, tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["shards", "write", str(png_folder / "manifest.csv"), str(out), "--max-size", "64KB"]) == 0
    assert "wrote 160 samples in" in capsys.readouterr().out
    index = read_index(out)
    assert all(s.size <= 64_000 for s in index.shards) and len(index.shards) > 5
    first = json.loads(read_member(index, 0, "json"))
    assert first["group"].startswith("img-") and (png_folder / first["id"]).read_bytes() == read_member(index, 0, "png")
    assert main(["shards", "list", str(out)]) == 0
    listing = capsys.readouterr().out.strip().splitlines()
    assert len(listing) == len(index.shards) + 1 and listing[-1].startswith(f"total: 160 samples in {len(index.shards)}")
    assert main(["shards", "verify", str(out)]) == 0
    assert parse_size("1GB") == 10**9 and parse_size("2MiB") == 2 << 20


@pytest.mark.slow
def test_torchrun_two_processes_split_a_set(shard_set, tmp_path):
    script = tmp_path / "stream.py"
    script.write_text(
        "import json, sys\nimport torch.distributed as dist\nfrom torch.utils.data import DataLoader\n"
        "from biomx.data.shard_stream import ShardStream\n"
        "dist.init_process_group('gloo')\n"
        "stream = ShardStream(sys.argv[1], buffer_size=8)\nstream.set_epoch(4)\n"
        "batches = list(DataLoader(stream, batch_size=16, num_workers=2, collate_fn=lambda b: [s['__index__'] for s in b]))\n"
        "gathered = [None, None]\ndist.all_gather_object(gathered, batches)\n"
        "if dist.get_rank() == 0:\n    open(sys.argv[2], 'w').write(json.dumps(gathered))\n"
        "dist.destroy_process_group()\n"
    )
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(shard_set), str(tmp_path / "seen.json")],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads((tmp_path / "seen.json").read_text())
    assert len(ranks[0]) == len(ranks[1])  # the same number of batches on both ranks
    assert sorted(i for rank in ranks for batch in rank for i in batch) == list(range(160))
