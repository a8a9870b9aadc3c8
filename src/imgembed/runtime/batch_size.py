"""Batch sizes picked from the device when the configuration leaves them to the engine (0).

On a CPU the sizes are fixed (what the CPU benchmarks measured best). On a GPU the largest batch
that helps depends on the device's memory: a 16 GiB card and an 80 GiB one should not both get 4
images per encoder pass. :func:`batch_size_for_device` divides a share of the memory free when
the model starts (after every configured model's weights are loaded) by what one item of a batch
costs, takes the largest power of two at most that (cuDNN's autotuner and the batcher's padding-free
batches both like few distinct sizes), and keeps it between 1 and a ceiling beyond which a batch
only adds latency. The costs are estimates from tensor sizes, marked below; a size set in the
configuration always wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

MEBIBYTE = 1024 * 1024
GIBIBYTE = 1024 * MEBIBYTE


@dataclass(frozen=True)
class BatchMemory:
    """What one item of a batch costs in device memory, and how much of the device batches get.

    Attributes:
        item_bytes: Peak working memory one item adds to a forward pass (activations, not
            weights).
        share: Fraction of the device memory free at start-up that one batch may use; the rest
            is left to the other batchers, the feature cache, segment-everything's
            post-processing and the allocator's fragmentation.
        largest: Ceiling: a larger batch only makes every request in it wait longer.
    """

    item_bytes: int
    share: float
    largest: int


SAM2_ENCODER_MEMORY = BatchMemory(item_bytes=GIBIBYTE, share=0.25, largest=16)
"""SAM 2's image encoder, per 1024x1024 image under bfloat16 autocast. Estimate: Hiera-L's first
stage holds 256x256 tokens of 144 channels (18 MiB a tensor, 72 MiB through its 4x MLP), the FPN
256-channel maps and the output features (16 MiB in float32) come on top; 1 GiB leaves room for
the largest variant and for float32 compute. An 80 GiB card gets 16, a 24 GiB card 4, 16 GiB 2."""

SAM2_DECODER_MEMORY = BatchMemory(item_bytes=32 * MEBIBYTE, share=0.10, largest=256)
"""SAM 2's prompt decoder, per prompt: the features repeated per prompt in float32 (``image_embed``
4 MiB, the upscaling's 128x128x64 and 256x256x32 maps 4 + 8 MiB) plus the transformer's and the
masks' activations. An 80 GiB card gets 128 prompts per pass, a 24 GiB card 64 (the size used
before it depended on the device), 16 GiB 32."""

SIGLIP_MEMORY = BatchMemory(item_bytes=64 * MEBIBYTE, share=0.10, largest=64)
"""SigLIP 2's towers, per image (texts cost less and share the size): so400m at 512x512 holds 1024
tokens of 1152 channels (2.3 MiB a tensor, 8.4 MiB through its 4304-wide MLP) per layer, attention
included. An 80 GiB card gets 64, a 24 GiB card 32, 16 GiB 16."""


def batch_size_for_device(device: torch.device, memory: BatchMemory, on_cpu: int) -> int:
    """The batch size to use when the configuration leaves it to the engine.

    Args:
        device: Where the model runs.
        memory: What one item costs and what share of the device batches may use.
        on_cpu: The size on a CPU (or any device other than CUDA).

    Returns:
        ``on_cpu`` off CUDA; on CUDA the largest power of two at most
        ``memory.share * free / memory.item_bytes``, within 1..``memory.largest``, where ``free``
        is the device memory free now (``torch.cuda.mem_get_info``) plus the caching allocator's
        reserved but unused blocks.
    """
    if device.type != "cuda":
        return on_cpu
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    usable = min(free + max(cached, 0), total)
    fits = int(memory.share * usable // memory.item_bytes)
    size = 1 << (fits.bit_length() - 1) if fits >= 1 else 1  # largest power of two <= fits
    size = max(1, min(size, memory.largest))
    logger.info(
        "%s: %.1f of %.1f GiB free; batches of up to %d (%.0f%% of it at %d MiB an item)",
        device,
        usable / GIBIBYTE,
        total / GIBIBYTE,
        size,
        memory.share * 100,
        memory.item_bytes // MEBIBYTE,
    )
    return size
