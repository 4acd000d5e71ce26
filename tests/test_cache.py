"""The on-disk array cache: round trip, memory-mapped read-only reads, atomic entries (a
leftover temporary folder or a truncated file is a miss), keys that follow the settings, and
two processes racing to write one entry."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from biomx.data.cache import ArrayCache, cache_key, default_cache_dir, file_digest
from biomx.data.samples import sha256_file


def _arrays(n: int = 1000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return {"x": x, "ptr": np.arange(n + 1, dtype=np.int64)}


def test_round_trip_is_memory_mapped_and_read_only(tmp_path):
    cache, key = ArrayCache(tmp_path), cache_key("source", {"radius": 2})
    assert cache.get(key) is None
    entry = cache.put(key, _arrays(), meta={"molecules": 1000})
    assert entry == tmp_path / key[:2] / key
    got = cache.get(key)
    assert set(got) == {"x", "ptr"}
    for name, array in _arrays().items():
        assert np.array_equal(got[name], array) and got[name].dtype == array.dtype
        assert isinstance(got[name], np.memmap) and not got[name].flags.writeable
    with pytest.raises(ValueError):
        got["x"][0, 0] = 1.0
    assert cache.get_meta(key) == {"molecules": 1000}
    empty = cache_key("empty")
    cache.put(empty, {"edges": np.zeros((2, 0), dtype=np.int64)})  # zero edges: a valid entry
    assert cache.get(empty)["edges"].shape == (2, 0)


def test_object_and_string_arrays_are_refused(tmp_path):
    cache = ArrayCache(tmp_path)
    with pytest.raises(TypeError, match="dtype object"):
        cache.put(cache_key("o"), {"a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(TypeError, match="no objects or strings"):
        cache.put(cache_key("s"), {"a": np.array(["CCO"])})
    with pytest.raises(ValueError, match="hex digest"):
        cache.get("../../etc")
    assert not any(tmp_path.rglob("*.npy"))


def test_leftover_tmp_folder_is_ignored_and_cleaned(tmp_path):
    cache, key = ArrayCache(tmp_path), cache_key("interrupted")
    tmp = tmp_path / key[:2] / f".tmp-{key}-123-abcd"  # a writer killed before its rename
    tmp.mkdir(parents=True)
    np.save(tmp / "x.npy", _arrays()["x"])
    assert cache.get(key) is None
    cache.put(key, _arrays())
    assert cache.get(key) is not None
    assert cache.clean(older_than_s=3600) == 0  # young: may be a write in progress
    assert cache.clean(older_than_s=0) == 1
    assert not tmp.exists() and cache.get(key) is not None


@pytest.mark.parametrize("damage", ["truncate", "delete", "meta"])
def test_damaged_entry_is_a_miss_and_removed(tmp_path, damage):
    cache, key = ArrayCache(tmp_path), cache_key("damaged", damage)
    entry = cache.put(key, _arrays())
    if damage == "truncate":
        data = (entry / "x.npy").read_bytes()
        (entry / "x.npy").write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        (entry / "ptr.npy").unlink()
    else:
        (entry / "meta.json").write_text("{not json")
    assert cache.get(key) is None
    assert not entry.exists()
    cache.put(key, _arrays())  # recomputed and stored again
    assert np.array_equal(cache.get(key)["x"], _arrays()["x"])


def test_keys_follow_content_and_settings(tmp_path):
    assert cache_key("f", {"radius": 2, "size": 8}) == cache_key("f", {"size": 8, "radius": 2})
    assert cache_key("f", {"radius": 2}) != cache_key("f", {"radius": 3})
    assert cache_key("f", {"morgan": None}) != cache_key("f", {"morgan": False})
    assert cache_key("ab", "c") != cache_key("a", "bc")
    assert cache_key(b"CCO") != cache_key("CCO")
    path = tmp_path / "mols.csv"
    path.write_text("smiles\nCCO\n")
    assert file_digest(path) == sha256_file(path)
    before = file_digest(path)
    path.write_text("smiles\nCCN\n")
    assert file_digest(path) != before


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BIOMX_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "biomx"


def _write(root: str, key: str, barrier) -> None:
    barrier.wait()
    ArrayCache(root).put(key, _arrays(200_000))


def _read(root: str, key: str, barrier, results) -> None:
    """Poll the entry while it is being written: it is absent or whole, never partial."""
    barrier.wait()
    expected, cache = _arrays(200_000), ArrayCache(root)
    seen, deadline = 0, time.monotonic() + 30
    while seen < 3 and time.monotonic() < deadline:
        got = cache.get(key)
        if got is not None:
            assert all(np.array_equal(got[k], expected[k]) for k in expected)
            seen += 1
    results.put(seen)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_two_processes_writing_one_key_leave_one_valid_entry(tmp_path):
    ctx = mp.get_context("fork")
    key, barrier, results = cache_key("race"), ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_write, args=(str(tmp_path), key, barrier)) for _ in range(2)]
    procs.append(ctx.Process(target=_read, args=(str(tmp_path), key, barrier, results)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert results.get(timeout=5) > 0
    entries = [p for p in (tmp_path / key[:2]).iterdir()]
    assert entries == [tmp_path / key[:2] / key]  # one entry, no temporary folder left
    got = ArrayCache(tmp_path).get(key)
    assert np.array_equal(got["x"], _arrays(200_000)["x"])
