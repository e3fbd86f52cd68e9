"""The re-delivery cache: bounded by bytes in memory, spilled to the state dir, bounded there."""

from __future__ import annotations

from pathlib import Path

import pytest

from crankmesh.executor.results import ResultCache


def test_memory_only_cache_keeps_the_most_recent_within_its_bytes() -> None:
    c = ResultCache(memory_bytes=250)
    for i in range(5):
        c.put(f"job{i}", bytes([i]) * 100)
    assert c.memory_bytes <= 250 and c.memory_entries == 2
    assert c.get("job0") is None and c.get("job4") == b"\x04" * 100
    assert c.dropped == 3 and c.disk_entries == 0


def test_a_get_makes_an_entry_recent() -> None:
    c = ResultCache(memory_bytes=200)
    c.put("a", b"a" * 100)
    c.put("b", b"b" * 100)
    assert c.get("a") is not None
    c.put("c", b"c" * 100)  # evicts b, the least recently used
    assert c.get("b") is None and c.get("a") == b"a" * 100


def test_evicted_entries_spill_to_disk_and_come_back(tmp_path: Path) -> None:
    d = tmp_path / "results"
    c = ResultCache(memory_bytes=100, directory=d, disk_bytes=10_000)
    for i in range(10):
        c.put(f"job{i}", bytes([i]) * 100)
    assert c.memory_entries == 1 and c.disk_entries == 9 and c.disk_bytes == 900
    assert sorted(p.name for p in d.iterdir()) == [f"job{i}" for i in range(9)]
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert oct((d / "job0").stat().st_mode & 0o777) == "0o600"
    assert all(c.get(f"job{i}") == bytes([i]) * 100 for i in range(10))
    c.discard("job3")
    assert not (d / "job3").exists() and c.get("job3") is None and len(c) == 9
    c.clear()
    assert list(d.iterdir()) == [] and c.disk_bytes == 0 and c.memory_bytes == 0


def test_disk_is_bounded_too(tmp_path: Path) -> None:
    c = ResultCache(memory_bytes=0, directory=tmp_path, disk_bytes=350)
    for i in range(6):
        c.put(f"job{i}", b"x" * 100)
    assert c.disk_bytes <= 350 and c.disk_entries == 3
    assert c.get("job0") is None and c.get("job5") == b"x" * 100
    assert c.dropped == 3


def test_a_new_cache_clears_files_a_previous_process_left(tmp_path: Path) -> None:
    (tmp_path / "bstale").write_bytes(b"old")
    ResultCache(directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unusable_directory_means_memory_only(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    c = ResultCache(memory_bytes=100, directory=blocker / "results")
    c.put("a", b"a" * 100)
    c.put("b", b"b" * 100)
    assert c.disk_entries == 0 and c.dropped == 1 and c.get("b") == b"b" * 100


def test_a_vanished_file_is_forgotten_not_raised(tmp_path: Path) -> None:
    c = ResultCache(memory_bytes=0, directory=tmp_path)
    c.put("a", b"a" * 10)
    (tmp_path / "a").unlink()
    assert c.get("a") is None and c.disk_entries == 0 and c.dropped == 1


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        ResultCache(memory_bytes=-1)
