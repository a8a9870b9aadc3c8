"""Operations through a real server: metrics, batching under concurrency, back-pressure, deadlines.

Bounded: a handful of concurrent requests, loopback only, untrained (``dummy``) weights. No timing
assertions: outcomes are checked by status and by the metrics the server reports.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from prometheus import metric
from servers import imgembed_server

pytestmark = pytest.mark.e2e

MODEL = "sam2.1-hiera-tiny"


def image_b64(height: int, width: int) -> str:
    return base64.b64encode(encode(Image.fromarray(gradient_rgb(height, width)), "PNG")).decode()


async def embed_concurrently(server: str, sizes: list[tuple[int, int]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=300) as client:
        requests = [
            client.post(
                f"{server}/v1/sam2/embed",
                json={"image_b64": image_b64(height, width), "include_high_res": False},
            )
            for height, width in sizes
        ]
        return await asyncio.gather(*requests)


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "IMGEMBED_MAX_BATCH_SIZE": "4",
        "IMGEMBED_MAX_QUEUE_DELAY_MS": "200",
        "IMGEMBED_WARMUP": "true",
    }
    log = tmp_path_factory.mktemp("batching") / "server.log"
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as base_url:
        yield base_url


def test_models_report_device_batching_and_warm_up(batching_server: str) -> None:
    (model,) = httpx.get(f"{batching_server}/v1/models", timeout=10).json()["data"]
    assert model["id"] == MODEL
    assert model["device"] == "cpu"
    assert model["compute_dtype"] == "float32"
    assert model["batching"] == {
        "max_batch_size": 4,
        "max_queue_delay_ms": 200.0,
        "max_queue_size": 64,
    }
    # 0 by default, resolved by device: off on CPU (measured slower there), 64 prompts on a GPU.
    assert model["decoder_batching"] == {
        "max_batch_size": 1,
        "max_queue_delay_ms": 1.0,
        "max_queue_size": 256,
    }
    assert model["warmup_seconds"] > 0
    assert httpx.get(f"{batching_server}/health/ready", timeout=10).status_code == 200


def test_concurrent_requests_batch_and_each_gets_its_own_answer(batching_server: str) -> None:
    sizes = [(40 + index, 50 + 3 * index) for index in range(6)]
    responses = asyncio.run(embed_concurrently(batching_server, sizes))
    for (height, width), response in zip(sizes, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["meta"]["orig_size"] == [height, width]
    text = httpx.get(f"{batching_server}/metrics", timeout=10).text
    batches = metric(text, "imgembed_batch_size_count", model=MODEL)
    items = metric(text, "imgembed_batch_size_sum", model=MODEL)
    assert items == 6
    assert batches < items, "no batch held more than one request"
    assert metric(text, "imgembed_compute_duration_seconds_count", model=MODEL) == batches
    assert metric(text, "imgembed_queue_duration_seconds_count", model=MODEL) == 6


def test_metrics_count_requests_by_route_model_and_status(batching_server: str) -> None:
    before = httpx.get(f"{batching_server}/metrics", timeout=10).text
    refused = httpx.post(f"{batching_server}/v1/sam2/embed", json={}, timeout=10)
    assert refused.status_code == 400
    after = httpx.get(f"{batching_server}/metrics", timeout=10)
    assert after.headers["content-type"].startswith("text/plain")
    # A refusal before validation still counts against the model it was aimed at (the default).
    labels = {"route": "/v1/sam2/embed", "model": MODEL, "status": "400"}
    assert metric(after.text, "imgembed_requests_total", **labels) == (
        metric(before, "imgembed_requests_total", **labels) + 1
    )
    assert (
        metric(
            after.text, "imgembed_requests_total", route="/v1/sam2/embed", model=MODEL, status="200"
        )
        >= 6
    )
    assert metric(after.text, "imgembed_model_load_seconds", model=MODEL) > 0
    assert metric(after.text, "imgembed_queued_requests", model=MODEL) == 0
    assert metric(after.text, "imgembed_in_flight_requests", model=MODEL) == 0


def test_full_queue_answers_429_and_late_work_504_then_serves_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {
        "IMGEMBED_MAX_BATCH_SIZE": "1",
        "IMGEMBED_MAX_QUEUE_SIZE": "2",
        "IMGEMBED_REQUEST_TIMEOUT_S": "0.5",
    }
    log = tmp_path_factory.mktemp("pressure") / "server.log"
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as server:
        # Six different images: one image sent six times would be encoded once (the cache).
        responses = asyncio.run(embed_concurrently(server, [(32, 32 + i) for i in range(6)]))
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 429, 504}, statuses
        assert 200 in statuses
        full = [response for response in responses if response.status_code == 429]
        late = [response for response in responses if response.status_code == 504]
        assert full, statuses
        assert late, statuses
        assert all(response.headers["retry-after"] == "1" for response in full)
        assert "limit" in full[0].json()["error"]["message"]
        assert late[0].json()["error"]["code"] == "deadline_exceeded"
        text = httpx.get(f"{server}/metrics", timeout=10).text
        assert metric(text, "imgembed_dropped_total", model=MODEL) == len(late)
        again = asyncio.run(embed_concurrently(server, [(32, 32)]))
        assert again[0].status_code in (200, 504)
        assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_api_key_guards_everything_but_health_and_metrics(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    log = tmp_path_factory.mktemp("auth") / "server.log"
    env = {"IMGEMBED_API_KEY": "s3cret-key"}
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as server:
        missing = httpx.get(f"{server}/v1/models", timeout=10)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["field"] == "authorization"
        assert "IMGEMBED_API_KEY" in missing.json()["error"]["message"]
        wrong = httpx.get(
            f"{server}/v1/models", headers={"authorization": "Bearer s3cret-kex"}, timeout=10
        )
        assert wrong.status_code == 401
        embed = httpx.post(f"{server}/v1/sam2/embed", json={}, timeout=10)
        assert embed.status_code == 401
        # The browser page's files are public (a prefix entry); its API calls are not.
        assert httpx.get(f"{server}/ui/static/app.js", timeout=10).status_code == 200
        assert httpx.get(f"{server}/ui/static/../../v1/models", timeout=10).status_code == 401
        right = httpx.get(
            f"{server}/v1/models", headers={"authorization": "Bearer s3cret-key"}, timeout=10
        )
        assert right.status_code == 200
        assert httpx.get(f"{server}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server}/metrics", timeout=10).status_code == 200


def test_several_models_from_repeated_flags(tmp_path_factory: pytest.TempPathFactory) -> None:
    log = tmp_path_factory.mktemp("two") / "server.log"
    arguments = ["--model", MODEL, "--model", "sam2-hiera-tiny", "--weights", "dummy"]
    with imgembed_server(arguments, log_path=log) as server:
        listed = httpx.get(f"{server}/v1/models", timeout=10).json()["data"]
        assert [model["id"] for model in listed] == [MODEL, "sam2-hiera-tiny"]
        health = httpx.get(f"{server}/health", timeout=10).json()
        assert health["models"] == {MODEL: {"ready": True}, "sam2-hiera-tiny": {"ready": True}}
        body = {"image_b64": image_b64(32, 32), "include_high_res": False}
        for name, expected in (("sam2_hiera_tiny.pt", "sam2-hiera-tiny"), (None, MODEL)):
            response = httpx.post(
                f"{server}/v1/sam2/embed", json={**body, "model": name}, timeout=300
            )
            assert response.status_code == 200, response.text
            assert response.json()["model"] == expected
        text = httpx.get(f"{server}/metrics", timeout=10).text
        assert metric(text, "imgembed_batch_size_count", model="sam2-hiera-tiny") == 1


def test_requests_naming_no_served_model_are_labelled_unresolved(batching_server: str) -> None:
    """Never the name the client sent: any string would become a new label value."""
    before = httpx.get(f"{batching_server}/metrics", timeout=10).text
    named = httpx.post(
        f"{batching_server}/v1/sam2/embed",
        json={"image_b64": image_b64(20, 20), "model": "no-such-model"},
        timeout=10,
    )
    assert named.status_code == 404
    v2 = httpx.post(f"{batching_server}/v2/models/no_such_model/infer", json={}, timeout=10)
    assert v2.status_code == 404
    after = httpx.get(f"{batching_server}/metrics", timeout=10).text
    for route in ("/v1/sam2/embed", "/v2/models/{model_name}/infer"):
        labels = {"route": route, "model": "unresolved", "status": "404"}
        assert metric(after, "imgembed_requests_total", **labels) == (
            metric(before, "imgembed_requests_total", **labels) + 1
        ), route
    assert "no-such-model" not in after
