"""Decoding JSON from untrusted clients: the one body reader's checks, before any parsing into models.

A body is refused with an :class:`~imgembed.errors.InvalidInputError` naming the problem when it is
not UTF-8, nests deeper than ``max_json_depth`` arrays and objects, holds a number written with more
than ``max_json_number_chars`` characters, or a string that is not valid Unicode (a lone surrogate
such as ``"\\ud800"``). These are what Python's :func:`json.loads` would otherwise turn into a
``RecursionError``, a ``ValueError`` from its integer string limit, or strings that fail later when
encoded. Non-finite numbers (``NaN``, ``Infinity``, ``1e999``, which Python's decoder accepts) pass
here: each field that takes numbers refuses them by name (``points[0]: ... finite``).

The checks cost little on ordinary bodies: string contents are cut out by one regular expression,
the nesting depth is a cumulative sum over the remaining bytes, and only a body that looks suspect
is parsed a second, slower way to name the field at fault (``texts[3]``, ``inputs[0].data``).
An already decoded value (a RunPod event's ``input``) is checked by :func:`check_json_value`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from imgembed.errors import InvalidInputError
from imgembed.settings.values import InputLimits

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
"""A JSON string literal, escapes included (cut out before the structure is measured)."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""A ``\\uD800``-``\\uDFFF`` escape: the only way a lone surrogate gets into decoded JSON."""
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
_NUMBER_CHAR = np.zeros(256, dtype=bool)
_NUMBER_CHAR[[ord(c) for c in "0123456789.eE+-"]] = True
_BACKSLASH = ord("\\")
_FEW_QUOTES = 4096
"""Up to this many quote characters, strings are cut out by hopping between them."""
_CHUNK_BYTES = 1 << 20
"""Bytes scanned per step (bounds the scan's scratch memory to a few MiB)."""


