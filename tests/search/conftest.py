"""Fixtures for the vector store tests: a LanceDB store in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgembed.search import lancedb_store


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_path: Path) -> Iterator[Any]:
    """A LanceDB store that never builds an approximate index (every search exact)."""
    with lancedb_store.LanceDBStore(
        store_path, lancedb_store.LanceDBOptions(index_threshold=None)
    ) as opened:
        yield opened
