"""What only a GPU can confirm (issue 18): the engine on CUDA against the same engine on the CPU.

Every test here needs a CUDA device and is skipped without one (CI has none); the device check
``scripts/gpu_check.sh`` runs this folder on a lent GPU. Weights are the ``dummy`` ones (seeded
random, the same on both devices), so the CPU float32 engine is the reference: correctness on the
CPU is proven against Meta's and transformers' implementations by the parity tests.

``IMGEMBED_GPU_TESTS_DRY_RUN=1`` runs the same tests with the "GPU" engines on the CPU, to check
the tests' own plumbing before a lent GPU's minutes are spent on them; the checks that only mean
something on CUDA skip then.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from imgembed.engine import Engine, Sam2Service, SiglipService
from imgembed.pipelines.sam2_embed import Sam2EmbedOptions
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.settings import ModelSpec, ServerConfig
from imgembed.types import ImageBytes

DRY_RUN = os.environ.get("IMGEMBED_GPU_TESTS_DRY_RUN") == "1"
GPU = "cpu" if DRY_RUN else "cuda"
pytestmark = pytest.mark.skipif(
    not (DRY_RUN or torch.cuda.is_available()), reason="needs a CUDA GPU"
)
only_on_cuda = pytest.mark.skipif(DRY_RUN, reason="dry run on the CPU: checks CUDA itself")

SAM2 = "sam2.1-hiera-tiny"
SIGLIP = "siglip2-base-patch16-224"
HEIGHT, WIDTH = 480, 640


def photo(seed: int = 0) -> bytes:
    """A PNG of smooth shapes on a textured background, so masks have structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = rng.integers(0, 60, (HEIGHT, WIDTH, 3)).astype(np.float64)
    image[(x - 200) ** 2 + (y - 220) ** 2 < 110**2] += [180, 40, 20]
    image[(x > 380) & (x < 600) & (y > 90) & (y < 360)] += [20, 150, 190]
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class Running:
    """An engine on its own event loop, called synchronously."""

    def __init__(self, *specs: ModelSpec) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(ServerConfig(models=specs))
        self.loop.run_until_complete(self.engine.start())

    def run(self, coroutine: object) -> object:
        return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


def engine_on(device: str, compute_dtype: str = "auto") -> Running:
    return Running(
        ModelSpec(SAM2, weights="dummy", device=device, compute_dtype=compute_dtype),
        ModelSpec(SIGLIP, weights="dummy", device=device, compute_dtype=compute_dtype),
    )


@pytest.fixture(scope="module")
def cpu() -> Iterator[Running]:
    running = engine_on("cpu")
    yield running
    running.close()


@pytest.fixture(scope="module")
def gpu() -> Iterator[Running]:
    running = engine_on(GPU)
    yield running
    running.close()


@pytest.fixture(scope="module")
def gpu_float32() -> Iterator[Running]:
    running = engine_on(GPU, "float32")
    yield running
    running.close()


def features(running: Running) -> tuple[dict[str, np.ndarray], str]:
    """The photo's SAM 2 features as float32 ``[C,H,W]`` arrays, and its ``image_id``."""
    result = running.run(
        running.engine.service(Sam2Service).embed(
            ImageBytes(photo()), options=Sam2EmbedOptions(dtype="float32")
        )
    )
    return result.embedding.arrays, result.image_id  # type: ignore[attr-defined]


def relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


@only_on_cuda
def test_gpu_placement_is_indexed_and_native_bfloat16(gpu: Running) -> None:
    served = gpu.engine.models[0]
    placement = served.placement  # type: ignore[attr-defined]
    assert placement.device.type == "cuda"
    assert placement.device.index is not None
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert placement.compute_dtype == ("bfloat16" if native else "float16")
    metrics = gpu.engine.metrics.render(gpu.engine.device_memory()).decode()
    assert f'device="cuda:{placement.device.index}"' in metrics


def test_sam2_float32_on_the_gpu_matches_the_cpu(cpu: Running, gpu_float32: Running) -> None:
    (expected, _), (got, _) = features(cpu), features(gpu_float32)
    for name, reference in expected.items():
        assert relative_l2(got[name], reference) < 1e-3, name


def test_sam2_default_gpu_precision_stays_close_to_float32(cpu: Running, gpu: Running) -> None:
    (expected, _), (got, image_id) = features(cpu), features(gpu)
    for name, reference in expected.items():
        assert relative_l2(got[name], reference) < 5e-2, name
    store = gpu.engine.models[0].features  # type: ignore[attr-defined]
    cached = store.cached(image_id).features
    maps = (cached.image_embed, cached.high_res_feats_0, cached.high_res_feats_1)
    assert len({tensor.dtype for tensor in maps}) == 1, [tensor.dtype for tensor in maps]


def test_segment_masks_on_the_gpu_agree_with_the_cpu(cpu: Running, gpu: Running) -> None:
    objects = [
        SegmentObject(points=np.array([[200.0, 220.0]]), labels=np.ones(1, np.int32)),
        SegmentObject(
            points=np.zeros((0, 2)),
            labels=np.zeros(0, np.int32),
            box=np.array([380.0, 90.0, 600.0, 360.0]),
        ),
    ]
    results = [
        running.run(running.engine.service(Sam2Service).segment(ImageBytes(photo()), objects))
        for running in (cpu, gpu)
    ]
    for on_cpu, on_gpu in zip(results[0].objects, results[1].objects, strict=True):  # type: ignore[attr-defined]
        assert on_gpu.masks.shape == on_cpu.masks.shape
        assert (on_gpu.masks == on_cpu.masks).mean() > 0.99


def test_segment_everything_runs_on_the_gpu(gpu: Running) -> None:
    # The default 32x32 grid on a GPU; a small one in a CPU dry run, which is only plumbing.
    params = Sam2EverythingParams(points_per_side=4 if DRY_RUN else 32)
    result = gpu.run(
        gpu.engine.service(Sam2Service).segment_everything(ImageBytes(photo()), params=params)
    )
    assert result.everything.timings_ms["decode"] > 0  # type: ignore[attr-defined]


def test_siglip_on_the_gpu_matches_the_cpu(cpu: Running, gpu: Running) -> None:
    texts = ["a red circle", "a blue square"]
    vectors = [
        running.run(running.engine.service(SiglipService).embed_texts(texts))[0]  # type: ignore[index]
        for running in (cpu, gpu)
    ]
    cosines = (vectors[0] * vectors[1]).sum(axis=1)
    assert cosines.min() > 0.99
    images = [
        running.run(running.engine.service(SiglipService).embed_images([ImageBytes(photo(seed=3))]))
        .outcomes[0]
        .vector  # type: ignore[attr-defined]
        for running in (cpu, gpu)
    ]
    assert float(images[0] @ images[1]) > 0.99


@only_on_cuda
def test_ui_export_copy_does_not_grow_gpu_memory(gpu: Running) -> None:
    from imgembed.export.decoder_cache import host_copy

    model = gpu.engine.models[0].loaded.model  # type: ignore[attr-defined]
    weights_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    copied = host_copy(model)
    assert next(copied.parameters()).device.type == "cpu"
    assert torch.cuda.max_memory_allocated() - before < 0.05 * weights_bytes
