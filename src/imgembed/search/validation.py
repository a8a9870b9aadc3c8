"""Checks on what clients send a vector store, shared by every backend.

Each check raises :class:`~imgembed.errors.InvalidInputError` naming the request field and, for
lists, the index at fault, with what was expected and what came.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgembed.errors import InvalidInputError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class StoreLimits:
    """Bounds on what one call may carry.

    Attributes:
        max_name_chars: Longest collection name.
        max_dimension: Longest vector.
        max_id_chars: Longest item id.
        max_items_per_call: Most items in one add, get or delete.
        max_metadata_bytes: Largest metadata object, as compact UTF-8 JSON.
        max_metadata_depth: Deepest nesting of objects and arrays in metadata.
        max_top_k: Most hits one search returns.
        max_page_size: Most items one ``list_items`` page returns.
    """

    max_name_chars: int = 64
    max_dimension: int = 16384
    max_id_chars: int = 256
    max_items_per_call: int = 10_000
    max_metadata_bytes: int = 16_384
    max_metadata_depth: int = 16
    max_top_k: int = 1000
    max_page_size: int = 1000


def check_collection_name(name: object, limits: StoreLimits) -> str:
    """A collection name: 1 to ``max_name_chars`` of ``A-Z a-z 0-9 _ -``, starting alphanumeric."""
    if not isinstance(name, str):
        raise InvalidInputError(
            f"collection name must be a string, got {type(name).__name__}", field="name"
        )
    if not _NAME.fullmatch(name) or len(name) > limits.max_name_chars:
        raise InvalidInputError(
            f"invalid collection name {name[:80]!r}: use 1 to {limits.max_name_chars} characters "
            "from A-Z, a-z, 0-9, '_' and '-', starting with a letter or digit",
            field="name",
        )
    return name


def check_dimension(dimension: object, limits: StoreLimits) -> int:
    """A vector length for a new collection: an integer from 1 to ``max_dimension``."""
    if isinstance(dimension, bool) or not isinstance(dimension, int | np.integer):
        raise InvalidInputError(
            f"dimension must be an integer, got {type(dimension).__name__}", field="dimension"
        )
    if not 1 <= int(dimension) <= limits.max_dimension:
        raise InvalidInputError(
            f"dimension must be from 1 to {limits.max_dimension}, got {int(dimension)}",
            field="dimension",
        )
    return int(dimension)


def check_model(model: object) -> str | None:
    """The optional model name a collection records: None, or 1 to 256 printable characters."""
    if model is None:
        return None
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise InvalidInputError(
            f"model must be a model name of 1 to 256 characters, got {model!r:.80}", field="model"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in model):
        raise InvalidInputError(f"model {model!r:.80} contains a control character", field="model")
    try:
        model.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"model is not valid Unicode text ({e.reason})", field="model"
        ) from e
    return model


def check_id(item_id: object, where: str, limits: StoreLimits) -> str:
    """One item id: a non-empty string of printable text up to ``max_id_chars``."""
    if not isinstance(item_id, str):
        raise InvalidInputError(
            f"{where} must be a string, got {type(item_id).__name__}", field="ids"
        )
    if not item_id or len(item_id) > limits.max_id_chars:
        raise InvalidInputError(
            f"{where} must have 1 to {limits.max_id_chars} characters, got {len(item_id)}",
            field="ids",
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in item_id):
        raise InvalidInputError(
            f"{where} {item_id[:80]!r} contains a control character; ids are printable text",
            field="ids",
        )
    try:
        item_id.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"{where} is not valid Unicode text ({e.reason})", field="ids"
        ) from e
    return item_id


def check_ids(ids: object, limits: StoreLimits, *, unique: bool) -> list[str]:
    """A non-empty list of ids, at most ``max_items_per_call``, optionally without repeats."""
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidInputError(
            f"ids must be a list of strings, got {type(ids).__name__}", field="ids"
        )
    if not ids:
        raise InvalidInputError("ids is empty; give at least one id", field="ids")
    if len(ids) > limits.max_items_per_call:
        raise InvalidInputError(
            f"{len(ids)} ids in one call; at most {limits.max_items_per_call}, send several calls",
            field="ids",
        )
    checked = [check_id(item_id, f"ids[{i}]", limits) for i, item_id in enumerate(ids)]
    if unique and len(set(checked)) != len(checked):
        repeated = sorted(item_id for item_id, n in Counter(checked).items() if n > 1)
        raise InvalidInputError(
            f"ids repeat within the request: {show_ids(repeated)}; each item needs its own id",
            field="ids",
        )
    return checked


def unit_vectors(vectors: object, count: int, dimension: int, *, field: str) -> np.ndarray:
    """``[count, dimension]`` float32 rows scaled to unit L2 norm.

    Args:
        vectors: ``[N,D]`` numbers (array or nested lists).
        count: The N the request needs (one per id).
        dimension: The collection's D.
        field: The request field the vectors came in, for errors.

    Returns:
        ``[count, dimension]`` float32, each row of norm 1.
    """
    try:
        array = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"{field} must be {count} lists of {dimension} numbers each ({e})", field=field
        ) from e
    if array.ndim != 2 or array.shape[0] != count:
        raise InvalidInputError(
            f"{field} must have shape [{count}, {dimension}] (one vector per id), got "
            f"{list(array.shape)}",
            field=field,
        )
    if array.shape[1] != dimension:
        raise InvalidInputError(
            f"{field}: expected {dimension} values per vector (the collection's dimension), got "
            f"{array.shape[1]}",
            field=field,
        )
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidInputError(f"{field}[{bad}] holds NaN or infinity", field=field)
    # Scale each row by its largest magnitude first, so huge values cannot overflow the norm.
    largest = np.abs(array).max(axis=1)  # [count]
    if not (largest > 0).all():
        bad = int(np.flatnonzero(~(largest > 0))[0])
        raise InvalidInputError(
            f"{field}[{bad}] is all zeros; a zero vector has no direction to compare by cosine",
            field=field,
        )
    scaled = array / largest[:, None]  # [count, dimension], entries in [-1, 1]
    unit = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)  # [count, dimension]
    return unit.astype(np.float32)


def unit_query(vector: object, dimension: int) -> np.ndarray:
    """A search query as ``[dimension]`` float32 of unit norm; ``field="vector"`` on errors."""
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"vector must be a list of {dimension} numbers ({e})", field="vector"
        ) from e
    if array.ndim != 1:
        raise InvalidInputError(
            f"vector must be one list of {dimension} numbers, got shape {list(array.shape)}",
            field="vector",
        )
    return unit_vectors(array[None, :], 1, dimension, field="vector")[0]  # [dimension]


def metadata_json(metadata: object, where: str, limits: StoreLimits) -> str:
    """One item's metadata checked and written as compact JSON text.

    Args:
        metadata: Should be a JSON object: string keys; values null, booleans, finite numbers,
            strings, lists and objects, nested at most ``max_metadata_depth`` deep.
        where: Its place in the request (``metadata[3]``).
        limits: Size bounds.

    Returns:
        Compact UTF-8 JSON of at most ``max_metadata_bytes`` bytes.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(
            f"{where} must be a JSON object, got {type(metadata).__name__}", field="metadata"
        )
    _check_json_value(dict(metadata), where, 0, limits)
    try:
        text = json.dumps(
            dict(metadata), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
        size = len(text.encode("utf-8"))
    except (ValueError, UnicodeEncodeError) as e:
        raise InvalidInputError(f"{where} is not valid JSON text ({e})", field="metadata") from e
    if size > limits.max_metadata_bytes:
        raise InvalidInputError(
            f"{where} is {size} bytes as JSON; at most {limits.max_metadata_bytes}",
            field="metadata",
        )
    return text


def _check_json_value(value: object, where: str, depth: int, limits: StoreLimits) -> None:
    """Raises unless ``value`` is plain JSON, finite, nested at most ``max_metadata_depth``."""
    if depth > limits.max_metadata_depth:
        raise InvalidInputError(
            f"{where} is nested deeper than {limits.max_metadata_depth} levels", field="metadata"
        )
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            raise InvalidInputError(
                f"{where} holds {value!r}; numbers must be finite doubles", field="metadata"
            )
        return
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(
                    f"{where} has a key of type {type(key).__name__}; keys must be strings",
                    field="metadata",
                )
            _check_json_value(child, f"{where}.{key}", depth + 1, limits)
        return
    if isinstance(value, list | tuple):
        for i, child in enumerate(value):
            _check_json_value(child, f"{where}[{i}]", depth + 1, limits)
        return
    raise InvalidInputError(
        f"{where} holds a {type(value).__name__}; metadata values must be JSON", field="metadata"
    )


def check_metadata_list(
    metadata: Sequence[Mapping[str, Any]] | None, count: int, limits: StoreLimits
) -> list[str]:
    """Every item's metadata as JSON text; ``None`` means ``{}`` for each of ``count`` items."""
    if metadata is None:
        return ["{}"] * count
    if isinstance(metadata, str | Mapping) or not isinstance(metadata, Sequence):
        raise InvalidInputError(
            f"metadata must be a list of {count} JSON objects (one per id), got "
            f"{type(metadata).__name__}",
            field="metadata",
        )
    if len(metadata) != count:
        raise InvalidInputError(
            f"metadata has {len(metadata)} entries for {count} ids; give one object per id",
            field="metadata",
        )
    return [metadata_json(m, f"metadata[{i}]", limits) for i, m in enumerate(metadata)]


def check_positive(value: object, field: str, maximum: int) -> int:
    """An integer from 1 to ``maximum`` (``top_k``, ``limit``)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInputError(
            f"{field} must be an integer, got {type(value).__name__}", field=field
        )
    if not 1 <= int(value) <= maximum:
        raise InvalidInputError(
            f"{field} must be from 1 to {maximum}, got {int(value)}", field=field
        )
    return int(value)


def show_ids(ids: Sequence[str], most: int = 10) -> str:
    """Up to ``most`` ids quoted, and how many more, for error messages."""
    shown = ", ".join(repr(i) for i in ids[:most])
    return shown if len(ids) <= most else f"{shown} and {len(ids) - most} more"
