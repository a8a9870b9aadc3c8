"""Collection routes: add images (embedded on the way in), search, list, delete; each runs an api
operation (see :mod:`imgembed.server.operations`), with the collection's ``name`` from the path.

Items are stored in the embedded vector store (:mod:`imgembed.search`); data survives restarts and
every acknowledged write is durable. Filters use the JSON language of
:mod:`imgembed.search.filters`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from imgembed.api import collections_operations as operations
from imgembed.api.collections import (
    AddItemsRequest,
    DeleteItemsRequest,
    ListItemsQuery,
    SearchRequest,
)
from imgembed.server.bodies import Body, read_json
from imgembed.server.openapi import EXAMPLE_PNG_DATA_URI, error_responses, request_body
from imgembed.server.operations import no_body, serve_operation

router = APIRouter(tags=["collections"])
_OBJECT = dict[str, Any]
"""``response_model`` of every route: a JSON object (the operations' JSON, sent as is)."""


async def _json(request: Request) -> Body:
    """The body as JSON, whatever Content-Type it declares (these routes never checked it)."""
    return await read_json(request), []


@router.get("/v1/collections", summary="List collections", response_model=_OBJECT)
async def list_collections(request: Request) -> Response:
    return await serve_operation(request, operations.LIST_COLLECTIONS, no_body)


_NAMED = error_responses(400, 404)
"""A route naming a collection: 400 for a malformed name, 404 for an unknown one."""
_EMBEDS = error_responses(400, 404, 429, 503, 504, 507)
"""A route that may embed an image or a text: a model's refusals too."""


@router.get(
    "/v1/collections/{name}",
    summary="Describe a collection",
    responses=_NAMED,
    response_model=_OBJECT,
)
async def get_collection(request: Request, name: str) -> Response:
    return await serve_operation(request, operations.GET_COLLECTION, no_body)


@router.delete(
    "/v1/collections/{name}",
    summary="Delete a collection and its items",
    responses=_NAMED,
    response_model=_OBJECT,
)
async def delete_collection(request: Request, name: str) -> Response:
    return await serve_operation(request, operations.DELETE_COLLECTION, no_body)


@router.post(
    "/v1/collections/{name}/items",
    summary="Add items",
    description="Adds items, each with an id, metadata and an image (embedded with the SigLIP "
    "model) or a vector. The collection is created on first use. Items whose image fails are "
    "listed under warnings and not stored; the rest are stored in one atomic, durable write.",
    openapi_extra=request_body(
        AddItemsRequest,
        example={
            "items": [{"id": "cat-1", "image": EXAMPLE_PNG_DATA_URI, "metadata": {"label": "cat"}}]
        },
    ),
    responses={**_EMBEDS, **error_responses(409)},
    response_model=_OBJECT,
)
async def add_items(request: Request, name: str) -> Response:
    return await serve_operation(request, operations.ADD_ITEMS, _json)


@router.get(
    "/v1/collections/{name}/items",
    summary="List items, in id order",
    responses=_NAMED,
    response_model=_OBJECT,
)
async def list_items(
    request: Request, name: str, page: Annotated[ListItemsQuery, Query()]
) -> Response:
    return await serve_operation(request, operations.LIST_ITEMS, no_body, query=page.model_dump())


@router.post(
    "/v1/collections/{name}/items/delete",
    summary="Delete items by id",
    openapi_extra=request_body(DeleteItemsRequest, example={"ids": ["cat-1"]}),
    responses=_NAMED,
    response_model=_OBJECT,
)
async def delete_items(request: Request, name: str) -> Response:
    return await serve_operation(request, operations.DELETE_ITEMS, _json)


@router.post(
    "/v1/collections/{name}/search",
    summary="Search a collection",
    description="The top_k items most similar (cosine) to an image, a text or a vector, among "
    "those whose metadata pass the filter.",
    openapi_extra=request_body(
        SearchRequest, example={"text": "a cat", "top_k": 5, "filter": {"label": "cat"}}
    ),
    responses=_EMBEDS,
    response_model=_OBJECT,
)
async def search(request: Request, name: str) -> Response:
    return await serve_operation(request, operations.SEARCH, _json)
