"""What every model family's service shares: the engine's core, and resolving a request's model."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar, cast

from imgembed.engine.core import EngineCore
from imgembed.engine.served import ServedModel

ServedT = TypeVar("ServedT", bound=ServedModel)


class ModelService(Generic[ServedT]):
    """The base of a family's service (:class:`~imgembed.engine.sam2.Sam2Service`, ...).

    Subclasses set :attr:`family_name` (their registry entry's name) and :attr:`served_type`
    (their served model class).

    Args:
        core: The engine's models, pools and image input.
    """

    family_name: ClassVar[str]
    served_type: ClassVar[type[Any]]

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    async def close(self) -> None:
        """Nothing to release: the models' batchers and threads are the core's."""

    def resolve(self, name: str | None, *, field_name: str = "model") -> ServedT:
        """The family's model a request names, or its default one (see
        :meth:`~imgembed.engine.core.EngineCore.resolve_model`).

        Raises:
            UnknownModelError: No such model of the family is served.
        """
        served = self.core.resolve_typed(
            self.served_type, self.family_name, name, field_name=field_name
        )
        return cast(ServedT, served)
