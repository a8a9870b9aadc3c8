"""The metadata filter language without a database: checking, errors, SQL literals, flattening."""

from __future__ import annotations

from typing import Any

import pytest

from imgembed.errors import InvalidInputError
from imgembed.search.filters import (
    Compare,
    Equals,
    FilterLimits,
    filter_document,
    parse_filter,
    sql_number,
    sql_string,
)

INJECTION = "x' OR 1=1 --"
ODD_KEY = 'we\\ird\n"key"\u00e9\U0001f600'


BAD_FILTERS: list[tuple[Any, str]] = [
    ([{"label": "cat"}], "expected a JSON object"),
    ("label = 'cat'", "expected a JSON object"),
    ({"$gte": 3}, "unknown operator '$gte' here"),
    ({"$where": "1=1"}, "unknown operator '$where'"),
    ({"year": {"$gtx": 3}}, "filter.year.$gtx: unknown operator '$gtx'"),
    ({"year": {"$gt": 3, "lt": 5}}, "unknown operator 'lt'"),
    ({"year": {"$gt": True}}, "compares numbers or strings, got a boolean"),
    ({"year": {"$gt": None}}, "null cannot be compared"),
    ({"year": None}, "null cannot be compared"),
    ({"year": [1, 2]}, "nested objects and arrays are not filterable"),
    ({"year": {"a": 1}}, "got an object"),
    ({"year": {}}, "got an object"),
    ({"year": {"$in": []}}, "non-empty list"),
    ({"year": {"$in": 3}}, "non-empty list"),
    ({"year": {"$in": [1, [2]]}}, "filter.year.$in[1]"),
    ({"year": {"$exists": 1}}, "expected true or false"),
    ({"year": float("nan")}, "finite number"),
    ({"year": 10**400}, "too large"),
    ({"$or": []}, "filter.$or: expected a non-empty list"),
    ({"$or": {"a": 1}}, "filter.$or: expected a non-empty list"),
    ({"$and": [{"a": 1}, 5]}, "filter.$and[1]: expected a JSON object"),
    ({"$not": [{"a": 1}]}, "filter.$not: expected a JSON object"),
    (
        {"$or": [{"$or": [{"$not": {"year": {"$lt": "x", "$foo": 1}}}]}]},
        "filter.$or[0].$or[0].$not.year.$foo",
    ),
    ({"k": "\ud800"}, "not valid Unicode"),
    ({"k": "x" * 1025}, "at most 1024"),
    ({1: "x"}, "keys must be strings"),
]


@pytest.mark.parametrize(
    ("spec", "message"), BAD_FILTERS, ids=[str(i) for i in range(len(BAD_FILTERS))]
)
def test_bad_filters_say_what_and_where(spec: Any, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_filter(spec)
    assert caught.value.field == "filter"
    assert message in caught.value.message
    assert caught.value.message.startswith("filter")


def test_filter_limits() -> None:
    limits = FilterLimits(max_depth=2, max_clauses=5, max_in_values=3)
    deep = {"$not": {"$not": {"$not": {"a": 1}}}}
    with pytest.raises(InvalidInputError, match="nested deeper than 2"):
        parse_filter(deep, limits)
    with pytest.raises(InvalidInputError, match="at most 3 in one list"):
        parse_filter({"a": {"$in": [1, 2, 3, 4]}}, limits)
    with pytest.raises(InvalidInputError, match="more than 5 comparisons"):
        parse_filter({"$or": [{"a": i} for i in range(6)]}, limits)
    assert parse_filter({"$or": [{"a": i} for i in range(5)]}, limits) is not None


def test_empty_filter_is_no_filter() -> None:
    assert parse_filter(None) is None
    assert parse_filter({}) is None


def test_sql_literals_keep_client_text_inert() -> None:
    assert sql_string("x' OR 1=1 --") == "'x'' OR 1=1 --'"
    assert sql_string("''") == "''''''"
    assert sql_number(2020) == "2020.0"
    assert sql_number(-1.5e-7) == "-1.5e-07"
    with pytest.raises(ValueError, match="finite"):
        sql_number(float("inf"))
    key_sql = Equals(INJECTION, "v").to_sql("filter_doc")
    assert key_sql == "(json_get(filter_doc, 'e:[\"x'' OR 1=1 --\", \"v\"]') IS NOT NULL)"
    range_sql = Compare(ODD_KEY, "gt", "a'b").to_sql("filter_doc")
    # Keys reach SQL JSON-encoded (ASCII only), string operands with their quotes doubled.
    assert range_sql.startswith('coalesce(json_get_string(filter_doc, \'s:"we\\\\ird\\n\\"key')
    assert range_sql.endswith("> 'a''b', false)")
    assert range_sql.count("'") % 2 == 0


def test_filter_document_tags_types() -> None:
    document = filter_document(
        {"n": 1, "s": "1", "b": True, "l": [1, "x", None, {"k": 1}], "z": None}
    )
    assert document == {
        'x:"n"': True,
        'e:["n", 1.0]': True,
        'n:"n"': 1.0,
        'x:"s"': True,
        'e:["s", "1"]': True,
        's:"s"': "1",
        'x:"b"': True,
        'e:["b", true]': True,
        'x:"l"': True,
        'e:["l", 1.0]': True,
        'e:["l", "x"]': True,
        'x:"z"': True,
    }
