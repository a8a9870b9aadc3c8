"""The tree syncer flushes each new or changed file once, and the store calls it on every write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgembed.search import lancedb_store
from imgembed.search.durability import TreeSyncer


def test_tree_syncer_flushes_new_and_changed_files_once(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.lance").write_bytes(b"a")
    (tmp_path / "v1.manifest").write_bytes(b"m")
    syncer = TreeSyncer(tmp_path)
    assert syncer.sync() == 2
    assert syncer.sync() == 0
    (tmp_path / "data" / "b.lance").write_bytes(b"b")
    assert syncer.sync() == 1
    (tmp_path / "v1.manifest").write_bytes(b"longer")
    assert syncer.sync() == 1
    os.remove(tmp_path / "data" / "a.lance")
    assert syncer.sync() == 0


def test_every_store_write_is_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[int] = []
    real_sync = TreeSyncer.sync

    def counting_sync(self: TreeSyncer) -> int:
        flushed.append(real_sync(self))
        return flushed[-1]

    monkeypatch.setattr(TreeSyncer, "sync", counting_sync)
    with lancedb_store.LanceDBStore(
        tmp_path, lancedb_store.LanceDBOptions(index_threshold=None)
    ) as store:
        store.create_collection("c", 2)
        flushed.clear()
        store.add_items("c", ["a"], [[1, 0]])
        store.add_items("c", ["a"], [[0, 1]], on_conflict="upsert")
        store.delete_items("c", ["a"])
    # Each write committed new files (data, deletion file, manifest, transaction) and flushed them.
    assert len(flushed) == 3
    assert all(count >= 2 for count in flushed)
