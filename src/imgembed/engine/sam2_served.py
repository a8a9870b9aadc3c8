"""A SAM 2 model as the engine serves it: encoder and decoder batchers, the feature store, and
the encoder backend (PyTorch, or ONNX Runtime on an export).

On a GPU the encoder's thread queues its work on a normal-priority CUDA stream and the decoder's
thread on the device's highest-priority stream (:mod:`imgembed.runtime.streams`), so a click's
decoder pass is not queued behind the encoder batches launched before it. Features cross from the
encoder's stream to the decoder's with an event: the decoder's stream waits on the event the
encoder recorded after computing them, and the allocator keeps their memory until the decoder's
work on them is done.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from imgembed.engine.core import EngineCore
from imgembed.engine.feature_store import FeatureStore
from imgembed.engine.metrics import Metrics
from imgembed.engine.served import ServedModel
from imgembed.errors import ImgembedError, ModelLoadError
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, Sam2MaskPrediction
from imgembed.models.sam2_loading import LoadedSam2
from imgembed.pipelines import sam2_decode, sam2_embed
from imgembed.pipelines.sam2_decode import DecodeJob
from imgembed.runtime.batch_size import SAM2_DECODER_MEMORY, SAM2_ENCODER_MEMORY
from imgembed.runtime.batcher import DynamicBatcher
from imgembed.runtime.device import DevicePlacement
from imgembed.runtime.streams import WorkStream
from imgembed.settings import SAM2_ENCODER_BATCH_SIZE_ON_CPU, BatchingSettings, ModelSpec

logger = logging.getLogger(__name__)

DECODER_SUFFIX = "/decoder"
"""Appended to a SAM 2 model's name for its decoder batcher's metrics."""


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
            disjoint parts of the model and only read its weights). On a GPU its work goes to
            :attr:`decoder_stream`.
        features: Encoder features of recent images, by ``image_id`` (cache and in-flight
            de-duplication).
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
    features: FeatureStore = field(default_factory=lambda: FeatureStore("sam2", 0), repr=False)
    onnx: Any = field(default=None, repr=False)
    batching_keys = ("batching", "decoder_batching")

    def __post_init__(self) -> None:
        self.family = "sam2"

    @property
    def takes_device_input(self) -> bool:
        """The ONNX Runtime encoder takes host arrays: its images are preprocessed on the CPU."""
        return self.onnx is None

    def encode_batch(self, pixel_values: list[torch.Tensor]) -> list[Sam2Features]:
        """Encodes ``[3,1024,1024]`` images in one forward pass; one ``[1,...]`` result each, all
        three maps in the compute dtype."""
        if self.onnx is not None:
            features = self.onnx.encode(torch.stack(pixel_values))  # B x [3,S,S] -> [B,3,S,S]
            features = sam2_embed.in_compute_dtype(features, self.placement)
        else:
            features = sam2_embed.encode(self.loaded.model, self.placement, pixel_values)
        return [features[index] for index in range(len(pixel_values))]

    @property
    def batching(self) -> BatchingSettings:
        """The encoder's batching settings, ``max_batch_size`` 0 resolved for the device: off on
        a CPU, by free memory on a GPU (:data:`~imgembed.runtime.batch_size.SAM2_ENCODER_MEMORY`)."""
        return self._resolved(
            "batching", self.spec.batching, SAM2_ENCODER_MEMORY, SAM2_ENCODER_BATCH_SIZE_ON_CPU
        )

    @property
    def decoder_batching(self) -> BatchingSettings:
        """The decoder's batching settings, ``max_batch_size`` 0 resolved for the device: off on
        a CPU, by free memory on a GPU (:data:`~imgembed.runtime.batch_size.SAM2_DECODER_MEMORY`)."""
        return self._resolved(
            "decoder_batching", self.spec.decoder_batching, SAM2_DECODER_MEMORY, 1
        )

    @property
    def decoder_stream(self) -> WorkStream:
        """The decoder thread's device queue: the device's highest-priority CUDA stream on a
        GPU, a no-op on the CPU."""
        return self._stream("decoder", "high")

    def decode_batch(self, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        """Decodes jobs from many requests; float32 results on the model's device, per job."""
        return sam2_decode.decode_jobs(self.loaded.model, self.placement, jobs)

    def run_encoder(self, pixel_values: list[torch.Tensor]) -> list[Sam2Features]:
        """The encoder batcher's work (on the device thread, inside :attr:`device_stream`):
        :meth:`encode_batch`, each image's features in storage of its own (a view would keep
        the whole batch alive in the cache, and the copy belongs on this stream, not on the
        event loop's), published with the event that other streams wait on."""
        batch = self.encode_batch(pixel_values)
        if len(batch) > 1:
            batch = [
                Sam2Features(*(tensor.clone() for tensor in features.tensors)) for features in batch
            ]
        ready = self.device_stream.publish(
            tensor for features in batch for tensor in features.tensors
        )
        return [dataclasses.replace(features, ready=ready) for features in batch]

    def run_decoder(self, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        """The decoder batcher's work (on the decoder's thread, inside :attr:`decoder_stream`):
        waits on each job's features' event and on its prompt tensors' (made on another thread's
        stream: segment-everything builds them on the device), then :meth:`decode_batch`, and
        publishes the answers to the threads that copy or post-process them on the device's
        default stream."""
        stream = self.decoder_stream
        for features in {id(job.features): job.features for job in jobs}.values():
            stream.adopt(features.tensors, features.ready)
        for job in jobs:
            stream.adopt(job.prompt_tensors, job.ready)
        predictions = self.decode_batch(jobs)
        stream.publish(
            tensor
            for prediction in predictions
            for tensor in (prediction.masks, prediction.iou_predictions)
        )
        return predictions

    def start(self, metrics: Metrics) -> None:
        if self.batcher is None:
            self.batcher = self._batcher(self.name, self.run_encoder, metrics)
        if self.decoder is None:
            self.decoder = self._batcher(
                self.name + DECODER_SUFFIX,
                self.run_decoder,
                metrics,
                settings=self.decoder_batching,
                item_size=lambda job: job.prompts,
                executor=self.decoder_executor,
                stream=self.decoder_stream,
            )

    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        return [b for b in (self.batcher, self.decoder) if b is not None]

    def executors(self) -> list[ThreadPoolExecutor]:
        return [self.device_executor, self.decoder_executor]

    def warm_up(self) -> None:
        """An encoder pass on this (the device) thread, then a decoder pass on the decoder's own
        thread, each on its stream: CUDA sets up per thread (cuBLAS handles, kernels' first
        launch), so a decoder warmed up here would leave the first click to pay for its thread's
        set-up."""
        blank = torch.zeros(3, SAM2_INPUT_SIZE, SAM2_INPUT_SIZE)
        with self.device_stream.active(), self.device_stream.timed():
            features = self.run_encoder([blank])[0]
        job = DecodeJob(
            features=features,
            point_coords=torch.full((1, 1, 2), SAM2_INPUT_SIZE / 2),  # [1,1,2] centre
            point_labels=torch.ones(1, 1, dtype=torch.int32),  # [1,1]
            mask_input=torch.zeros(1, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE),
            has_mask_input=torch.zeros(1),
        )
        self.decoder_executor.submit(self._warm_up_decoder, job).result()

    def _warm_up_decoder(self, job: DecodeJob) -> None:
        with self.decoder_stream.active(), self.decoder_stream.timed():
            self.run_decoder([job])

    def describe(self) -> dict[str, Any]:
        return {
            **self._common_description("sam2-image-embedding", self.loaded.weights_location),
            "meta_config": self.loaded.variant.meta_config,
            "backend": self.spec.backend,
            "onnx": None if self.onnx is None else self.onnx.describe(),
            "input_size": [SAM2_INPUT_SIZE, SAM2_INPUT_SIZE],
            "decoder_batching": dataclasses.asdict(self.decoder_batching),
            "cache": self.features.describe(),
        }


def _onnx_encoder(spec: ModelSpec, model_name: str, placement: DevicePlacement) -> Any:
    """The ONNX Runtime backend of ``spec.onnx_dir``, checked to be an export of ``model_name``.

    It runs on the model's device: CUDA device N for a model on ``cuda:N`` (its features bound
    there, for the PyTorch decoder), and ``auto`` means the CPU for a model on the CPU.

    Raises:
        ModelLoadError: No folder given, the onnx extra missing, an export of another model, or
            a requested CUDA or TensorRT provider that is missing or did not start.
    """
    if not spec.onnx_dir:
        raise ModelLoadError(
            f"the onnxruntime backend of {model_name} needs an export: run 'imgembed export onnx "
            f"--model {model_name} --weights ... --out DIR' and set --onnx-dir DIR "
            "(IMGEMBED_ONNX_DIR)"
        )
    try:
        from imgembed.export.onnx_backend import OnnxSam2Backend
    except ImportError as error:
        raise ModelLoadError(
            "the onnxruntime backend needs the onnx extra: pip install 'imgembed[onnx]' "
            f"(or 'imgembed[onnx-gpu]' on a GPU machine, instead of it) ({error})"
        ) from error
    try:
        backend = OnnxSam2Backend.from_dir(
            spec.onnx_dir,
            _onnx_settings(spec, placement),
            output_device=placement.device,
        )
    except ImgembedError as error:
        raise ModelLoadError(f"--onnx-dir {spec.onnx_dir}: {error.message}") from error
    if backend.model_id != model_name:
        raise ModelLoadError(
            f"--onnx-dir {spec.onnx_dir} holds an export of {backend.model_id}, not {model_name}; "
            f"export this model with 'imgembed export onnx --model {model_name}'"
        )
    return backend


def _onnx_settings(spec: ModelSpec, placement: DevicePlacement) -> Any:
    """The model's ``IMGEMBED_ONNX_*`` options as the backend's settings, on its CUDA device;
    ``auto`` becomes ``cpu`` for a model placed on the CPU (its decoder and cache are there)."""
    from imgembed.export.onnx_providers import OnnxRuntimeSettings

    device = placement.device
    on_cuda = device.type == "cuda"
    device_id = (device.index or 0) if on_cuda else 0
    settings = OnnxRuntimeSettings.from_options(spec.onnx, device_id=device_id)
    if not on_cuda and settings.provider == "auto":
        return dataclasses.replace(settings, provider="cpu")
    return settings


def serve_sam2(
    loaded: LoadedSam2,
    spec: ModelSpec,
    placement: DevicePlacement,
    seconds: float,
    core: EngineCore,
) -> ServedSam2:
    """Wraps loaded SAM 2 weights as a served model with its feature store and backend."""
    variant = loaded.variant
    names = {variant.name, variant.hub_id, variant.meta_checkpoint, variant.meta_config}
    names.add(variant.meta_config.rsplit("/", 1)[-1])
    if spec.alias:
        names.add(spec.alias)
    onnx = _onnx_encoder(spec, variant.name, placement) if spec.backend == "onnxruntime" else None
    return ServedSam2(
        loaded=loaded,
        spec=spec,
        placement=placement,
        names=frozenset(names),
        load_seconds=seconds,
        device_executor=core.device_thread(spec),
        features=FeatureStore(
            variant.name,
            core.config.cache_bytes,
            dtype=placement.torch_dtype,
            on_change=core.metrics.cache_observer(variant.name),
        ),
        onnx=onnx,
    )
