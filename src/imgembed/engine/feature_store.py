"""The feature store: every SAM 2 image's encoder features, owned in one place.

Embed once, decode many. A request's image becomes an ``image_id`` (a hash of its decoded pixels
and resize mode, :func:`~imgembed.engine.feature_cache.image_id_for`); the store answers with the
features under that id from its byte-bounded LRU cache, or has them encoded once: concurrent
requests for the same image wait on the first one's encoder pass instead of running their own. A
later request may name the id alone; once evicted, the id is refused with a message saying to send
the image again.

Like Meta's ``SAM2ImagePredictor``, which keeps the features of the image it was given, but for
many images and many callers at once, and without hidden state: callers get the features back and
pass them on explicitly.

Not thread-safe: the engine uses it from its event loop only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import torch

from imgembed.engine.feature_cache import CachedImage, CacheStats, FeatureCache
from imgembed.errors import NotFoundError
from imgembed.models.sam2 import Sam2Features
from imgembed.preprocess.sam2_frame import FrameMapping
from imgembed.runtime.streams import ready_on_current_stream

logger = logging.getLogger(__name__)

Encode = Callable[[], Awaitable[tuple[Sam2Features, FrameMapping]]]
"""Computes an image's batch-1 features and frame mapping (runs the encoder)."""


class FeatureStore:
    """One SAM 2 model's per-image features: cache, in-flight de-duplication, image ids.

    Args:
        model_name: The model whose features these are, for messages.
        max_bytes: Cache budget in bytes of tensor storage; 0 keeps nothing (every image is
            encoded, though concurrent requests for one image still share a pass).
        dtype: The one dtype every cached map is held in (the model's compute dtype, see
            :func:`~imgembed.pipelines.sam2_embed.in_compute_dtype`), so that an entry's bytes
            are what the dtype says: 16 MiB per image in float32, 8 MiB in bfloat16 or float16.
            Features arriving in another dtype are cast; ``None`` keeps them as they come.
        on_change: Called with the cache's counters after every hit, miss, insert or eviction
            (the engine's metrics hook).
    """

    def __init__(
        self,
        model_name: str,
        max_bytes: int,
        *,
        dtype: torch.dtype | None = None,
        on_change: Callable[[CacheStats], None] | None = None,
    ) -> None:
        self.model_name = model_name
        self.dtype = dtype
        self._cache = FeatureCache(max_bytes, on_change=on_change)
        self._encoding: dict[str, asyncio.Future[CachedImage]] = {}

    @property
    def max_bytes(self) -> int:
        """The cache budget."""
        return self._cache.max_bytes

    @property
    def stats(self) -> CacheStats:
        """Hits, misses, evictions, entries and bytes since start-up."""
        return self._cache.stats

    @property
    def encoding(self) -> int:
        """Images whose encoder pass is running or queued now."""
        return len(self._encoding)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._cache

    def describe(self) -> dict[str, Any]:
        """The budget, the dtype entries are held in, and counters, as ``/v1/models`` lists them."""
        dtype = None if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return {"max_bytes": self.max_bytes, "dtype": dtype, **vars(self.stats)}

    def clear(self) -> None:
        """Forgets every cached image (counters keep counting)."""
        self._cache.clear()

    def cached(self, image_id: str, *, field: str = "image_id") -> CachedImage:
        """The features an earlier response's ``image_id`` names.

        Args:
            image_id: The id.
            field: The request field that carried it, for the error.

        Raises:
            NotFoundError: The id is not (or no longer) cached for this model.
        """
        entry = self._cache.get(image_id)
        if entry is None:
            raise NotFoundError(
                f"image_id {image_id!r} is not in {self.model_name}'s embedding cache (it expired "
                "or was never cached here); send the image again (image_b64, input_image_url or "
                "a file) and use the image_id of that response",
                field=field,
            )
        return entry

    async def get_or_encode(self, image_id: str, encode: Encode) -> tuple[CachedImage, bool]:
        """The features of ``image_id``: cached, being encoded by another request, or encoded now.

        Args:
            image_id: The image's id.
            encode: Runs the encoder for this image; called at most once across concurrent
                callers with the same id (again by a waiter when the running call is cancelled).

        Returns:
            The entry (features on the model's device, all three in :attr:`dtype`) and whether it
            was a hit: found cached, or shared from another request's encoder pass.
        """
        entry = self._cache.get(image_id)
        if entry is not None:
            return entry, True
        while (pending := self._encoding.get(image_id)) is not None:
            try:
                return await asyncio.shield(pending), True
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled, not the one encoding the image
        future: asyncio.Future[CachedImage] = asyncio.get_running_loop().create_future()
        self._encoding[image_id] = future
        try:
            features, mapping = await encode()
            entry = self._cache.put(image_id, _own_storage(features, self.dtype), mapping)
            future.set_result(entry)
        except asyncio.CancelledError:
            future.cancel()  # requests waiting on this one encode the image themselves
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # marks it retrieved when no other request waits on it
            raise
        finally:
            del self._encoding[image_id]
        return entry, False


def _own_storage(features: Sam2Features, dtype: torch.dtype | None) -> Sam2Features:
    """The features in ``dtype`` (``None``: as they are), each with its own storage: a view into a
    batch would keep the whole batch alive, and hold more bytes than the entry counts."""
    tensors = (features.image_embed, features.high_res_feats_0, features.high_res_feats_1)

    def owned(tensor: torch.Tensor) -> bool:
        in_dtype = dtype is None or tensor.dtype == dtype
        return (
            in_dtype and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        )

    if all(owned(tensor) for tensor in tensors):
        return features
    if dtype is not None and any(tensor.dtype != dtype for tensor in tensors):
        logger.debug("casting %s features to the cache's %s", [t.dtype for t in tensors], dtype)
    if features.ready is not None:
        # The copies read what the encoder's stream computed: this thread's stream waits for it
        # (the batcher's device-time wait happens to cover it today; this does not rely on it).
        torch.cuda.current_stream(features.image_embed.device).wait_event(features.ready)
    image_embed, high_res_0, high_res_1 = (
        tensor if owned(tensor) else tensor.to(dtype=dtype or tensor.dtype, copy=True)
        for tensor in tensors
    )
    # The copies are queued on this thread's current stream, not the encoder's: a consumer on
    # another stream (the decoder's) must wait for them, not for the encoder's event.
    copies = (image_embed, high_res_0, high_res_1)
    return Sam2Features(*copies, ready=ready_on_current_stream(copies))
