"""The OpenAPI document, made to tell the truth.

- A request body is the pydantic request model its route parses with, as a component
  (``#/components/schemas/<Model>``) with its nested models beside it: routes name it with
  :func:`request_body`, and :func:`install` writes the components (a model's own ``$defs`` become
  components too, so no ``$ref`` dangles). A multipart variant is derived from the same model
  (:class:`Multipart`): its fields less the image sources, plus the upload.
- Every status a route answers is listed with its body: :func:`error_responses` for the native
  ``{"error": {...}}`` and the v2 ``{"error": "..."}``. FastAPI's ``422`` is not: this server
  answers parameter validation failures with 400. The middleware's 413 (body over the limit) is
  added to every operation with a body, and 401 to every non-public operation when an API key is
  set.
- Limits that come from the configuration (images per request, texts, prompt points and objects)
  are written into the schemas of this server's document (:data:`CONFIGURED_LIMITS`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from imgembed.settings import ServerConfig

COMPONENTS = "#/components/schemas/"
"""Where ``$ref`` of a component points."""


class ErrorDetail(BaseModel):
    """What went wrong, with the field at fault and the request id."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Stable identifier clients can branch on (invalid_input, ...).")
    message: str = Field(description="What was expected, what came, and how to fix it.")
    field: str | None = Field(description="The request field at fault, when one is.")
    request_id: str = Field(description="The X-Request-ID of the request.")


class ErrorBody(BaseModel):
    """Every refusal of a native route: ``{"error": {"code", "message", "field", "request_id"}}``."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """Every refusal of an Open Inference Protocol (v2) route: ``{"error": "<message>"}``."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="What went wrong; names the input or field at fault.")


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input: the message names the field and says what was expected.",
    401: "Missing or wrong API key (only when IMGEMBED_API_KEY is set).",
    404: "An unknown model, collection, cached image_id or other named resource.",
    409: "Conflicts with stored state (an id that exists, with on_conflict reject).",
    413: "The body, an image or a download is over its size limit.",
    415: "A Content-Type (or Content-Encoding) the route does not read.",
    429: "The model's queue is full; retry after Retry-After seconds.",
    503: "Not ready (models loading, shutting down); retry after Retry-After seconds.",
    504: "The request's deadline passed before its work ran; the work was dropped.",
    507: "One item does not fit on the device even alone (out of memory).",
}
"""What each error status means, the same on every route."""

MODEL_ERRORS = (400, 404, 413, 415, 429, 503, 504, 507)
"""What a route that runs a model can answer besides 200."""


