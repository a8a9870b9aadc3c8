"""Collection request bodies: items to add (an image or a vector each) and searches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from imgembed.api.siglip import IMAGE_ENTRY_SCHEMA, image_input
from imgembed.engine import AddOutcome, NewItem
from imgembed.errors import InvalidInputError
from imgembed.search.store import CollectionInfo, Item, SearchHit

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

    def new_items(self, max_items: int) -> list[NewItem]:
        """The items, validated for shape (ids, metadata and vectors are checked by the store).

        Raises:
            InvalidInputError: Empty, too many, or an item with both or neither of image/vector.
        """
        if not self.items:
            raise InvalidInputError("items is empty; add at least one item", field="items")
        if len(self.items) > max_items:
            raise InvalidInputError(
                f"items has {len(self.items)} entries; at most {max_items} per request "
                "(IMGEMBED_MAX_BATCH_IMAGES): split it",
                field="items",
            )
        new_items = []
        for index, item in enumerate(self.items):
            where = f"items[{index}]"
            if (item.image is None) == (item.vector is None):
                raise InvalidInputError(
                    f"{where} needs exactly one of image and vector", field=f"{where}.image"
                )
            if not isinstance(item.id, str):
                raise InvalidInputError(
                    f"{where}.id must be a string, got {type(item.id).__name__}",
                    field=f"{where}.id",
                )
            image = None if item.image is None else image_input(item.image, f"{where}.image")
            new_items.append(NewItem(item.id, image, item.vector, item.metadata or {}, field=where))
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
