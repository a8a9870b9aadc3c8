"""The model family registry: what the engine knows of each family, declared in one place.

A family (SAM 2 images, SigLIP 2, collections, ...) is one :class:`ModelFamily` entry in
:data:`imgembed.engine.families.FAMILIES` plus its own modules. The engine looks families up here
and never branches on a family's name: loading a model, resolving a request's model name and
building the family's service all go through the entry.

Families with models (``canonical_name``, ``load_weights`` and ``serve`` set) get one
:class:`~imgembed.engine.served.ServedModel` per configured model; a family without models
(collections) only contributes its service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from imgembed.errors import UnknownModelError
from imgembed.runtime.device import DevicePlacement
from imgembed.settings import ModelSpec

if TYPE_CHECKING:
    from imgembed.engine.core import EngineCore
    from imgembed.engine.served import ServedModel


class FamilyService(Protocol):
    """A family's operations, built once per engine from the engine's core."""

    async def close(self) -> None:
        """Releases what the service opened (called after the models' batchers stop)."""


WeightsLoader = Callable[[ModelSpec, torch.device], Any]
"""Loads a model's weights for a spec onto a device; returns the family's loaded-model object."""

ServeModel = Callable[[Any, ModelSpec, DevicePlacement, float, "EngineCore"], "ServedModel"]
"""Wraps loaded weights as a served model: ``(loaded, spec, placement, load_seconds, core)``."""


@dataclass(frozen=True)
class ModelFamily:
    """One model family, as the engine uses it.

    Attributes:
        name: Short name (``sam2``); ``ServedModel.family`` and ``/v1/models`` carry it.
        display_name: How messages name the family (``SAM 2``).
        service: Builds the family's service (its operations) from the engine's core.
        canonical_name: The canonical model name of any spelling the family accepts (hub id,
            checkpoint or config name); raises :class:`~imgembed.errors.UnknownModelError` for a
            name it does not know. ``None`` for a family without models.
        load_weights: Loads a configured model's weights (hub id, folder, file or ``dummy``).
        serve: Wraps the loaded weights as the served model the engine runs (batchers, device
            thread, caches).
    """

    name: str
    display_name: str
    service: Callable[[EngineCore], FamilyService]
    canonical_name: Callable[[str], str] | None = None
    load_weights: WeightsLoader | None = None
    serve: ServeModel | None = None

    @property
    def has_models(self) -> bool:
        """Whether the family serves models (collections do not)."""
        return self.canonical_name is not None

    def knows(self, model_name: str) -> bool:
        """Whether ``model_name`` is a spelling of one of this family's models."""
        if self.canonical_name is None:
            return False
        try:
            self.canonical_name(model_name)
        except UnknownModelError:
            return False
        return True


def with_loaders(
    families: Sequence[ModelFamily], loaders: Mapping[str, WeightsLoader]
) -> tuple[ModelFamily, ...]:
    """The families with some weight loaders replaced (tests load small checkpoints this way).

    Raises:
        ValueError: A loader names a family that is not in ``families``.
    """
    unknown = set(loaders) - {family.name for family in families}
    if unknown:
        raise ValueError(
            f"loaders given for unknown families {sorted(unknown)}; the families are "
            f"{[family.name for family in families]}"
        )
    return tuple(
        replace(family, load_weights=loaders[family.name]) if family.name in loaders else family
        for family in families
    )


def family_of(families: Sequence[ModelFamily], model_name: str) -> ModelFamily:
    """The family whose models include ``model_name``.

    Raises:
        UnknownModelError: No family knows the name. The first model family's own error is
            raised (SAM 2's, listing its names), as a server that serves it by default would say.
    """
    model_families = [family for family in families if family.has_models]
    for family in model_families:
        if family.knows(model_name):
            return family
    if not model_families:
        raise UnknownModelError(f"unknown model {model_name!r}: no model family is registered")
    assert model_families[0].canonical_name is not None
    model_families[0].canonical_name(model_name)  # raises, naming the family's models
    raise AssertionError(f"{model_families[0].name} both refused and accepted {model_name!r}")
