"""Load through a real server: concurrent mixed clients, batching, back-pressure, a memory soak.

Every request goes to 127.0.0.1, carries its own ``X-Request-ID`` and a timeout, and its answer
is checked against that request alone. Untrained (``dummy``) weights: enough for load behaviour.
Nothing here asserts a duration: outcomes are checked by status, content, the server's metrics
and the server process's memory (``/proc/<pid>/status``). The soak runs for
``IMGEMBED_SOAK_SECONDS`` (default 15, at least three waves; set 60 to 90 for a longer look).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from imagefactory import encode
from PIL import Image
from servers import imgembed_server

from imgembed import codecs

pytestmark = pytest.mark.e2e

MODEL = "sam2.1-hiera-tiny"
REQUEST_TIMEOUT_S = 300.0
MEBIBYTE = 1024 * 1024
SOAK_SECONDS = float(os.environ.get("IMGEMBED_SOAK_SECONDS", "15"))
SHAPES = {
    "image_embed": [256, 64, 64],
    "high_res_feats_0": [32, 256, 256],
    "high_res_feats_1": [64, 128, 128],
}
FEATURE_NAMES = {"embedding": "image_embed"}
"""``.npz`` member names that differ from the feature's (the seed's key for ``image_embed``)."""


@dataclass(frozen=True)
class Probe:
    """One request and what its answer must be.

    Attributes:
        request_id: Sent as ``X-Request-ID``; the answer must carry it back.
        body: JSON body, or the form fields of a multipart upload when ``upload`` is set.
        upload: File bytes of a multipart upload.
        status: Expected HTTP status.
        error_field: Expected ``error.field`` of a refusal.
        error_code: Expected ``error.code`` of a refusal.
        size: ``(height, width)`` of the image, for ``meta.orig_size``.
        image_index: Which distinct image was sent; answers for the same image must agree.
        options: ``encoding``, ``dtype`` and ``include_high_res`` asked for.
    """

    request_id: str
    body: dict[str, Any]
    upload: bytes | None = None
    status: int = 200
    error_field: str | None = None
    error_code: str | None = None
    size: tuple[int, int] | None = None
    image_index: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def noise_image(height: int, width: int, seed: int, image_format: str) -> bytes:
    """A random RGB image: distinct content per seed, so distinct features per image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    options = {"quality": 90} if image_format == "JPEG" else {}
    return encode(Image.fromarray(pixels), image_format, **options)


