"""The embedding cache: encoder features by image content, least recently used out first.

Encode once, decode many. Every embed or segment request stores its image's features here under an
``image_id`` derived from the decoded pixels and the resize mode (so the same picture sent as a file,
as base64 or by URL gets the same id), and a later request that names the ``image_id``, or sends
the same image again, skips the encoder.

The budget is in bytes of tensor storage; inserting past it evicts the least recently used entries.
Entries live on the model's device in its compute dtype, exactly as the decoder consumes them.

Not thread-safe: the engine touches it from its event loop only.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgembed.models.sam2 import Sam2Features
from imgembed.preprocess.sam2_frame import FrameMapping

logger = logging.getLogger(__name__)

IMAGE_ID_HEX_CHARS = 32
"""Length of an ``image_id``: 128 bits of a BLAKE2b digest, in hex."""


def image_id_for(pixels: np.ndarray, resize_mode: str) -> str:
    """The cache identity of a decoded image under a resize mode.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB, after EXIF orientation.
        resize_mode: How the image becomes the encoder input (the features differ per mode).

    Returns:
        32 lowercase hex characters.
    """
    digest = hashlib.blake2b(digest_size=IMAGE_ID_HEX_CHARS // 2)
    digest.update(f"{pixels.shape[0]}x{pixels.shape[1]}:{resize_mode}:".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedImage:
    """Features of one image and how its pixels map into the encoder frame.

    Attributes:
        image_id: The cache identity (see :func:`image_id_for`).
        features: Batch-1 features on the model's device, in its compute dtype.
        mapping: Original-pixel to 1024-frame mapping.
        nbytes: Bytes of tensor storage the entry holds.
    """

    image_id: str
    features: Sam2Features
    mapping: FrameMapping
    nbytes: int


def features_nbytes(features: Sam2Features) -> int:
    """Bytes of storage held by the three feature tensors."""
    tensors = (features.image_embed, features.high_res_feats_0, features.high_res_feats_1)
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@dataclass
class CacheStats:
    """Counters since start-up and the current fill."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class FeatureCache:
    """An LRU cache of one model's encoder features, bounded in bytes.

    Args:
        max_bytes: Budget for tensor storage; 0 disables caching (every lookup misses).
        on_change: Called after each hit, miss, insert or eviction with the current stats (the
            engine's metrics hook).
    """

    def __init__(
        self, max_bytes: int, *, on_change: Callable[[CacheStats], None] | None = None
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._stats = CacheStats()
        self._on_change = on_change

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        return CacheStats(**vars(self._stats))

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, image_id: str) -> CachedImage | None:
        """The entry for ``image_id``, marked most recently used; ``None`` (a miss) if absent."""
        entry = self._entries.get(image_id)
        if entry is None:
            self._stats.misses += 1
        else:
            self._entries.move_to_end(image_id)
            self._stats.hits += 1
        self._notify()
        return entry

    def put(self, image_id: str, features: Sam2Features, mapping: FrameMapping) -> CachedImage:
        """Stores features, evicting least recently used entries until the budget holds.

        An entry larger than the whole budget is not stored (the returned object is still usable).

        Returns:
            The entry (the existing one, refreshed, when ``image_id`` was already cached).
        """
        existing = self._entries.get(image_id)
        if existing is not None:
            self._entries.move_to_end(image_id)
            return existing
        entry = CachedImage(image_id, features, mapping, features_nbytes(features))
        if entry.nbytes > self.max_bytes:
            return entry
        while self._entries and self._stats.bytes + entry.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._stats.bytes -= evicted.nbytes
            self._stats.evictions += 1
            logger.debug("evicted image %s (%d bytes)", evicted.image_id, evicted.nbytes)
        self._entries[image_id] = entry
        self._stats.bytes += entry.nbytes
        self._stats.entries = len(self._entries)
        self._notify()
        return entry

    def clear(self) -> None:
        """Drops every entry (counters keep counting)."""
        self._entries.clear()
        self._stats.bytes = 0
        self._stats.entries = 0
        self._notify()

    def _notify(self) -> None:
        self._stats.entries = len(self._entries)
        if self._on_change is not None:
            self._on_change(self.stats)
