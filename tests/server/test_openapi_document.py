"""The OpenAPI document is whole and tells the truth (issue 14): every ``$ref`` resolves, request
bodies are the request models the routes parse with (as components), and FastAPI's 422, which this
server never answers, is gone. ``tests/e2e/test_openapi_schemathesis.py`` checks the answers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from imgembed.api.collections import AddItemsRequest, DeleteItemsRequest, SearchRequest
from imgembed.api.sam2.embed import Sam2EmbedRequest
from imgembed.api.sam2.everything import Sam2EverythingRequest
from imgembed.api.sam2.segment import Sam2SegmentRequest
from imgembed.api.siglip import OpenAIEmbeddingsRequest, SiglipEmbedRequest, SiglipTextRequest
from imgembed.server.app import create_app
from imgembed.settings import InputLimits, ModelSpec, ServerConfig

COMPONENTS = "#/components/schemas/"
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/sam2/embed": Sam2EmbedRequest,
    "/v1/sam2/segment": Sam2SegmentRequest,
    "/v1/sam2/segment-everything": Sam2EverythingRequest,
    "/v1/siglip/embed": SiglipEmbedRequest,
    "/v1/siglip/embed-text": SiglipTextRequest,
    "/v1/embeddings": OpenAIEmbeddingsRequest,
    "/v1/collections/{name}/items": AddItemsRequest,
    "/v1/collections/{name}/items/delete": DeleteItemsRequest,
    "/v1/collections/{name}/search": SearchRequest,
}
"""The request model each native route with a body parses with."""
LIMITS = InputLimits(max_batch_images=5, max_texts=6, max_prompt_points=7, max_prompt_objects=8)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    config = ServerConfig(
        models=(ModelSpec("sam2.1-hiera-tiny", weights="dummy", device="cpu"),), limits=LIMITS
    )
    with warnings.catch_warnings():
        # /ui/ answers GET and HEAD from one function: FastAPI warns of a duplicate operation id.
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        return create_app(config).openapi()


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "$ref":
                yield child
            else:
                yield from _refs(child)
    elif isinstance(value, list):
        for child in value:
            yield from _refs(child)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """The value a local JSON Pointer reference names (KeyError when it names nothing)."""
    assert ref.startswith("#/"), f"{ref} is not a reference into the document"
    value: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_ref_resolves_and_no_defs_are_left(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert refs, "the document references no component"
    dangling = []
    for ref in sorted(refs):
        try:
            _resolve(document, ref)
        except (KeyError, IndexError, ValueError):
            dangling.append(ref)
    assert dangling == []
    assert "$defs" not in str(document)


def test_request_bodies_are_the_models_the_routes_parse_with(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for path, model in REQUEST_MODELS.items():
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {
            "$ref": COMPONENTS + model.__name__
        }
        _, expected = models_json_schema(
            [(model, "validation")], ref_template=COMPONENTS + "{model}"
        )
        for name, schema in expected["$defs"].items():
            component = schemas[name]
            # Only the limits this server's configuration sets may differ (see the next test).
            for field, property_schema in component.get("properties", {}).items():
                expected_property = schema["properties"][field]
                if property_schema != expected_property:
                    assert _without_limits(property_schema) == expected_property, (name, field)
            assert {**component, "properties": None} == {**schema, "properties": None}, name
        assert schemas[model.__name__]["additionalProperties"] is False


def _without_limits(schema: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in schema:
        return {**schema, "anyOf": [_without_limits(branch) for branch in schema["anyOf"]]}
    return {key: value for key, value in schema.items() if key != "maxItems"}


def test_the_configured_limits_are_in_the_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    def array(component: str, field: str) -> dict[str, Any]:
        schema = schemas[component]["properties"][field]
        return next((b for b in schema.get("anyOf", []) if b.get("type") == "array"), schema)

    assert array("SiglipEmbedRequest", "images")["maxItems"] == 5
    assert array("SiglipEmbedForm", "files")["maxItems"] == 5
    assert array("AddItemsRequest", "items")["maxItems"] == 5
    assert array("SiglipTextRequest", "texts")["maxItems"] == 6
    assert array("Sam2SegmentRequest", "points")["maxItems"] == 7
    assert array("PromptObject", "points")["maxItems"] == 7
    assert array("Sam2SegmentRequest", "objects")["maxItems"] == 8


def test_loose_fields_document_what_they_accept(document: dict[str, Any]) -> None:
    """Fields typed ``Any`` (so that the route names the entry at fault) say what they take."""
    schemas = document["components"]["schemas"]
    images = schemas["SiglipEmbedRequest"]["properties"]["images"]
    assert images["type"] == "array"
    assert images["items"]["type"] == "string"
    assert images["minItems"] == 1
    assert "images" in schemas["SiglipEmbedRequest"]["required"]
    assert "texts" in schemas["SiglipTextRequest"]["required"]
    openai_input = schemas["OpenAIEmbeddingsRequest"]["properties"]["input"]
    assert {branch["type"] for branch in openai_input["anyOf"]} == {"string", "array"}
    assert schemas["ItemIn"]["properties"]["id"]["type"] == "string"
    points = schemas["PromptObject"]["properties"]["points"]["anyOf"][0]
    assert points["items"] == {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 2,
        "maxItems": 2,
    }
    labels = schemas["Sam2SegmentRequest"]["properties"]["point_labels"]["anyOf"][0]
    assert labels["items"]["enum"] == [-1, 0, 1, 2, 3]
    embed_side = schemas["Sam2EmbedRequest"]["properties"]["resize_longer_side"]
    assert {"type": "integer", "const": 1024} in embed_side["anyOf"]


def test_multipart_variants_are_documented(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for path, form, upload in (
        ("/v1/sam2/embed", "Sam2EmbedForm", "file"),
        ("/v1/sam2/segment", "Sam2SegmentForm", "file"),
        ("/v1/sam2/segment-everything", "Sam2EverythingForm", "file"),
        ("/v1/siglip/embed", "SiglipEmbedForm", "files"),
    ):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        assert content["multipart/form-data"]["schema"] == {"$ref": COMPONENTS + form}
        schema = schemas[form]
        assert upload in schema["required"]
        assert schema["additionalProperties"] is False
        assert not {"image_b64", "input_image_url", "image_id"} & set(schema["properties"])
    segment_form = document["paths"]["/v1/sam2/segment"]["post"]["requestBody"]["content"]
    assert segment_form["multipart/form-data"]["encoding"]["points"] == {
        "contentType": "application/json"
    }
    assert set(schemas["SiglipEmbedForm"]["properties"]) == {"files", "model"}


def test_no_operation_documents_422_and_errors_have_their_shape(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        responses = operation["responses"]
        assert "422" not in responses, f"{method} {path}"
        if "requestBody" in operation:
            assert "413" in responses, f"{method} {path}"
        for status, response in responses.items():
            if status.startswith(("4", "5")) and "content" in response:
                schema = response["content"]["application/json"]["schema"]
                if schema.get("$ref", "").startswith(COMPONENTS):
                    expected = "V2ErrorBody" if path.startswith("/v2") else "ErrorBody"
                    assert schema["$ref"] == COMPONENTS + expected, f"{method} {path} {status}"
    assert "HTTPValidationError" not in document["components"]["schemas"]
