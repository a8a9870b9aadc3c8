"""Serving under load with fake models: batching across requests, back-pressure (429), deadlines
(504), clients that hang up (499), a model that raises, metrics labels, the API key, several
models, and the decoder's own thread and batches.

The fast twin of tests/e2e/test_operations.py, test_faults.py and test_decoder_batching.py. The
fakes can hold a forward pass until the test releases it, so every race here is staged, not timed.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fakes import (
    SAM2_MODEL,
    SIGLIP_MODEL,
    FakeServer,
    fake_config,
    fake_server,
    fake_spec,
    wait_until,
)
from imagefactory import encode, gradient_rgb
from PIL import Image
from prometheus import metric

from imgembed.settings import BatchingSettings

DECODER = SAM2_MODEL + "/decoder"
HEIGHT, WIDTH = 96, 128


def image_b64(height: int, width: int, *, flip: bool = False) -> str:
    pixels = gradient_rgb(height, width)
    if flip:
        pixels = np.ascontiguousarray(pixels[::-1, ::-1])
    return base64.b64encode(encode(Image.fromarray(pixels), "PNG")).decode()


def scrape(server: str) -> str:
    return httpx.get(f"{server}/metrics", timeout=10).text


async def post_all(server: str, path: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server, timeout=60) as client:
        return list(await asyncio.gather(*(client.post(path, json=body) for body in bodies)))


def embed_body(height: int, width: int) -> dict[str, Any]:
    return {"image_b64": image_b64(height, width), "include_high_res": False}


@pytest.fixture(scope="module")
def batching() -> Iterator[FakeServer]:
    config = fake_config(
        fake_spec(SAM2_MODEL, warmup=True, batching=BatchingSettings(4, 200, 64)),
        fake_spec(SIGLIP_MODEL),
    )
    with fake_server(config) as running:
        yield running


def test_models_report_device_batching_and_warm_up(batching: FakeServer) -> None:
    models = httpx.get(f"{batching.url}/v1/models", timeout=10).json()["data"]
    assert [model["id"] for model in models] == [SAM2_MODEL, SIGLIP_MODEL]
    sam2, siglip = models
    assert sam2["family"] == "sam2"
    assert siglip["family"] == "siglip"
    assert sam2["device"] == "cpu"
    assert sam2["compute_dtype"] == "float32"
    assert sam2["batching"] == {
        "max_batch_size": 4,
        "max_queue_delay_ms": 200.0,
        "max_queue_size": 64,
    }
    # 0 by default, resolved by device: off on the CPU for SAM 2's decoder, 4 for SigLIP 2.
    assert sam2["decoder_batching"] == {
        "max_batch_size": 1,
        "max_queue_delay_ms": 1.0,
        "max_queue_size": 256,
    }
    assert siglip["batching"]["max_batch_size"] == 4
    assert sam2["warmup_seconds"] > 0
    assert siglip["warmup_seconds"] is None
    assert sam2["weights"] == {"source": "dummy", "location": "fake", "untrained": True}
    assert siglip["embedding_dim"] == 768
    assert httpx.get(f"{batching.url}/health/ready", timeout=10).status_code == 200
    health = httpx.get(f"{batching.url}/health", timeout=10).json()
    assert health["models"] == {SAM2_MODEL: {"ready": True}, SIGLIP_MODEL: {"ready": True}}


def test_concurrent_requests_batch_and_each_gets_its_own_answer(batching: FakeServer) -> None:
    sizes = [(40 + index, 50 + 3 * index) for index in range(6)]
    before = len(batching.model().encoder.batches)
    responses = asyncio.run(
        post_all(batching.url, "/v1/sam2/embed", [embed_body(h, w) for h, w in sizes])
    )
    ids = set()
    for (height, width), response in zip(sizes, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["meta"]["orig_size"] == [height, width]
        ids.add(response.json()["image_id"])
    assert len(ids) == 6
    batches = batching.model().encoder.batches[before:]
    assert sum(batches) == 6
    assert max(batches) > 1, f"no batch held more than one request: {batches}"
    text = scrape(batching.url)
    assert metric(text, "imgembed_batch_size_sum", model=SAM2_MODEL) >= 6
    assert (
        metric(text, "imgembed_batch_size_count", model=SAM2_MODEL)
        == len(batching.model().encoder.batches) - 1
    )  # the warm-up pass ran outside the batcher
    assert metric(text, "imgembed_queued_requests", model=SAM2_MODEL) == 0
    assert metric(text, "imgembed_in_flight_requests", model=SAM2_MODEL) == 0


def test_metrics_count_requests_by_route_model_and_status(batching: FakeServer) -> None:
    server = batching.url
    before = scrape(server)
    refused = httpx.post(f"{server}/v1/sam2/embed", json={}, timeout=10)
    assert refused.status_code == 400
    siglip = httpx.post(f"{server}/v1/siglip/embed-text", json={"texts": ["a"]}, timeout=10)
    assert siglip.status_code == 200
    after = httpx.get(f"{server}/metrics", timeout=10)
    assert after.headers["content-type"].startswith("text/plain")

    def grew(**labels: str) -> float:
        return metric(after.text, "imgembed_requests_total", **labels) - metric(
            before, "imgembed_requests_total", **labels
        )

    # A refusal before validation still counts against the model it was aimed at (the default).
    assert grew(route="/v1/sam2/embed", model=SAM2_MODEL, status="400") == 1
    assert grew(route="/v1/siglip/embed-text", model=SIGLIP_MODEL, status="200") == 1
    assert metric(after.text, "imgembed_model_load_seconds", model=SAM2_MODEL) > 0
    assert metric(after.text, "imgembed_batch_size_count", model=SIGLIP_MODEL + "/text") >= 1


def test_requests_naming_no_served_model_are_labelled_unresolved(batching: FakeServer) -> None:
    """Never the name the client sent: any string would become a new label value."""
    server = batching.url
    before = scrape(server)
    named = httpx.post(
        f"{server}/v1/sam2/embed",
        json={"image_b64": image_b64(20, 20), "model": "no-such-model"},
        timeout=10,
    )
    assert named.status_code == 404
    v2 = httpx.post(f"{server}/v2/models/no_such_model/infer", json={}, timeout=10)
    assert v2.status_code == 404
    after = scrape(server)
    for route in ("/v1/sam2/embed", "/v2/models/{model_name}/infer"):
        labels = {"route": route, "model": "unresolved", "status": "404"}
        assert metric(after, "imgembed_requests_total", **labels) == (
            metric(before, "imgembed_requests_total", **labels) + 1
        ), route
    assert "no-such-model" not in after


def test_full_queue_answers_429_and_late_work_504_then_serves_again() -> None:
    """One image holds the encoder, two fill the queue of 2, three more are refused (429); the two
    queued pass their 0.5 s deadline before the encoder is free and are dropped (504)."""
    config = fake_config(
        fake_spec(SAM2_MODEL, batching=BatchingSettings(1, 1, 2)), request_timeout_s=0.5
    )
    with fake_server(config) as fake:
        hold = threading.Event()
        fake.model().encoder.hold = hold
        bodies = [embed_body(32, 32 + index) for index in range(6)]  # six different images
        answers: dict[int, httpx.Response] = {}

        def send(index: int) -> threading.Thread:
            thread = threading.Thread(
                target=lambda: answers.update(
                    {index: httpx.post(f"{fake.url}/v1/sam2/embed", json=bodies[index], timeout=60)}
                )
            )
            thread.start()
            return thread

        senders = [send(0)]
        wait_until(lambda: fake.model().batcher.in_flight == 1, "one image holds the encoder")
        senders += [send(1), send(2)]
        wait_until(lambda: fake.model().batcher.queued == 2, "two images are queued")
        for index in (3, 4, 5):
            send(index).join(timeout=60)
        time.sleep(0.6)  # past the queued requests' deadline
        hold.set()
        for thread in senders:
            thread.join(timeout=60)
        statuses = [answers[index].status_code for index in range(6)]
        assert statuses == [200, 504, 504, 429, 429, 429], statuses
        full = [answers[index] for index in (3, 4, 5)]
        late = [answers[index] for index in (1, 2)]
        assert all(response.headers["retry-after"] == "1" for response in full)
        assert "limit" in full[0].json()["error"]["message"]
        assert late[0].json()["error"]["code"] == "deadline_exceeded"
        assert late[0].json()["error"]["request_id"] == late[0].headers["x-request-id"]
        text = scrape(fake.url)
        assert metric(text, "imgembed_dropped_total", model=SAM2_MODEL) == 2
        assert metric(text, "imgembed_requests_total", status="429") == 3
        assert metric(text, "imgembed_requests_total", status="504") == 2
        assert fake.model().encoder.batches == [1]
        again = httpx.post(f"{fake.url}/v1/sam2/embed", json=bodies[0], timeout=60)
        assert again.status_code == 200
        assert again.json()["cache_hit"] is True


def hang_up_while_held(
    fake: FakeServer, send: Callable[[float], httpx.Response], other: str
) -> None:
    """Holds the encoder with one request, lets ``send`` time out behind it, then frees the
    encoder; the left request's work is dropped, not run."""
    hold = threading.Event()
    fake.model().encoder.hold = hold
    busy = threading.Thread(
        target=lambda: httpx.post(
            f"{fake.url}/v1/sam2/embed", json={"image_b64": other}, timeout=60
        )
    )
    busy.start()
    wait_until(lambda: fake.model().batcher.in_flight == 1, "the first image holds the encoder")
    with pytest.raises(httpx.ReadTimeout):
        send(0.5)
    wait_until(
        lambda: metric(scrape(fake.url), "imgembed_requests_total", status="499") == 1,
        "the server sees the client leave",
    )
    hold.set()
    busy.join(timeout=60)
    wait_until(
        lambda: metric(scrape(fake.url), "imgembed_dropped_total", model=SAM2_MODEL) == 1,
        "the left request's work is dropped",
    )
    assert metric(scrape(fake.url), "imgembed_batch_size_count", model=SAM2_MODEL) == 1
    assert fake.model().encoder.batches == [1]


