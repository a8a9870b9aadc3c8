"""Preprocessing on the model's device gives the CPU path's input (issue 18, item 8).

The device path uploads the decoded 8-bit pixels (through :class:`ImageStaging`) and resizes and
normalises them with torch on the device. Here the device is the CPU, so the same code runs without
a GPU: SAM 2's input must be identical to the CPU path's (the same torch arithmetic), SigLIP 2's
identical where Pillow's resize is reproduced exactly and within one 8-bit level otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import fake_sam2_features
from imagefactory import encode
from PIL import Image

from imgembed.models.sam2 import Sam2Features
from imgembed.models.siglip_variants import ImageProcessing
from imgembed.pipelines import sam2_embed, siglip_embed
from imgembed.preprocess.image import DecodedImage, decode_image
from imgembed.runtime.device import DevicePlacement
from imgembed.runtime.staging import ImageStaging
from imgembed.settings import InputLimits

RNG = np.random.default_rng(8)
SIZES = [(1, 1), (2, 3), (48, 64), (480, 640), (1, 3000), (3000, 1), (2, 5000), (2049, 7)]
ONE_LEVEL = (1 / 255) / 0.5  # one 8-bit step after SigLIP's normalisation (std 0.5)


def decoded(height: int, width: int) -> DecodedImage:
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return DecodedImage(pixels, "PNG", "RGB", False)


def converted(mode: str) -> DecodedImage:
    """A grayscale or RGBA file, converted to RGB by the decoder as every input is."""
    rgba = RNG.integers(0, 256, (40, 70, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    return decode_image(encode(image, "PNG"), InputLimits(min_image_side=1))


def cpu_staging() -> ImageStaging:
    return ImageStaging(torch.device("cpu"))


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_sam2_device_path_equals_cpu_path(resize_mode: str, height: int, width: int) -> None:
    image = decoded(height, width)
    options = sam2_embed.Sam2EmbedOptions(resize_mode=resize_mode)  # type: ignore[arg-type]
    on_cpu = sam2_embed.prepare(image, options)
    on_device = sam2_embed.prepare(image, options, cpu_staging())
    assert on_device.pixel_values.shape == (3, 1024, 1024)
    assert on_device.pixel_values.dtype == torch.float32
    assert on_device.mapping == on_cpu.mapping
    torch.testing.assert_close(on_device.pixel_values, on_cpu.pixel_values, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P"])
def test_sam2_device_path_of_converted_inputs(mode: str) -> None:
    image = converted(mode)
    options = sam2_embed.Sam2EmbedOptions()
    on_cpu = sam2_embed.prepare(image, options)
    on_device = sam2_embed.prepare(image, options, cpu_staging())
    torch.testing.assert_close(on_device.pixel_values, on_cpu.pixel_values, rtol=0, atol=1e-6)


FIXRES = ImageProcessing("fixres", 64, 16, None, "bilinear")
NAFLEX = ImageProcessing("naflex", None, 16, 24, "bilinear")


def assert_close_to_processor(
    on_device: siglip_embed.PreparedSiglipImage, on_cpu: siglip_embed.PreparedSiglipImage
) -> None:
    assert on_device.original_hw == on_cpu.original_hw
    assert on_device.reduced_hw == on_cpu.reduced_hw
    assert on_device.spatial_shape == on_cpu.spatial_shape
    assert on_device.pixel_values.shape == on_cpu.pixel_values.shape
    assert on_device.pixel_values.dtype == torch.float32
    difference = (on_device.pixel_values - on_cpu.pixel_values).abs().max().item()
    assert difference <= ONE_LEVEL * 1.0001, difference
    if on_cpu.attention_mask is not None:
        assert on_device.attention_mask is not None
        assert torch.equal(on_device.attention_mask, on_cpu.attention_mask)


@pytest.mark.parametrize("processing", [FIXRES, NAFLEX], ids=["fixres", "naflex"])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_siglip_device_path_is_within_one_level_of_cpu_path(
    processing: ImageProcessing, height: int, width: int
) -> None:
    image = decoded(height, width)
    options = siglip_embed.SiglipEmbedOptions()
    on_cpu = siglip_embed.prepare_image(image, processing, options)
    on_device = siglip_embed.prepare_image(image, processing, options, cpu_staging())
    assert_close_to_processor(on_device, on_cpu)


@pytest.mark.parametrize(("height", "width"), [(64, 300), (64, 20), (64, 64), (64, 4100)])
def test_siglip_device_path_equals_cpu_path_when_one_axis_is_resized(
    height: int, width: int
) -> None:
    """FixRes of an image as high as the model's input: one resampling pass (or none), so the
    device path is Pillow's arithmetic exactly (the reduction included, for 4100 px)."""
    image = decoded(height, width)
    options = siglip_embed.SiglipEmbedOptions()
    on_cpu = siglip_embed.prepare_image(image, FIXRES, options)
    on_device = siglip_embed.prepare_image(image, FIXRES, options, cpu_staging())
    if on_cpu.reduced_hw[0] == height:
        assert torch.equal(on_device.pixel_values, on_cpu.pixel_values)
    else:
        assert_close_to_processor(on_device, on_cpu)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_siglip_device_path_of_converted_inputs(mode: str) -> None:
    image = converted(mode)
    options = siglip_embed.SiglipEmbedOptions()
    for processing in (FIXRES, NAFLEX):
        on_cpu = siglip_embed.prepare_image(image, processing, options)
        on_device = siglip_embed.prepare_image(image, processing, options, cpu_staging())
        assert_close_to_processor(on_device, on_cpu)


