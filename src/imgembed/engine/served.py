"""A loaded model as the engine serves it: its device thread, batchers, cache and description.

One class per model family: :class:`ServedSam2` (one batcher for the image encoder, one for prompt
decoding, the embedding cache) and :class:`ServedSiglip` (one batcher for images, one for texts).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from imgembed.config import (
    DECODER_BATCH_SIZE_ON_GPU,
    DEFAULT_BATCH_SIZE,
    SAM2_ENCODER_BATCH_SIZE_ON_CPU,
    BatchingSettings,
    ModelSpec,
)
from imgembed.metrics import Metrics
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, Sam2MaskPrediction
from imgembed.models.sam2_loading import LoadedSam2
from imgembed.models.siglip_loading import LoadedSiglip
from imgembed.pipelines import sam2_decode, sam2_embed, siglip_embed
from imgembed.pipelines.sam2_decode import DecodeJob
from imgembed.preprocess.image import DecodedImage
from imgembed.runtime.batcher import DynamicBatcher
from imgembed.runtime.device import DevicePlacement
from imgembed.runtime.feature_cache import FeatureCache

logger = logging.getLogger(__name__)

Family = Literal["sam2", "siglip"]
"""Model families: SAM 2 (features and masks) and SigLIP 2 (image and text embeddings)."""
FAMILY_NAMES: dict[Family, str] = {"sam2": "SAM 2", "siglip": "SigLIP 2"}
TEXT_SUFFIX = "/text"
"""Appended to a SigLIP model's name for its text batcher's metrics."""
DECODER_SUFFIX = "/decoder"
"""Appended to a SAM 2 model's name for its decoder batcher's metrics."""


@dataclass(kw_only=True)
class ServedModel(ABC):
    """What every served model has.

    Attributes:
        spec: The configuration it was loaded from.
        placement: Device and compute precision.
        names: Every name a request may use for it (canonical name, hub id, aliases).
        load_seconds: Wall time the load took.
        device_executor: The single thread that runs this model's forward passes.
        warmup_seconds: Time the start-up warm-up pass took, ``None`` without one.
        preparing: Requests admitted and decoding, not yet in a batcher's queue; they count
            against the queue limit so a burst is refused before it spends CPU on decoding.
    """

    spec: ModelSpec
    placement: DevicePlacement
    names: frozenset[str]
    load_seconds: float
    device_executor: ThreadPoolExecutor = field(repr=False)
    warmup_seconds: float | None = None
    preparing: int = 0

    family: Family = field(init=False)

    @property
    @abstractmethod
    def name(self) -> str:
        """The canonical model name."""

    @property
    @abstractmethod
    def source(self) -> str:
        """What kind of place the weights came from."""

    @property
    @abstractmethod
    def untrained(self) -> bool:
        """Whether the weights are random (``dummy``)."""

    @abstractmethod
    def start(self, metrics: Metrics) -> None:
        """Creates and starts the batchers (on the running event loop) and registers metrics."""

    @abstractmethod
    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        """The started batchers (empty before :meth:`start`)."""

    @abstractmethod
    def warm_up(self) -> None:
        """One forward pass of each kind on blank input (run on the device thread)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The model as ``/v1/models`` lists it."""

    def executors(self) -> list[ThreadPoolExecutor]:
        """The threads this model's batchers run on (shut down after the batchers close)."""
        return [self.device_executor]

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a CUDA device."""
        return self.placement.device.type == "cuda"

    @property
    def batching(self) -> BatchingSettings:
        """The model's batching settings, ``max_batch_size`` 0 resolved for model and device."""
        return self.spec.batching.with_default_batch_size(DEFAULT_BATCH_SIZE)

    def _batcher(
        self,
        name: str,
        run: Callable[[list[Any]], list[Any]],
        metrics: Metrics,
        settings: BatchingSettings | None = None,
        item_size: Callable[[Any], int] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> DynamicBatcher[Any, Any]:
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            name,
            run,
            executor or self.device_executor,
            settings or self.batching,
            on_batch=metrics.batch_observer(name),
            item_size=item_size,
        )
        batcher.start()
        metrics.track_model(
            name,
            queued=lambda: batcher.queued,
            in_flight=lambda: batcher.in_flight,
            load_s=self.load_seconds,
        )
        return batcher

    def _common_description(self, task: str, weights_location: str) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "model",
            "family": self.family,
            "task": task,
            "aliases": sorted(self.names - {self.name}),
            "weights": {
                "source": self.source,
                "location": weights_location,
                "untrained": self.untrained,
            },
            "device": self.placement.device_name,
            "compute_dtype": self.placement.compute_dtype,
            "load_seconds": round(self.load_seconds, 3),
            "warmup_seconds": None
            if self.warmup_seconds is None
            else round(self.warmup_seconds, 3),
            "batching": dataclasses.asdict(self.batching),
        }


