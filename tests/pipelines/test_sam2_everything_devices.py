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
from everything_stubs import DecoderOn, DecoderReachedError, features_on
from imagefactory import gradient_rgb

from imgembed.pipelines.sam2_everything import generate_everything
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams

PARAMS = Sam2EverythingParams(points_per_side=4, points_per_batch=8, stability_score_thresh=0.5)


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
