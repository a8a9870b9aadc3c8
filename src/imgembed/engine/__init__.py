"""The engine: owns the loaded models and the worker pools; usable as a library without HTTP.

    async with Engine(ServerConfig(models=(ModelSpec("sam2.1-hiera-tiny", weights="dummy"),))) as engine:
        result = await engine.service(Sam2Service).embed(ImageBytes(open("cat.jpg", "rb").read()))

:class:`Engine` is the core (:mod:`imgembed.engine.core`: models, batchers, worker pools, image
input) plus one service per registered family (:mod:`imgembed.engine.families`): SAM 2
(:class:`Sam2Service`), SigLIP 2 (:class:`SiglipService`) and collections
(:class:`CollectionService`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from imgembed.engine.collections import AddOutcome, CollectionService, NewItem
from imgembed.engine.core import EngineCore
from imgembed.engine.families import FAMILIES
from imgembed.engine.feature_store import FeatureStore
from imgembed.engine.registry import FamilyService, ModelFamily, WeightsLoader, with_loaders
from imgembed.engine.sam2 import ImageFeatures, Sam2EmbedResult, Sam2SegmentResult, Sam2Service
from imgembed.engine.sam2_everything import Sam2EverythingResult
from imgembed.engine.sam2_served import ServedSam2
from imgembed.engine.served import ServedModel
from imgembed.engine.siglip import ImageOutcome, SiglipImagesResult, SiglipService
from imgembed.engine.siglip_served import ServedSiglip
from imgembed.settings import ServerConfig

__all__ = [
    "FAMILIES",
    "AddOutcome",
    "CollectionService",
    "Engine",
    "EngineCore",
    "FeatureStore",
    "ImageFeatures",
    "ImageOutcome",
    "ModelFamily",
    "NewItem",
    "Sam2EmbedResult",
    "Sam2EverythingResult",
    "Sam2SegmentResult",
    "Sam2Service",
    "ServedModel",
    "ServedSam2",
    "ServedSiglip",
    "SiglipImagesResult",
    "SiglipService",
]

ServiceT = TypeVar("ServiceT", bound=FamilyService)


class Engine(EngineCore):
    """Loads the configured models and serves requests against them, one service per family.

    Args:
        config: What to serve and how.
        families: The model families (all registered ones by default).
        loaders: Weight loaders replacing some families' own, by family name (tests load small
            checkpoints this way).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        families: Sequence[ModelFamily] = FAMILIES,
        loaders: Mapping[str, WeightsLoader] | None = None,
    ) -> None:
        super().__init__(config, with_loaders(families, loaders or {}))
        self._services: dict[type[Any], FamilyService] = {}
        for family in self.families:
            service = family.service(self)
            self._services[type(service)] = service

    def service(self, kind: type[ServiceT]) -> ServiceT:
        """The engine's service of a family: ``engine.service(Sam2Service).embed(...)``.

        Raises:
            KeyError: No registered family provides that service.
        """
        service = self._services.get(kind)
        if service is None:
            raise KeyError(
                f"no family provides {kind.__name__}; the services are "
                f"{[type(service).__name__ for service in self._services.values()]}"
            )
        assert isinstance(service, kind)
        return service

    async def close(self) -> None:
        """Stops the batchers and worker pools (in-flight work finishes first), then closes the
        services."""
        await super().close()
        for service in self._services.values():
            await service.close()