def test_work_of_a_client_that_disconnects_is_dropped() -> None:
    config = fake_config(fake_spec(SAM2_MODEL, batching=BatchingSettings(1, 1, 64)))
    with fake_server(config) as fake:
        hang_up_while_held(
            fake,
            lambda timeout: httpx.post(
                f"{fake.url}/v1/sam2/embed",
                json={"image_b64": image_b64(HEIGHT, WIDTH, flip=True)},
                timeout=timeout,
            ),
            image_b64(HEIGHT, WIDTH),
        )
        again = httpx.post(
            f"{fake.url}/v1/sam2/embed", json={"image_b64": image_b64(HEIGHT, WIDTH)}, timeout=60
        )
        assert again.status_code == 200


def test_v2_work_of_a_client_that_disconnects_is_dropped() -> None:
    config = fake_config(fake_spec(SAM2_MODEL, batching=BatchingSettings(1, 1, 64)))
    other = image_b64(HEIGHT, WIDTH, flip=True)
    infer = {
        "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [other]}]
    }
    with fake_server(config) as fake:
        hang_up_while_held(
            fake,
            lambda timeout: httpx.post(
                f"{fake.url}/v2/models/sam2_encoder/infer", json=infer, timeout=timeout
            ),
            image_b64(HEIGHT, WIDTH),
        )