@dataclass(kw_only=True)
class ServedSam2(ServedModel):
    """A SAM 2 model: encoder batches, decoder batches and the embedding cache.

    Attributes:
        loaded: Weights, architecture and provenance.
        batcher: Groups encode requests into batches; created by :meth:`start`.
        decoder: Groups prompt decoding from concurrent requests into decoder passes; created by
            :meth:`start`.
        decoder_executor: The decoder's own thread. Decoder passes run beside encoder batches
            instead of queueing behind them, so a click on a cached image is answered in about a
            decoder pass even while other requests' images are being encoded (the two touch
            disjoint parts of the model and only read its weights).
        cache: Encoder features of recent images, by ``image_id``.
        onnx: The ONNX Runtime encoder when the model's backend is ``onnxruntime`` (the
            prompt decoder runs in PyTorch either way).
    """

    loaded: LoadedSam2
    batcher: DynamicBatcher[torch.Tensor, Sam2Features] | None = field(default=None, repr=False)
    decoder: DynamicBatcher[DecodeJob, Sam2MaskPrediction] | None = field(default=None, repr=False)
    decoder_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="imgembed-decoder"),
        repr=False,
    )
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(0), repr=False)
    onnx: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.family = "sam2"

    @property
    def name(self) -> str:
        return self.loaded.variant.name

    @property
    def source(self) -> str:
        return self.loaded.source

    @property
    def untrained(self) -> bool:
        return self.loaded.untrained

    def encode_batch(self, pixel_values: list[torch.Tensor]) -> list[Sam2Features]:
        """Encodes ``[3,1024,1024]`` images in one forward pass; one ``[1,...]`` result each."""
        if self.onnx is not None:
            features = self.onnx.encode(torch.stack(pixel_values))  # B x [3,S,S] -> [B,3,S,S]
        else:
            features = sam2_embed.encode(self.loaded.model, self.placement, pixel_values)
        return [features[index] for index in range(len(pixel_values))]

    @property
    def batching(self) -> BatchingSettings:
        """The encoder's batching settings, ``max_batch_size`` 0 resolved for the device."""
        size = DEFAULT_BATCH_SIZE if self.on_gpu else SAM2_ENCODER_BATCH_SIZE_ON_CPU
        return self.spec.batching.with_default_batch_size(size)

    @property
    def decoder_batching(self) -> BatchingSettings:
        """The decoder's batching settings, ``max_batch_size`` 0 resolved for the device."""
        size = DECODER_BATCH_SIZE_ON_GPU if self.on_gpu else 1
        return self.spec.decoder_batching.with_default_batch_size(size)

    def decode_batch(self, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        """Decodes jobs from many requests; float32 results on the model's device, per job."""
        return sam2_decode.decode_jobs(self.loaded.model, self.placement, jobs)

    def start(self, metrics: Metrics) -> None:
        if self.batcher is None:
            self.batcher = self._batcher(self.name, self.encode_batch, metrics)
        if self.decoder is None:
            self.decoder = self._batcher(
                self.name + DECODER_SUFFIX,
                self.decode_batch,
                metrics,
                settings=self.decoder_batching,
                item_size=lambda job: job.prompts,
                executor=self.decoder_executor,
            )

    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        return [b for b in (self.batcher, self.decoder) if b is not None]

    def executors(self) -> list[ThreadPoolExecutor]:
        return [self.device_executor, self.decoder_executor]

    def warm_up(self) -> None:
        features = self.encode_batch([torch.zeros(3, SAM2_INPUT_SIZE, SAM2_INPUT_SIZE)])[0]
        self.decode_batch(
            [
                DecodeJob(
                    features=features,
                    point_coords=torch.full((1, 1, 2), SAM2_INPUT_SIZE / 2),  # [1,1,2] centre
                    point_labels=torch.ones(1, 1, dtype=torch.int32),  # [1,1]
                    mask_input=torch.zeros(1, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE),
                    has_mask_input=torch.zeros(1),
                )
            ]
        )

    def describe(self) -> dict[str, Any]:
        return {
            **self._common_description("sam2-image-embedding", self.loaded.weights_location),
            "meta_config": self.loaded.variant.meta_config,
            "backend": self.spec.backend,
            "onnx": None if self.onnx is None else self.onnx.describe(),
            "input_size": [SAM2_INPUT_SIZE, SAM2_INPUT_SIZE],
            "decoder_batching": dataclasses.asdict(self.decoder_batching),
            "cache": {"max_bytes": self.cache.max_bytes, **vars(self.cache.stats)},
        }


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
    def name(self) -> str:
        return self.loaded.variant.name

    @property
    def source(self) -> str:
        return self.loaded.source

    @property
    def untrained(self) -> bool:
        return self.loaded.untrained

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
        blank = DecodedImage(np.zeros((224, 224, 3), np.uint8), "PNG", "RGB", False)
        prepared = siglip_embed.prepare_image(
            blank, self.loaded.image_processing, siglip_embed.SiglipEmbedOptions()
        )
        self.embed_image_batch([prepared])
        ids = siglip_embed.prepare_texts(
            self.loaded.tokenizer, ["a photo"], max_length=self.loaded.text_max_length
        )
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
