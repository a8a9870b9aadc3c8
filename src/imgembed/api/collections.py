"""Collection requests: the bodies of the HTTP routes (items to add, an image or a vector each;
searches; ids to delete), the inputs of their operations (a body with the collection's ``name``,
which HTTP takes from the path), and the responses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from imgembed.api.siglip import IMAGE_ENTRY_SCHEMA, image_input
from imgembed.engine import AddOutcome, NewItem
from imgembed.errors import InvalidInputError
from imgembed.search.store import CollectionInfo, Item, SearchHit
from imgembed.types import ImageInput

ITEM_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
    "description": "1 to 256 characters of printable text.",
}
"""An item id as the store checks it (:func:`imgembed.search.validation.check_id`)."""
VECTOR_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "number"},
    "description": "Finite numbers, not all zero, as many as the collection's dimension.",
}
"""A vector as the store checks it (:func:`imgembed.search.validation.unit_vectors`)."""

ItemId = Annotated[Any, WithJsonSchema(ITEM_ID_SCHEMA)]
"""Typed ``Any`` so that the request names the item whose id is not a string; the schema says what
is accepted."""
ImageEntry = Annotated[Any, WithJsonSchema(IMAGE_ENTRY_SCHEMA)]
"""Typed ``Any`` so that :func:`~imgembed.api.siglip.image_input` names the entry at fault."""
Vector = Annotated[list[Any], WithJsonSchema(VECTOR_SCHEMA)]
"""Numbers, checked by the store (which names the field, and the index in it)."""


class ItemIn(BaseModel):
    """One item: ``id``, exactly one of ``image`` and ``vector``, optional ``metadata``."""

    model_config = ConfigDict(extra="forbid")

    id: ItemId = Field(description="Unique id in the collection: 1 to 256 characters of text.")
    image: ImageEntry | None = Field(
        default=None, description="http(s) URL, data: URI or base64 of the file."
    )
    vector: Vector | None = Field(default=None, description="A ready embedding instead.")
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="JSON object stored with it (its size and depth are limited).",
    )


class AddItemsRequest(BaseModel):
    """Body of ``POST /v1/collections/{name}/items``."""

    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(
        description="Items to add, one atomic write: at least one, at most "
        "IMGEMBED_MAX_BATCH_IMAGES.",
        json_schema_extra={"minItems": 1},
    )
    model: str | None = Field(default=None, description="SigLIP model embedding the images.")
    on_conflict: Literal["reject", "upsert"] = Field(
        default="reject",
        description="reject (409, nothing written) or upsert (replace) when an id exists.",
    )

    def new_items(
        self, max_items: int, *, uploads: Sequence[ImageInput] = (), prefix: str = ""
    ) -> list[NewItem]:
        """The items, validated for shape (ids, metadata and vectors are checked by the store).

        Args:
            max_items: The most items one request may add (``IMGEMBED_MAX_BATCH_IMAGES``).
            uploads: Images sent beside the JSON (the CLI's files): each item that has neither
                ``image`` nor ``vector`` takes the next one, in order.
            prefix: Prefix of field names in errors (``input.`` for RunPod events).

        Raises:
            InvalidInputError: Empty, too many, an item with both or neither of image/vector, or
                uploads left without an item.
        """
        if not self.items:
            raise InvalidInputError(
                f"{prefix}items is empty; add at least one item", field=f"{prefix}items"
            )
        if len(self.items) > max_items:
            raise InvalidInputError(
                f"{prefix}items has {len(self.items)} entries; at most {max_items} per request "
                "(IMGEMBED_MAX_BATCH_IMAGES): split it",
                field=f"{prefix}items",
            )
        pending = list(uploads)
        new_items = []
        for index, item in enumerate(self.items):
            where = f"{prefix}items[{index}]"
            neither = item.image is None and item.vector is None
            uploaded = pending.pop(0) if neither and pending else None
            if uploaded is None and (item.image is None) == (item.vector is None):
                raise InvalidInputError(
                    f"{where} needs exactly one of image and vector", field=f"{where}.image"
                )
            if not isinstance(item.id, str):
                raise InvalidInputError(
                    f"{where}.id must be a string, got {type(item.id).__name__}",
                    field=f"{where}.id",
                )
            image = uploaded
            if item.image is not None:
                image = image_input(item.image, f"{where}.image")
            new_items.append(NewItem(item.id, image, item.vector, item.metadata or {}, field=where))
        if pending:
            raise InvalidInputError(
                f"{len(uploads)} images were uploaded but only {len(uploads) - len(pending)} "
                "items have neither image nor vector; send one item per uploaded image",
                field=f"{prefix}items",
            )
        return new_items


class SearchRequest(BaseModel):
    """Body of ``POST /v1/collections/{name}/search``: exactly one of image, text or vector."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(
        default=None,
        description="Query image (URL, data: URI, base64).",
        json_schema_extra={"anyOf": [IMAGE_ENTRY_SCHEMA, {"type": "null"}]},
    )
    text: str | None = Field(
        default=None,
        description="Query text (text-to-image search), not blank.",
        json_schema_extra={"anyOf": [{"type": "string", "pattern": r"\S"}, {"type": "null"}]},
    )
    vector: Vector | None = Field(default=None, description="Query embedding.")
    top_k: int = Field(default=10, ge=1, le=1000, description="How many hits at most.")
    filter: dict[str, Any] | None = Field(
        default=None, description="Metadata filter, e.g. {'year': {'$gte': 2020}}."
    )
    model: str | None = Field(default=None, description="SigLIP model embedding the query.")