def is_white(items: list[Any]) -> bool:
    """Whether a batch holds a (normalised) white image, as ``RaisesOnWhiteImages`` decides."""
    return any(float(pixels.mean()) > 1.5 for pixels in items)


def test_a_model_that_raises_fails_only_its_own_request() -> None:
    config = fake_config(fake_spec(SAM2_MODEL, batching=BatchingSettings(4, 300, 16)))
    white = base64.b64encode(encode(Image.new("RGB", (40, 30), "white"), "PNG")).decode()
    with fake_server(config) as fake:
        fake.model().encoder.fail_when = is_white
        normal, failed = asyncio.run(
            post_all(
                fake.url,
                "/v1/sam2/embed",
                [{"image_b64": image_b64(HEIGHT, WIDTH)}, {"image_b64": white}],
            )
        )
        assert normal.status_code == 200
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert error["code"] == "internal_error"
        assert error["request_id"] in error["message"]
        assert "simulated" not in failed.text
        assert "Traceback" not in failed.text
        # A failed batch is retried image by image: only the normal image's pass succeeded.
        assert fake.model().encoder.batches == [1]
        again = httpx.post(
            f"{fake.url}/v1/sam2/embed", json={"image_b64": image_b64(50, 50)}, timeout=60
        )
        assert again.status_code == 200


