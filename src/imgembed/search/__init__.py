"""Similarity search: collections of vectors with JSON metadata, searched by cosine similarity.

:mod:`imgembed.search.store` is the interface and its data; :mod:`imgembed.search.filters` the
metadata filter language; :mod:`imgembed.search.lancedb_store` the LanceDB backend (needs the
``search`` extra, so it is not imported here).
"""

from imgembed.search.filters import FilterLimits, parse_filter
from imgembed.search.store import (
    AddResult,
    CollectionInfo,
    Item,
    ItemPage,
    SearchHit,
    VectorStore,
)
from imgembed.search.validation import StoreLimits

__all__ = [
    "AddResult",
    "CollectionInfo",
    "FilterLimits",
    "Item",
    "ItemPage",
    "SearchHit",
    "StoreLimits",
    "VectorStore",
    "parse_filter",
]
