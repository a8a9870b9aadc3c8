"""The registered model families, in the order ``/v1/models`` and defaults follow.

Adding a family is one entry here plus its own modules (its registry entry, served model and
service in ``engine/``, its model math in ``models/``, its pipeline in ``pipelines/``, its request
and response formats in ``api/``).
"""

from __future__ import annotations

from imgembed.engine.collections import COLLECTIONS_FAMILY
from imgembed.engine.registry import ModelFamily
from imgembed.engine.sam2 import SAM2_FAMILY
from imgembed.engine.siglip import SIGLIP_FAMILY

FAMILIES: tuple[ModelFamily, ...] = (SAM2_FAMILY, SIGLIP_FAMILY, COLLECTIONS_FAMILY)
