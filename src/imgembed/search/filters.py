"""The metadata filter language of similarity search: JSON in, a checked tree, a safe backend filter out.

A filter is a JSON object. Its entries are ANDed; an empty object matches everything.

Grammar::

    filter  := { clause, ... }
    clause  := "$and": [filter, ...]          all must match (non-empty list)
             | "$or":  [filter, ...]          at least one must match (non-empty list)
             | "$not": filter                 must not match
             | key: scalar                    shorthand for key: {"$eq": scalar}
             | key: { op: operand, ... }      all the ops must match
    op      := "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$in" | "$nin" | "$exists"
    scalar  := string | number | true | false

Example: ``{"label": "cat", "year": {"$gte": 2020}, "$or": [{"tag": {"$in": ["a", "b"]}},
{"score": {"$lt": 0.5}}]}``.

Keys are top-level metadata keys, matched literally (any Unicode text; dots are not paths). A key
that begins with ``$`` is written with the ``$`` doubled (``"$$price"`` filters on ``"$price"``);
any other ``$`` word is an operator. Nested objects are stored and returned but are not filterable.

Semantics, per item:

- ``$eq``: the item's value under ``key`` equals the operand, or the value is an array with an element
  equal to it. Types never mix: ``1`` does not equal ``"1"`` or ``true``; ``1`` equals ``1.0``.
- ``$in``: ``$eq`` for at least one of the listed scalars. ``$ne`` / ``$nin`` are the negations of
  ``$eq`` / ``$in``, so items without the key match them (as in MongoDB).
- ``$gt``, ``$gte``, ``$lt``, ``$lte``: the value is a scalar of the operand's kind (number with
  number, string with string in Unicode code point order) and compares as asked. Arrays, booleans,
  null and missing keys never match a range, and a range's operand cannot be a boolean.
- ``$exists``: ``true`` when the key is present (whatever its value, ``null`` included), ``false``
  when it is absent.
- Numbers compare as IEEE double (integers beyond 2**53 lose their last digits).

Limits keep a filter cheap to check and to run: depth, number of clauses, ``$in`` list length and
operand length (see :class:`FilterLimits`). A filter that breaks a rule raises
:class:`~imgembed.errors.InvalidInputError` with ``field="filter"``, naming the place in the filter
(``filter.$or[1].year.$gte``), what it expected and what came.

How it runs: every item stores a second, flattened document beside its metadata (see
:func:`filter_document`), whose keys carry a type tag and the JSON-encoded metadata key:

- ``x:"key"`` is present for every top-level key,
- ``e:["key", value]`` is present for the scalar value and for each scalar element of an array value
  (numbers as doubles), so equality is one key lookup,
- ``n:"key"`` holds a number value and ``s:"key"`` a string value, for ranges.

:func:`to_lance_sql` turns the tree into a LanceDB ``where`` string over that document with Lance's
``json_get`` / ``json_get_float`` / ``json_get_string``. Client text only ever appears inside SQL
string literals (single quotes doubled) or as numbers rendered from Python floats, never as SQL
syntax. :meth:`Filter.matches` evaluates the same tree in Python on the same flattened document; it
is the reference other backends are tested against.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from imgembed.errors import InvalidInputError

Scalar = str | float | bool
"""A filterable metadata value (numbers are held as float)."""

RangeOp = Literal["gt", "gte", "lt", "lte"]

_FIELD = "filter"
_SQL_RANGE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_LEAF_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
_LOGIC_OPS = ("$and", "$or", "$not")


@dataclass(frozen=True)
class FilterLimits:
    """Bounds on a filter's size.

    Attributes:
        max_depth: Deepest nesting of ``$and`` / ``$or`` / ``$not``.
        max_clauses: Most comparisons in one filter (each ``$in`` value counts).
        max_in_values: Longest ``$in`` / ``$nin`` list.
        max_string_chars: Longest string operand or key.
    """

    max_depth: int = 8
    max_clauses: int = 256
    max_in_values: int = 256
    max_string_chars: int = 1024


class Filter(ABC):
    """A checked filter tree node. Build trees with :func:`parse_filter`."""

    @abstractmethod
    def matches(self, document: Mapping[str, object]) -> bool:
        """Whether an item whose flattened document is ``document`` passes this filter."""

    @abstractmethod
    def to_sql(self, column: str) -> str:
        """This node as a LanceDB SQL predicate over the JSON ``column`` (never NULL-valued)."""


@dataclass(frozen=True)
class And(Filter):
    """All children match (no children: everything matches)."""

    children: tuple[Filter, ...]

    def matches(self, document: Mapping[str, object]) -> bool:
        return all(child.matches(document) for child in self.children)

    def to_sql(self, column: str) -> str:
        if not self.children:
            return "true"
        return "(" + " AND ".join(child.to_sql(column) for child in self.children) + ")"


@dataclass(frozen=True)
class Or(Filter):
    """At least one child matches."""

    children: tuple[Filter, ...]

    def matches(self, document: Mapping[str, object]) -> bool:
        return any(child.matches(document) for child in self.children)

    def to_sql(self, column: str) -> str:
        return "(" + " OR ".join(child.to_sql(column) for child in self.children) + ")"


@dataclass(frozen=True)
class Not(Filter):
    """The child does not match."""

    child: Filter

    def matches(self, document: Mapping[str, object]) -> bool:
        return not self.child.matches(document)

    def to_sql(self, column: str) -> str:
        return f"(NOT {self.child.to_sql(column)})"


@dataclass(frozen=True)
class Equals(Filter):
    """The value under ``key`` is ``value``, or is an array holding it."""

    key: str
    value: Scalar

    def matches(self, document: Mapping[str, object]) -> bool:
        return element_key(self.key, self.value) in document

    def to_sql(self, column: str) -> str:
        return f"(json_get({column}, {sql_string(element_key(self.key, self.value))}) IS NOT NULL)"


@dataclass(frozen=True)
class Compare(Filter):
    """The scalar under ``key`` is of ``value``'s kind and compares to it as ``op`` says."""

    key: str
    op: RangeOp
    value: str | float

    def matches(self, document: Mapping[str, object]) -> bool:
        tag = "s" if isinstance(self.value, str) else "n"
        stored = document.get(tagged_key(tag, self.key))
        if stored is None:
            return False
        if self.op == "gt":
            return stored > self.value
        if self.op == "gte":
            return stored >= self.value
        if self.op == "lt":
            return stored < self.value
        return stored <= self.value

    def to_sql(self, column: str) -> str:
        if isinstance(self.value, str):
            getter, tag, literal = "json_get_string", "s", sql_string(self.value)
        else:
            getter, tag, literal = "json_get_float", "n", sql_number(self.value)
        lookup = f"{getter}({column}, {sql_string(tagged_key(tag, self.key))})"
        return f"coalesce({lookup} {_SQL_RANGE[self.op]} {literal}, false)"


