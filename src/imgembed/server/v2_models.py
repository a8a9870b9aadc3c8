"""The models the Open Inference Protocol (v2) routes expose, named as a Triton export names them.

- ``sam2_encoder``: ``image`` (FP32 ``[B,3,1024,1024]``, resized and ImageNet-normalised, what the
  ONNX encoder takes) or ``image_bytes`` (BYTES ``[B]``, encoded image files; preprocessed here,
  stretch resize) in; ``high_res_feats_0``, ``high_res_feats_1``, ``image_embed`` out, as the
  ONNX encoder names them. Each image is an item of the model's dynamic batcher, so v2 requests
  share forward passes with native ones.
- ``sam2_decoder``: the inputs and outputs of samexporter's decoder graph (see
  :mod:`imgembed.models.sam2_decoder`): ``masks`` FP32 ``[B,3,256,256]`` low-resolution logits
  and ``iou_predictions`` FP32 ``[B,3]``. The features and mask inputs may have batch 1, shared by
  all B prompts; ``mask_input`` and ``has_mask_input`` may be left out (no mask).

The default SAM 2 model answers to these names; every served model also answers to
``{model}_encoder`` and ``{model}_decoder`` (``sam2.1-hiera-large_encoder``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imgembed.engine import Engine, Sam2Service, ServedModel, ServedSam2
from imgembed.errors import InvalidInputError
from imgembed.models.sam2 import (
    HIGH_RES_FEATS_0_SHAPE,
    HIGH_RES_FEATS_1_SHAPE,
    IMAGE_EMBED_SHAPE,
    Sam2Features,
)
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, NUM_MULTIMASK_OUTPUTS, POINT_LABELS
from imgembed.server.v2_tensors import InferRequest, TensorSpec, tensor_from_input
from imgembed.types import ImageBase64, ImageBytes, ImageInput

PLATFORM = "imgembed_pytorch"
"""What model metadata reports as ``platform``."""
MAX_POINTS_PER_PROMPT = 64
"""Most points (clicks, box corners and padding) one decoder prompt may carry."""
MAX_PROMPTS_PER_REQUEST = 64
"""Most decoder prompts per request, the reference mask generator's ``points_per_batch``; each
prompt holds its own copy of the feature maps and the decoder's activations while it decodes."""

_FEATURE_SPECS = (
    TensorSpec("high_res_feats_0", "FP32", (-1, *HIGH_RES_FEATS_0_SHAPE)),
    TensorSpec("high_res_feats_1", "FP32", (-1, *HIGH_RES_FEATS_1_SHAPE)),
    TensorSpec("image_embed", "FP32", (-1, *IMAGE_EMBED_SHAPE)),
)
_MASK_INPUT_SHAPE = (1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)


def _invalid(message: str, field: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, field=field)


