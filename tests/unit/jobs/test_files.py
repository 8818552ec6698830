"""File stores: round trips, unguessable keys, traversal refusal, full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sdserve.errors import FileNotFound, StorageFull
from sdserve.jobs.files import InMemoryFileStore, LocalFileStore, new_key


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalFileStore | InMemoryFileStore:
    return LocalFileStore(tmp_path) if request.param == "local" else InMemoryFileStore()


def test_round_trip_and_delete(store: LocalFileStore | InMemoryFileStore) -> None:
    key = new_key("png")
    store.put(key, b"\x89PNG data", "image/png")
    assert store.get(key) == (b"\x89PNG data", "image/png")
    store.delete(key)
    with pytest.raises(FileNotFound):
        store.get(key)
    store.delete(key)  # deleting twice is fine


def test_keys_are_random_and_long() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) >= 32 for key in keys)


def test_path_traversal_keys_are_not_found(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    store = LocalFileStore(tmp_path / "files")
    with pytest.raises(FileNotFound):
        store.get("../secret")


def test_disk_full_is_storage_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalFileStore(tmp_path)

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(StorageFull, match="No space left"):
        store.put(new_key("png"), b"x", "image/png")


def test_in_memory_capacity_simulates_full_disk() -> None:
    store = InMemoryFileStore(capacity=10)
    with pytest.raises(StorageFull):
        store.put(new_key(), b"x" * 11, "application/octet-stream")