@dataclass(frozen=True)
class Exists(Filter):
    """The item's metadata has ``key`` (whatever its value)."""

    key: str

    def matches(self, document: Mapping[str, object]) -> bool:
        return tagged_key("x", self.key) in document

    def to_sql(self, column: str) -> str:
        return f"(json_get({column}, {sql_string(tagged_key('x', self.key))}) IS NOT NULL)"


def tagged_key(tag: Literal["x", "n", "s"], key: str) -> str:
    """A flattened-document key: the type tag, a colon, the metadata key as JSON (ASCII only)."""
    return f"{tag}:{json.dumps(key)}"


def element_key(key: str, value: Scalar) -> str:
    """The flattened-document key present when ``key`` holds ``value`` (alone or in an array)."""
    return "e:" + json.dumps([key, _canonical(value)])


def _canonical(value: Scalar | int) -> Scalar:
    """Numbers as doubles without a negative zero, so ``1``, ``1.0`` and ``-0.0`` key alike."""
    if isinstance(value, bool | str):
        return value
    return float(value) + 0.0


def filter_document(metadata: Mapping[str, object]) -> dict[str, object]:
    """The flattened document stored beside an item's metadata for filtering.

    Args:
        metadata: A checked JSON object (finite numbers, string keys).

    Returns:
        A JSON object with the ``x:`` / ``e:`` / ``n:`` / ``s:`` keys described in the module
        docstring.
    """
    document: dict[str, object] = {}
    for key, value in metadata.items():
        document[tagged_key("x", key)] = True
        elements = value if isinstance(value, list) else [value]
        for element in elements:
            if isinstance(element, str | bool | int | float):
                document[element_key(key, element)] = True
        if isinstance(value, str):
            document[tagged_key("s", key)] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            document[tagged_key("n", key)] = _canonical(value)
    return document


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal: single quotes doubled, nothing else special."""
    return "'" + text.replace("'", "''") + "'"


def sql_number(value: float) -> str:
    """A finite double as a SQL numeric literal that parses back to the same double."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return repr(float(value))


