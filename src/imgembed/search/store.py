"""The vector store interface: collections of ``(id, vector, metadata)`` items searched by cosine.

Backends implement :class:`VectorStore` (LanceDB today, in :mod:`imgembed.search.lancedb_store`; a
server database such as Qdrant can follow behind the same methods). Everything here is plain data
and needs no optional dependency.

Conventions every backend keeps:

- A collection has a fixed ``dimension`` and the cosine metric. Vectors are stored L2-normalised
  (cosine similarity does not depend on length), so :class:`Item` vectors come back with unit norm.
- Search scores are cosine similarities in ``[-1, 1]``, hits sorted by score, highest first.
- Ids are strings, unique within a collection. ``add_items`` either rejects a request that names
  an existing id (``on_conflict="reject"``, :class:`~imgembed.errors.ConflictError`, nothing
  written) or replaces those items (``"upsert"``). Within one request ids must be unique.
- Metadata is a JSON object per item; filters use the language of :mod:`imgembed.search.filters`.
- Each write is atomic (all of a request's items or none) and durable once the call returns.
- Bad input raises :class:`~imgembed.errors.InvalidInputError` naming the field, an unknown
  collection :class:`~imgembed.errors.NotFoundError`, a clash
  :class:`~imgembed.errors.ConflictError`.
- Methods are synchronous and safe to call from several threads at once (the engine runs them in
  a thread pool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Metric = Literal["cosine"]
OnConflict = Literal["reject", "upsert"]
VectorsLike = np.ndarray | Sequence[Sequence[float]]
"""``[N,D]`` floats: a numpy array or nested lists (JSON)."""
VectorLike = np.ndarray | Sequence[float]
"""``[D]`` floats: a numpy array or a list (JSON)."""


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection is.

    Attributes:
        name: The collection's name.
        dimension: Length of every vector in it.
        count: Items in it now.
        metric: How vectors compare (always cosine).
        indexed: Whether an approximate nearest-neighbour index serves its searches.
        model: The model whose embeddings the collection holds, as given at creation (so that
            text and image queries can be embedded by the same model), or None.
    """

    name: str
    dimension: int
    count: int
    metric: Metric = "cosine"
    indexed: bool = False
    model: str | None = None


@dataclass(frozen=True)
class Item:
    """One stored item.

    Attributes:
        id: The item's id.
        vector: ``[D]`` float32, unit L2 norm; None when the caller did not ask for vectors.
        metadata: The JSON object stored with it.
    """

    id: str
    vector: np.ndarray | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        id: The matching item's id.
        score: Cosine similarity to the query, in ``[-1, 1]``; higher is closer.
        metadata: The item's JSON object.
    """

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AddResult:
    """What an ``add_items`` call wrote.

    Attributes:
        inserted: Items that were new.
        updated: Items that replaced one with the same id (upsert only).
    """

    inserted: int
    updated: int = 0


@dataclass(frozen=True)
class ItemPage:
    """A page of items in id order.

    Attributes:
        items: Up to ``limit`` items, ids ascending (by Unicode code point).
        next_after: Pass as ``after`` to get the next page; None on the last page.
    """

    items: list[Item]
    next_after: str | None


@runtime_checkable
class VectorStore(Protocol):
    """Collections of vectors with metadata, searched by cosine similarity."""

    def create_collection(
        self, name: str, dimension: int, *, model: str | None = None
    ) -> CollectionInfo:
        """Creates an empty collection.

        Args:
            name: 1 to 64 of ``A-Z a-z 0-9 _ -``, starting with a letter or digit.
            dimension: Length of every vector it will hold.
            model: The embedding model's name, recorded for whoever embeds queries; the store
                does not interpret it.

        Raises:
            InvalidInputError: Bad name (``field="name"``), dimension (``field="dimension"``) or
                model (``field="model"``).
            ConflictError: A collection with this name exists.
        """
        ...

    def get_collection(self, name: str) -> CollectionInfo:
        """Describes a collection. Raises NotFoundError when there is none by that name."""
        ...

    def list_collections(self) -> list[CollectionInfo]:
        """Every collection, by name."""
        ...

    def delete_collection(self, name: str) -> None:
        """Deletes a collection and its items. Raises NotFoundError when there is none."""
        ...

    def add_items(
        self,
        name: str,
        ids: Sequence[str],
        vectors: VectorsLike,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        on_conflict: OnConflict = "reject",
    ) -> AddResult:
        """Adds items atomically.

        Args:
            name: The collection.
            ids: One unique id per item.
            vectors: ``[N,D]`` with N = ``len(ids)`` and D the collection's dimension; any length
                but zero, finite.
            metadata: One JSON object per item; None stores ``{}`` for each.
            on_conflict: ``"reject"`` fails the whole request when an id exists already;
                ``"upsert"`` replaces those items.

        Returns:
            How many items were inserted and how many replaced.

        Raises:
            InvalidInputError: Bad ids, vectors or metadata (the field and index named).
            NotFoundError: No such collection.
            ConflictError: ``on_conflict="reject"`` and some ids exist (they are named).
        """
        ...

    def search(
        self,
        name: str,
        vector: VectorLike,
        *,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> list[SearchHit]:
        """The ``top_k`` items most similar to ``vector`` among those passing ``filter``.

        Args:
            name: The collection.
            vector: ``[D]`` query; any length but zero, finite.
            top_k: How many hits at most.
            filter: A filter in the language of :mod:`imgembed.search.filters`, or None.
            exact: Compare with every item even where an approximate index exists.

        Returns:
            Hits, highest cosine first (ties by id).
        """
        ...

    def get_items(self, name: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[Item]:
        """The items with these ids, in the order asked; ids not stored are left out."""
        ...

    def delete_items(self, name: str, ids: Sequence[str]) -> int:
        """Deletes the items with these ids atomically; returns how many existed."""
        ...

    def list_items(
        self,
        name: str,
        *,
        limit: int = 100,
        after: str | None = None,
        filter: Mapping[str, Any] | None = None,
        with_vectors: bool = False,
    ) -> ItemPage:
        """A page of items in id order, starting after the id ``after``."""
        ...

    def count(self, name: str, filter: Mapping[str, Any] | None = None) -> int:
        """How many items (passing ``filter``) the collection holds."""
        ...

    def close(self) -> None:
        """Releases the store's handles; the object is unusable afterwards."""
        ...
