"""The embedding cache: byte budget, LRU order, identities, counters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgembed.engine.feature_cache import (
    CacheStats,
    FeatureCache,
    features_nbytes,
    image_id_for,
)
from imgembed.models.sam2 import Sam2Features
from imgembed.preprocess.sam2_frame import FrameMapping

MAPPING = FrameMapping.for_image(10, 20, 1024, "stretch")


def features(fill: float = 0.0) -> Sam2Features:
    """Small stand-in tensors: the cache only counts their bytes (100 floats = 400 bytes)."""
    return Sam2Features(
        torch.full((1, 4, 5, 5), fill),
        torch.full((1, 1, 5, 5), fill),
        torch.full((1, 2, 5, 5), fill),
    )


ENTRY_BYTES = features_nbytes(features())


def test_entry_size_is_the_tensor_storage() -> None:
    assert ENTRY_BYTES == (100 + 25 + 50) * 4


def test_hit_after_put_and_miss_before() -> None:
    cache = FeatureCache(10 * ENTRY_BYTES)
    assert cache.get("a") is None
    stored = cache.put("a", features(1.0), MAPPING)
    assert cache.get("a") is stored
    assert cache.stats == CacheStats(hits=1, misses=1, evictions=0, entries=1, bytes=ENTRY_BYTES)


def test_least_recently_used_goes_first_when_the_budget_is_exceeded() -> None:
    cache = FeatureCache(2 * ENTRY_BYTES)
    cache.put("a", features(), MAPPING)
    cache.put("b", features(), MAPPING)
    cache.get("a")  # "b" is now the least recently used
    cache.put("c", features(), MAPPING)
    assert "a" in cache
    assert "c" in cache
    assert "b" not in cache
    assert cache.stats.evictions == 1
    assert cache.stats.bytes == 2 * ENTRY_BYTES


def test_an_entry_larger_than_the_budget_is_not_stored() -> None:
    cache = FeatureCache(ENTRY_BYTES - 1)
    entry = cache.put("a", features(2.0), MAPPING)
    assert entry.features.image_embed[0, 0, 0, 0] == 2.0
    assert len(cache) == 0
    assert cache.stats.bytes == 0


def test_zero_budget_disables_caching_and_negative_is_refused() -> None:
    cache = FeatureCache(0)
    cache.put("a", features(), MAPPING)
    assert cache.get("a") is None
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(-1)


def test_putting_an_existing_id_keeps_one_entry() -> None:
    cache = FeatureCache(10 * ENTRY_BYTES)
    first = cache.put("a", features(1.0), MAPPING)
    second = cache.put("a", features(2.0), MAPPING)
    assert second is first
    assert cache.stats.bytes == ENTRY_BYTES


def test_observer_sees_every_change() -> None:
    seen: list[CacheStats] = []
    cache = FeatureCache(ENTRY_BYTES, on_change=seen.append)
    cache.get("a")
    cache.put("a", features(), MAPPING)
    cache.put("b", features(), MAPPING)
    assert [stats.misses for stats in seen] == [1, 1, 1]
    assert seen[-1].evictions == 1
    assert seen[-1].entries == 1


def test_image_id_depends_on_pixels_shape_and_resize_mode() -> None:
    pixels = np.zeros((4, 6, 3), np.uint8)
    same = image_id_for(pixels.copy(), "stretch")
    assert image_id_for(pixels, "stretch") == same
    assert len(same) == 32
    assert int(same, 16) >= 0
    assert image_id_for(pixels, "letterbox") != same
    assert image_id_for(np.zeros((6, 4, 3), np.uint8), "stretch") != same
    changed = pixels.copy()
    changed[0, 0, 0] = 1
    assert image_id_for(changed, "stretch") != same
