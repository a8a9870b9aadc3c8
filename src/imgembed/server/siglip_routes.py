"""SigLIP HTTP routes: image batches, texts, and OpenAI's ``/v1/embeddings``; each runs an api
operation (see :mod:`imgembed.server.operations`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from imgembed.api import siglip_operations
from imgembed.api.siglip import OpenAIEmbeddingsRequest, SiglipEmbedRequest, SiglipTextRequest
from imgembed.server.bodies import Body, image_batch_body, json_body
from imgembed.server.openapi import (
    EXAMPLE_PNG_DATA_URI,
    MODEL_ERRORS,
    Multipart,
    error_responses,
    request_body,
)
from imgembed.server.operations import engine_of, serve_operation

router = APIRouter(tags=["siglip"], responses=error_responses(*MODEL_ERRORS))


async def _image_batch_body(request: Request) -> Body:
    limit = engine_of(request).config.limits.max_batch_images
    return await image_batch_body(request, limit)


@router.post(
    "/v1/siglip/embed",
    summary="SigLIP 2 image embeddings",
    description="L2-normalised image embeddings for a batch: JSON {'images': [URL, data: URI or "
    "base64, ...]} or multipart files. An image that cannot be fetched or decoded is reported "
    "under warnings; every other image gets its vector, in input order.",
    openapi_extra=request_body(
        SiglipEmbedRequest,
        multipart=Multipart(
            "SiglipEmbedForm", upload="files", many=True, omit=("images", "action")
        ),
        description="JSON, or a multipart upload of the image files (field 'files'; 'file', "
        "'image' and 'images' are read too) with an optional 'model' field.",
        example={"images": [EXAMPLE_PNG_DATA_URI]},
    ),
)
async def siglip_embed(request: Request) -> Response:
    return await serve_operation(request, siglip_operations.EMBED_IMAGES, _image_batch_body)


@router.post(
    "/v1/siglip/embed-text",
    summary="SigLIP 2 text embeddings",
    description="L2-normalised text embeddings (lower-cased, 64 tokens), comparable with image "
    "embeddings by dot product: text-to-image search.",
    openapi_extra=request_body(SiglipTextRequest, example={"texts": ["a photo of a cat"]}),
)
async def siglip_embed_text(request: Request) -> Response:
    return await serve_operation(request, siglip_operations.EMBED_TEXTS, json_body)


@router.post(
    "/v1/embeddings",
    summary="OpenAI-style embeddings",
    description="OpenAI's embeddings API over SigLIP 2: each input that is an http(s) URL or a "
    "data: URI is embedded as an image, anything else as text. One failed input fails the "
    "request (OpenAI clients expect a vector per input); use /v1/siglip/embed for partial "
    "results.",
    openapi_extra=request_body(
        OpenAIEmbeddingsRequest, example={"input": ["a photo of a cat", EXAMPLE_PNG_DATA_URI]}
    ),
)
async def openai_embeddings(request: Request) -> Response:
    return await serve_operation(request, siglip_operations.OPENAI_EMBEDDINGS, json_body)
