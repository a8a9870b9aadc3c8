"""Collection routes: add images (embedded on the way in), search, list, delete. Parse, call, format.

Items are stored in the embedded vector store (:mod:`imgembed.search`); data survives restarts and
every acknowledged write is durable. Filters use the JSON language of
:mod:`imgembed.search.filters`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from imgembed.api.collections import (
    AddItemsRequest,
    DeleteItemsRequest,
    SearchRequest,
    add_outcome_json,
    collection_json,
    item_json,
    search_json,
)
from imgembed.api.parsing import parse_request
from imgembed.api.siglip import image_input
from imgembed.engine import CollectionService, Engine
from imgembed.errors import InvalidInputError
from imgembed.server.bodies import read_json
from imgembed.server.openapi import EXAMPLE_PNG_DATA_URI, error_responses, request_body

router = APIRouter(tags=["collections"])


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _collections(request: Request) -> CollectionService:
    return _engine(request).service(CollectionService)


@router.get("/v1/collections", summary="List collections")
async def list_collections(request: Request) -> dict[str, Any]:
    infos = await _collections(request).list_collections()
    return {"collections": [collection_json(info) for info in infos]}


_NAMED = error_responses(400, 404)
"""A route naming a collection: 400 for a malformed name, 404 for an unknown one."""
_EMBEDS = error_responses(400, 404, 429, 503, 504, 507)
"""A route that may embed an image or a text: a model's refusals too."""


@router.get("/v1/collections/{name}", summary="Describe a collection", responses=_NAMED)
async def get_collection(request: Request, name: str) -> dict[str, Any]:
    return collection_json(await _collections(request).get_collection(name))


@router.delete(
    "/v1/collections/{name}", summary="Delete a collection and its items", responses=_NAMED
)
async def delete_collection(request: Request, name: str) -> dict[str, Any]:
    await _collections(request).delete_collection(name)
    return {"deleted": name}


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
)
async def add_items(request: Request, name: str) -> dict[str, Any]:
    engine = _engine(request)
    body = parse_request(AddItemsRequest, await read_json(request))
    items = body.new_items(engine.config.limits.max_batch_images)
    outcome = await engine.service(CollectionService).add(
        name, items, model=body.model, on_conflict=body.on_conflict
    )
    return add_outcome_json(outcome, len(items))


@router.get("/v1/collections/{name}/items", summary="List items, in id order", responses=_NAMED)
async def list_items(
    request: Request,
    name: str,
    limit: int = Query(default=100, ge=1, le=1000),
    after: str | None = Query(default=None, description="next_after of the previous page"),
    with_vectors: bool = Query(default=False),
) -> dict[str, Any]:
    page = await _collections(request).list_items(
        name, limit=limit, after=after, with_vectors=with_vectors
    )
    return {"items": [item_json(item) for item in page.items], "next_after": page.next_after}


@router.post(
    "/v1/collections/{name}/items/delete",
    summary="Delete items by id",
    openapi_extra=request_body(DeleteItemsRequest, example={"ids": ["cat-1"]}),
    responses=_NAMED,
)
async def delete_items(request: Request, name: str) -> dict[str, Any]:
    body = parse_request(DeleteItemsRequest, await read_json(request))
    deleted = await _collections(request).delete_items(name, body.ids)
    return {"deleted": deleted}


@router.post(
    "/v1/collections/{name}/search",
    summary="Search a collection",
    description="The top_k items most similar (cosine) to an image, a text or a vector, among "
    "those whose metadata pass the filter.",
    openapi_extra=request_body(
        SearchRequest, example={"text": "a cat", "top_k": 5, "filter": {"label": "cat"}}
    ),
    responses=_EMBEDS,
)
async def search(request: Request, name: str) -> dict[str, Any]:
    engine = _engine(request)
    body = parse_request(SearchRequest, await read_json(request))
    image = None if body.image is None else image_input(body.image, "image")
    if body.text is not None and not body.text.strip():
        raise InvalidInputError("text is empty; send some words", field="text")
    hits, model = await engine.service(CollectionService).search(
        name,
        image=image,
        text=body.text,
        vector=body.vector,
        top_k=body.top_k,
        filter=body.filter,
        model=body.model,
    )
    return search_json(name, model, hits)
