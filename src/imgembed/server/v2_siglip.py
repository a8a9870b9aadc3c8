"""SigLIP 2 models on the v2 protocol: ``<model>`` (images) and ``<model>_text`` (texts).

- ``<model>`` (also ``siglip`` for the first SigLIP model served): input ``image_bytes`` BYTES
  ``[B]`` (encoded image files; base64 strings in JSON), output ``embeddings`` FP32 ``[B,D]``.
- ``<model>_text`` (also ``siglip_text``): input ``text`` BYTES ``[B]`` (UTF-8), output
  ``embeddings`` FP32 ``[B,D]``.

Rows have L2 norm 1. The v2 protocol has no partial results: one image that cannot be decoded
fails the request with 400 naming it (``image_bytes[i]``); the native ``/v1/siglip/embed`` reports
such images as warnings instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from imgembed.engine import Engine, ServedSiglip, SiglipService
from imgembed.errors import InvalidInputError
from imgembed.server.v2_models import V2Model
from imgembed.server.v2_tensors import TensorSpec
from imgembed.types import ImageBase64, ImageBytes, ImageInput


class SiglipImageModel(V2Model):
    """Images in, L2-normalised embeddings out."""

    async def infer(
        self, engine: Engine, tensors: Mapping[str, np.ndarray], *, deadline: float
    ) -> dict[str, np.ndarray]:
        files = tensors["image_bytes"]  # [B] bytes (binary) or str (base64 in JSON)
        self.check_batch("image_bytes", files.shape[0])
        images: list[ImageInput] = [
            ImageBytes(data, field=f"image_bytes[{index}]")
            if isinstance(data, bytes)
            else ImageBase64(data, field=f"image_bytes[{index}]")
            for index, data in enumerate(files)
        ]
        result = await engine.service(SiglipService).embed_images(
            images, model=self.served.name, deadline=deadline
        )
        for outcome in result.outcomes:
            if outcome.error is not None:
                raise outcome.error
        vectors = [outcome.vector for outcome in result.outcomes]
        return {"embeddings": np.stack(vectors).astype(np.float32)}  # B x [D] -> [B,D]


class SiglipTextModel(V2Model):
    """Texts in, L2-normalised embeddings out."""

    async def infer(
        self, engine: Engine, tensors: Mapping[str, np.ndarray], *, deadline: float
    ) -> dict[str, np.ndarray]:
        raw = tensors["text"]  # [B] bytes (binary) or str (JSON)
        self.check_batch("text", raw.shape[0])
        texts = []
        for index, value in enumerate(raw):
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise InvalidInputError(
                        f"text[{index}] is not UTF-8 ({error}); send UTF-8 text",
                        field=f"text[{index}]",
                    ) from error
            texts.append(value)
        vectors, _ = await engine.service(SiglipService).embed_texts(
            texts, model=self.served.name, deadline=deadline
        )
        return {"embeddings": vectors.astype(np.float32)}


def siglip_v2_models(engine: Engine) -> dict[str, V2Model]:
    """The v2 models of every SigLIP model served, the first one also as ``siglip``."""
    models: dict[str, V2Model] = {}
    served_models = [served for served in engine.models if isinstance(served, ServedSiglip)]
    for index, served in enumerate(served_models):
        dimension = served.loaded.embedding_dim
        output = (TensorSpec("embeddings", "FP32", (-1, dimension)),)
        names = [served.name, *(["siglip"] if index == 0 else [])]
        for name in names:
            models[name] = SiglipImageModel(
                name=name,
                served=served,
                inputs=(TensorSpec("image_bytes", "BYTES", (-1,)),),
                outputs=output,
            )
            models[f"{name}_text"] = SiglipTextModel(
                name=f"{name}_text",
                served=served,
                inputs=(TensorSpec("text", "BYTES", (-1,)),),
                outputs=output,
            )
    return models
