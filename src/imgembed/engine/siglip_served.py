"""A SigLIP 2 model as the engine serves it: one batcher for images, one for texts."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imgembed.engine.metrics import Metrics
from imgembed.engine.served import ServedModel
from imgembed.models.siglip_loading import LoadedSiglip
from imgembed.pipelines import siglip_embed
from imgembed.preprocess import siglip_tensor
from imgembed.preprocess.image import DecodedImage
from imgembed.runtime.batcher import DynamicBatcher

logger = logging.getLogger(__name__)

TEXT_SUFFIX = "/text"
"""Appended to a SigLIP model's name for its text batcher's metrics."""


@dataclass(kw_only=True)
class ServedSiglip(ServedModel):
    """A SigLIP 2 model: one batcher for images, one for texts.

    Attributes:
        loaded: Model, tokenizer, image settings and provenance.
        image_batcher: Groups prepared images into batches; created by :meth:`start`.
        text_batcher: Groups tokenised texts into batches; created by :meth:`start`.
    """

    loaded: LoadedSiglip
    image_batcher: DynamicBatcher[siglip_embed.PreparedSiglipImage, np.ndarray] | None = field(
        default=None, repr=False
    )
    text_batcher: DynamicBatcher[torch.Tensor, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.family = "siglip"

    @property
    def takes_device_input(self) -> bool:
        """Images go to the device only where their resize filter has a device version
        (bilinear, the released SigLIP 2 checkpoints'); others are prepared by Pillow on the
        CPU, and ``/v1/models`` says so."""
        return siglip_tensor.supported(self.loaded.image_processing)

    def embed_image_batch(
        self, prepared: list[siglip_embed.PreparedSiglipImage]
    ) -> list[np.ndarray]:
        """``[D]`` float32 unit vectors of prepared images, in one forward pass."""
        embeddings = siglip_embed.encode_images(self.loaded.model, self.placement, prepared)
        vectors = siglip_embed.finish(embeddings)  # [B,D]
        return list(vectors)

    def embed_text_batch(self, input_ids: list[torch.Tensor]) -> list[np.ndarray]:
        """``[D]`` float32 unit vectors of tokenised texts (``[L]`` ids each), in one pass."""
        stacked = torch.stack(input_ids)  # B x [L] -> [B,L]
        embeddings = siglip_embed.encode_texts(self.loaded.model, self.placement, stacked)
        return list(siglip_embed.finish(embeddings))

    def start(self, metrics: Metrics) -> None:
        if self.image_batcher is None:
            self.image_batcher = self._batcher(self.name, self.embed_image_batch, metrics)
        if self.text_batcher is None:
            self.text_batcher = self._batcher(
                self.name + TEXT_SUFFIX, self.embed_text_batch, metrics
            )

    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        return [b for b in (self.image_batcher, self.text_batcher) if b is not None]

    def warm_up(self) -> None:
        """An image pass and a text pass on the device thread's stream, as batches run."""
        blank = DecodedImage(np.zeros((224, 224, 3), np.uint8), "PNG", "RGB", False)
        prepared = siglip_embed.prepare_image(
            blank, self.loaded.image_processing, siglip_embed.SiglipEmbedOptions(), self.staging
        )
        ids = siglip_embed.prepare_texts(
            self.loaded.tokenizer, ["a photo"], max_length=self.loaded.text_max_length
        )
        with self.device_stream.active(), self.device_stream.timed():
            self.embed_image_batch([prepared])
            self.embed_text_batch([ids[0]])

    def describe(self) -> dict[str, Any]:
        variant = self.loaded.variant
        return {
            **self._common_description("siglip-embedding", self.loaded.weights_location),
            "hub_id": variant.hub_id,
            "embedding_dim": self.loaded.embedding_dim,
            "text_max_length": self.loaded.text_max_length,
            "image_processing": dataclasses.asdict(self.loaded.image_processing),
        }
