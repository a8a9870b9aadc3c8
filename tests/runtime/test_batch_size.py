"""Batch sizes picked from the GPU when the configuration leaves them to the engine (issue 18,
item 10), with CUDA's memory queries mocked: a share of the free memory (plus the allocator's
cached blocks) over an item's cost, rounded down to a power of two, within 1..ceiling; CPU sizes
unchanged; a configured size always wins and asks the device nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from imgembed.engine.sam2_served import ServedSam2
from imgembed.engine.served import ServedModel
from imgembed.engine.siglip_served import ServedSiglip
from imgembed.runtime.batch_size import (
    GIBIBYTE,
    MEBIBYTE,
    SAM2_DECODER_MEMORY,
    SAM2_ENCODER_MEMORY,
    SIGLIP_MEMORY,
    BatchMemory,
    batch_size_for_device,
)
from imgembed.runtime.device import DevicePlacement
from imgembed.settings import (
    DECODER_BATCHING,
    DEFAULT_BATCH_SIZE,
    SAM2_ENCODER_BATCH_SIZE_ON_CPU,
    BatchingSettings,
    ModelSpec,
)

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu_memory(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A GPU whose free, total, reserved and allocated bytes the test sets; counts the queries."""
    state = {"free": 0, "total": 80 * GIBIBYTE, "reserved": 0, "allocated": 0, "queries": 0}

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        assert device == CUDA
        state["queries"] += 1
        return state["free"], state["total"]

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: state["allocated"])
    return state


def largest_power_of_two_at_most(value: float) -> int:
    size = 1
    while size * 2 <= value:
        size *= 2
    return size


@pytest.mark.parametrize("free_gib", [6, 14.5, 22.5, 38, 78, 139])
@pytest.mark.parametrize(
    "memory", [SAM2_ENCODER_MEMORY, SAM2_DECODER_MEMORY, SIGLIP_MEMORY], ids=["enc", "dec", "sig"]
)
def test_the_size_is_a_power_of_two_share_of_free_memory_within_the_ceiling(
    gpu_memory: dict[str, int], free_gib: float, memory: BatchMemory
) -> None:
    gpu_memory["free"] = int(free_gib * GIBIBYTE)
    size = batch_size_for_device(CUDA, memory, on_cpu=3)
    fits = memory.share * free_gib * GIBIBYTE / memory.item_bytes
    assert size == min(memory.largest, largest_power_of_two_at_most(fits))
    assert size & (size - 1) == 0
    assert 1 <= size <= memory.largest
    assert size * memory.item_bytes <= max(memory.share * free_gib * GIBIBYTE, memory.item_bytes)


def test_the_documented_sizes_of_common_cards(gpu_memory: dict[str, int]) -> None:
    """What the constants' docstrings (and docs/configuration.md) promise per card, by the free
    memory such a card has once the weights are loaded."""
    expected = {  # free GiB: (encoder, decoder, SigLIP)
        14.5: (2, 32, 16),  # 16 GiB card
        22.5: (4, 64, 32),  # 24 GiB card
        78: (16, 128, 64),  # 80 GiB card
    }
    for free_gib, sizes in expected.items():
        gpu_memory["free"] = int(free_gib * GIBIBYTE)
        got = tuple(
            batch_size_for_device(CUDA, memory, on_cpu=1)
            for memory in (SAM2_ENCODER_MEMORY, SAM2_DECODER_MEMORY, SIGLIP_MEMORY)
        )
        assert got == sizes, free_gib


def test_the_allocators_cached_blocks_count_as_free(gpu_memory: dict[str, int]) -> None:
    memory = BatchMemory(item_bytes=GIBIBYTE, share=1.0, largest=64)
    gpu_memory["free"] = 3 * GIBIBYTE
    assert batch_size_for_device(CUDA, memory, on_cpu=1) == 2
    gpu_memory.update(reserved=6 * GIBIBYTE, allocated=1 * GIBIBYTE)  # 5 GiB cached, unused
    assert batch_size_for_device(CUDA, memory, on_cpu=1) == 8


def test_a_card_too_small_for_one_item_still_batches_one(gpu_memory: dict[str, int]) -> None:
    gpu_memory["free"] = 100 * MEBIBYTE
    assert batch_size_for_device(CUDA, SAM2_ENCODER_MEMORY, on_cpu=4) == 1


