"""The metadata filter language run on LanceDB, injection attempts included.

Expected results come from hand-written id sets and from an evaluator written here from the
documented semantics (independent of the flattened document the store filters on).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from imgembed.search import lancedb_store
from imgembed.search.filters import filter_document, parse_filter

LanceDBOptions = lancedb_store.LanceDBOptions
LanceDBStore = lancedb_store.LanceDBStore

INJECTION = "x' OR 1=1 --"
ODD_KEY = 'we\\ird\n"key"\u00e9\U0001f600'

ITEMS: dict[str, dict[str, Any]] = {
    "a": {"label": "cat", "year": 2021, "tags": ["x", "y"], "ok": True},
    "b": {"label": "dog", "year": 2019.5, "tags": "x"},
    "c": {"label": INJECTION, "year": "2022"},
    "d": {"label": "Cat", "year": 2020, "ok": False, "n": None},
    "e": {},
    "f": {INJECTION: "v", "$price": 5, "a.b": 1, "nested": {"k": 3}, "label": 1, ODD_KEY: "v\\'"},
    "g": {"year": -0.0, "tags": [1, "1", True], "label": "dog"},
}

CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"label": "cat"}, {"a"}),
    ({"label": {"$eq": "cat"}}, {"a"}),
    ({"label": {"$ne": "cat"}}, {"b", "c", "d", "e", "f", "g"}),
    ({"year": {"$gte": 2020}}, {"a", "d"}),
    ({"year": {"$gt": 2020}}, {"a"}),
    ({"year": {"$lt": 2020}}, {"b", "g"}),
    ({"year": {"$lte": 2020}}, {"b", "d", "g"}),
    ({"year": {"$gte": "2022"}}, {"c"}),
    ({"year": {"$gte": 2019, "$lt": 2021}}, {"b", "d"}),
    ({"year": 0}, {"g"}),
    ({"label": {"$in": ["cat", "dog"]}}, {"a", "b", "g"}),
    ({"label": {"$nin": ["cat", "dog"]}}, {"c", "d", "e", "f"}),
    ({"label": {"$gt": "Z"}}, {"a", "b", "c", "g"}),
    ({"tags": "x"}, {"a", "b"}),
    ({"tags": "y"}, {"a"}),
    ({"tags": 1}, {"g"}),
    ({"tags": "1"}, {"g"}),
    ({"tags": True}, {"g"}),
    ({"tags": {"$gt": "a"}}, {"b"}),
    ({"ok": True}, {"a"}),
    ({"ok": False}, {"d"}),
    ({"ok": 1}, set()),
    ({"label": 1}, {"f"}),
    ({"label": 1.0}, {"f"}),
    ({"label": "1"}, set()),
    ({"n": {"$exists": True}}, {"d"}),
    ({"label": {"$exists": False}}, {"e"}),
    ({"nested": {"$exists": True}}, {"f"}),
    ({"$or": [{"label": "cat"}, {"year": {"$lt": 2020}}]}, {"a", "b", "g"}),
    ({"$and": [{"tags": "x"}, {"$not": {"label": "dog"}}]}, {"a"}),
    ({"label": "dog", "tags": "x"}, {"b"}),
    (
        {
            "$or": [
                {"$and": [{"label": "cat"}, {"ok": True}]},
                {"$not": {"$or": [{"label": {"$exists": True}}, {"tags": "x"}]}},
            ]
        },
        {"a", "e"},
    ),
    ({"$not": {}}, set()),
    ({}, set(ITEMS)),
    ({"label": INJECTION}, {"c"}),
    ({INJECTION: "v"}, {"f"}),
    ({INJECTION: {"$exists": True}}, {"f"}),
    ({"label": "cat' OR '1'='1"}, set()),
    ({"label": "x'); DROP TABLE items; --"}, set()),
    ({"label": {"$gt": "' OR 1=1 --"}}, {"a", "b", "c", "d", "g"}),
    ({"$$price": {"$gt": 4}}, {"f"}),
    ({"a.b": 1}, {"f"}),
    ({ODD_KEY: "v\\'"}, {"f"}),
    ({ODD_KEY: {"$exists": False}}, {"a", "b", "c", "d", "e", "g"}),
]


@pytest.fixture(scope="module")
def filter_store(tmp_path_factory: pytest.TempPathFactory) -> LanceDBStore:
    store = LanceDBStore(tmp_path_factory.mktemp("filters"), LanceDBOptions(index_threshold=None))
    store.create_collection("items", 4)
    ids = list(ITEMS)
    vectors = np.random.default_rng(0).standard_normal((len(ids), 4))
    store.add_items("items", ids, vectors, [ITEMS[i] for i in ids])
    return store


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_filter_semantics_on_lancedb(
    filter_store: LanceDBStore, spec: dict[str, Any], expected: set[str]
) -> None:
    assert {i for i, m in ITEMS.items() if naive_matches(spec, m)} == expected
    hits = filter_store.search("items", [1, 0, 0, 0], top_k=100, filter=spec)
    assert {hit.id for hit in hits} == expected
    assert filter_store.count("items", spec) == len(expected)
    page = filter_store.list_items("items", limit=100, filter=spec)
    assert [item.id for item in page.items] == sorted(expected)


def test_random_filters_agree_with_the_documented_semantics(tmp_path) -> None:
    rng = random.Random(7)
    pool: list[Any] = [0, 1, 2.5, -3, "a", "b", "B", "", True, False, None, [0, "a"], ["b", 1]]
    keys = ["k1", "k2", "k3"]
    items = {
        f"id{n:03d}": {k: rng.choice(pool) for k in keys if rng.random() < 0.7} for n in range(120)
    }
    store = LanceDBStore(tmp_path, LanceDBOptions(index_threshold=None))
    store.create_collection("random", 3)
    ids = list(items)
    vectors = np.random.default_rng(1).standard_normal((len(ids), 3))
    store.add_items("random", ids, vectors, [items[i] for i in ids])
    selective = 0
    for _ in range(60):
        spec = random_filter(rng, keys, depth=0)
        expected = sorted(i for i, m in items.items() if naive_matches(spec, m))
        selective += 0 < len(expected) < len(items)
        tree = parse_filter(spec)
        if tree is not None:
            reference = sorted(i for i, m in items.items() if tree.matches(filter_document(m)))
            assert reference == expected, spec
        got = [item.id for item in store.list_items("random", limit=1000, filter=spec).items]
        assert got == expected, spec
    assert selective >= 30, "the random filters should mostly select some but not all items"


def random_filter(rng: random.Random, keys: list[str], depth: int) -> dict[str, Any]:
    """A random filter over ``keys`` using every operator."""
    scalars: list[Any] = [0, 1, 2.5, -3, "a", "b", "", True, False]
    clauses: dict[str, Any] = {}
    for _ in range(rng.randint(1, 2)):
        roll = rng.random()
        if depth < 2 and roll < 0.25:
            op = rng.choice(["$and", "$or"])
            clauses[op] = [random_filter(rng, keys, depth + 1) for _ in range(rng.randint(1, 3))]
        elif depth < 2 and roll < 0.35:
            clauses["$not"] = random_filter(rng, keys, depth + 1)
        else:
            key = rng.choice(keys)
            op = rng.choice(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"])
            if op in ("$in", "$nin"):
                clauses[key] = {op: rng.sample(scalars, rng.randint(1, 3))}
            elif op == "$exists":
                clauses[key] = {op: rng.random() < 0.5}
            elif op in ("$eq", "$ne"):
                clauses[key] = {op: rng.choice(scalars)}
            else:
                clauses[key] = {op: rng.choice([0, 1, 2.5, -3, "a", "b", ""])}
    return clauses


def naive_matches(spec: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    """The documented semantics, evaluated directly on the metadata."""
    for key, value in spec.items():
        if key == "$and":
            ok = all(naive_matches(child, metadata) for child in value)
        elif key == "$or":
            ok = any(naive_matches(child, metadata) for child in value)
        elif key == "$not":
            ok = not naive_matches(value, metadata)
        else:
            name = key[1:] if key.startswith("$$") else key
            ops = value if isinstance(value, dict) else {"$eq": value}
            ok = all(_naive_op(op, operand, name, metadata) for op, operand in ops.items())
        if not ok:
            return False
    return True


def _naive_op(op: str, operand: Any, key: str, metadata: Mapping[str, Any]) -> bool:
    present = key in metadata
    value = metadata.get(key)
    if op == "$exists":
        return present == operand
    if op in ("$eq", "$ne", "$in", "$nin"):
        wanted = [operand] if op in ("$eq", "$ne") else operand
        elements = value if isinstance(value, list) else [value]
        hit = any(_same(e, w) for e in elements for w in wanted)
        return hit if op in ("$eq", "$in") else not hit
    if isinstance(operand, str):
        if not isinstance(value, str):
            return False
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return {
        "$gt": value > operand,
        "$gte": value >= operand,
        "$lt": value < operand,
        "$lte": value <= operand,
    }[op]


def _same(element: Any, wanted: Any) -> bool:
    """JSON equality without mixing types (``True`` is not ``1``)."""
    if isinstance(element, bool) or isinstance(wanted, bool):
        return isinstance(element, bool) and isinstance(wanted, bool) and element == wanted
    if isinstance(element, int | float) and isinstance(wanted, int | float):
        return float(element) == float(wanted)
    return isinstance(element, str) and isinstance(wanted, str) and element == wanted