def error_responses(*statuses: int, v2: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route decorator: each status with its error body and meaning."""
    model = V2ErrorBody if v2 else ErrorBody
    return {
        status: {"model": model, "description": ERROR_DESCRIPTIONS[status]} for status in statuses
    }


@dataclass(frozen=True)
class Multipart:
    """The multipart form variant of a JSON request model.

    Attributes:
        name: Its component name.
        upload: The form field the image file(s) come in.
        many: Several files (an array of them), or one.
        omit: Fields of the JSON model the form does not take (the image sources an upload
            replaces, fields the form refuses).
        json_values: Whether each form value is read as JSON (``[[10, 20]]``, ``false``); then
            the form's non-string fields are documented as ``application/json`` parts.
    """

    name: str
    upload: str = "file"
    many: bool = False
    omit: tuple[str, ...] = ("image_b64", "input_image_url", "image_id")
    json_values: bool = False


_REQUEST_MODELS: dict[str, type[BaseModel]] = {}
_MULTIPART: dict[str, tuple[type[BaseModel], Multipart]] = {}


def _register(model: type[BaseModel]) -> dict[str, str]:
    known = _REQUEST_MODELS.setdefault(model.__name__, model)
    if known is not model:
        raise ValueError(f"two request models are named {model.__name__}")
    return {"$ref": COMPONENTS + model.__name__}


EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAHUlEQVR42mNkYGgQYGAgHrEwCDCQBEY1jGoYOhoAHgoCn"
    "oxpJwYAAAAASUVORK5CYII="
)
"""A 16x16 PNG (a colour gradient), base64: the image of the documented examples."""
EXAMPLE_PNG_DATA_URI = "data:image/png;base64," + EXAMPLE_PNG_BASE64


def request_body(
    model: type[BaseModel],
    *,
    multipart: Multipart | None = None,
    description: str | None = None,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is ``model`` (JSON) and, optionally, a form.

    The route reads the body itself (to name fields in its errors its way); this documents what
    it parses with. ``example`` is a JSON body the route accepts (tests send every one).
    """
    if example is not None:
        model.model_validate(example)  # a documented example is at least a valid request
    json_content: dict[str, Any] = {"schema": _register(model)}
    if example is not None:
        json_content["example"] = example
    content: dict[str, Any] = {"application/json": json_content}
    if multipart is not None:
        _MULTIPART[multipart.name] = (model, multipart)
        form: dict[str, Any] = {"schema": {"$ref": COMPONENTS + multipart.name}}
        encoding = _json_encoded_fields(model, multipart)
        if encoding:
            form["encoding"] = {name: {"contentType": "application/json"} for name in encoding}
        content["multipart/form-data"] = form
    body: dict[str, Any] = {"required": True, "content": content}
    if description is not None:
        body["description"] = description
    return {"requestBody": body}


def _json_encoded_fields(model: type[BaseModel], multipart: Multipart) -> list[str]:
    """The form fields a client sends as JSON text: every one that is not only a string."""
    if not multipart.json_values:
        return []
    properties = model.model_json_schema()["properties"]
    return [
        name
        for name, schema in properties.items()
        if name not in multipart.omit and not _string_only(schema)
    ]


def _string_only(schema: dict[str, Any]) -> bool:
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    return all(b.get("type") == "string" for b in branches)


def _multipart_schema(model_schema: dict[str, Any], multipart: Multipart) -> dict[str, Any]:
    properties = {
        name: schema
        for name, schema in model_schema["properties"].items()
        if name not in multipart.omit
    }
    binary = {"type": "string", "format": "binary"}
    upload = {"type": "array", "items": binary, "minItems": 1} if multipart.many else binary
    schema: dict[str, Any] = {
        "type": "object",
        "title": multipart.name,
        "description": f"{model_schema.get('description', '')} As a multipart form: the image "
        f"{'files' if multipart.many else 'file'} in '{multipart.upload}'.".strip(),
        "properties": {multipart.upload: upload, **properties},
        "required": [
            multipart.upload,
            *(name for name in model_schema.get("required", []) if name in properties),
        ],
        "additionalProperties": False,
    }
    return schema


CONFIGURED_LIMITS: dict[tuple[str, str], Callable[[ServerConfig], dict[str, int]]] = {
    ("SiglipEmbedRequest", "images"): lambda c: {"maxItems": c.limits.max_batch_images},
    ("SiglipEmbedForm", "files"): lambda c: {"maxItems": c.limits.max_batch_images},
    ("SiglipTextRequest", "texts"): lambda c: {"maxItems": c.limits.max_texts},
    ("AddItemsRequest", "items"): lambda c: {"maxItems": c.limits.max_batch_images},
    ("Sam2SegmentRequest", "points"): lambda c: {"maxItems": c.limits.max_prompt_points},
    ("PromptObject", "points"): lambda c: {"maxItems": c.limits.max_prompt_points},
    ("Sam2SegmentRequest", "boxes"): lambda c: {"maxItems": c.limits.max_prompt_objects},
    ("Sam2SegmentRequest", "objects"): lambda c: {"maxItems": c.limits.max_prompt_objects},
}
"""Schema keywords of a component's property that this server's configuration sets."""


def _components(config: ServerConfig | None) -> dict[str, Any]:
    """Every registered request model, its nested models and its multipart variant."""
    _, top = models_json_schema(
        [(model, "validation") for model in _REQUEST_MODELS.values()],
        ref_template=COMPONENTS + "{model}",
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    for name, (model, multipart) in _MULTIPART.items():
        schemas[name] = _multipart_schema(copy.deepcopy(schemas[model.__name__]), multipart)
    if config is not None:
        for (component, field), limits in CONFIGURED_LIMITS.items():
            schema = schemas.get(component, {}).get("properties", {}).get(field)
            if schema is not None:
                _array_branch(schema).update(limits(config))
    return schemas


def _array_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The array schema of a property (its non-null branch when it may be null)."""
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "array":
            return branch
    return schema


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                yield path, operation


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "$ref" and isinstance(child, str):
                yield child
            else:
                yield from _refs(child)
    elif isinstance(value, list):
        for child in value:
            yield from _refs(child)


def _error_response(status: int, *, v2: bool) -> dict[str, Any]:
    name = (V2ErrorBody if v2 else ErrorBody).__name__
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": COMPONENTS + name}}},
    }


def complete(document: dict[str, Any], config: ServerConfig | None) -> dict[str, Any]:
    """Adds the request components and the statuses every route shares to a generated document.

    Returns:
        ``document``, changed in place.
    """
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_components(config))
    for model in (ErrorBody, V2ErrorBody):
        _, top = models_json_schema([(model, "serialization")], ref_template=COMPONENTS + "{model}")
        schemas.update(top["$defs"])
    public = _public(config)
    for path, operation in _operations(document):
        v2 = path == "/v2" or path.startswith("/v2/")
        responses = operation.setdefault("responses", {})
        if responses.pop("422", None) is not None and _parameters_can_fail(operation):
            # FastAPI documents 422 for parameter validation; the app answers it with 400.
            responses.setdefault("400", _error_response(400, v2=v2))
        if "requestBody" in operation:
            responses.setdefault("413", _error_response(413, v2=v2))
        if config is not None and config.api_key and not public(path):
            responses.setdefault("401", _error_response(401, v2=v2))
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 bodies, if unused
        if COMPONENTS + name not in set(_refs(document)):
            schemas.pop(name, None)
    return document


def _parameters_can_fail(operation: dict[str, Any]) -> bool:
    """Whether FastAPI can refuse a parameter of the operation (an optional or path string never
    fails)."""
    plain = {"type", "title", "description", "default"}
    return any(
        parameter.get("schema", {}).get("type") != "string"
        or set(parameter.get("schema", {})) - plain
        or (parameter.get("in") != "path" and parameter.get("required", False))
        for parameter in operation.get("parameters", [])
    )


def _public(config: ServerConfig | None) -> Callable[[str], bool]:
    """Whether a path template is reachable without the API key (as the middleware decides)."""
    entries = () if config is None else config.public_paths
    exact = {entry for entry in entries if not entry.endswith("*")}
    prefixes = tuple(entry[:-1] for entry in entries if entry.endswith("*"))
    return lambda path: path in exact or (bool(prefixes) and path.startswith(prefixes))


def install(app: FastAPI) -> None:
    """Makes ``app.openapi()`` (and ``/openapi.json``) the completed document (see the module
    docstring); the configuration is read from ``app.state.engine`` when the document is built."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            engine = getattr(app.state, "engine", None)
            complete(document, getattr(engine, "config", None))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
