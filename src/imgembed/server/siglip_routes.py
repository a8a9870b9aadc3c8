"""SigLIP HTTP routes: image batches, texts, and OpenAI's ``/v1/embeddings``. Parse, call, format."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from imgembed.engine import Engine, SiglipService
from imgembed.errors import InvalidInputError, UnsupportedMediaTypeError
from imgembed.schemas import parse_request
from imgembed.server.disconnect import (
    CLIENT_CLOSED_REQUEST,
    ClientDisconnectedError,
    unless_disconnected,
)
from imgembed.server.errors import invalid_json
from imgembed.server.labels import label_model, named_model
from imgembed.siglip_schemas import (
    URL_PREFIXES,
    OpenAIEmbeddingsRequest,
    SiglipEmbedRequest,
    SiglipTextRequest,
    image_inputs,
)
from imgembed.types import ImageBytes, ImageInput, ImageURL
from imgembed.wire_siglip import openai_embeddings_json, siglip_images_json, siglip_texts_json

logger = logging.getLogger(__name__)
router = APIRouter(tags=["siglip"])

UPLOAD_FIELDS = ("file", "files", "image", "images")


def _engine(request: Request) -> Engine:
    return request.app.state.engine


async def _json_body(request: Request) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise UnsupportedMediaTypeError(
            f"Content-Type {content_type!r} is not accepted here; send application/json",
            field="content-type",
        )
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise invalid_json(error) from error


async def _uploads(request: Request, limit: int) -> tuple[list[ImageInput], str | None]:
    """Uploaded files as images (``files[i]`` in errors), and the ``model`` form field."""
    form = await request.form(max_files=limit + 1, max_fields=8)
    images: list[ImageInput] = []
    model: str | None = None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in UPLOAD_FIELDS:
                    raise InvalidInputError(
                        f"file uploaded as {name!r}; upload images as 'files'", field=name
                    )
                images.append(ImageBytes(await value.read(), field=f"files[{len(images)}]"))
            elif name == "model":
                model = value
            else:
                raise InvalidInputError(
                    f"unknown form field {name!r}; send files and optionally model", field=name
                )
    finally:
        await form.close()
    if not images:
        raise InvalidInputError("no files uploaded; upload images as 'files'", field="files")
    return images, model


async def _respond(request: Request, work: Any, build: Any) -> Response:
    """Awaits ``work`` (dropped if the client leaves) and serialises ``build(result)``."""
    engine = _engine(request)
    try:
        result = await unless_disconnected(request, work)
    except ClientDisconnectedError:
        logger.info("client closed the connection; request %s dropped", request.state.request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    encoded = await engine.run_cpu(lambda: json.dumps(build(result)).encode())
    return Response(encoded, media_type="application/json")


@router.post(
    "/v1/siglip/embed",
    summary="SigLIP 2 image embeddings",
    description="L2-normalised image embeddings for a batch: JSON {'images': [URL, data: URI or "
    "base64, ...]} or multipart files. An image that cannot be fetched or decoded is reported "
    "under warnings; every other image gets its vector, in input order.",
)
async def siglip_embed(request: Request) -> Response:
    engine = _engine(request)
    label_model(request, engine, family="siglip")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        images, model = await _uploads(request, engine.config.limits.max_batch_images)
    else:
        payload = await _json_body(request)
        label_model(request, engine, named_model(payload), "siglip")
        body = parse_request(SiglipEmbedRequest, payload)
        assert isinstance(body, SiglipEmbedRequest)
        images, model = image_inputs(body.images), body.model
    served = engine.service(SiglipService).resolve(model)
    request.state.model = served.name
    work = engine.service(SiglipService).embed_images(images, model=served.name)
    return await _respond(request, work, lambda result: siglip_images_json(result, images))


@router.post(
    "/v1/siglip/embed-text",
    summary="SigLIP 2 text embeddings",
    description="L2-normalised text embeddings (lower-cased, 64 tokens), comparable with image "
    "embeddings by dot product: text-to-image search.",
)
async def siglip_embed_text(request: Request) -> Response:
    engine = _engine(request)
    label_model(request, engine, family="siglip")
    payload = await _json_body(request)
    label_model(request, engine, named_model(payload), "siglip")
    body = parse_request(SiglipTextRequest, payload)
    assert isinstance(body, SiglipTextRequest)
    served = engine.service(SiglipService).resolve(body.model)
    request.state.model = served.name
    work = engine.service(SiglipService).embed_texts(body.texts, model=served.name)
    return await _respond(request, work, lambda result: siglip_texts_json(*result))


@router.post(
    "/v1/embeddings",
    summary="OpenAI-style embeddings",
    description="OpenAI's embeddings API over SigLIP 2: each input that is an http(s) URL or a "
    "data: URI is embedded as an image, anything else as text. One failed input fails the "
    "request (OpenAI clients expect a vector per input); use /v1/siglip/embed for partial "
    "results.",
)
async def openai_embeddings(request: Request) -> Response:
    engine = _engine(request)
    label_model(request, engine, family="siglip")
    payload = await _json_body(request)
    label_model(request, engine, named_model(payload), "siglip")
    body = parse_request(OpenAIEmbeddingsRequest, payload)
    assert isinstance(body, OpenAIEmbeddingsRequest)
    served = engine.service(SiglipService).resolve(body.model)
    request.state.model = served.name
    if body.dimensions is not None and body.dimensions != served.loaded.embedding_dim:
        raise InvalidInputError(
            f"dimensions {body.dimensions} is not available: {served.name} makes "
            f"{served.loaded.embedding_dim}-dimensional embeddings; omit dimensions",
            field="dimensions",
        )
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError(
            "input must be a string or a non-empty list of strings", field="input"
        )
    for index, entry in enumerate(inputs):
        if not isinstance(entry, str):
            raise InvalidInputError(
                f"input[{index}] must be a string (text, an image URL or a data: URI), got "
                f"{type(entry).__name__}",
                field=f"input[{index}]",
            )
    return await _respond(
        request,
        _openai_vectors(engine, inputs, served.name),
        lambda vectors: openai_embeddings_json(vectors, served, body.encoding_format),
    )


async def _openai_vectors(engine: Engine, inputs: list[str], model: str) -> np.ndarray:
    """One vector per input, images and texts each embedded in one batch, in input order."""
    image_positions = [i for i, text in enumerate(inputs) if text.startswith(URL_PREFIXES)]
    text_positions = [i for i in range(len(inputs)) if i not in set(image_positions)]
    vectors: dict[int, np.ndarray] = {}
    if image_positions:
        images = [ImageURL(inputs[i], field=f"input[{i}]") for i in image_positions]
        try:
            result = await engine.service(SiglipService).embed_images(images, model=model)
        except InvalidInputError as error:
            raise _renamed(error, image_positions, "images") from error
        for position, outcome in zip(image_positions, result.outcomes, strict=True):
            if outcome.error is not None:
                raise outcome.error
            assert outcome.vector is not None
            vectors[position] = outcome.vector
    if text_positions:
        texts = [inputs[i] for i in text_positions]
        try:
            embedded, _ = await engine.service(SiglipService).embed_texts(
                texts, model=model, field_prefix=""
            )
        except InvalidInputError as error:
            raise _renamed(error, text_positions) from error
        for position, vector in zip(text_positions, embedded, strict=True):
            vectors[position] = vector
    return np.stack([vectors[i] for i in range(len(inputs))])  # N x [D] -> [N,D]


def _renamed(
    error: InvalidInputError, positions: list[int], name: str = "texts"
) -> InvalidInputError:
    """An error's ``texts[k]`` (or ``images``, by ``name``) renamed to the ``input[i]`` (or
    ``input``) the client sent."""
    field = error.field or "input"
    message = error.message
    if field.startswith(f"{name}[") and field.endswith("]"):
        k = int(field[len(name) + 1 : -1])
        field = f"input[{positions[k]}]"
        message = message.replace(f"{name}[{k}]", field, 1)
    elif field == name:
        field = "input"
        message = message.replace(name, "input", 1)
    return InvalidInputError(message, field=field)
