"""The one JSON reader (api/json_body.py): what it refuses, naming the field, and that on every
document it accepts it answers exactly what :func:`json.loads` answers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgembed.api.json_body import (
    _STRING,
    NotJsonError,
    _without_strings,
    check_json_value,
    decode_json,
)
from imgembed.errors import InvalidInputError
from imgembed.settings import InputLimits

LIMITS = InputLimits()


def nested(levels: int, inner: str = "1") -> bytes:
    return ("[" * levels + inner + "]" * levels).encode()


def refusal(raw: bytes, limits: InputLimits = LIMITS, **kwargs: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as raised:
        decode_json(raw, limits, **kwargs)
    return raised.value


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b'{"a": ' + nested(50_000) + b"}", "body", "deeper than 64 levels"),
        (nested(65), "body", "IMGEMBED_MAX_JSON_DEPTH"),
        (b'{"meta": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001, "body", "deeper than 64"),
        (b'{"texts": [' + b"7" * 100_000 + b"]}", "texts[0]", "100,000 characters"),
        (b'{"x": {"y": -' + b"1" * 101 + b"}}", "x.y", "IMGEMBED_MAX_JSON_NUMBER_CHARS"),
        (b'{"x": 1.' + b"5" * 200 + b"}", "x", "at most 100 characters"),
        (b'{"texts": ["fine", "\\ud800"]}', "texts[1]", "lone surrogate"),
        (b'{"a": [{"b": "x\\udfffy"}]}', "a[0].b", "not valid Unicode"),
        (b'{"\\udc00": 1}', "'\\udc00'", "the key holds"),
        (b'{"a": "\xff"}', "body", "not valid UTF-8 (byte 7"),
    ],
)
def test_refusals_name_the_field_and_the_limit(raw: bytes, field: str, words: str) -> None:
    error = refusal(raw)
    assert error.field == field
    assert words in error.message
    assert not isinstance(error, NotJsonError)
    json.dumps(error.to_dict()).encode("utf-8")  # the message itself is sendable


@pytest.mark.parametrize("raw", [b"", b'{"a": ', b"{'a': 1}", b"[1,]", b'{"a": 1}}', b"nul\x00"])
def test_text_that_is_not_json_is_a_not_json_error(raw: bytes) -> None:
    error = refusal(raw)
    assert isinstance(error, NotJsonError)
    assert error.field == "body"
    assert error.message.startswith("request body is not valid JSON (")


def test_a_form_value_is_named_by_its_field() -> None:
    assert refusal(nested(70), field="points").message.startswith("points nests arrays")
    assert refusal(b"[\xff]", field="points").field == "points"
    assert refusal(b'["\\ud800"]', field="labels").field == "labels[0]"


@pytest.mark.parametrize(
    "raw",
    [
        nested(64),
        b'{"texts": ["' + "é😀\\ud83d\\ude00".encode() + b'", "a\\u0000b"]}',
        b'{"n": ' + b"9" * 100 + b', "f": 1e300, "g": NaN, "h": -Infinity}',
        b'{"s": "NaN ' + b"1" * 500 + b' [[[[ \\\\ud800 \\" ]]]"}',
        b"[" + b"[]," * 10_000 + b"[]]",
    ],
)
def test_what_the_limits_allow_decodes_as_json_loads_does(raw: bytes) -> None:
    decoded = decode_json(raw, LIMITS)
    expected = json.loads(raw)
    assert json.dumps(decoded) == json.dumps(expected)  # NaN compares unequal; its text does not


def test_the_limits_are_settings() -> None:
    strict = replace(LIMITS, max_json_depth=3, max_json_number_chars=4)
    assert decode_json(b"[[[1234]]]", strict) == [[[1234]]]
    assert "deeper than 3 levels" in refusal(b"[[[[1]]]]", strict).message
    assert refusal(b"[[12345]]", strict).field == "[0][0]"


def test_a_decoded_value_is_checked_the_same_way() -> None:
    check_json_value({"images": ["a", {"b": [1, 2.5, None, True]}]}, LIMITS, prefix="input")
    deep: Any = 1
    for _ in range(64):
        deep = [deep]
    cases = [
        ({"images": deep}, "input.images", "deeper than 64 levels"),
        ([deep], "input[0]", "deeper than 64 levels"),
        ({"a": [1, 10**100]}, "input.a[1]", "an integer this long"),
        ({"texts": ["ok", "\ud800"]}, "input.texts[1]", "lone surrogate"),
        ({"\udc00": 1}, "input.'\\udc00'", "the key holds"),
    ]
    for value, field, words in cases:
        with pytest.raises(InvalidInputError) as raised:
            check_json_value(value, LIMITS, prefix="input")
        assert raised.value.field == field
        assert words in raised.value.message
    check_json_value({"f": math.nan, "n": 10**99}, LIMITS, prefix="input")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_any_document_within_the_limits_decodes_unchanged(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    assert decode_json(raw, LIMITS) == json.loads(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab"\\[]{}: ,é', max_size=40))
def test_both_ways_of_cutting_strings_agree(text: str) -> None:
    raw = text.encode("utf-8")
    assert _without_strings(raw, text) == _STRING.sub('""', text).encode("utf-8")
