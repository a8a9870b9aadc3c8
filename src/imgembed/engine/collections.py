"""The collections family: similarity search over collections of image embeddings in the vector
store, filled and searched through a SigLIP model. A family without models of its own.

The store (LanceDB, :mod:`imgembed.search.lancedb_store`) opens on first use under
``ServerConfig.collections_dir``, so a server that never touches collections does not need the
``search`` extra. Store calls are synchronous and run in the CPU pool.

A collection holds vectors of one embedding space: it is created with the dimension of the model
that fills it, and searched with vectors of that size. Use one model per collection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from imgembed.engine.core import EngineCore
from imgembed.engine.registry import ModelFamily
from imgembed.engine.siglip import SiglipService
from imgembed.errors import ImgembedError, InvalidInputError, NotFoundError
from imgembed.search.store import (
    AddResult,
    CollectionInfo,
    ItemPage,
    OnConflict,
    SearchHit,
    VectorStore,
)
from imgembed.types import ImageInput

ResultT = TypeVar("ResultT")

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


class CollectionService:
    """Collections: add images (embedded on the way in), search by image, text or vector.

    Args:
        core: The engine's models, pools and image input.
        siglip: Embeds the images and texts (built on the same core when not given).
    """

    def __init__(self, core: EngineCore, siglip: SiglipService | None = None) -> None:
        self.core = core
        self.siglip = siglip or SiglipService(core)
        self._store: VectorStore | None = None

    def vector_store(self) -> VectorStore:
        """The vector store, opened on first use (blocks; call from a worker thread)."""
        if self._store is None:
            from imgembed.search.lancedb_store import LanceDBStore

            self._store = LanceDBStore(self.core.config.collections_dir)
            logger.info("opened the vector store at %s", self.core.config.collections_dir)
        return self._store

    async def close(self) -> None:
        """Closes the store."""
        if self._store is not None:
            close = getattr(self._store, "close", None)
            if close is not None:
                close()
            self._store = None

    async def _call(self, call: Callable[[VectorStore], ResultT]) -> ResultT:
        """Runs a store call in the CPU pool (the store opens there on first use)."""
        return await self.core.run_cpu(lambda: call(self.vector_store()))

    async def list_collections(self) -> list[CollectionInfo]:
        """Every collection."""
        return await self._call(lambda store: store.list_collections())

    async def get_collection(self, name: str) -> CollectionInfo:
        """One collection's description.

        Raises:
            NotFoundError: No such collection.
        """
        return await self._call(lambda store: store.get_collection(name))

    async def delete_collection(self, name: str) -> None:
        """Deletes a collection and its items.

        Raises:
            NotFoundError: No such collection.
        """
        await self._call(lambda store: store.delete_collection(name))

    async def list_items(
        self,
        name: str,
        *,
        limit: int = 100,
        after: str | None = None,
        filter: Mapping[str, Any] | None = None,
        with_vectors: bool = False,
    ) -> ItemPage:
        """A page of a collection's items in id order, starting after the id ``after``."""
        return await self._call(
            lambda store: store.list_items(
                name, limit=limit, after=after, filter=filter, with_vectors=with_vectors
            )
        )

    async def delete_items(self, name: str, ids: Sequence[str]) -> int:
        """Deletes items by id; returns how many existed."""
        return await self._call(lambda store: store.delete_items(name, ids))

    async def add(
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
            result = await self.siglip.embed_images(
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
        result = await self._call(
            lambda store: store.add_items(
                name,
                [items[index].id for index in kept],
                stacked,
                [dict(items[index].metadata) for index in kept],
                on_conflict=on_conflict,
            )
        )
        info = await self.get_collection(name)
        return AddOutcome(result=result, failed=failed, collection=info)

    async def _collection_for_write(self, name: str, dimension: int) -> CollectionInfo:
        try:
            return await self.get_collection(name)
        except NotFoundError:
            return await self._call(lambda store: store.create_collection(name, dimension))

    async def search(
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
        await self.get_collection(name)  # 404 before any embedding work
        used_model: str | None = None
        if image is not None:
            result = await self.siglip.embed_images([image], model=model)
            outcome = result.outcomes[0]
            if outcome.error is not None:
                raise outcome.error
            query = outcome.vector
            used_model = result.model.name
        elif text is not None:
            try:
                texts, served = await self.siglip.embed_texts([text], model=model)
            except InvalidInputError as error:
                message = error.message.replace("texts[0]", "text", 1)
                raise InvalidInputError(message, field="text") from error
            query, used_model = texts[0], served.name
        else:
            query = np.asarray(vector, dtype=np.float64)
        hits = await self._call(lambda store: store.search(name, query, top_k=top_k, filter=filter))
        return hits, used_model


COLLECTIONS_FAMILY = ModelFamily(
    name="collections", display_name="collections", service=CollectionService
)
"""Collections of SigLIP 2 image embeddings in the vector store; no models of its own."""
