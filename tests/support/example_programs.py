"""The programs in examples/ as importable modules, for tests and benchmarks that drive them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(file_name: str) -> ModuleType:
    """``examples/<file_name>`` imported as the module ``<stem>_example`` (registered in
    ``sys.modules`` first: dataclasses look their module up while the class is built)."""
    path = EXAMPLES / file_name
    spec = importlib.util.spec_from_file_location(f"{path.stem}_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
