"""Segment everything works on the model's device, not the features' (issue 18, item 1).

With the ONNX Runtime encoder the features come on the CPU while the PyTorch decoder answers on
CUDA; indexing CPU prompts with a CUDA mask raises. Without a GPU, ``meta`` stands in for the
other device: features on ``meta`` with a decoder on the CPU run to the end, and a decoder on
``meta`` with features on the CPU is handed its prompts on ``meta``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import fake_decode
from imagefactory import gradient_rgb

from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.pipelines.sam2_everything import generate_everything
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams

PARAMS = Sam2EverythingParams(points_per_side=4, points_per_batch=8, stability_score_thresh=0.5)


def features_on(device: str) -> Sam2Features:
    """Batch-1 features of the real shapes (zeros) on ``device``."""
    return Sam2Features(
        image_embed=torch.zeros(1, 256, 64, 64, device=device),
        high_res_feats_0=torch.zeros(1, 32, 256, 256, device=device),
        high_res_feats_1=torch.zeros(1, 64, 128, 128, device=device),
    )


class DecoderOn:
    """A decoder stub on ``device``: records where its inputs were, answers :func:`fake_decode`'s
    masks there (``meta`` answers nothing: it raises :class:`DecoderReachedError` after recording)."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.input_devices: list[set[str]] = []

    def __call__(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: bool,
    ) -> Sam2MaskPrediction:
        prompts = (point_coords, point_labels, mask_input, has_mask_input)
        self.input_devices.append({tensor.device.type for tensor in prompts})
        if self.device.type == "meta":
            raise DecoderReachedError
        answer = fake_decode(
            features_on("cpu"),
            point_coords.cpu(),
            point_labels.cpu(),
            mask_input.cpu(),
            has_mask_input.cpu(),
            multimask_output=multimask_output,
            clamp=False,
        )
        return Sam2MaskPrediction(
            answer.masks.to(self.device), answer.iou_predictions.to(self.device)
        )


class DecoderReachedError(Exception):
    """Raised by a ``meta`` decoder once it has seen its inputs."""


def test_features_on_another_device_than_the_decoder_run_to_the_end() -> None:
    image = gradient_rgb(96, 128)
    decoder = DecoderOn("cpu")
    result = generate_everything(
        image, lambda crop: features_on("meta"), decoder, PARAMS, device=torch.device("cpu")
    )
    assert decoder.input_devices, "the decoder ran"
    assert all(devices == {"cpu"} for devices in decoder.input_devices)
    assert result.records, "the fake decoder's discs are found"
    assert result.prompts == 16
    for record in result.records:
        mask = np.asarray(record.segmentation)
        assert mask.shape == (96, 128)
        assert record.area == int(mask.sum()) > 0


def test_prompts_are_made_on_the_decoders_device_not_the_features() -> None:
    decoder = DecoderOn("meta")
    with pytest.raises(DecoderReachedError):
        generate_everything(
            gradient_rgb(96, 128),
            lambda crop: features_on("cpu"),  # ONNX Runtime's features, on the host
            decoder,
            PARAMS,
            device=torch.device("meta"),  # the PyTorch decoder's device (CUDA on a GPU)
        )
    assert decoder.input_devices == [{"meta"}]


def test_without_a_device_the_features_device_is_used() -> None:
    decoder = DecoderOn("cpu")
    generate_everything(gradient_rgb(64, 64), lambda crop: features_on("cpu"), decoder, PARAMS)
    assert all(devices == {"cpu"} for devices in decoder.input_devices)