def test_the_cpu_keeps_its_size_and_asks_cuda_nothing(gpu_memory: dict[str, int]) -> None:
    assert batch_size_for_device(torch.device("cpu"), SAM2_ENCODER_MEMORY, on_cpu=3) == 3
    assert gpu_memory["queries"] == 0


def served(kind: type[ServedModel], spec: ModelSpec, device: torch.device) -> ServedModel:
    """A served model without weights: only its settings and device are read."""
    return kind(  # type: ignore[call-arg]
        spec=spec,
        placement=DevicePlacement(device, "float32"),
        names=frozenset({spec.name}),
        load_seconds=0.0,
        device_executor=ThreadPoolExecutor(max_workers=1),
        loaded=None,
    )


def test_served_models_pick_by_memory_on_a_gpu_once(gpu_memory: dict[str, int]) -> None:
    gpu_memory["free"] = 78 * GIBIBYTE
    sam2 = served(ServedSam2, ModelSpec("sam2.1-hiera-tiny"), CUDA)
    siglip = served(ServedSiglip, ModelSpec("siglip2-base-patch16-224"), CUDA)
    for model in (sam2, siglip):
        model.fix_batch_sizes()
    assert gpu_memory["queries"] == 3, "picked at once, before anyone asks"
    assert sam2.batching.max_batch_size == 16
    assert sam2.decoder_batching.max_batch_size == 128
    assert sam2.decoder_batching.max_queue_size == DECODER_BATCHING.max_queue_size
    assert siglip.batching.max_batch_size == 64
    queries = gpu_memory["queries"]
    gpu_memory["free"] = 1 * GIBIBYTE  # later reads (/v1/models) keep the size picked at start
    assert (sam2.batching.max_batch_size, sam2.decoder_batching.max_batch_size) == (16, 128)
    assert gpu_memory["queries"] == queries == 3
    for model in (sam2, siglip):
        model.device_executor.shutdown()


def test_sizes_asked_for_before_the_engine_fixes_them_stay_unpicked(
    gpu_memory: dict[str, int],
) -> None:
    """/v1/models may be read while other models still load: a GPU size read then would come from
    memory their weights are about to take."""
    gpu_memory["free"] = 78 * GIBIBYTE
    sam2 = served(ServedSam2, ModelSpec("sam2.1-hiera-tiny"), CUDA)
    assert (sam2.batching.max_batch_size, sam2.decoder_batching.max_batch_size) == (0, 0)
    assert gpu_memory["queries"] == 0
    gpu_memory["free"] = 20 * GIBIBYTE  # the next model's weights arrive
    sam2.fix_batch_sizes()
    assert (sam2.batching.max_batch_size, sam2.decoder_batching.max_batch_size) == (4, 64)
    sam2.device_executor.shutdown()


def test_a_configured_size_wins_and_asks_the_gpu_nothing(gpu_memory: dict[str, int]) -> None:
    spec = ModelSpec(
        "sam2.1-hiera-tiny",
        batching=BatchingSettings(max_batch_size=3),
        decoder_batching=BatchingSettings(max_batch_size=5),
    )
    sam2 = served(ServedSam2, spec, CUDA)
    assert (sam2.batching.max_batch_size, sam2.decoder_batching.max_batch_size) == (3, 5)
    assert gpu_memory["queries"] == 0
    sam2.device_executor.shutdown()


def test_cpu_defaults_are_unchanged(gpu_memory: dict[str, int]) -> None:
    cpu = torch.device("cpu")
    sam2 = served(ServedSam2, ModelSpec("sam2.1-hiera-tiny"), cpu)
    siglip = served(ServedSiglip, ModelSpec("siglip2-base-patch16-224"), cpu)
    assert sam2.batching.max_batch_size == SAM2_ENCODER_BATCH_SIZE_ON_CPU
    assert sam2.decoder_batching.max_batch_size == 1
    assert siglip.batching.max_batch_size == DEFAULT_BATCH_SIZE
    assert gpu_memory["queries"] == 0
    for model in (sam2, siglip):
        model.device_executor.shutdown()
