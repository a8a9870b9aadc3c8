"""The SigLIP 2 operations every adapter runs: image embeddings, text embeddings, and OpenAI's
embeddings API (texts and images, one vector per input)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgembed.api.operation import Context, Operation
from imgembed.api.siglip import (
    URL_PREFIXES,
    OpenAIEmbeddingsRequest,
    SiglipEmbedRequest,
    SiglipTextRequest,
    image_inputs,
    openai_embeddings_json,
    siglip_images_json,
    siglip_texts_json,
)
from imgembed.engine import ServedModel, ServedSiglip, SiglipImagesResult, SiglipService
from imgembed.errors import InvalidInputError
from imgembed.types import ImageInput, ImageURL

FAMILY = "siglip"


@dataclass(frozen=True)
class EmbeddedImages:
    """The images a request sent (its response names their URLs) and their outcomes."""

    images: Sequence[ImageInput]
    result: SiglipImagesResult


async def _embed_images(
    request: SiglipEmbedRequest, served: ServedModel | None, context: Context
) -> EmbeddedImages:
    assert served is not None
    images: Sequence[ImageInput] = context.uploads or image_inputs(
        request.images, field=context.field("images")
    )
    result = await context.engine.service(SiglipService).embed_images(
        images, model=served.name, field_prefix=context.field_prefix
    )
    return EmbeddedImages(images, result)


EMBED_IMAGES: Operation[SiglipEmbedRequest, EmbeddedImages] = Operation(
    "siglip.embed_images",
    FAMILY,
    SiglipEmbedRequest,
    _embed_images,
    lambda request, embedded: siglip_images_json(embedded.result, embedded.images),
)
"""Image embeddings, each failed image reported beside the others' vectors (the seed's event)."""


async def _embed_texts(
    request: SiglipTextRequest, served: ServedModel | None, context: Context
) -> tuple[np.ndarray, ServedSiglip]:
    assert served is not None
    return await context.engine.service(SiglipService).embed_texts(
        request.texts, model=served.name, field_prefix=context.field_prefix
    )


EMBED_TEXTS: Operation[SiglipTextRequest, tuple[np.ndarray, ServedSiglip]] = Operation(
    "siglip.embed_texts",
    FAMILY,
    SiglipTextRequest,
    _embed_texts,
    lambda request, result: siglip_texts_json(*result),
)
"""Text embeddings for text-to-image search."""


async def _openai_embeddings(
    request: OpenAIEmbeddingsRequest, served: ServedModel | None, context: Context
) -> tuple[np.ndarray, ServedSiglip]:
    assert isinstance(served, ServedSiglip)
    if request.dimensions is not None and request.dimensions != served.loaded.embedding_dim:
        raise InvalidInputError(
            f"dimensions {request.dimensions} is not available: {served.name} makes "
            f"{served.loaded.embedding_dim}-dimensional embeddings; omit dimensions",
            field="dimensions",
        )
    inputs = [request.input] if isinstance(request.input, str) else request.input
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
    service = context.engine.service(SiglipService)
    return await _openai_vectors(service, inputs, served.name), served


async def _openai_vectors(service: SiglipService, inputs: list[str], model: str) -> np.ndarray:
    """One vector per input, images and texts each embedded in one batch, in input order."""
    image_positions = [i for i, text in enumerate(inputs) if text.startswith(URL_PREFIXES)]
    text_positions = [i for i in range(len(inputs)) if i not in set(image_positions)]
    vectors: dict[int, np.ndarray] = {}
    if image_positions:
        images = [ImageURL(inputs[i], field=f"input[{i}]") for i in image_positions]
        try:
            result = await service.embed_images(images, model=model)
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
            embedded, _ = await service.embed_texts(texts, model=model, field_prefix="")
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


OPENAI_EMBEDDINGS: Operation[OpenAIEmbeddingsRequest, tuple[np.ndarray, ServedSiglip]] = Operation(
    "siglip.openai_embeddings",
    FAMILY,
    OpenAIEmbeddingsRequest,
    _openai_embeddings,
    lambda request, result: openai_embeddings_json(result[0], result[1], request.encoding_format),
)
"""OpenAI's embeddings API: URLs and data: URIs as images, anything else as text; one failed
input fails the request (OpenAI clients expect a vector per input)."""
