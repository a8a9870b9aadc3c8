"""Collections over real HTTP with the real vector store (LanceDB on disk) and a real SigLIP model.

The model is a small SigLIP 2 of the real FixRes design with seeded random weights (see
``siglip_checkpoints``): its vectors are meaningless as semantics but exact as computation, so an
image searched for finds itself first, and vectors given directly have known neighbours.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from servers import ImageHost, in_process_server
from siglip_checkpoints import TINY_FIXRES, build_siglip_model, photo_like, save_siglip_folder

from imgembed.engine import Engine
from imgembed.models.siglip_loading import load_siglip
from imgembed.server.app import create_app
from imgembed.settings import FetchPolicy, InputLimits, ModelSpec, ServerConfig

pytest.importorskip("lancedb", reason="collections need the search extra")
pytestmark = pytest.mark.e2e

DIMENSION = TINY_FIXRES.embedding_dim


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PHOTOS = [png_b64(photo_like(64, 80, seed=seed)) for seed in range(4)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_siglip_model(TINY_FIXRES)
    return save_siglip_folder(model, TINY_FIXRES, tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("collections")


def make_engine(folder: Path, data_dir: Path) -> Engine:
    config = ServerConfig(
        models=(
            ModelSpec("siglip2-base-patch16-224", weights=str(folder), device="cpu", warmup=False),
        ),
        limits=replace(InputLimits(), max_batch_images=8),
        fetch=replace(FetchPolicy(), allowed_hosts=("127.0.0.1/32",), timeout_s=2),
        collections_dir=str(data_dir),
    )

    def load(spec: ModelSpec, device: torch.device) -> Any:
        return load_siglip(TINY_FIXRES, str(folder), device=device)

    return Engine(config, loaders={"siglip": load})


@pytest.fixture(scope="module")
def server(folder: Path, data_dir: Path) -> Iterator[str]:
    engine = make_engine(folder, data_dir)
    with in_process_server(create_app(engine.config, engine=engine)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    with ImageHost(base64.b64decode(PHOTOS[3])) as host:
        yield host


def call(server: str, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
    return httpx.request(method, f"{server}{path}", json=body, params=params or None, timeout=120)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def photos(server: str, image_host: ImageHost) -> dict[str, Any]:
    items = [
        {"id": f"photo-{i}", "image": PHOTOS[i], "metadata": {"label": label, "year": 2020 + i}}
        for i, label in enumerate(["cat", "dog", "cat"])
    ]
    items.append(
        {"id": "photo-3", "image": f"{image_host.base_url}/image", "metadata": {"label": "bird"}}
    )
    items.append({"id": "broken", "image": f"{image_host.base_url}/missing", "metadata": {}})
    return ok(call(server, "POST", "/v1/collections/photos/items", {"items": items}))


def test_add_embeds_images_and_reports_the_failed_one(photos: dict[str, Any]) -> None:
    assert photos["inserted"] == 4
    assert photos["collection"] == {
        "name": "photos",
        "dimension": DIMENSION,
        "count": 4,
        "metric": "cosine",
        "indexed": False,
    }
    (failed,) = photos["warnings"]["failed"]
    assert failed["id"] == "broken"
    assert failed["index"] == 4
    assert "404" in failed["error"]


def test_an_image_finds_itself_first_and_filters_apply(server: str, photos: dict[str, Any]) -> None:
    body = ok(
        call(server, "POST", "/v1/collections/photos/search", {"image": PHOTOS[2], "top_k": 4})
    )
    assert body["hits"][0]["id"] == "photo-2"
    assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [hit["score"] for hit in body["hits"]] == sorted(
        (hit["score"] for hit in body["hits"]), reverse=True
    )
    cats = ok(
        call(
            server,
            "POST",
            "/v1/collections/photos/search",
            {"image": PHOTOS[1], "filter": {"label": "cat", "year": {"$gte": 2021}}},
        )
    )
    assert [hit["id"] for hit in cats["hits"]] == ["photo-2"]
    assert cats["hits"][0]["metadata"] == {"label": "cat", "year": 2022}


def test_text_search_ranks_every_item(server: str, photos: dict[str, Any]) -> None:
    body = ok(call(server, "POST", "/v1/collections/photos/search", {"text": "a cat", "top_k": 10}))
    assert {hit["id"] for hit in body["hits"]} == {"photo-0", "photo-1", "photo-2", "photo-3"}
    assert body["model"] == TINY_FIXRES.name


def test_vectors_with_known_neighbours_upsert_reject_list_and_delete(server: str) -> None:
    basis = np.eye(DIMENSION)
    items = [{"id": f"v{i}", "vector": basis[i].tolist(), "metadata": {"i": i}} for i in range(5)]
    ok(call(server, "POST", "/v1/collections/vectors/items", {"items": items}))
    query = (0.9 * basis[3] + 0.1 * basis[1]).tolist()
    hits = ok(call(server, "POST", "/v1/collections/vectors/search", {"vector": query, "top_k": 2}))
    assert [hit["id"] for hit in hits["hits"]] == ["v3", "v1"]
    again = call(server, "POST", "/v1/collections/vectors/items", {"items": items[:1]})
    assert again.status_code == 409
    assert "v0" in again.json()["error"]["message"]
    moved = [{"id": "v0", "vector": basis[3].tolist(), "metadata": {"i": 30}}]
    upserted = ok(
        call(
            server,
            "POST",
            "/v1/collections/vectors/items",
            {"items": moved, "on_conflict": "upsert"},
        )
    )
    assert upserted["updated"] == 1
    page = ok(call(server, "GET", "/v1/collections/vectors/items", limit=2))
    assert [item["id"] for item in page["items"]] == ["v0", "v1"]
    rest = ok(
        call(server, "GET", "/v1/collections/vectors/items", limit=10, after=page["next_after"])
    )
    assert [item["id"] for item in rest["items"]] == ["v2", "v3", "v4"]
    assert rest["next_after"] is None
    deleted = ok(
        call(server, "POST", "/v1/collections/vectors/items/delete", {"ids": ["v3", "nope"]})
    )
    assert deleted["deleted"] == 1
    hits = ok(call(server, "POST", "/v1/collections/vectors/search", {"vector": query, "top_k": 1}))
    assert hits["hits"][0]["id"] == "v0"
    assert any(
        c["name"] == "vectors" for c in ok(call(server, "GET", "/v1/collections"))["collections"]
    )
    ok(call(server, "DELETE", "/v1/collections/vectors"))
    assert call(server, "GET", "/v1/collections/vectors").status_code == 404


def test_data_survives_a_restart(folder: Path, data_dir: Path, photos: dict[str, Any]) -> None:
    engine = make_engine(folder, data_dir)
    with in_process_server(create_app(engine.config, engine=engine)) as restarted:
        body = ok(call(restarted, "POST", "/v1/collections/photos/search", {"image": PHOTOS[0]}))
        assert body["hits"][0]["id"] == "photo-0"
        assert ok(call(restarted, "GET", "/v1/collections/photos"))["count"] == 4


BAD = [
    ("POST", "/v1/collections/nope/search", {"vector": [1.0] * DIMENSION}, 404, None, "nope"),
    ("GET", "/v1/collections/nope", None, 404, None, "nope"),
    ("POST", "/v1/collections/photos/search", {"vector": [1.0, 2.0]}, 400, "vector", f"{DIMENSION}"),
    ("POST", "/v1/collections/photos/search", {"vector": [1.0] * DIMENSION, "filter": {"year": {"$near": 1}}}, 400, "filter", "$near"),
    ("POST", "/v1/collections/photos/search", {}, 400, "image", "exactly one"),
    ("POST", "/v1/collections/photos/search", {"text": "a", "vector": [1.0]}, 400, "vector", "exactly one"),
    ("POST", "/v1/collections/photos/search", {"text": "  "}, 400, "text", "empty"),
    ("POST", "/v1/collections/photos/search", {"text": "a", "top_k": 0}, 400, "top_k", "greater than or equal to 1"),
    ("POST", "/v1/collections/photos/items", {"items": []}, 400, "items", "empty"),
    ("POST", "/v1/collections/photos/items", {"items": [{"id": "x"}]}, 400, "items[0].image", "exactly one"),
    ("POST", "/v1/collections/photos/items", {"items": [{"id": 5, "vector": [1.0] * DIMENSION}]}, 400, "items[0].id", "string"),
    ("POST", "/v1/collections/photos/items", {"items": [{"id": "a", "vector": [1.0] * DIMENSION}, {"id": "a", "vector": [1.0] * DIMENSION}]}, 400, "ids", "a"),
    ("POST", "/v1/collections/photos/items", {"items": [{"id": "z", "vector": [1.0] * 3}]}, 400, "items", "dimensional"),
    ("POST", "/v1/collections/photos/items", {"items": [{"id": "z", "image": 7}]}, 400, "items[0].image", "non-empty string"),
    ("POST", "/v1/collections/bad%20name!/items", {"items": [{"id": "z", "vector": [1.0] * DIMENSION}]}, 400, "name", "name"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "field", "phrase"), BAD)
def test_bad_input_is_refused_and_the_server_keeps_serving(
    server: str,
    photos: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    status: int,
    field: str | None,
    phrase: str,
) -> None:
    response = call(server, method, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if field is not None:
        assert error["field"] == field, error
    assert phrase in error["message"], error
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200