def decode_json(raw: bytes, limits: InputLimits, *, field: str = "body") -> Any:
    """Decodes a JSON document from a client, refusing what would fail or harm later.

    Args:
        raw: The document's bytes (a request body, a form field's value).
        limits: ``max_json_depth`` and ``max_json_number_chars`` apply.
        field: What the document is, for error messages (``body``, a form field's name).

    Returns:
        The decoded value; every string in it is valid Unicode and every number within the
        length limit.

    Raises:
        NotJsonError: The document is not JSON.
        InvalidInputError: The document is not UTF-8, nested too deep, or holds a number or
            string the checks refuse; the message names the field and the limit.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            f"{_document(field)} is not valid UTF-8 (byte {error.start}: {error.reason}); send "
            "JSON encoded as UTF-8",
            field=field,
        ) from error
    skeleton = _without_strings(raw, text)
    suspect = _scan_structure(skeleton, limits, field) or _SURROGATE_ESCAPE.search(text) is not None
    try:
        if not suspect:
            return json.loads(text)
        value = json.loads(
            text,
            parse_int=_number_reader(int, limits.max_json_number_chars),
            parse_float=_number_reader(float, limits.max_json_number_chars),
        )
    except json.JSONDecodeError as error:
        raise NotJsonError(
            f"{_document(field)} is not valid JSON ({error}); send a JSON object with "
            "Content-Type: application/json, or a multipart form upload",
            field=field,
        ) from error
    except RecursionError as error:  # the depth scan bounds nesting; this is the last guard
        raise _too_deep(field, limits.max_json_depth) from error
    check_json_value(value, limits, prefix="" if field == "body" else field)
    return value


def check_json_value(value: Any, limits: InputLimits, *, prefix: str = "") -> None:
    """Checks a decoded JSON value as :func:`decode_json` checks a document.

    Args:
        value: Dicts, lists, strings, numbers, booleans and ``None``.
        limits: ``max_json_depth`` and ``max_json_number_chars`` apply.
        prefix: Field path of ``value`` itself in error messages (``input`` for a RunPod event).

    Raises:
        InvalidInputError: Nesting deeper than the limit, an integer longer than the limit, or a
            string (or key) that is not valid Unicode; the message names the field.
    """
    largest_int = 10**limits.max_json_number_chars
    # (value, its path, its depth, the path of the top-level field holding it: too deep a
    # structure is named by where it starts, not by a path of 64 indices)
    stack: list[tuple[Any, str, int, str]] = [(value, prefix, 0, prefix)]
    while stack:
        item, path, depth, top = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limits.max_json_depth:
                raise _too_deep(top or "body", limits.max_json_depth)
            if isinstance(item, list):
                children = ((f"{path}[{index}]", child) for index, child in enumerate(item))
            else:
                for key in item:
                    if isinstance(key, str) and not _is_unicode(key):
                        raise _not_unicode(f"{path}.{key!a}" if path else ascii(key), "key")
                children = ((f"{path}.{key}" if path else str(key), item[key]) for key in item)
            stack.extend(
                (child, child_path, depth + 1, child_path if depth == 0 else top)
                for child_path, child in children
            )
        elif isinstance(item, str):
            if not _is_unicode(item):
                raise _not_unicode(path or "body", "string")
        elif isinstance(item, _Refused):
            raise _bad_number(path or "body", item.text, limits.max_json_number_chars)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int) and abs(item) >= largest_int:
            raise _bad_number(path or "body", "an integer this long", limits.max_json_number_chars)


class NotJsonError(InvalidInputError):
    """The document is not JSON at all (as opposed to JSON that breaks a limit)."""


class _Refused:
    """A number the decoder refused, kept in place so its field can be named."""

    def __init__(self, text: str) -> None:
        self.text = text


def _number_reader(convert: type[int] | type[float], max_chars: int) -> Any:
    """A ``parse_int``/``parse_float`` hook that keeps a too long number as a :class:`_Refused`."""

    def read(text: str) -> int | float | _Refused:
        if len(text) > max_chars:
            return _Refused(f"a number of {len(text):,} characters")
        return convert(text)

    return read


def _without_strings(raw: bytes, text: str) -> bytes:
    """The document's bytes with every string's contents cut out (``"..."`` becomes ``""``).

    A document of few strings (an image in base64) is cut by hopping from quote to quote with
    ``bytes.find``, much faster than a regular expression over a long string; one of many strings
    (ids, texts) by the regular expression.
    """
    if raw.count(b'"') > _FEW_QUOTES:
        return _STRING.sub('""', text).encode("utf-8")
    pieces: list[bytes] = []
    position = 0  # start of the piece not yet copied
    search_from = 0
    while (opening := raw.find(b'"', search_from)) >= 0:
        closing = opening
        while True:
            closing = raw.find(b'"', closing + 1)
            if closing < 0:  # unterminated: leave it to the parser to report
                return b"".join(pieces) + raw[position:]
            before = closing - 1
            while before > opening and raw[before] == _BACKSLASH:
                before -= 1
            if (closing - 1 - before) % 2 == 0:  # an even run of backslashes: not escaped
                break
        pieces.append(raw[position : opening + 1])
        position = closing  # the closing quote starts the next piece
        search_from = closing + 1
    pieces.append(raw[position:])
    return b"".join(pieces)


def _scan_structure(skeleton: bytes, limits: InputLimits, field: str) -> bool:
    """Measures a document's structure (its bytes outside strings) in one vectorised pass.

    Returns:
        Whether a number may be longer than ``max_json_number_chars`` (a run of number
        characters is; the slow parse then names its field).

    Raises:
        InvalidInputError: Arrays and objects nest deeper than ``max_json_depth``.
    """
    codes = np.frombuffer(skeleton, dtype=np.uint8)  # [N] uint8
    overlap = limits.max_json_number_chars  # a longer number lies whole inside some window
    depth = 0
    suspect = False
    for start in range(0, codes.size, _CHUNK_BYTES):
        window = codes[start : start + _CHUNK_BYTES + overlap]  # [W] uint8
        steps = _DEPTH_STEP[window[:_CHUNK_BYTES]]  # [C] int8: +1 opens, -1 closes, 0 else
        brackets = np.flatnonzero(steps)  # [K] positions of brackets
        if brackets.size:
            running = np.cumsum(steps[brackets], dtype=np.int64) + depth  # [K] depth after each
            if int(running.max()) > limits.max_json_depth:
                raise _too_deep(field, limits.max_json_depth)
            depth = int(running[-1])
        if not suspect:
            suspect = _longest_run(_NUMBER_CHAR[window]) > overlap
    return suspect


def _longest_run(flags: np.ndarray) -> int:
    """The longest run of ``True`` in a ``[W]`` bool array."""
    edges = np.diff(np.concatenate(([False], flags, [False])).view(np.int8))  # [W+1] int8
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [R] each
    return int((ends - starts).max()) if starts.size else 0


def _document(field: str) -> str:
    return "request body" if field == "body" else field


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _too_deep(field: str, max_depth: int) -> InvalidInputError:
    return InvalidInputError(
        f"{_document(field)} nests arrays and objects deeper than {max_depth} levels, the limit "
        "(IMGEMBED_MAX_JSON_DEPTH); send a flatter document",
        field=field,
    )


def _bad_number(field: str, shown: str, max_chars: int) -> InvalidInputError:
    return InvalidInputError(
        f"{field}: {shown} is not accepted; numbers may be at most {max_chars} characters "
        "long (IMGEMBED_MAX_JSON_NUMBER_CHARS)",
        field=field,
    )


def _not_unicode(field: str, what: str) -> InvalidInputError:
    return InvalidInputError(
        f"{field}: the {what} holds a lone surrogate escape (such as \\ud800), which is not "
        "valid Unicode; send UTF-8 text, and pair surrogate escapes",
        field=field,
    )
