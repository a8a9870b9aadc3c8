"""Similarity search: collections of image embeddings in the vector store, filled and searched
through a SigLIP model.

The store (LanceDB, :mod:`imgembed.search.lancedb_store`) opens on first use under
``ServerConfig.collections_dir``, so a server that never touches collections does not need the
``search`` extra. Store calls are synchronous and run in the CPU pool.

A collection holds vectors of one embedding space: it is created with the dimension of the model
that fills it, and searched with vectors of that size. Use one model per collection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgembed.engine.siglip import SiglipTasks
from imgembed.errors import ImgembedError, InvalidInputError, NotFoundError
from imgembed.search.store import AddResult, CollectionInfo, OnConflict, SearchHit, VectorStore
from imgembed.types import ImageInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewItem:
    """One item to add: an image to embed, or a vector as is.

    Attributes:
        id: The item's id, unique in the collection.
        image: The image, or ``None`` when ``vector`` is given.
        vector: ``[D]`` floats, or ``None`` when ``image`` is given.
        metadata: JSON object stored with it.
        field: Request field of the item (``items[3]``), for errors.
    """

    id: str
    image: ImageInput | None
    vector: Sequence[float] | None
    metadata: Mapping[str, Any]
    field: str


@dataclass(frozen=True)
class AddOutcome:
    """What an add request stored and what it could not.

    Attributes:
        result: Items inserted and replaced.
        failed: ``(index, item, error)`` of items whose image failed; they were not stored.
        collection: The collection after the write.
    """

    result: AddResult
    failed: list[tuple[int, NewItem, ImgembedError]]
    collection: CollectionInfo


class CollectionTasks(SiglipTasks):
    """Collections: add images (embedded on the way in), search by image, text or vector."""

    _store: VectorStore | None = None

    def vector_store(self) -> VectorStore:
        """The vector store, opened on first use (blocks; call from a worker thread)."""
        if self._store is None:
            from imgembed.search.lancedb_store import LanceDBStore

            self._store = LanceDBStore(self.config.collections_dir)
            logger.info("opened the vector store at %s", self.config.collections_dir)
        return self._store

    async def close(self) -> None:
        """Stops the worker pools (see :meth:`EngineCore.close`), then closes the store."""
        await super().close()
        if self._store is not None:
            close = getattr(self._store, "close", None)
            if close is not None:
                close()
            self._store = None

    async def collection_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls a :class:`~imgembed.search.store.VectorStore` method in the CPU pool."""

        def call() -> Any:
            return getattr(self.vector_store(), method)(*args, **kwargs)

        return await self.run_cpu(call)

    async def collection_add(
        self,
        name: str,
        items: Sequence[NewItem],
        *,
        model: str | None = None,
        on_conflict: OnConflict = "reject",
    ) -> AddOutcome:
        """Embeds the items' images and stores every item that has a vector, in one atomic write.

        A missing collection is created with the dimension of the model (or of the given vectors
        when no image is embedded). Items whose image fails are reported, not stored; if none is
        left, nothing is written and the first failure is raised.

        Raises:
            InvalidInputError: Bad ids, vectors or metadata (the item named).
            ConflictError: ``on_conflict="reject"`` and an id exists.
            ImgembedError: Every item failed (the first failure).
        """
        with_images = [(index, item) for index, item in enumerate(items) if item.image is not None]
        vectors: dict[int, np.ndarray] = {}
        failed: list[tuple[int, NewItem, ImgembedError]] = []
        dimension: int | None = None
        if with_images:
            result = await self.siglip_embed_images(
                [item.image for _, item in with_images if item.image is not None], model=model
            )
            dimension = result.model.loaded.embedding_dim
            for (index, item), outcome in zip(with_images, result.outcomes, strict=True):
                if outcome.vector is not None:
                    vectors[index] = outcome.vector
                else:
                    assert outcome.error is not None
                    failed.append((index, item, outcome.error))
        for index, item in enumerate(items):
            if item.vector is not None:
                vectors[index] = np.asarray(item.vector, dtype=np.float64)
                dimension = dimension or len(item.vector)
        if not vectors:
            raise failed[0][2]
        kept = sorted(vectors)
        assert dimension is not None
        collection = await self._collection_for_write(name, dimension)
        if collection.dimension != dimension:
            raise InvalidInputError(
                f"collection {name!r} holds {collection.dimension}-dimensional vectors; these are "
                f"{dimension}-dimensional (another model?). Use a collection per model",
                field="items",
            )
        stacked = np.stack([vectors[index] for index in kept])  # N x [D] -> [N,D]
        result = await self.collection_call(
            "add_items",
            name,
            [items[index].id for index in kept],
            stacked,
            [dict(items[index].metadata) for index in kept],
            on_conflict=on_conflict,
        )
        info = await self.collection_call("get_collection", name)
        return AddOutcome(result=result, failed=failed, collection=info)

    async def _collection_for_write(self, name: str, dimension: int) -> CollectionInfo:
        try:
            return await self.collection_call("get_collection", name)
        except NotFoundError:
            return await self.collection_call("create_collection", name, dimension)

    async def collection_search(
        self,
        name: str,
        *,
        image: ImageInput | None = None,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> tuple[list[SearchHit], str | None]:
        """The items closest to an image, a text or a vector (exactly one), by cosine.

        Returns:
            Hits, highest score first, and the model that embedded the query (``None`` for a
            vector query).

        Raises:
            NotFoundError: No such collection.
            InvalidInputError: Not exactly one query, a failed query image, a bad filter.
        """
        given = [kind for kind, value in (("image", image), ("text", text), ("vector", vector))
                 if value is not None]  # fmt: skip
        if len(given) != 1:
            raise InvalidInputError(
                "give exactly one of image, text or vector to search with"
                + (f"; got {' and '.join(given)}" if given else ""),
                field=given[1] if len(given) > 1 else "image",
            )
        await self.collection_call("get_collection", name)  # 404 before any embedding work
        used_model: str | None = None
        if image is not None:
            result = await self.siglip_embed_images([image], model=model)
            outcome = result.outcomes[0]
            if outcome.error is not None:
                raise outcome.error
            query = outcome.vector
            used_model = result.model.name
        elif text is not None:
            try:
                texts, served = await self.siglip_embed_texts([text], model=model)
            except InvalidInputError as error:
                message = error.message.replace("texts[0]", "text", 1)
                raise InvalidInputError(message, field="text") from error
            query, used_model = texts[0], served.name
        else:
            query = np.asarray(vector, dtype=np.float64)
        hits = await self.collection_call("search", name, query, top_k=top_k, filter=filter)
        return hits, used_model