def test_intermediate_reduction_on_the_device_equals_pillow_reduce() -> None:
    """A long side over 2048 is box-reduced first; the device reproduces Pillow's reduce."""
    image = decoded(4100, 30)  # k = 3: a partial box at the bottom
    options = siglip_embed.SiglipEmbedOptions()
    processing = ImageProcessing("fixres", 1367, 16, None, "bilinear")  # reduced height: 1367
    on_cpu = siglip_embed.prepare_image(image, processing, options)
    on_device = siglip_embed.prepare_image(image, processing, options, cpu_staging())
    assert on_cpu.reduced_hw == on_device.reduced_hw == (1367, 10)
    difference = (on_device.pixel_values - on_cpu.pixel_values).abs().max().item()
    assert difference <= ONE_LEVEL * 1.0001


class CountingStaging(ImageStaging):
    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.runs = 0

    def run(self, pixels, step):  # type: ignore[no-untyped-def]
        self.runs += 1
        return super().run(pixels, step)


def test_filters_only_pillow_does_stay_on_the_cpu() -> None:
    """A checkpoint resizing with bicubic is prepared by Pillow, exactly, staging or not."""
    processing = ImageProcessing("fixres", 64, 16, None, "bicubic")
    image = decoded(100, 80)
    staging = CountingStaging()
    options = siglip_embed.SiglipEmbedOptions()
    prepared = siglip_embed.prepare_image(image, processing, options, staging)
    assert staging.runs == 0
    expected = siglip_embed.prepare_image(image, processing, options)
    assert torch.equal(prepared.pixel_values, expected.pixel_values)
    assert siglip_embed.prepare_image(image, FIXRES, options, staging) is not None
    assert staging.runs == 1


def test_sam2_encode_takes_a_batch_mixing_host_and_device_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v2 tensors and segment-everything crops arrive on the host beside device-prepared images;
    the encoder gets one batch on its device, in order."""
    seen: list[torch.Tensor] = []

    def fake_encode_images(model: object, batch: torch.Tensor) -> Sam2Features:
        seen.append(batch)
        return fake_sam2_features(batch)

    monkeypatch.setattr(sam2_embed, "encode_images", fake_encode_images)
    prepared = sam2_embed.prepare(decoded(30, 40), sam2_embed.Sam2EmbedOptions(), cpu_staging())
    host = torch.zeros(3, 1024, 1024)
    placement = DevicePlacement(torch.device("cpu"), "float32")
    sam2_embed.encode(None, placement, [prepared.pixel_values, host])  # type: ignore[arg-type]
    (batch,) = seen
    assert batch.shape == (2, 3, 1024, 1024)
    assert torch.equal(batch[0], prepared.pixel_values)
    assert torch.equal(batch[1], host)


@pytest.mark.parametrize(("height", "width", "on_device"), [(2, 16384, True), (2, 16385, False)])
def test_sam2_shrinks_beyond_the_device_limit_are_prepared_on_the_cpu(
    height: int, width: int, on_device: bool
) -> None:
    """CUDA's antialiased resize refuses very large shrink factors: past 16x the CPU path runs."""
    staging = CountingStaging()
    image = decoded(height, width)
    options = sam2_embed.Sam2EmbedOptions()
    prepared = sam2_embed.prepare(image, options, staging)
    assert staging.runs == (1 if on_device else 0)
    expected = sam2_embed.prepare(image, options)
    torch.testing.assert_close(prepared.pixel_values, expected.pixel_values, rtol=0, atol=1e-6)
