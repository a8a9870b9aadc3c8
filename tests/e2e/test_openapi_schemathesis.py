"""The OpenAPI document tells the truth (issue 14): schemathesis generates requests from the served
``/openapi.json`` and checks every answer against it.

The server is the real app (routes, middleware, operations, batchers, the vector store) on
loopback, with fake model math (``tests/support/fakes.py``) so that hundreds of requests take
seconds. For each operation schemathesis sends its examples, a few schema-valid and a few
schema-invalid requests, and checks that

- no answer is a 5xx (``not_a_server_error``);
- every status is documented for the operation (``status_code_conformance``);
- every Content-Type is documented for that status (``content_type_conformance``);
- every body matches the schema documented for that status (``response_schema_conformance``).

and every request body example the document gives is answered 200.

Bounds: :data:`MAX_EXAMPLES` generated cases per operation and generation mode (schema-valid,
and schema-invalid where there is a body or parameter to break), no shrinking (the first failing
case is reported), derandomized (the same cases every run) with no example database, a request
timeout, and only schemathesis's fuzzing cases (no coverage or stateful phase): at most about
1,100 requests (an operation with nothing to vary sends one), about 30 s on 2 cores.

Nothing leaves loopback: URL fetches are refused by the server's fetch policy (no scheme is
allowed), schemathesis loads the document and sends requests to the loopback server only, and
the suite's guard (``tests/conftest.py``) fails any other connection.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from servers import in_process_server

from imgembed.engine import Engine
from imgembed.server.app import create_app
from imgembed.settings import FetchPolicy, InputLimits, ModelSpec, ServerConfig

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (schemathesis needs it)
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 25
"""Generated cases per operation (per generation mode); with the examples phase, a few more."""
REQUEST_TIMEOUT_S = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SKIPPED_OPERATIONS = {
    "GET /ui/models/{model}/{graph}.onnx": "exports the SAM 2 decoder to ONNX from real weights, "
    "which a fake model has none of (tests/ui covers it)",
}


def _engine(config: ServerConfig) -> Engine:
    """An engine with fake model math when the fast tier's fakes are there, else dummy weights."""
    try:
        from fakes import fake_engine
    except ImportError:
        return Engine(config)
    return fake_engine(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tuple(
        ModelSpec(name, weights="dummy", device="cpu", warmup=False)
        for name in ("sam2.1-hiera-tiny", "siglip2-base-patch16-224")
    )
    config = ServerConfig(
        models=models,
        # Small limits keep generated batches cheap; no URL scheme is allowed, so no generated
        # URL is ever fetched.
        limits=replace(
            InputLimits(),
            max_batch_images=4,
            max_texts=4,
            max_prompt_objects=4,
            max_body_bytes=1 << 20,
        ),
        fetch=replace(FetchPolicy(), allowed_schemes=()),
        collections_dir=str(tmp_path_factory.mktemp("collections")),
        request_timeout_s=REQUEST_TIMEOUT_S,
    )
    with in_process_server(create_app(config, engine=_engine(config))) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api_schema(server: str) -> Any:
    config = schemathesis.Config.from_dict({"request-timeout": REQUEST_TIMEOUT_S})
    document = httpx.get(f"{server}/openapi.json", timeout=30).raise_for_status().json()
    return schemathesis.openapi.from_dict(_generable(document), config=config)


GENERABLE_SIZE = 64
"""Longest string or array the generator is asked to make; Hypothesis cannot make a mask_input
(349528 base64 characters, or 256 rows of 256 numbers) at all."""


def _generable(value: Any) -> Any:
    """The document with size bounds over :data:`GENERABLE_SIZE` dropped (what is generated is
    then shorter than the bound, and the server answers 400, as documented)."""
    if isinstance(value, list):
        return [_generable(item) for item in value]
    if not isinstance(value, dict):
        return value
    bounds = {("minLength", "maxLength"), ("minItems", "maxItems")}
    out = {key: _generable(item) for key, item in value.items()}
    for low, high in bounds:
        if isinstance(out.get(low), int) and out[low] > GENERABLE_SIZE:
            out.pop(low)
            out.pop(high, None)
    return out


def _cases() -> list[Any]:
    """``(METHOD /path, mode)`` for every documented operation, read from the app's document (no
    server is needed to collect the tests): schema-valid requests for each, schema-invalid ones
    for each that has a body or a constrained parameter to break."""
    config = ServerConfig(models=(ModelSpec("sam2.1-hiera-tiny", weights="dummy", device="cpu"),))
    with warnings.catch_warnings():
        # /ui/ answers GET and HEAD from one function: FastAPI warns of a duplicate operation id.
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        document = create_app(config).openapi()
    cases = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            name = f"{method.upper()} {path}"
            if name in SKIPPED_OPERATIONS:
                continue
            cases.append(pytest.param(name, GenerationMode.POSITIVE, id=f"{name}-positive"))
            breakable = "requestBody" in operation or any(
                parameter["schema"].get("type") != "string"
                for parameter in operation.get("parameters", [])
            )
            if breakable:
                cases.append(pytest.param(name, GenerationMode.NEGATIVE, id=f"{name}-negative"))
    return cases


@pytest.mark.parametrize(("name", "mode"), _cases())
def test_every_answer_is_documented(
    api_schema: Any, server: str, name: str, mode: GenerationMode
) -> None:
    method, path = name.split(" ", 1)
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(base_url=server, checks=CHECKS)

    check()


EXAMPLE_COLLECTION = "openapi-examples"
"""The collection the documented collection examples run on (created by the add example)."""


def _example_order(path: str) -> int:
    """Adding to a collection comes before searching it, deleting its items last."""
    return {"/v1/collections/{name}/items": 0, "/v1/collections/{name}/items/delete": 2}.get(
        path, 1
    )


def test_documented_examples_are_accepted(api_schema: Any, server: str) -> None:
    """Every request body example in the document is answered 200, with a documented answer."""
    examples = [
        (path, method, content["example"])
        for path, item in api_schema.raw_schema["paths"].items()
        for method, operation in item.items()
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items()
        if media_type == "application/json" and "example" in content
    ]
    assert len(examples) >= 9
    for path, method, example in sorted(examples, key=lambda entry: _example_order(entry[0])):
        case = api_schema[path][method.upper()].Case(
            body=example,
            media_type="application/json",
            path_parameters={"name": EXAMPLE_COLLECTION} if "{name}" in path else None,
        )
        response = case.call_and_validate(base_url=server, checks=CHECKS)
        assert response.status_code == 200, f"{method.upper()} {path}: {response.text[:300]}"
