"""SAM 2's real encoder in reduced precision, on the CPU through CPU autocast (issue 18, item 5):
the three feature maps leave the encoder in one dtype, the feature store holds 8 MiB per image in
bfloat16 and 16 MiB in float32, masks decode from bfloat16 features, and a ``dtype: float32``
response computed in bfloat16 carries bfloat16 values and says ``compute_dtype: bfloat16``.

Random weights of the real architecture (``dummy``): the same on every engine built here, so the
float32 engine is the reference. Each engine encodes the one image once (the cache serves the rest).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.engine import Engine, Sam2Service
from imgembed.engine.feature_cache import features_nbytes
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features, encode_images
from imgembed.models.sam2_loading import load_sam2
from imgembed.pipelines import sam2_embed
from imgembed.pipelines.sam2_embed import Sam2EmbedOptions
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.runtime.device import choose_placement
from imgembed.settings import ModelSpec, ServerConfig
from imgembed.types import ImageBytes

MODEL = "sam2.1-hiera-tiny"
MIB = 1024 * 1024
PNG = encode(Image.fromarray(gradient_rgb(96, 128)), "PNG")
BFLOAT16_COMPUTE_TOLERANCE = 5e-2
"""Relative L2 error of bfloat16-computed features against float32 ones (measured at most 1.6e-2
on these random weights, on image_embed)."""


def maps(features: Sam2Features) -> tuple[torch.Tensor, ...]:
    return (features.image_embed, features.high_res_feats_0, features.high_res_feats_1)


def test_the_encoder_gives_one_dtype_under_autocast() -> None:
    loaded = load_sam2(MODEL, "dummy", device=torch.device("cpu"))
    placement = choose_placement("cpu", "bfloat16")
    pixels = torch.randn(
        3, SAM2_INPUT_SIZE, SAM2_INPUT_SIZE, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        with placement.autocast():
            raw = encode_images(loaded.model, pixels[None])  # [3,S,S] -> [1,3,S,S]
        # The cause: image_embed adds a float32 parameter to bfloat16 features.
        assert raw.image_embed.dtype == torch.float32
        assert raw.high_res_feats_0.dtype == torch.bfloat16
        features = sam2_embed.encode(loaded.model, placement, [pixels])
    assert {tensor.dtype for tensor in maps(features)} == {torch.bfloat16}
    assert features_nbytes(features) == 8 * MIB
    torch.testing.assert_close(features.image_embed, raw.image_embed.to(torch.bfloat16))


class Running:
    """An engine on its own event loop, called synchronously."""

    def __init__(self, compute_dtype: str) -> None:
        spec = ModelSpec(
            MODEL, weights="dummy", device="cpu", compute_dtype=compute_dtype, warmup=False
        )
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(ServerConfig(models=(spec,)))
        self.loop.run_until_complete(self.engine.start())
        self.service = self.engine.service(Sam2Service)
        self.store = self.engine.models[0].features  # type: ignore[attr-defined]

    def run(self, coroutine: object) -> object:
        return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Running]]:
    running = {dtype: Running(dtype) for dtype in ("float32", "bfloat16")}
    yield running
    for engine in running.values():
        engine.close()


def embed(running: Running) -> object:
    return running.run(
        running.service.embed(ImageBytes(PNG), options=Sam2EmbedOptions(dtype="float32"))
    )


def test_the_store_holds_one_dtype_and_counts_its_bytes(engines: dict[str, Running]) -> None:
    for compute_dtype, per_image in (("float32", 16 * MIB), ("bfloat16", 8 * MIB)):
        running = engines[compute_dtype]
        result = embed(running)
        entry = running.store.cached(result.image_id)  # type: ignore[attr-defined]
        assert {tensor.dtype for tensor in maps(entry.features)} == {getattr(torch, compute_dtype)}
        assert entry.nbytes == running.store.stats.bytes == per_image
        assert running.store.describe()["dtype"] == compute_dtype


def test_float32_features_from_bfloat16_compute_are_bfloat16_values(
    engines: dict[str, Running],
) -> None:
    exact = embed(engines["float32"])
    reduced = embed(engines["bfloat16"])
    assert reduced.model.placement.compute_dtype == "bfloat16"  # type: ignore[attr-defined]
    for name, array in reduced.embedding.arrays.items():  # type: ignore[attr-defined]
        assert array.dtype == np.float32
        widened = torch.from_numpy(array).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(array, widened, err_msg=f"{name} is not bfloat16's values")
        reference = exact.embedding.arrays[name]  # type: ignore[attr-defined]
        error = np.linalg.norm(array - reference) / np.linalg.norm(reference)
        assert 0 < error < BFLOAT16_COMPUTE_TOLERANCE, name


def test_masks_decode_from_bfloat16_features(engines: dict[str, Running]) -> None:
    objects = [
        SegmentObject(points=np.array([[40.0, 30.0]]), labels=np.ones(1, np.int32)),
        SegmentObject(
            points=np.zeros((0, 2)),
            labels=np.zeros(0, np.int32),
            box=np.array([10.0, 10.0, 90.0, 70.0]),
        ),
    ]
    results = {}
    for dtype, running in engines.items():
        image_id = embed(running).image_id  # type: ignore[attr-defined]
        results[dtype] = running.run(running.service.segment(None, objects, image_id=image_id))
    reduced, exact = results["bfloat16"], results["float32"]
    for ours, reference in zip(reduced.objects, exact.objects, strict=True):  # type: ignore[attr-defined]
        assert ours.masks.shape == reference.masks.shape == (3, 96, 128)
        assert np.isfinite(ours.scores).all()
        np.testing.assert_allclose(ours.scores, reference.scores, atol=0.1)