def test_api_key_guards_everything_but_health_and_metrics() -> None:
    with fake_server(fake_config(api_key="s3cret-key")) as fake:
        server = fake.url
        missing = httpx.get(f"{server}/v1/models", timeout=10)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["field"] == "authorization"
        assert "IMGEMBED_API_KEY" in missing.json()["error"]["message"]
        wrong = httpx.get(
            f"{server}/v1/models", headers={"authorization": "Bearer s3cret-kex"}, timeout=10
        )
        assert wrong.status_code == 401
        assert httpx.post(f"{server}/v1/sam2/embed", json={}, timeout=10).status_code == 401
        assert httpx.post(f"{server}/v2/models/sam2_encoder/infer", timeout=10).status_code == 401
        # The browser page's files are public (a prefix entry); its API calls are not.
        assert httpx.get(f"{server}/ui/static/app.js", timeout=10).status_code == 200
        assert httpx.get(f"{server}/ui/static/../../v1/models", timeout=10).status_code == 401
        right = httpx.get(
            f"{server}/v1/models", headers={"authorization": "Bearer s3cret-key"}, timeout=10
        )
        assert right.status_code == 200
        assert httpx.get(f"{server}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server}/metrics", timeout=10).status_code == 200
        assert fake.model().encoder.batches == []


def test_several_models_each_answer_by_any_of_their_names() -> None:
    config = fake_config(fake_spec(SAM2_MODEL), fake_spec("sam2-hiera-tiny", alias="seed-model"))
    with fake_server(config) as fake:
        listed = httpx.get(f"{fake.url}/v1/models", timeout=10).json()["data"]
        assert [model["id"] for model in listed] == [SAM2_MODEL, "sam2-hiera-tiny"]
        assert "seed-model" in listed[1]["aliases"]
        body = {"image_b64": image_b64(32, 32), "include_high_res": False}
        for name, expected in (
            ("sam2_hiera_tiny.pt", "sam2-hiera-tiny"),
            ("seed-model", "sam2-hiera-tiny"),
            ("facebook/sam2.1-hiera-tiny", SAM2_MODEL),
            (None, SAM2_MODEL),
        ):
            response = httpx.post(
                f"{fake.url}/v1/sam2/embed", json={**body, "model": name}, timeout=60
            )
            assert response.status_code == 200, response.text
            assert response.json()["model"] == expected
        assert fake.model("sam2-hiera-tiny").encoder.batches == [1]  # the second was a cache hit
        text = scrape(fake.url)
        assert metric(text, "imgembed_batch_size_count", model="sam2-hiera-tiny") == 1
        siglip = httpx.post(f"{fake.url}/v1/siglip/embed-text", json={"texts": ["a"]}, timeout=10)
        assert siglip.status_code == 404
        assert "serves no SigLIP 2 model" in siglip.json()["error"]["message"]


# The decoder: its own batches and its own thread --------------------------------------------------