@dataclass(frozen=True)
class V2Model(ABC):
    """A model as the v2 routes expose it.

    Attributes:
        name: The v2 model name.
        served: The engine's model that computes it.
        inputs: Input tensors it takes.
        outputs: Output tensors it gives, in response order.
    """

    name: str
    served: ServedModel
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata object."""
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": PLATFORM,
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }

    def config(self) -> dict[str, Any]:
        """The model as Triton's JSON model configuration describes it; ``max_batch_size`` is 0
        because the batch axis is part of every tensor's ``dims``."""

        def described(spec: TensorSpec) -> dict[str, Any]:
            data_type = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
            return {"name": spec.name, "data_type": data_type, "dims": list(spec.shape)}

        return {
            "name": self.name,
            "platform": PLATFORM,
            "max_batch_size": 0,
            "input": [{**described(spec), "optional": spec.optional} for spec in self.inputs],
            "output": [described(spec) for spec in self.outputs],
            "parameters": {
                "imgembed_model": {"string_value": self.served.name},
                "imgembed_compute_dtype": {"string_value": self.served.placement.compute_dtype},
            },
        }

    @property
    def max_batch(self) -> int:
        """Most batch items one request may carry; by default the model's queue size, since
        each item takes a place in its queue."""
        return self.served.spec.batching.max_queue_size

    def read_inputs(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Checks the request's inputs against this model's and returns their values.

        Raises:
            InvalidInputError: An unknown or missing input, or one that does not fit its spec.
        """
        specs = {spec.name: spec for spec in self.inputs}
        for item in request.inputs:
            if item.name not in specs:
                raise _invalid(
                    f"input {item.name!r} is not an input of model {self.name!r}; it takes "
                    f"{list(specs)}",
                    item.name,
                )
        given = {item.name for item in request.inputs}
        for spec in self.inputs:
            if not spec.optional and spec.name not in given:
                raise _invalid(
                    f"model {self.name!r} needs input {spec.name!r} ({spec.datatype} "
                    f"{list(spec.shape)}); the request has {sorted(given)}",
                    spec.name,
                )
        return {item.name: tensor_from_input(item, specs[item.name]) for item in request.inputs}

    def check_batch(self, name: str, batch: int) -> None:
        """Refuses an empty batch or one over :attr:`max_batch`."""
        if batch < 1 or batch > self.max_batch:
            raise _invalid(
                f"input {name!r} has batch {batch}; model {self.name!r} takes 1 to "
                f"{self.max_batch} items per request. Split the request",
                name,
            )

    @abstractmethod
    async def infer(
        self, engine: Engine, tensors: Mapping[str, np.ndarray], *, deadline: float
    ) -> dict[str, np.ndarray]:
        """Computes every output from inputs :meth:`read_inputs` checked.

        Args:
            engine: The engine that runs the model.
            tensors: Input name to values.
            deadline: ``time.monotonic()`` after which queued work is dropped.

        Returns:
            Output name to float32 values, batch first.
        """


class Sam2EncoderModel(V2Model):
    """``sam2_encoder``: images in, the three SAM 2 feature maps out (FP32, ``[B,C,H,W]``)."""

    async def infer(
        self, engine: Engine, tensors: Mapping[str, np.ndarray], *, deadline: float
    ) -> dict[str, np.ndarray]:
        """Encodes ``image`` or ``image_bytes``; returns each feature map as float32 ``[B,...]``."""
        if ("image" in tensors) == ("image_bytes" in tensors):
            raise _invalid(
                f"model {self.name!r} takes exactly one of 'image' (FP32 [B,3,1024,1024], resized "
                "and normalised) or 'image_bytes' (BYTES [B], encoded image files); got "
                f"{sorted(tensors)}",
                "image",
            )
        if "image" in tensors:
            images = tensors["image"]  # [B,3,1024,1024] float32
            self.check_batch("image", images.shape[0])
            pixel_values = [torch.from_numpy(image) for image in images]
        else:
            files = tensors["image_bytes"]  # [B] bytes (binary) or str (base64 in JSON)
            self.check_batch("image_bytes", files.shape[0])
            images_in: list[ImageInput] = [
                ImageBytes(data, field=f"image_bytes[{index}]")
                if isinstance(data, bytes)
                else ImageBase64(data, field=f"image_bytes[{index}]")
                for index, data in enumerate(files)
            ]
            prepared = await engine.service(Sam2Service).prepare_images(
                images_in, resize_mode="stretch", model=self.served.name
            )
            pixel_values = [item.pixel_values for item in prepared]
        features = await engine.service(Sam2Service).encode_pixels(
            pixel_values, model=self.served.name, deadline=deadline
        )
        return await engine.run_cpu(_stack_features, features)


def _stack_features(features: list[Sam2Features]) -> dict[str, np.ndarray]:
    """Per-image ``[1,...]`` features to float32 CPU arrays ``[B,...]`` per name."""
    return {
        spec.name: torch.cat([getattr(item, spec.name) for item in features])
        .to(device="cpu", dtype=torch.float32)
        .numpy()
        for spec in _FEATURE_SPECS
    }


class Sam2DecoderModel(V2Model):
    """``sam2_decoder``: features and prompts in, three low-resolution mask logits each out."""

    @property
    def max_batch(self) -> int:
        """Most prompts one request may carry (they join the model's decoder batcher)."""
        return MAX_PROMPTS_PER_REQUEST

    async def infer(
        self, engine: Engine, tensors: Mapping[str, np.ndarray], *, deadline: float
    ) -> dict[str, np.ndarray]:
        """Decodes B prompts through the model's decoder batcher, with other requests' prompts.

        Returns:
            ``masks`` float32 ``[B,3,256,256]`` low-resolution logits and ``iou_predictions``
            float32 ``[B,3]``.
        """
        coords = tensors["point_coords"]  # [B,N,2] float32, (x, y) in the 1024 frame
        labels = tensors["point_labels"]  # [B,N] float32
        batch, num_points = coords.shape[:2]
        self.check_batch("point_coords", batch)
        if not 1 <= num_points <= MAX_POINTS_PER_PROMPT:
            raise _invalid(
                f"input 'point_coords' has {num_points} points per prompt; send 1 to "
                f"{MAX_POINTS_PER_PROMPT} (for a mask-only prompt send one point labelled -1)",
                "point_coords",
            )
        if labels.shape != (batch, num_points):
            raise _invalid(
                f"input 'point_labels' has shape {list(labels.shape)}; expected "
                f"[{batch},{num_points}] to match point_coords {list(coords.shape)}",
                "point_labels",
            )
        bad = ~np.isin(labels, POINT_LABELS)
        if bad.any():
            index = [int(side) for side in np.argwhere(bad)[0]]
            raise _invalid(
                f"input 'point_labels' has {float(labels[tuple(index)])} at index {index}; labels are "
                "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding",
                "point_labels",
            )
        feature_batches = {spec.name: tensors[spec.name].shape[0] for spec in _FEATURE_SPECS}
        if len(set(feature_batches.values())) != 1 or feature_batches["image_embed"] not in (
            1,
            batch,
        ):
            raise _invalid(
                f"feature inputs have batches {feature_batches}; all three must be 1 (one image "
                f"for every prompt) or {batch} (the batch of point_coords)",
                "image_embed",
            )
        mask_input = tensors.get("mask_input", np.zeros((1, *_MASK_INPUT_SHAPE), np.float32))
        has_mask_input = tensors.get("has_mask_input", np.zeros(1, np.float32))
        for name, array in (("mask_input", mask_input), ("has_mask_input", has_mask_input)):
            if array.shape[0] not in (1, batch):
                raise _invalid(
                    f"input {name!r} has batch {array.shape[0]}; expected 1 (shared by every "
                    f"prompt) or {batch} (the batch of point_coords)",
                    name,
                )
        if not np.isin(has_mask_input, (0.0, 1.0)).all():
            raise _invalid(
                f"input 'has_mask_input' must hold 0 or 1 per prompt, got {has_mask_input.tolist()}",
                "has_mask_input",
            )
        if "mask_input" not in tensors and has_mask_input.any():
            raise _invalid(
                "input 'has_mask_input' is 1 but no 'mask_input' was sent; send the previous "
                "round's mask logits as mask_input [B,1,256,256] or set has_mask_input to 0",
                "mask_input",
            )
        features = Sam2Features(
            image_embed=torch.from_numpy(tensors["image_embed"]),
            high_res_feats_0=torch.from_numpy(tensors["high_res_feats_0"]),
            high_res_feats_1=torch.from_numpy(tensors["high_res_feats_1"]),
        )
        prediction = await engine.service(Sam2Service).decode(
            features,
            torch.from_numpy(coords),
            torch.from_numpy(labels).long(),
            torch.from_numpy(mask_input),
            torch.from_numpy(has_mask_input),
            model=self.served.name,
            deadline=deadline,
        )
        return {
            "masks": prediction.masks.numpy(),
            "iou_predictions": prediction.iou_predictions.numpy(),
        }


def _encoder(name: str, served: ServedSam2) -> Sam2EncoderModel:
    return Sam2EncoderModel(
        name=name,
        served=served,
        inputs=(
            TensorSpec("image", "FP32", (-1, 3, 1024, 1024), optional=True),
            TensorSpec("image_bytes", "BYTES", (-1,), optional=True),
        ),
        outputs=_FEATURE_SPECS,
    )


def _decoder(name: str, served: ServedSam2) -> Sam2DecoderModel:
    return Sam2DecoderModel(
        name=name,
        served=served,
        inputs=(
            TensorSpec("image_embed", "FP32", (-1, *IMAGE_EMBED_SHAPE)),
            TensorSpec("high_res_feats_0", "FP32", (-1, *HIGH_RES_FEATS_0_SHAPE)),
            TensorSpec("high_res_feats_1", "FP32", (-1, *HIGH_RES_FEATS_1_SHAPE)),
            TensorSpec("point_coords", "FP32", (-1, -1, 2)),
            TensorSpec("point_labels", "FP32", (-1, -1)),
            TensorSpec("mask_input", "FP32", (-1, *_MASK_INPUT_SHAPE), optional=True),
            TensorSpec("has_mask_input", "FP32", (-1,), optional=True),
        ),
        outputs=(
            TensorSpec("masks", "FP32", (-1, NUM_MULTIMASK_OUTPUTS, *_MASK_INPUT_SHAPE[1:])),
            TensorSpec("iou_predictions", "FP32", (-1, NUM_MULTIMASK_OUTPUTS)),
        ),
    )


def v2_models(engine: Engine) -> dict[str, V2Model]:
    """Every v2 model name the engine's models answer to, the default model's plain names first."""
    models: dict[str, V2Model] = {}
    sam2_models = [served for served in engine.models if isinstance(served, ServedSam2)]
    for index, served in enumerate(sam2_models):
        if index == 0:
            models["sam2_encoder"] = _encoder("sam2_encoder", served)
            models["sam2_decoder"] = _decoder("sam2_decoder", served)
        for suffix, build in (("encoder", _encoder), ("decoder", _decoder)):
            name = f"{served.name}_{suffix}"
            models[name] = build(name, served)
    return models