class DeleteItemsRequest(BaseModel):
    """Body of ``POST /v1/collections/{name}/items/delete``."""

    model_config = ConfigDict(extra="forbid")

    ids: list[ItemId] = Field(
        description="Ids to delete (at least one, at most 10000); unknown ids are ignored.",
        json_schema_extra={"minItems": 1, "maxItems": 10_000},
    )


class ListItemsQuery(BaseModel):
    """The query of ``GET /v1/collections/{name}/items``: a page of items, in id order."""

    limit: int = Field(default=100, ge=1, le=1000, description="Items per page, 1 to 1000.")
    after: str | None = Field(default=None, description="next_after of the previous page")
    with_vectors: bool = Field(default=False, description="Return each item's vector too.")


class NamedCollection(BaseModel):
    """Names a collection: the ``{name}`` of an HTTP route's path, a field of a RunPod input."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The collection's name.")


class ListCollectionsInput(BaseModel):
    """Input of the operation listing every collection: nothing."""

    model_config = ConfigDict(extra="forbid")


class ListItemsInput(ListItemsQuery, NamedCollection):
    """Input of the operation listing items: the collection and the page (the HTTP query)."""

    model_config = ConfigDict(extra="forbid")


class AddItemsInput(AddItemsRequest, NamedCollection):
    """Input of the add operation: :class:`AddItemsRequest` and the collection's name."""


class SearchInput(SearchRequest, NamedCollection):
    """Input of the search operation: :class:`SearchRequest` and the collection's name."""


class DeleteItemsInput(DeleteItemsRequest, NamedCollection):
    """Input of the operation deleting items: :class:`DeleteItemsRequest` and the collection's
    name."""


def collection_json(info: CollectionInfo) -> dict[str, Any]:
    """A collection as responses describe it."""
    return {
        "name": info.name,
        "dimension": info.dimension,
        "count": info.count,
        "metric": info.metric,
        "indexed": info.indexed,
    }


def item_json(item: Item) -> dict[str, Any]:
    """An item: id, metadata, and its vector when it was read."""
    entry: dict[str, Any] = {"id": item.id, "metadata": item.metadata}
    if item.vector is not None:
        entry["vector"] = item.vector.tolist()
    return entry


def add_outcome_json(outcome: AddOutcome, requested: int) -> dict[str, Any]:
    """The response of an add: the collection after the write, counts, and failed items (as
    ``warnings``, only when an item failed)."""
    response: dict[str, Any] = {
        "collection": collection_json(outcome.collection),
        "inserted": outcome.result.inserted,
        "updated": outcome.result.updated,
    }
    if outcome.failed:
        response["warnings"] = {
            "failed": [
                {
                    "index": index,
                    "id": item.id,
                    "error": error.message,
                    "code": error.code,
                    "field": item.field,
                }
                for index, item, error in outcome.failed
            ],
            "message": f"{len(outcome.failed)} of {requested} items could not be added",
        }
    return response


def search_json(name: str, model: str | None, hits: Sequence[SearchHit]) -> dict[str, Any]:
    """The response of a search: hits, best first, and the model that embedded the query."""
    return {
        "collection": name,
        "model": model,
        "hits": [{"id": hit.id, "score": hit.score, "metadata": hit.metadata} for hit in hits],
    }