PROMPTS: list[dict[str, Any]] = [
    {"points": [[20, 30]]},
    {"points": [[100, 70]]},
    {"points": [[60, 40], [10, 10]], "point_labels": [1, 0]},
    {"boxes": [[10, 10, 90, 80]]},
    {"points": [[30, 80]], "multimask_output": False},
    {"points": [[64, 48]]},
]
"""Mixed prompt lengths and output modes: they share decoder passes only with compatible jobs."""


def low_res_logits(body: dict[str, Any]) -> np.ndarray:
    """The first object's ``[K,256,256]`` float32 logits."""
    return np.stack(
        [
            np.frombuffer(base64.b64decode(mask["low_res_logits"]), "<f4").reshape(256, 256)
            for mask in body["objects"][0]["masks"]
        ]
    )


@pytest.fixture(scope="module")
def decoding() -> Iterator[FakeServer]:
    # Shared decoder passes of up to 16 prompts, as on a GPU.
    config = fake_config(fake_spec(SAM2_MODEL, decoder_batching=BatchingSettings(16, 1, 256)))
    with fake_server(config) as running:
        yield running


def test_concurrent_segment_requests_share_decoder_passes_and_each_gets_its_own_masks(
    decoding: FakeServer,
) -> None:
    server = decoding.url
    image_ids = [
        httpx.post(
            f"{server}/v1/sam2/embed", json={"image_b64": image_b64(HEIGHT, WIDTH, flip=flip)}
        ).json()["image_id"]
        for flip in (False, True)
    ]
    bodies = [{"image_id": image_id, **prompt} for image_id in image_ids for prompt in PROMPTS]
    alone = [asyncio.run(post_all(server, "/v1/sam2/segment", [body]))[0].json() for body in bodies]
    decoder = decoding.model().prompt_decoder
    before = len(decoder.batches)
    # The decoder holds its first job until every other request's job is queued behind it.
    hold = threading.Event()
    decoder.hold = hold
    outcome: dict[str, list[httpx.Response]] = {}
    sender = threading.Thread(
        target=lambda: outcome.update(
            responses=asyncio.run(post_all(server, "/v1/sam2/segment", bodies * 2))
        )
    )
    sender.start()
    try:
        wait_until(
            lambda: (
                decoding.model().decoder.queued + decoding.model().decoder.in_flight
                == 2 * len(bodies)
            ),
            "every request's decode job is queued",
        )
    finally:
        hold.set()
        decoder.hold = None
    sender.join(timeout=60)
    together = outcome["responses"]
    expected = [low_res_logits(body) for body in alone]
    for index, response in enumerate(together):
        assert response.status_code == 200, response.text
        own = index % len(bodies)
        logits = low_res_logits(response.json())
        np.testing.assert_array_equal(logits, expected[own])
        scores = [mask["score"] for mask in response.json()["objects"][0]["masks"]]
        assert scores == [mask["score"] for mask in alone[own]["objects"][0]["masks"]]
        for other, other_logits in enumerate(expected):
            if other != own and other_logits.shape == logits.shape:
                assert np.abs(logits - other_logits).max() > 1e-3, (own, other)
    passes = decoder.batches[before:]
    assert sum(passes) == len(together), "one prompt per request"
    assert len(passes) < len(together), f"no decoder pass held more than one request: {passes}"
    text = scrape(server)
    all_passes = decoding.model().prompt_decoder.batches
    assert metric(text, "imgembed_batch_size_count", model=DECODER) == len(all_passes)
    assert metric(text, "imgembed_batch_size_sum", model=DECODER) == sum(all_passes)
    assert metric(text, "imgembed_queued_requests", model=DECODER) == 0


