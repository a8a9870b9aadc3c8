"""v2 routes while the engine is not ready (loaded but not started): 503 with Retry-After.

The app is driven in process without its lifespan, so the engine never starts: the state a
server is in while it warms up or shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from imgembed.engine import Engine
from imgembed.server.app import create_app
from imgembed.settings import ModelSpec, ServerConfig

IMAGE_BYTES = {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}


@pytest.fixture(scope="module")
def responses() -> Iterator[dict[str, httpx.Response]]:
    config = ServerConfig(models=(ModelSpec("sam2.1-hiera-tiny", weights="dummy", device="cpu"),))
    engine = Engine(config)
    engine.load()
    app = create_app(config, engine=engine)

    async def fetch() -> dict[str, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return {
                "live": await client.get("/v2/health/live"),
                "ready": await client.get("/v2/health/ready"),
                "model_ready": await client.get("/v2/models/sam2_encoder/versions/1/ready"),
                "metadata": await client.get("/v2/models/sam2_encoder"),
                "infer": await client.post(
                    "/v2/models/sam2_encoder/infer", json={"inputs": [IMAGE_BYTES]}
                ),
                "index": await client.post("/v2/repository/index"),
            }

    try:
        yield asyncio.run(fetch())
    finally:
        asyncio.run(engine.close())


@pytest.mark.parametrize("name", ["ready", "model_ready", "infer"])
def test_not_ready_routes_answer_503_in_the_v2_shape(
    responses: dict[str, httpx.Response], name: str
) -> None:
    response = responses[name]
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert list(response.json()) == ["error"]
    assert "not ready" in response.json()["error"]


def test_liveness_and_metadata_answer_while_not_ready(
    responses: dict[str, httpx.Response],
) -> None:
    assert responses["live"].status_code == 200
    assert responses["metadata"].status_code == 200
    assert responses["metadata"].json()["name"] == "sam2_encoder"
    assert {entry["state"] for entry in responses["index"].json()} == {"UNAVAILABLE"}
