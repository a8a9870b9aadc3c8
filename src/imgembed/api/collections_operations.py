"""The collection operations every adapter runs: list, describe and delete collections; add, list,
delete and search their items.

Each takes the collection's ``name`` in its input: an HTTP route reads it from its path (see
:meth:`~imgembed.api.operation.Operation.parse`'s ``params``), a RunPod event and the CLI send it
as a field. None resolves a model itself (``family`` is ``None``): the collection service picks
the SigLIP model only when an image or a text is to be embedded, so a vector search needs none.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from imgembed.api.collections import (
    AddItemsInput,
    DeleteItemsInput,
    ListCollectionsInput,
    ListItemsInput,
    NamedCollection,
    SearchInput,
    add_outcome_json,
    collection_json,
    item_json,
    search_json,
)
from imgembed.api.operation import Context, Operation
from imgembed.api.siglip import image_input
from imgembed.engine import AddOutcome, CollectionService, ServedModel
from imgembed.errors import ImgembedError, InvalidInputError
from imgembed.search.store import CollectionInfo, ItemPage, SearchHit
from imgembed.types import ImageInput

ResultT = TypeVar("ResultT")

SearchResult = tuple[list[SearchHit], str | None]
"""Hits, best first, and the model that embedded the query (``None`` for a vector)."""


async def _in_context(context: Context, work: Awaitable[ResultT]) -> ResultT:
    """Awaits a collection service call, its errors' field named as the adapter names fields
    (``input.vector`` in a RunPod event)."""
    try:
        return await work
    except ImgembedError as error:
        if error.field is not None and not error.field.startswith(context.field_prefix):
            error.field = context.field(error.field)
        raise


def _service(context: Context) -> CollectionService:
    return context.engine.service(CollectionService)


async def _list_collections(
    request: ListCollectionsInput, served: ServedModel | None, context: Context
) -> list[CollectionInfo]:
    return await _in_context(context, _service(context).list_collections())


LIST_COLLECTIONS: Operation[ListCollectionsInput, list[CollectionInfo]] = Operation(
    "collections.list",
    None,
    ListCollectionsInput,
    _list_collections,
    lambda request, infos: {"collections": [collection_json(info) for info in infos]},
)
"""Every collection (``GET /v1/collections``)."""


async def _get_collection(
    request: NamedCollection, served: ServedModel | None, context: Context
) -> CollectionInfo:
    return await _in_context(context, _service(context).get_collection(request.name))


GET_COLLECTION: Operation[NamedCollection, CollectionInfo] = Operation(
    "collections.get",
    None,
    NamedCollection,
    _get_collection,
    lambda request, info: collection_json(info),
)
"""One collection's description (``GET /v1/collections/{name}``); 404 for an unknown one."""


async def _delete_collection(
    request: NamedCollection, served: ServedModel | None, context: Context
) -> None:
    await _in_context(context, _service(context).delete_collection(request.name))


DELETE_COLLECTION: Operation[NamedCollection, None] = Operation(
    "collections.delete",
    None,
    NamedCollection,
    _delete_collection,
    lambda request, _: {"deleted": request.name},
)
"""Deletes a collection and its items (``DELETE /v1/collections/{name}``)."""


async def _add_items(
    request: AddItemsInput, served: ServedModel | None, context: Context
) -> AddOutcome:
    items = request.new_items(
        context.engine.config.limits.max_batch_images,
        uploads=context.uploads,
        prefix=context.field_prefix,
    )
    return await _in_context(
        context,
        _service(context).add(
            request.name, items, model=request.model, on_conflict=request.on_conflict
        ),
    )


ADD_ITEMS: Operation[AddItemsInput, AddOutcome] = Operation(
    "collections.add_items",
    None,
    AddItemsInput,
    _add_items,
    lambda request, outcome: add_outcome_json(outcome, len(request.items)),
)
"""Adds items, embedding their images (``POST /v1/collections/{name}/items``); the collection is
created by its first add. An item without image or vector takes the next uploaded image (the CLI's
files)."""


async def _list_items(
    request: ListItemsInput, served: ServedModel | None, context: Context
) -> ItemPage:
    return await _in_context(
        context,
        _service(context).list_items(
            request.name,
            limit=request.limit,
            after=request.after,
            with_vectors=request.with_vectors,
        ),
    )


LIST_ITEMS: Operation[ListItemsInput, ItemPage] = Operation(
    "collections.list_items",
    None,
    ListItemsInput,
    _list_items,
    lambda request, page: {
        "items": [item_json(item) for item in page.items],
        "next_after": page.next_after,
    },
)
"""A page of items in id order (``GET /v1/collections/{name}/items``)."""


async def _delete_items(
    request: DeleteItemsInput, served: ServedModel | None, context: Context
) -> int:
    return await _in_context(context, _service(context).delete_items(request.name, request.ids))


DELETE_ITEMS: Operation[DeleteItemsInput, int] = Operation(
    "collections.delete_items",
    None,
    DeleteItemsInput,
    _delete_items,
    lambda request, deleted: {"deleted": deleted},
)
"""Deletes items by id, unknown ids ignored (``POST /v1/collections/{name}/items/delete``)."""


def _query_image(request: SearchInput, context: Context) -> ImageInput | None:
    """The query image: the ``image`` field, or the one uploaded image (the CLI's file).

    Raises:
        InvalidInputError: Both, or several uploads, or a malformed ``image``.
    """
    if not context.uploads:
        return None if request.image is None else image_input(request.image, context.field("image"))
    if request.image is not None or len(context.uploads) > 1:
        raise InvalidInputError(
            f"{len(context.uploads)} uploaded images and "
            f"{'an' if request.image is not None else 'no'} {context.field('image')} field were "
            "given; search with one image",
            field=context.field("image"),
        )
    return context.uploads[0]


async def _search(
    request: SearchInput, served: ServedModel | None, context: Context
) -> SearchResult:
    image = _query_image(request, context)
    if request.text is not None and not request.text.strip():
        raise InvalidInputError(
            f"{context.field('text')} is empty; send some words", field=context.field("text")
        )
    return await _in_context(
        context,
        _service(context).search(
            request.name,
            image=image,
            text=request.text,
            vector=request.vector,
            top_k=request.top_k,
            filter=request.filter,
            model=request.model,
        ),
    )


SEARCH: Operation[SearchInput, SearchResult] = Operation(
    "collections.search",
    None,
    SearchInput,
    _search,
    lambda request, result: search_json(request.name, result[1], result[0]),
)
"""The ``top_k`` items closest to an image, a text or a vector, among those whose metadata pass
the filter (``POST /v1/collections/{name}/search``)."""
