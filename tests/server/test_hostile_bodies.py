"""Hostile bodies on every JSON route the OpenAPI document lists, over real HTTP (fake models).

Each route's documented example (or, for the v2 routes, a body built from each model's metadata) is
the base; the corpus replaces the whole body (malformed, truncated, deeply nested, huge numbers) and
every field in it (wrong types, lone surrogates, NULs, huge numbers, deep nesting, long strings,
oversized arrays). Every answer must be a 4xx naming the problem (or a 200 where the input is
acceptable, such as a NUL inside a text), on the same keep-alive connection, with no exception in
the server's log. A route added later is swept without editing this file.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fakes import fake_config, fake_server

from imgembed.settings import BatchingSettings

COLLECTION = "hostile"
PLACEHOLDER = "\u0001raw\u0001"
"""Stands in a field's place until the raw bytes that JSON cannot express replace it."""
HUGE_NUMBER = b"9" * 100_000
DEEP = b"[" * 50_000 + b"]" * 50_000


@dataclass(frozen=True)
class Case:
    """One request of the corpus."""

    route: str
    name: str
    body: bytes


class LogRecords(logging.Handler):
    """Keeps every record at WARNING and above that the server logs while the test runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def unhandled(self) -> list[str]:
        return [
            record.getMessage()
            for record in self.records
            if record.exc_info or "Exception in ASGI" in record.getMessage()
        ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = fake_config(
        batching=BatchingSettings(4, 1, 4096),
        collections_dir=str(tmp_path_factory.mktemp("collections")),
    )
    with fake_server(config) as running:
        yield running.url


@pytest.fixture
def log_records() -> Iterator[LogRecords]:
    handler = LogRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.connect()
    return connection


def send(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    connection.request(method, path, body=body if method == "POST" else None, headers=headers)
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def json_routes(url: str) -> dict[str, Any]:
    """Path template -> the POST operation, for every operation that takes a JSON body."""
    connection = connect(url)
    _, _, document = send(connection, "GET", "/openapi.json")
    routes = {}
    for path, operations in json.loads(document)["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if method == "post" and "application/json" in content:
                routes[path] = content["application/json"]
    return routes


def v2_bases(url: str) -> list[tuple[str, dict[str, Any]]]:
    """One small, well-formed inference body per served v2 model (built from its metadata)."""
    connection = connect(url)
    _, _, index = send(connection, "POST", "/v2/repository/index")
    bases = []
    for model in json.loads(index):
        _, _, metadata = send(connection, "GET", f"/v2/models/{model['name']}")
        inputs = []
        for tensor in json.loads(metadata)["inputs"]:
            shape = [1 if size < 0 else size for size in tensor["shape"]]
            count = min(math.prod(shape), 8)
            data = ["a photo of a cat"] * count if tensor["datatype"] == "BYTES" else [0.5] * count
            inputs.append({"name": tensor["name"], "datatype": tensor["datatype"]})
            inputs[-1].update({"shape": shape, "data": data})
        bases.append(
            (model["name"], {"inputs": inputs, "parameters": {"binary_data_output": False}})
        )
    return bases


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position in a JSON value: containers and the values inside them."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaf_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaf_paths(child, (*path, index))


def replaced(base: Any, path: tuple[Any, ...], value: Any) -> Any:
    copied = copy.deepcopy(base)
    holder = copied
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    return copied


def encoded(document: Any, raw: bytes = b"") -> bytes:
    """``document`` as JSON (non-ASCII escaped, as many clients send it), the placeholder replaced
    by ``raw``."""
    text = json.dumps(document).encode()
    return text.replace(json.dumps(PLACEHOLDER).encode(), raw) if raw else text


FIELD_VALUES: dict[str, tuple[Any, bytes]] = {
    "null": (None, b""),
    "true": (True, b""),
    "negative": (-1, b""),
    "float": (1e308, b""),
    "NaN": (PLACEHOLDER, b"NaN"),
    "empty string": ("", b""),
    "lone surrogate": ("\ud800", b""),
    "NUL": ("a\u0000b", b""),
    "long string": ("x" * 100_000, b""),
    "empty array": ([], b""),
    "object": ({"": {"\udc00": 1}}, b""),
    "huge number": (PLACEHOLDER, HUGE_NUMBER),
    "deep nesting": (PLACEHOLDER, DEEP),
}


def corpus(route: str, base: Any) -> Iterator[Case]:
    whole = encoded(base)
    for name, body in {
        "empty": b"",
        "not JSON": b"{'image_b64': 1}",
        "truncated": whole[: len(whole) // 2],
        "trailing garbage": whole + b"}",
        "not UTF-8": b'{"x": "\xff\xfe"}',
        "array": b"[]",
        "string": b'"\\ud800"',
        "huge number": HUGE_NUMBER,
        "deep nesting": b'{"x": ' + DEEP + b"}",
        "surrogate key": b'{"\\ud800": 1}',
        "NUL key": encoded({**base, "a\u0000": 1}) if isinstance(base, dict) else whole,
    }.items():
        yield Case(route, name, body)
    for path in leaf_paths(base):
        where = ".".join(map(str, path))
        for name, (value, raw) in FIELD_VALUES.items():
            yield Case(route, f"{where} = {name}", encoded(replaced(base, path, value), raw))
        current = base
        for step in path:
            current = current[step]
        if isinstance(current, list) and current:
            element = json.dumps(current[0]).encode()
            copies = 100_001 if len(element) <= 64 else 1_001
            oversized = b"[" + b",".join([element] * copies) + b"]"
            body = encoded(replaced(base, path, PLACEHOLDER), oversized)
            yield Case(route, f"{where} = {copies:,} elements", body)


def assert_refused_well(case: Case, status: int, headers: dict[str, str], body: bytes) -> None:
    what = f"{case.route} with {case.name}: {status} {body[:300]!r}"
    assert status < 500, what
    if status == 200:
        return
    assert 400 <= status < 500, what
    assert headers.get("content-type") == "application/json", what
    error = json.loads(body)["error"]
    if case.route.startswith("/v2/"):
        assert isinstance(error, str), what
        assert error, what
    else:
        assert error["message"], what
        assert error["request_id"], what
        if status == 400:  # the field at fault, or the whole body ("body must be a JSON object")
            assert error["field"] or error["message"].startswith("body "), what


def test_every_json_route_refuses_every_hostile_body_and_keeps_serving(
    server: str, log_records: LogRecords
) -> None:
    routes = json_routes(server)
    assert "/v1/sam2/segment" in routes
    assert "/v2/models/{model_name}/infer" in routes
    connection = connect(server)
    example = routes["/v1/collections/{name}/items"]["example"]
    status, _, answer = send(
        connection, "POST", f"/v1/collections/{COLLECTION}/items", encoded(example)
    )
    assert status == 200, answer
    v2_models = v2_bases(server)

    def cases() -> Iterator[tuple[str, Case]]:
        """Built as they are sent: a keep-alive connection idle for seconds would be closed."""
        for template, content in routes.items():
            if template.startswith("/v2/"):
                for model, base in v2_models:
                    path = template.format(model_name=model, model_version="1")
                    yield from ((path, case) for case in corpus(template, base))
                    if "{model_version}" in template:
                        break  # the versioned route parses alike: one model suffices
                continue
            assert "example" in content, f"{template} documents no example body"
            path = template.format(name=COLLECTION)
            yield from ((path, case) for case in corpus(template, content["example"]))

    counts: dict[int, int] = {}
    for path, case in cases():
        local = connection.sock.getsockname()
        try:
            status, headers, body = send(connection, "POST", path, case.body)
        except http.client.HTTPException as error:
            raise AssertionError(f"{case.route} with {case.name}: no answer ({error})") from error
        assert_refused_well(case, status, headers, body)
        closed = f"{case.route} with {case.name}: the server closed the connection"
        assert connection.sock is not None, closed
        assert connection.sock.getsockname() == local, closed
        counts[status] = counts.get(status, 0) + 1
    assert send(connection, "GET", "/health/ready")[0] == 200
    assert log_records.unhandled() == []
    assert counts.get(400, 0) > sum(counts.values()) // 2, counts


def test_a_nested_item_metadata_is_refused_by_name(server: str) -> None:
    metadata = b'{"a": ' * 3000 + b'"leaf"' + b"}" * 3000  # too deep for json.dumps to write
    item = {"id": "deep", "vector": [0.0] * 768, "metadata": PLACEHOLDER}
    body = encoded({"items": [item]}, metadata)
    connection = connect(server)
    status, _, answer = send(connection, "POST", f"/v1/collections/{COLLECTION}/items", body)
    assert status == 400
    error = json.loads(answer)["error"]
    assert "IMGEMBED_MAX_JSON_DEPTH" in error["message"]
    assert error["field"] == "body"


def test_a_lone_surrogate_in_a_text_names_the_text(server: str) -> None:
    connection = connect(server)
    body = b'{"texts": ["a cat", "\\ud800 dog"]}'
    status, _, answer = send(connection, "POST", "/v1/siglip/embed-text", body)
    assert status == 400
    assert json.loads(answer)["error"]["field"] == "texts[1]"
    status, _, answer = send(
        connection, "POST", "/v1/siglip/embed-text", b'{"texts": ["a\\u0000b"]}'
    )
    assert status == 200, answer


@pytest.mark.parametrize("form_field", ["points", "point_labels"])
def test_a_multipart_form_value_gets_the_same_checks(server: str, form_field: str) -> None:
    value = "[" * 100 + "]" * 100 if form_field == "points" else '["\\ud800"]'
    response = httpx.post(
        f"{server}/v1/sam2/segment",
        files={"file": ("a.png", b"not read", "image/png")},
        data={form_field: value},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"].startswith(form_field)
