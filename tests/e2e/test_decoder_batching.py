"""The decoder batcher through a real server: shared decoder passes, interleaving, dropped work.

Untrained (``--weights dummy``) weights. Nothing here asserts a duration: batching is read from
the server's metrics (``imgembed_batch_size`` of ``<model>/decoder``), interleaving from the order
in which answers arrive, and every answer is checked against the same prompt decoded alone.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from prometheus import metric
from servers import imgembed_server

pytestmark = pytest.mark.e2e

MODEL = "sam2.1-hiera-tiny"
DECODER = MODEL + "/decoder"
HEIGHT, WIDTH = 96, 128
IMAGES = [
    base64.b64encode(encode(Image.fromarray(pixels), "PNG")).decode()
    for pixels in (
        gradient_rgb(HEIGHT, WIDTH),
        np.ascontiguousarray(gradient_rgb(HEIGHT, WIDTH)[::-1, ::-1]),
    )
]
PROMPTS: list[dict[str, Any]] = [
    {"points": [[20, 30]]},
    {"points": [[100, 70]]},
    {"points": [[60, 40], [10, 10]], "point_labels": [1, 0]},
    {"boxes": [[10, 10, 90, 80]]},
    {"points": [[30, 80]], "multimask_output": False},
    {"points": [[64, 48]]},
]
"""Mixed prompt lengths and output modes: they share decoder passes only with compatible jobs."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A long decoder window makes passes of several requests likely even on a slow machine.
    env = {"IMGEMBED_DECODER_MAX_QUEUE_DELAY_MS": "200", "IMGEMBED_DECODER_MAX_BATCH_SIZE": "16"}
    log = tmp_path_factory.mktemp("decoder") / "server.log"
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as base_url:
        yield base_url


def scrape(server: str) -> str:
    return httpx.get(f"{server}/metrics", timeout=30).text


def low_res_logits(body: dict[str, Any]) -> np.ndarray:
    """The first object's ``[K,256,256]`` float32 logits."""
    return np.stack(
        [
            np.frombuffer(base64.b64decode(mask["low_res_logits"]), "<f4").reshape(256, 256)
            for mask in body["objects"][0]["masks"]
        ]
    )


def scores(body: dict[str, Any]) -> list[float]:
    return [mask["score"] for mask in body["objects"][0]["masks"]]


def segment_body(image_id: str, prompt: dict[str, Any]) -> dict[str, Any]:
    return {"image_id": image_id, **prompt}


async def segment_all(server: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server, timeout=300) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/sam2/segment", json=body) for body in bodies)
        )
    for response in responses:
        assert response.status_code == 200, response.text
    return [response.json() for response in responses]


def test_concurrent_segment_requests_share_decoder_passes_and_each_gets_its_own_masks(
    server: str,
) -> None:
    image_ids = [
        httpx.post(f"{server}/v1/sam2/embed", json={"image_b64": image}, timeout=300).json()[
            "image_id"
        ]
        for image in IMAGES
    ]
    bodies = [segment_body(image_id, prompt) for image_id in image_ids for prompt in PROMPTS]
    alone = [asyncio.run(segment_all(server, [body]))[0] for body in bodies]
    before = scrape(server)
    together = asyncio.run(segment_all(server, bodies * 2))
    after = scrape(server)

    expected = [low_res_logits(body) for body in alone]
    for index, answer in enumerate(together):
        own = index % len(bodies)
        logits = low_res_logits(answer)
        np.testing.assert_allclose(logits, expected[own], atol=1e-3, rtol=0)
        np.testing.assert_allclose(scores(answer), scores(alone[own]), atol=1e-4)
        for other, other_logits in enumerate(expected):
            if other != own and other_logits.shape == logits.shape:
                assert np.abs(logits - other_logits).max() > 1e-2, (own, other)

    def grew(name: str) -> float:
        return metric(after, name, model=DECODER) - metric(before, name, model=DECODER)

    jobs, passes = grew("imgembed_batch_size_sum"), grew("imgembed_batch_size_count")
    assert jobs == len(together), "one decoder job per request (one prompt length each)"
    assert passes < jobs, f"{jobs} decode jobs in {passes} batches: none held more than one"
    assert metric(after, "imgembed_queued_requests", model=DECODER) == 0