def as_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def good_probe(
    request_id: str, image: bytes, size: tuple[int, int], index: int, number: int
) -> Probe:
    """A valid request whose transport, encoding, dtype and levels follow from ``number``."""
    options = {
        "encoding": ("npz_base64", "npz_base64_uncompressed", "binary")[number % 3],
        "dtype": ("float32", "float16", "bfloat16")[(number // 3) % 3],
        "include_high_res": (number // 2) % 2 == 0,
    }
    if number % 2:
        form = {key: str(value).lower() for key, value in options.items()}
        return Probe(request_id, form, image, size=size, image_index=index, options=options)
    body = {"image_b64": as_b64(image), **options}
    return Probe(request_id, body, size=size, image_index=index, options=options)


def bad_probes(prefix: str, image: bytes) -> list[Probe]:
    """Refusals, each with the status, field and code it must get."""
    valid = as_b64(image)
    input_error, image_error = "invalid_input", "invalid_image"
    cases: list[tuple[dict[str, Any], bytes | None, str, str]] = [
        ({"image_b64": "this is not base64!"}, None, "image_b64", input_error),
        ({"image_b64": valid, "dtype": "int8"}, None, "dtype", input_error),
        ({"dtype": "float64"}, image, "dtype", input_error),
        ({"image_b64": as_b64(b"plain text")}, None, "image_b64", image_error),
        ({"dtype": "float16"}, b"\x89PNG garbage", "file", image_error),
        ({"image_b64": valid, "colour": "red"}, None, "colour", input_error),
        ({"image_b64": valid, "resize_longer_side": 512}, None, "resize_longer_side", input_error),
        ({"image_b64": valid, "encoding": "zip"}, None, "encoding", input_error),
        ({"dtype": "float16"}, None, "image_b64", input_error),
        ({"image_b64": as_b64(image[: len(image) // 2])}, None, "image_b64", image_error),
        ({"include_high_res": "maybe"}, image, "include_high_res", input_error),
        ({"image_b64": valid, "model": "sam3-huge"}, None, "model", "model_not_found"),
        ({"image_b64": as_b64(noise_image(1, 1, 0, "PNG"))}, None, "image_b64", input_error),
        ({"image_b64": "data:image/png,abc"}, None, "image_b64", input_error),
        ({"image_b64": "AAAA", "input_image_url": "x"}, None, "image_b64", input_error),
        ({"image_b64": valid, "resize_mode": "crop"}, None, "resize_mode", input_error),
    ]  # fmt: skip
    return [
        Probe(f"{prefix}-bad-{number}", body, upload, 404 if where == "model" else 400, where, code)
        for number, (body, upload, where, code) in enumerate(cases)
    ]


def mixed_probes(good_images: int, bad: int, *, seed: int) -> list[Probe]:
    """``good_images`` distinct images sent twice each (JSON and multipart) and ``bad`` refusals,
    in a shuffled but fixed order."""
    formats = ("PNG", "JPEG", "WEBP")
    probes = []
    for index in range(good_images):
        size = (37 + 41 * index, 53 + 29 * index)
        image = noise_image(*size, seed=index, image_format=formats[index % len(formats)])
        for twin in range(2):
            number = 2 * index + twin
            probes.append(good_probe(f"mixed-{number}", image, size, index, number))
    probes += bad_probes("mixed", noise_image(20, 30, 99, "PNG"))[:bad]
    random.Random(seed).shuffle(probes)
    return probes


async def send(client: httpx.AsyncClient, server: str, probe: Probe) -> httpx.Response:
    headers = {"x-request-id": probe.request_id}
    url = f"{server}/v1/sam2/embed"
    if probe.upload is not None:
        files = {"file": ("image", probe.upload, "application/octet-stream")}
        return await client.post(url, data=probe.body, files=files, headers=headers)
    return await client.post(url, json=probe.body, headers=headers)


def features_of(
    response: httpx.Response, encoding: str, dtype: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header fields and float arrays of a 200 answer, checking each array's wire dtype."""
    if encoding == "binary":
        assert response.headers["content-type"] == "application/vnd.imgembed.tensors"
        header, arrays = codecs.decode_binary(
            response.content, int(response.headers[codecs.BINARY_HEADER_LENGTH])
        )
        assert {tensor["dtype"] for tensor in header["tensors"]} == {dtype}
        return header, arrays
    header = response.json()
    raw = codecs.decode_npz(base64.b64decode(header.pop("data")))
    assert {array.dtype for array in raw.values()} == {codecs.wire_dtype(dtype)}
    assert header["arrays"] == {key: list(array.shape) for key, array in raw.items()}
    return header, {
        FEATURE_NAMES.get(key, key): codecs.restore_dtype(array, dtype)
        for key, array in raw.items()
    }


def check_answer(probe: Probe, response: httpx.Response) -> np.ndarray | None:
    """Asserts ``response`` answers ``probe`` and nothing else; returns its float32 embedding."""
    context = (probe.request_id, response.status_code, response.text[:300])
    assert response.headers["x-request-id"] == probe.request_id, context
    assert response.status_code == probe.status, context
    if probe.status != 200:
        error = response.json()["error"]
        assert (error["field"], error["code"]) == (probe.error_field, probe.error_code), context
        assert error["request_id"] == probe.request_id
        return None
    options = probe.options
    header, arrays = features_of(response, options["encoding"], options["dtype"])
    assert header["meta"]["orig_size"] == list(probe.size or ()), context
    assert (header["dtype"], header["encoding"]) == (options["dtype"], options["encoding"])
    assert header["model"] == MODEL
    assert header["weights"]["untrained"] is True
    expected = SHAPES if options["include_high_res"] else {"image_embed": SHAPES["image_embed"]}
    assert {name: list(array.shape) for name, array in arrays.items()} == expected
    return np.asarray(arrays["image_embed"], dtype=np.float32)


async def run_clients(
    server: str, probes: list[Probe], clients: int
) -> dict[str, np.ndarray | None]:
    """Sends ``probes`` from ``clients`` concurrent clients, each one request at a time, and
    checks every answer against its own request.

    Returns:
        Request id to the float32 embedding of a 200 answer, or ``None`` for a refusal.
    """
    waiting = list(reversed(probes))
    answers: dict[str, np.ndarray | None] = {}

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            while waiting:
                probe = waiting.pop()
                answers[probe.request_id] = check_answer(probe, await send(client, server, probe))

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    assert set(answers) == {probe.request_id for probe in probes}
    return answers


def relative_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.linalg.norm(first - second) / np.linalg.norm(first))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels`` in Prometheus exposition text
    (0 when none does); other labels may take any value."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(server: str) -> str:
    return httpx.get(f"{server}/metrics", timeout=30, trust_env=False).text


def server_pid(base_url: str) -> int:
    """The process id of this test's ``imgembed serve`` child listening on ``base_url``'s port."""
    port = base_url.rsplit(":", 1)[1].encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if (
            parent == os.getpid()
            and b"imgembed.cli" in arguments
            and b"--port" in arguments
            and arguments[arguments.index(b"--port") + 1] == port
        ):
            return int(entry.name)
    raise AssertionError(f"no imgembed server child of this test listens on port {port!r}")


def memory_bytes(pid: int, key: str = "VmRSS") -> int:
    """A size from ``/proc/<pid>/status``: ``VmRSS`` (resident now) or ``VmHWM`` (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no {key}")


@pytest.fixture(scope="module")
def load_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"IMGEMBED_MAX_BATCH_SIZE": "4", "IMGEMBED_MAX_QUEUE_DELAY_MS": "50"}
    log = tmp_path_factory.mktemp("load") / "server.log"
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as base_url:
        yield base_url


def test_mixed_concurrent_clients_each_get_their_own_answer_and_batches_form(
    load_server: str,
) -> None:
    probes = mixed_probes(good_images=6, bad=16, seed=3)
    good = [probe for probe in probes if probe.status == 200]
    before = scrape(load_server)
    answers = asyncio.run(run_clients(load_server, probes, clients=8))

    # Features, not only metadata: the two answers for one image agree (to bfloat16 rounding,
    # ~0.4 %), and differ from every other image's (a batch row given to the wrong request).
    by_image: dict[int, list[np.ndarray]] = {}
    for probe in good:
        embedding = answers[probe.request_id]
        assert embedding is not None
        by_image.setdefault(probe.image_index or 0, []).append(embedding)
    for index, (first, second) in by_image.items():
        assert relative_difference(first, second) < 0.01, index
        for other, (other_first, _) in by_image.items():
            if other != index:
                assert relative_difference(first, other_first) > 0.05, (index, other)

    after = scrape(load_server)

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    items = grew("imgembed_batch_size_sum", model=MODEL)
    batches = grew("imgembed_batch_size_count", model=MODEL)
    # Each image is sent twice; the second request is served by the embedding cache, or shares the
    # first one's encoder pass when both are in flight at once: one encode per distinct image.
    assert items == len(by_image), "every distinct image is encoded exactly once"
    assert batches < items, f"{items} requests in {batches} batches: none held more than one"
    route = "/v1/sam2/embed"
    assert grew("imgembed_requests_total", route=route, status="200") == len(good)
    refused = [probe for probe in probes if probe.status == 400]
    assert grew("imgembed_requests_total", route=route, status="400") == len(refused)
    assert metric(after, "imgembed_queued_requests", model=MODEL) == 0
    assert metric(after, "imgembed_in_flight_requests", model=MODEL) == 0


def test_full_queue_refuses_a_burst_with_429_and_memory_stays_bounded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Batch size 1, queue limit 2: one request runs, two wait, and the rest of a burst of 48 must
    # be refused at once. Held instead, each would keep its 12 MiB [3,1024,1024] float32 input:
    # 576 MiB in inputs alone (on 2 CPU cores, with the limit raised to 64, the peak RSS grew by
    # about 900 MiB). With the limit it grows by 150 to 250 MiB: the bodies being refused and the
    # allocator arenas of the decode threads. The bound sits between the two. Tiny images keep
    # the bodies small, so what the bound measures is the queue.
    env = {"IMGEMBED_MAX_BATCH_SIZE": "1", "IMGEMBED_MAX_QUEUE_SIZE": "2", "IMGEMBED_WARMUP": "1"}
    log = tmp_path_factory.mktemp("burst") / "server.log"
    bound, burst_size = 400 * MEBIBYTE, 48
    image_b64 = as_b64(noise_image(64, 64, seed=7, image_format="PNG"))
    body = {"image_b64": image_b64, "include_high_res": False, "dtype": "float16"}

    def burst_body(number: int) -> dict[str, Any]:
        """A different image per request: identical ones would share one encoder pass."""
        image = as_b64(noise_image(64, 64, seed=100 + number, image_format="PNG"))
        return {**body, "image_b64": image}

    async def burst(server: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=burst_size)
        async with httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_S, limits=limits, trust_env=False
        ) as client:
            url = f"{server}/v1/sam2/embed"
            return await asyncio.gather(
                *(
                    client.post(
                        url, json=burst_body(number), headers={"x-request-id": f"burst-{number}"}
                    )
                    for number in range(burst_size)
                )
            )

    with imgembed_server(["--weights", "dummy"], env, log_path=log) as server:
        pid = server_pid(server)
        # The baseline has seen the start-up warm-up pass and one whole request: the peak of
        # one forward pass and the allocator's first growth, as each request of the burst runs.
        settle = httpx.post(
            f"{server}/v1/sam2/embed", json=body, timeout=REQUEST_TIMEOUT_S, trust_env=False
        )
        assert settle.status_code == 200, settle.text
        peak_before, resident_before = memory_bytes(pid, "VmHWM"), memory_bytes(pid)
        before = scrape(server)
        responses = asyncio.run(burst(server))
        peak_after, resident_after = memory_bytes(pid, "VmHWM"), memory_bytes(pid)
        after = scrape(server)
        assert httpx.get(f"{server}/health", timeout=30, trust_env=False).status_code == 200

    statuses = [response.status_code for response in responses]
    assert set(statuses) == {200, 429}, statuses
    for number, response in enumerate(responses):
        assert response.headers["x-request-id"] == f"burst-{number}"
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "queue_full"
        else:
            assert response.json()["meta"]["orig_size"] == [64, 64]
    served = statuses.count(200)
    assert (
        metric(after, "imgembed_batch_size_sum", model=MODEL)
        - metric(before, "imgembed_batch_size_sum", model=MODEL)
        == served
    ), "refused requests must not be computed"
    assert metric(after, "imgembed_requests_total", status="429") == statuses.count(429)
    assert metric(after, "imgembed_queued_requests", model=MODEL) == 0
    growth = {"peak": peak_after - peak_before, "resident": resident_after - resident_before}
    assert max(growth.values()) <= bound, {key: value // MEBIBYTE for key, value in growth.items()}


def soak_wave(wave: int, images: list[tuple[bytes, tuple[int, int]]]) -> list[Probe]:
    """Two valid requests (one JSON, one upload; encodings and dtypes vary by wave) and two
    refusals."""
    probes = [
        good_probe(f"soak-{wave}-{twin}", image, size, twin, 2 * wave + twin)
        for twin, (image, size) in enumerate(images)
    ]
    refusals = bad_probes(f"soak-{wave}", images[0][0])
    return [*probes, refusals[wave % len(refusals)], refusals[(wave + 5) % len(refusals)]]


def test_memory_stays_flat_over_a_soak(load_server: str) -> None:
    pid = server_pid(load_server)
    sizes = [(240, 320), (333, 250)]
    images = [
        (noise_image(*size, seed=50 + n, image_format="PNG"), size) for n, size in enumerate(sizes)
    ]
    samples: list[int] = []
    started = time.monotonic()
    while time.monotonic() - started < SOAK_SECONDS or len(samples) < 3:
        probes = soak_wave(len(samples), images)
        asyncio.run(run_clients(load_server, probes, clients=len(probes)))
        samples.append(memory_bytes(pid))
    third = len(samples) // 3
    first, last = statistics.median(samples[:third]), statistics.median(samples[-third:])
    # Resident memory after each wave, every answer read. A flat server still moves: on 2 CPU
    # cores a fresh one grew by about 120 MiB over its first ten waves (allocator arenas of the
    # worker threads filling up; less here, after the mixed test has run on it), then stayed
    # within +-70 MiB for the rest of a 150 s soak, as answers of 2 to 16 MiB come and go. A leak
    # of each request's 12 MiB input alone adds 24 MiB a wave, every wave: over a 90 s soak (13 or
    # more waves) the medians of the first and last thirds then differ by over 200 MiB.
    mebibytes = [sample // MEBIBYTE for sample in samples]
    assert last - first <= 200 * MEBIBYTE, f"RSS after each wave, MiB: {mebibytes}"
