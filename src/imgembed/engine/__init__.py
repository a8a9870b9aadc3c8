"""The engine: owns the loaded models and the worker pools; usable as a library without HTTP.

    async with Engine(ServerConfig(models=(ModelSpec("sam2.1-hiera-tiny", weights="dummy"),))) as engine:
        result = await engine.sam2_embed(ImageBytes(open("cat.jpg", "rb").read()))

:class:`Engine` is the core (:mod:`imgembed.engine.core`: models, batchers, caches, worker pools,
image input) plus task methods per model family (:mod:`imgembed.engine.sam2`,
:mod:`imgembed.engine.sam2_everything`, :mod:`imgembed.engine.siglip`, :mod:`imgembed.engine.collections`).
"""

from __future__ import annotations

from imgembed.engine.collections import AddOutcome, CollectionTasks, NewItem
from imgembed.engine.core import EngineCore
from imgembed.engine.sam2 import Sam2EmbedResult, Sam2SegmentResult
from imgembed.engine.sam2_everything import Sam2EverythingResult, Sam2EverythingTasks
from imgembed.engine.served import ServedModel, ServedSam2, ServedSiglip
from imgembed.engine.siglip import ImageOutcome, SiglipImagesResult

__all__ = [
    "AddOutcome",
    "Engine",
    "EngineCore",
    "ImageOutcome",
    "NewItem",
    "Sam2EmbedResult",
    "Sam2EverythingResult",
    "Sam2SegmentResult",
    "ServedModel",
    "ServedSam2",
    "ServedSiglip",
    "SiglipImagesResult",
]


class Engine(Sam2EverythingTasks, CollectionTasks):
    """Loads the configured models and serves requests against them."""