def to_lance_sql(tree: Filter | None, column: str) -> str | None:
    """The LanceDB ``where`` string for ``tree`` over the JSON ``column``; None when no filter."""
    if tree is None:
        return None
    return tree.to_sql(column)


def parse_filter(spec: object, limits: FilterLimits | None = None) -> Filter | None:
    """Checks a client's filter and builds its tree.

    Args:
        spec: The decoded JSON filter, or None for no filter.
        limits: Size bounds; the defaults when None.

    Returns:
        The tree, or None when ``spec`` is None or an empty object (no filtering).

    Raises:
        InvalidInputError: ``field="filter"``, saying where the filter breaks which rule.
    """
    if spec is None:
        return None
    parser = _Parser(limits or FilterLimits())
    tree = parser.parse_object(spec, "filter", depth=0)
    if isinstance(tree, And) and not tree.children:
        return None
    return tree


class _Parser:
    """Recursive-descent checker; counts clauses against the limits as it goes."""

    def __init__(self, limits: FilterLimits) -> None:
        self.limits = limits
        self.clauses = 0

    def fail(self, where: str, message: str) -> InvalidInputError:
        return InvalidInputError(f"{where}: {message}", field=_FIELD)

    def count(self, where: str, n: int = 1) -> None:
        self.clauses += n
        if self.clauses > self.limits.max_clauses:
            raise self.fail(
                where,
                f"the filter has more than {self.limits.max_clauses} comparisons; split the query "
                "or use fewer $in values",
            )

    def parse_object(self, spec: object, where: str, depth: int) -> Filter:
        if depth > self.limits.max_depth:
            raise self.fail(where, f"nested deeper than {self.limits.max_depth} levels")
        if not isinstance(spec, Mapping):
            raise self.fail(
                where, f'expected a JSON object such as {{"label": "cat"}}, got {_kind(spec)}'
            )
        children: list[Filter] = []
        for raw_key, value in spec.items():
            if not isinstance(raw_key, str):
                raise self.fail(where, f"keys must be strings, got {_kind(raw_key)}")
            if raw_key in _LOGIC_OPS:
                children.append(self.parse_logic(raw_key, value, f"{where}.{raw_key}", depth))
            elif raw_key.startswith("$") and not raw_key.startswith("$$"):
                raise self.fail(
                    f"{where}.{raw_key}",
                    f"unknown operator {raw_key!r} here; expected a metadata key or one of "
                    f"{', '.join(_LOGIC_OPS)} (comparison operators go inside a key: "
                    '{"year": {"$gte": 2020}}; write a key that starts with "$" as "$$...")',
                )
            else:
                key = raw_key[1:] if raw_key.startswith("$$") else raw_key
                self.check_key(key, f"{where}.{raw_key}")
                children.append(self.parse_key(key, value, f"{where}.{raw_key}"))
        return children[0] if len(children) == 1 else And(tuple(children))

    def parse_logic(self, op: str, value: object, where: str, depth: int) -> Filter:
        if op == "$not":
            return Not(self.parse_object(value, where, depth + 1))
        if not isinstance(value, list) or not value:
            raise self.fail(
                where, f"expected a non-empty list of filter objects, got {_kind(value)}"
            )
        children = tuple(
            self.parse_object(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)
        )
        return And(children) if op == "$and" else Or(children)

    def check_key(self, key: str, where: str) -> None:
        self.check_text(key, where, "key")

    def check_text(self, text: str, where: str, what: str) -> None:
        if len(text) > self.limits.max_string_chars:
            raise self.fail(
                where, f"{what} is {len(text)} characters; at most {self.limits.max_string_chars}"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise self.fail(where, f"{what} is not valid Unicode text ({e.reason})") from e

    def parse_key(self, key: str, value: object, where: str) -> Filter:
        if not isinstance(value, Mapping) or not any(
            isinstance(k, str) and k.startswith("$") for k in value
        ):
            return self.parse_equals(key, value, where)
        parts: list[Filter] = []
        for op, operand in value.items():
            if op not in _LEAF_OPS:
                raise self.fail(
                    f"{where}.{op}",
                    f"unknown operator {op!r}; expected one of {', '.join(_LEAF_OPS)}",
                )
            parts.append(self.parse_leaf(key, op, operand, f"{where}.{op}"))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def parse_equals(self, key: str, value: object, where: str) -> Filter:
        self.count(where)
        return Equals(key, self.scalar(value, where))

    def parse_leaf(self, key: str, op: str, operand: object, where: str) -> Filter:
        if op in ("$eq", "$ne"):
            equals = self.parse_equals(key, operand, where)
            return equals if op == "$eq" else Not(equals)
        if op in ("$in", "$nin"):
            return self.parse_in(key, op, operand, where)
        if op == "$exists":
            if not isinstance(operand, bool):
                raise self.fail(where, f"expected true or false, got {_kind(operand)}")
            self.count(where)
            return Exists(key) if operand else Not(Exists(key))
        self.count(where)
        value = self.scalar(operand, where)
        if isinstance(value, bool):
            raise self.fail(
                where, f"{op} compares numbers or strings, got a boolean; use $eq for booleans"
            )
        return Compare(key, op.removeprefix("$"), value)  # type: ignore[arg-type]

    def parse_in(self, key: str, op: str, operand: object, where: str) -> Filter:
        if not isinstance(operand, list) or not operand:
            raise self.fail(where, f"expected a non-empty list of scalars, got {_kind(operand)}")
        if len(operand) > self.limits.max_in_values:
            raise self.fail(
                where, f"{len(operand)} values; at most {self.limits.max_in_values} in one list"
            )
        self.count(where, len(operand))
        values = [self.scalar(item, f"{where}[{i}]") for i, item in enumerate(operand)]
        any_of = (
            Or(tuple(Equals(key, v) for v in values)) if len(values) > 1 else Equals(key, values[0])
        )
        return any_of if op == "$in" else Not(any_of)

    def scalar(self, value: object, where: str) -> Scalar:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError as e:
                raise self.fail(where, "number is too large for a double") from e
            if not math.isfinite(number):
                raise self.fail(where, f"expected a finite number, got {value!r}")
            return number
        if isinstance(value, str):
            self.check_text(value, where, "string")
            return value
        if value is None:
            raise self.fail(
                where, 'null cannot be compared; use {"$exists": false} for a missing key'
            )
        raise self.fail(
            where,
            f"expected a string, number or boolean, got {_kind(value)} (nested objects and "
            "arrays are not filterable; use $in for a list of values)",
        )


def _kind(value: object) -> str:
    """A short JSON-ish description of a value's type for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
