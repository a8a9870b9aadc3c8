"""Fixtures shared by end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Any]:
    """A real ``tritonclient`` HTTP client for the module's ``server`` fixture."""
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra")
    triton = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    yield triton
    triton.close()