def test_segment_requests_are_answered_while_segment_everything_runs(server: str) -> None:
    image_id = httpx.post(
        f"{server}/v1/sam2/embed", json={"image_b64": IMAGES[0]}, timeout=300
    ).json()["image_id"]
    everything_body = {
        "image_b64": IMAGES[1],
        "points_per_side": 16,
        "points_per_batch": 8,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }

    async def scenario() -> tuple[list[dict[str, Any]], bool, float]:
        async with httpx.AsyncClient(base_url=server, timeout=300) as client:
            before = metric(await scrape_async(client), "imgembed_batch_size_count", model=DECODER)
            everything = asyncio.create_task(
                client.post("/v1/sam2/segment-everything", json=everything_body)
            )
            while (
                metric(await scrape_async(client), "imgembed_batch_size_count", model=DECODER)
                <= before
            ):
                assert not everything.done(), "segment everything ended before it decoded"
                await asyncio.sleep(0.05)
            answers = []
            for prompt in PROMPTS[:3]:
                response = await client.post(
                    "/v1/sam2/segment", json=segment_body(image_id, prompt)
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
            still_running = not everything.done()
            result = await everything
            assert result.status_code == 200, result.text
            return answers, still_running, len(result.json()["masks"])

    answers, still_running, masks = asyncio.run(scenario())
    assert still_running, (
        "three segment requests waited for the whole segment-everything run; its decoder passes "
        "should interleave with theirs"
    )
    assert len(answers) == 3
    assert masks > 0


async def scrape_async(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def test_segment_everything_of_a_client_that_disconnects_stops_decoding(server: str) -> None:
    body = {
        "image_b64": IMAGES[0],
        "points_per_side": 32,
        "points_per_batch": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    full_run_jobs = 32 * 32 // 4
    before = metric(scrape(server), "imgembed_batch_size_sum", model=DECODER)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/sam2/segment-everything", json=body, timeout=3)
    # The job stops at its next decoder call: the decoder's job count settles well short of a run.
    settled, last = time.monotonic() + 60, -1.0
    while time.monotonic() < settled:
        jobs = metric(scrape(server), "imgembed_batch_size_sum", model=DECODER) - before
        if jobs == last:
            break
        last = jobs
        time.sleep(1.0)
    assert last < full_run_jobs / 2, (
        f"{last} of {full_run_jobs} decoder jobs ran after the client left"
    )
    text = scrape(server)
    assert (
        metric(text, "imgembed_requests_total", route="/v1/sam2/segment-everything", status="499")
        >= 1
    )
    response = httpx.post(
        f"{server}/v1/sam2/segment",
        json={"image_b64": IMAGES[0], "points": [[20, 30]]},
        timeout=300,
    )
    assert response.status_code == 200, response.text


def test_a_click_on_a_cached_image_is_answered_while_another_image_is_encoded(
    server: str,
) -> None:
    """The decoder has its own thread: clicks never queue behind an encoder batch."""
    image_id = httpx.post(
        f"{server}/v1/sam2/embed", json={"image_b64": IMAGES[0]}, timeout=300
    ).json()["image_id"]
    unseen = base64.b64encode(
        encode(Image.fromarray(gradient_rgb(HEIGHT + 7, WIDTH + 5)), "PNG")
    ).decode()

    async def scenario() -> bool:
        async with httpx.AsyncClient(base_url=server, timeout=300) as client:
            embed = asyncio.create_task(client.post("/v1/sam2/embed", json={"image_b64": unseen}))
            while (
                metric(await scrape_async(client), "imgembed_in_flight_requests", model=MODEL) < 1
            ):
                assert not embed.done(), "the embed request ended before its encoder pass was seen"
                await asyncio.sleep(0.01)
            click = await client.post("/v1/sam2/segment", json=segment_body(image_id, PROMPTS[0]))
            assert click.status_code == 200, click.text
            # Read from the server, not a clock: the encoder pass is still running when the
            # click's answer is back (a shared device thread would have run the click after it).
            text = await scrape_async(client)
            still_encoding = metric(text, "imgembed_in_flight_requests", model=MODEL) == 1
            assert (await embed).status_code == 200
            return still_encoding

    assert asyncio.run(scenario()), "the click waited for the other image's encoder pass"