def test_a_click_on_a_cached_image_is_answered_while_another_image_is_encoded(
    decoding: FakeServer,
) -> None:
    """The decoder has its own thread: clicks never queue behind an encoder batch."""
    server = decoding.url
    image_id = httpx.post(
        f"{server}/v1/sam2/embed", json={"image_b64": image_b64(HEIGHT, WIDTH)}, timeout=60
    ).json()["image_id"]
    hold = threading.Event()
    decoding.model().encoder.hold = hold
    try:
        unseen = image_b64(HEIGHT + 7, WIDTH + 5)
        embed: dict[str, httpx.Response] = {}
        encoding = threading.Thread(
            target=lambda: embed.update(
                answer=httpx.post(f"{server}/v1/sam2/embed", json={"image_b64": unseen}, timeout=60)
            )
        )
        encoding.start()
        wait_until(lambda: decoding.model().batcher.in_flight == 1, "the encoder holds")
        click = httpx.post(
            f"{server}/v1/sam2/segment", json={"image_id": image_id, **PROMPTS[0]}, timeout=10
        )
        assert click.status_code == 200, click.text
        assert encoding.is_alive(), "the embed finished before the click was answered"
        assert decoding.model().batcher.in_flight == 1
    finally:
        hold.set()
        decoding.model().encoder.hold = None
    encoding.join(timeout=60)
    assert embed["answer"].status_code == 200


def test_segment_requests_are_answered_while_segment_everything_runs(
    decoding: FakeServer,
) -> None:
    server = decoding.url
    image_id = httpx.post(
        f"{server}/v1/sam2/embed", json={"image_b64": image_b64(HEIGHT, WIDTH)}, timeout=60
    ).json()["image_id"]
    everything_body = {
        "image_b64": image_b64(HEIGHT, WIDTH, flip=True),
        "points_per_side": 8,
        "points_per_batch": 2,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    decoder = decoding.model().prompt_decoder
    decoder.delay_s = 0.05  # 32 passes of 2 points: the run lasts well over a second
    try:

        async def scenario() -> tuple[bool, int]:
            async with httpx.AsyncClient(base_url=server, timeout=60) as client:
                before = len(decoder.batches)
                everything = asyncio.create_task(
                    client.post("/v1/sam2/segment-everything", json=everything_body)
                )
                while len(decoder.batches) <= before:
                    assert not everything.done(), "segment everything ended before it decoded"
                    await asyncio.sleep(0.01)
                for prompt in PROMPTS[:3]:
                    response = await client.post(
                        "/v1/sam2/segment", json={"image_id": image_id, **prompt}
                    )
                    assert response.status_code == 200, response.text
                still_running = not everything.done()
                result = await everything
                assert result.status_code == 200, result.text
                return still_running, len(result.json()["masks"])

        still_running, masks = asyncio.run(scenario())
    finally:
        decoder.delay_s = 0.0
    assert still_running, "the segment requests waited for the whole segment-everything run"
    assert masks > 0


def test_segment_everything_of_a_client_that_disconnects_stops_decoding(
    decoding: FakeServer,
) -> None:
    server = decoding.url
    body = {
        "image_b64": image_b64(HEIGHT, WIDTH),
        "points_per_side": 32,
        "points_per_batch": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    full_run_jobs = 32 * 32 // 4
    decoder = decoding.model().prompt_decoder
    decoder.delay_s = 0.02  # a full run: 256 passes, over 5 s
    before = len(decoder.batches)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server}/v1/sam2/segment-everything", json=body, timeout=0.5)
        wait_until(
            lambda: (
                metric(
                    scrape(server),
                    "imgembed_requests_total",
                    route="/v1/sam2/segment-everything",
                    status="499",
                )
                >= 1
            ),
            "the server sees the client leave",
        )
        settled, last = time.monotonic() + 30, -1
        while time.monotonic() < settled:
            jobs = len(decoder.batches) - before
            if jobs == last:
                break
            last = jobs
            time.sleep(0.3)
    finally:
        decoder.delay_s = 0.0
    assert last < full_run_jobs / 2, f"{last} of {full_run_jobs} decoder jobs ran after it left"
    response = httpx.post(
        f"{server}/v1/sam2/segment", json={"image_b64": body["image_b64"], "points": [[20, 30]]}
    )
    assert response.status_code == 200, response.text
