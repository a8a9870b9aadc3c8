"""Preprocessing on CUDA (issue 18, item 8) against the same code on the CPU.

``tests/pipelines/test_device_preprocess.py`` proves on the CPU that the device path equals the CPU
path; this checks that CUDA computes what that code computes on the CPU: SAM 2's resize within
float tolerance (CUDA's antialiased interpolation sums in another order), SigLIP 2's integer
reproduction of Pillow exactly, and that uploads really come from page-locked memory. Skipped
without a CUDA device (CI has none); ``scripts/gpu_check.sh`` runs it on a lent GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgembed.models.siglip_variants import ImageProcessing
from imgembed.pipelines import sam2_embed, siglip_embed
from imgembed.preprocess.image import DecodedImage
from imgembed.runtime.staging import ImageStaging

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RNG = np.random.default_rng(18)
SIZES = [(1, 1), (2, 3), (480, 640), (1200, 1600), (1, 3000), (3000, 1), (2, 5000), (4100, 30)]
EXTREME = [(2, 16384), (16384, 2), (3, 40000)]
"""SAM 2's largest shrink on the device (16x, sam2_embed.MAX_DEVICE_DOWNSCALE) and one beyond it,
which the CPU path takes."""
FIXRES = ImageProcessing("fixres", 224, 16, None, "bilinear")
NAFLEX = ImageProcessing("naflex", None, 16, 256, "bilinear")


def decoded(height: int, width: int) -> DecodedImage:
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return DecodedImage(pixels, "PNG", "RGB", False)


@pytest.fixture(scope="module")
def on_cuda() -> ImageStaging:
    return ImageStaging(torch.device("cuda", torch.cuda.current_device()))


@pytest.fixture(scope="module")
def on_cpu() -> ImageStaging:
    return ImageStaging(torch.device("cpu"))


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
@pytest.mark.parametrize(("height", "width"), SIZES + EXTREME)
def test_sam2_on_cuda_matches_the_cpu_path(
    on_cuda: ImageStaging, resize_mode: str, height: int, width: int
) -> None:
    image = decoded(height, width)
    options = sam2_embed.Sam2EmbedOptions(resize_mode=resize_mode)  # type: ignore[arg-type]
    expected = sam2_embed.prepare(image, options)
    prepared = sam2_embed.prepare(image, options, on_cuda)
    on_device = max(height, width) / 1024 <= sam2_embed.MAX_DEVICE_DOWNSCALE
    assert prepared.pixel_values.device.type == ("cuda" if on_device else "cpu")
    assert prepared.mapping == expected.mapping
    torch.testing.assert_close(
        prepared.pixel_values.cpu(), expected.pixel_values, rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("processing", [FIXRES, NAFLEX], ids=["fixres", "naflex"])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_siglip_on_cuda_equals_the_same_code_on_the_cpu(
    on_cuda: ImageStaging,
    on_cpu: ImageStaging,
    processing: ImageProcessing,
    height: int,
    width: int,
) -> None:
    image = decoded(height, width)
    options = siglip_embed.SiglipEmbedOptions()
    expected = siglip_embed.prepare_image(image, processing, options, on_cpu)
    prepared = siglip_embed.prepare_image(image, processing, options, on_cuda)
    assert prepared.pixel_values.device.type == "cuda"
    assert torch.equal(prepared.pixel_values.cpu(), expected.pixel_values)


def test_uploads_come_from_page_locked_buffers(on_cuda: ImageStaging) -> None:
    buffer = on_cuda.pool.acquire(3 * 1024 * 1024)
    try:
        assert buffer.is_pinned()
    finally:
        on_cuda.pool.release(buffer)
