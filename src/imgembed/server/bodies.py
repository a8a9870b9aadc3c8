"""Reading request bodies: JSON objects, multipart forms with an image upload or several.

Each reader returns the decoded JSON value (or the form's fields as one) and the uploaded files
as :class:`~imgembed.types.ImageBytes` named by their form field, which is what an
:class:`~imgembed.api.operation.Operation` takes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from imgembed.api.json_body import NotJsonError, decode_json
from imgembed.errors import InvalidInputError, UnsupportedMediaTypeError
from imgembed.settings.values import InputLimits
from imgembed.types import ImageBytes

UPLOAD_FIELDS = ("file", "image")
"""Multipart field names a single image upload may use."""
BATCH_UPLOAD_FIELDS = ("file", "files", "image", "images")
"""Multipart field names the files of an image batch may use."""

Body = tuple[Any, list[ImageBytes]]
"""A request's JSON value and its uploaded images."""


def content_type(request: Request) -> str:
    """The request's media type, lower-cased, without parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


LARGE_BODY_BYTES = 256 * 1024
"""Bodies at least this large are decoded on a worker thread, off the event loop."""


def _limits(request: Request) -> InputLimits:
    return request.app.state.engine.config.limits


async def read_json(request: Request) -> Any:
    """The body as JSON, checked by :func:`~imgembed.api.json_body.decode_json` (UTF-8, nesting
    depth, number length, valid Unicode) before anything parses it further.

    Raises:
        InvalidInputError: The body is not valid JSON or breaks one of those limits.
    """
    raw = await request.body()
    limits = _limits(request)
    if len(raw) < LARGE_BODY_BYTES:
        return decode_json(raw, limits)
    return await asyncio.to_thread(decode_json, raw, limits)


async def json_body(request: Request) -> Body:
    """A JSON-only body.

    Raises:
        UnsupportedMediaTypeError: The body is declared as something other than JSON.
        InvalidInputError: The body is not valid JSON.
    """
    kind = content_type(request)
    if kind not in ("application/json", ""):
        raise UnsupportedMediaTypeError(
            f"Content-Type {kind!r} is not accepted here; send application/json",
            field="content-type",
        )
    return await read_json(request), []


async def image_body(request: Request, *, json_form_values: bool = False) -> Body:
    """JSON, or a multipart form with one image file (``file``) and the other fields.

    Args:
        request: The request.
        json_form_values: Parse each form value as JSON where it is JSON (``[[10, 20]]``,
            ``false``), keeping it as a string otherwise; for operations whose fields are lists.

    Raises:
        UnsupportedMediaTypeError: The body is neither JSON nor multipart.
        InvalidInputError: The body is not valid JSON, or a file came in an unknown field.
    """
    kind = content_type(request)
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32)
        fields: dict[str, Any] = {}
        uploads: list[ImageBytes] = []
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name not in UPLOAD_FIELDS:
                        raise InvalidInputError(
                            f"file uploaded as {name!r}; upload the image as 'file'", field=name
                        )
                    uploads.append(ImageBytes(await value.read(), field=name))
                else:
                    fields[name] = (
                        _form_value(value, name, _limits(request)) if json_form_values else value
                    )
        finally:
            await form.close()
        return fields, uploads
    if kind in ("application/json", ""):
        return await read_json(request), []
    raise UnsupportedMediaTypeError(
        f"Content-Type {kind!r} is not accepted; send application/json or multipart/form-data",
        field="content-type",
    )


async def image_batch_body(request: Request, limit: int) -> Body:
    """JSON, or a multipart form of image files (``files[i]`` in errors) and a ``model`` field.

    Raises:
        UnsupportedMediaTypeError: The body is neither JSON nor multipart.
        InvalidInputError: No file, a file in an unknown field, or an unknown form field.
    """
    if content_type(request) != "multipart/form-data":
        return await json_body(request)
    form = await request.form(max_files=limit + 1, max_fields=8)
    images: list[ImageBytes] = []
    fields: dict[str, Any] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in BATCH_UPLOAD_FIELDS:
                    raise InvalidInputError(
                        f"file uploaded as {name!r}; upload images as 'files'", field=name
                    )
                images.append(ImageBytes(await value.read(), field=f"files[{len(images)}]"))
            elif name == "model":
                fields["model"] = value
            else:
                raise InvalidInputError(
                    f"unknown form field {name!r}; send files and optionally model", field=name
                )
    finally:
        await form.close()
    if not images:
        raise InvalidInputError("no files uploaded; upload images as 'files'", field="files")
    return fields, images


def _form_value(text: str, name: str, limits: InputLimits) -> Any:
    """A form value as JSON where it is JSON (checked like a body), else the text itself."""
    try:
        return decode_json(text.encode("utf-8", errors="surrogatepass"), limits, field=name)
    except NotJsonError:
        return text
