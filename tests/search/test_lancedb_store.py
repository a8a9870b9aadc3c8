"""The LanceDB vector store: known neighbours, writes, restart, paging, index and bad input."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgembed.errors import ConflictError, InvalidInputError, NotFoundError
from imgembed.search import lancedb_store
from imgembed.search.store import VectorStore
from imgembed.search.validation import StoreLimits

LanceDBOptions = lancedb_store.LanceDBOptions
LanceDBStore = lancedb_store.LanceDBStore

DIM = 16


def known_cosines(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Vectors whose cosine to the query ``e0`` is known exactly, at random lengths.

    Returns:
        ``[count, DIM]`` vectors, ``[count]`` their cosines to ``e0`` (distinct), their ids.
    """
    rng = np.random.default_rng(seed)
    cosines = rng.permutation(np.linspace(-0.98, 0.99, count))
    vectors = np.zeros((count, DIM))
    vectors[:, 0] = cosines
    # The rest of each unit vector lies in a random direction orthogonal to e0.
    orthogonal = rng.standard_normal((count, DIM - 1))
    orthogonal /= np.linalg.norm(orthogonal, axis=1, keepdims=True)
    vectors[:, 1:] = orthogonal * np.sqrt(1 - cosines**2)[:, None]
    vectors *= rng.uniform(0.1, 50.0, size=(count, 1))
    return vectors, cosines, [f"item-{i:03d}" for i in range(count)]


def test_it_is_a_vector_store(store: Any) -> None:
    assert isinstance(store, VectorStore)


def test_exact_top_k_and_scores_for_known_cosines(store: Any) -> None:
    vectors, cosines, ids = known_cosines(200)
    store.create_collection("known", DIM)
    store.add_items("known", ids, vectors, [{"n": i} for i in range(200)])
    order = np.argsort(-cosines)
    for top_k in (1, 10, 200):
        hits = store.search("known", np.eye(DIM)[0] * 3.0, top_k=top_k)
        assert [hit.id for hit in hits] == [ids[i] for i in order[:top_k]]
        np.testing.assert_allclose([hit.score for hit in hits], cosines[order[:top_k]], atol=1e-5)
        assert [hit.metadata["n"] for hit in hits] == [int(i) for i in order[:top_k]]
    assert store.search("known", np.eye(DIM)[0], top_k=500)[-1].score == pytest.approx(
        -0.98, abs=1e-5
    )


def test_exact_search_matches_numpy_on_random_vectors(store: Any) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((500, DIM)).astype(np.float32)
    ids = [f"r{i}" for i in range(500)]
    store.create_collection("random", DIM)
    store.add_items("random", ids, data)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    for query in rng.standard_normal((10, DIM)):
        scores = unit @ (query / np.linalg.norm(query))
        best = np.argsort(-scores)[:10]
        hits = store.search("random", query, top_k=10)
        assert [hit.id for hit in hits] == [ids[i] for i in best]
        np.testing.assert_allclose([hit.score for hit in hits], scores[best], atol=1e-5)


def test_filtered_search_returns_top_k_among_passing_items(store: Any) -> None:
    vectors, cosines, ids = known_cosines(100, seed=1)
    store.create_collection("filtered", DIM)
    store.add_items("filtered", ids, vectors, [{"even": i % 2 == 0} for i in range(100)])
    order = [i for i in np.argsort(-cosines) if i % 2 == 0]
    hits = store.search("filtered", np.eye(DIM)[0], top_k=5, filter={"even": True})
    assert [hit.id for hit in hits] == [ids[i] for i in order[:5]]


def test_reject_names_the_existing_ids_and_writes_nothing(store: Any) -> None:
    store.create_collection("c", 4)
    store.add_items("c", ["a", "b"], np.eye(4)[:2], [{"v": 1}, {"v": 2}])
    with pytest.raises(ConflictError) as caught:
        store.add_items("c", ["new", "b", "a"], np.eye(4)[:3])
    assert "'a', 'b'" in caught.value.message
    assert "on_conflict='upsert'" in caught.value.message
    assert caught.value.field == "ids"
    assert store.count("c") == 2
    assert store.get_items("c", ["new"]) == []
    assert store.get_items("c", ["a"])[0].metadata == {"v": 1}


def test_upsert_replaces_vectors_and_metadata(store: Any) -> None:
    store.create_collection("c", 4)
    store.add_items("c", ["a", "b"], np.eye(4)[:2], [{"v": 1}, {"v": 2}])
    result = store.add_items(
        "c", ["b", "c"], [[0, 0, 0, 2], [0, 0, 3, 0]], [{"v": 20}, {"v": 3}], on_conflict="upsert"
    )
    assert (result.inserted, result.updated) == (1, 1)
    assert store.count("c") == 3
    b = store.get_items("c", ["b"])[0]
    np.testing.assert_array_equal(b.vector, [0, 0, 0, 1])
    assert b.metadata == {"v": 20}
    assert store.search("c", [0, 0, 0, 1], top_k=1)[0].id == "b"
    assert store.count("c", {"v": 2}) == 0
    assert store.count("c", {"v": 20}) == 1


def test_delete_items(store: Any) -> None:
    vectors, cosines, ids = known_cosines(30, seed=2)
    store.create_collection("c", DIM)
    store.add_items("c", ids, vectors)
    best = [ids[i] for i in np.argsort(-cosines)]
    assert store.delete_items("c", [best[0], best[2], "never-added"]) == 2
    assert store.delete_items("c", [best[0]]) == 0
    assert store.count("c") == 28
    assert [h.id for h in store.search("c", np.eye(DIM)[0], top_k=3)] == [best[1], *best[3:5]]
    assert store.get_items("c", [best[0], best[1]])[0].id == best[1]
    store.add_items("c", [best[0]], vectors[ids.index(best[0])][None])
    assert store.search("c", np.eye(DIM)[0], top_k=1)[0].id == best[0]


def test_sql_looking_ids_are_plain_ids(store: Any) -> None:
    odd = ["a'b", "x' OR 1=1 --", "') OR ('1'='1", "back\\slash", "\u00e9\U0001f600", "a,b"]
    store.create_collection("c", 4)
    store.add_items("c", [*odd, "plain"], np.ones((len(odd) + 1, 4)))
    assert [item.id for item in store.get_items("c", odd[::-1])] == odd[::-1]
    assert store.delete_items("c", ["x' OR 1=1 --"]) == 1
    assert store.count("c") == len(odd)
    assert store.get_items("c", ["x' OR 1=1 --"]) == []
    page = store.list_items("c", after="a'b")
    assert [item.id for item in page.items] == sorted(
        i for i in [*odd, "plain"] if i > "a'b" and "OR 1" not in i
    )


def test_vector_lengths_do_not_matter(store: Any) -> None:
    store.create_collection("c", 3)
    store.add_items("c", ["huge", "tiny"], [[1e300, 1e300, 0], [0, 0, 1e-300]])
    huge, tiny = store.get_items("c", ["huge", "tiny"])
    np.testing.assert_allclose(huge.vector, [2**-0.5, 2**-0.5, 0], atol=1e-7)
    np.testing.assert_allclose(tiny.vector, [0, 0, 1], atol=1e-7)
    assert store.search("c", [1e-200, 1e-200, 0], top_k=1)[0].score == pytest.approx(1.0, abs=1e-6)


def test_get_items_order_missing_and_vectors(store: Any) -> None:
    store.create_collection("c", 3)
    store.add_items("c", ["a", "b"], [[3, 0, 4], [0, 2, 0]], [{"x": [1, {"y": None}]}, {}])
    items = store.get_items("c", ["b", "missing", "a", "b"])
    assert [item.id for item in items] == ["b", "a", "b"]
    np.testing.assert_allclose(items[1].vector, [0.6, 0, 0.8], atol=1e-7)
    assert items[1].vector.dtype == np.float32
    assert items[1].metadata == {"x": [1, {"y": None}]}
    assert store.get_items("c", ["a"], with_vectors=False)[0].vector is None


def test_paging_walks_every_item_once_in_id_order(store: Any) -> None:
    rng = np.random.default_rng(5)
    ids = [f"id-{i:02d}" for i in rng.permutation(25)]
    store.create_collection("c", 4)
    store.add_items("c", ids, rng.standard_normal((25, 4)), [{"i": int(i[3:])} for i in ids])
    seen: list[str] = []
    after = None
    while True:
        page = store.list_items("c", limit=10, after=after)
        seen.extend(item.id for item in page.items)
        assert all(item.vector is None for item in page.items)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == sorted(ids)
    page = store.list_items("c", limit=4, filter={"i": {"$gte": 20}}, with_vectors=True)
    assert [item.id for item in page.items] == ["id-20", "id-21", "id-22", "id-23"]
    assert page.next_after == "id-23"
    assert page.items[0].vector.shape == (4,)
    last = store.list_items("c", limit=4, after="id-23", filter={"i": {"$gte": 20}})
    assert ([item.id for item in last.items], last.next_after) == (["id-24"], None)
    assert store.list_items("c", after="id-99").items == []
    exact = store.list_items("c", limit=25)
    assert len(exact.items) == 25
    assert exact.next_after is None


def test_restart_keeps_collections_items_and_search(store_path: Path) -> None:
    vectors, _, ids = known_cosines(50, seed=4)
    options = LanceDBOptions(index_threshold=None)
    with LanceDBStore(store_path, options) as first:
        first.create_collection("kept", DIM)
        first.create_collection("dropped", 3)
        first.add_items("kept", ids, vectors, [{"i": i} for i in range(50)])
        first.delete_items("kept", [ids[0]])
        first.add_items("kept", [ids[1]], vectors[2][None], [{"i": 99}], on_conflict="upsert")
        first.delete_collection("dropped")
        before = first.search("kept", np.eye(DIM)[0], top_k=7, filter={"i": {"$lt": 40}})
    with LanceDBStore(store_path, options) as second:
        assert [c.name for c in second.list_collections()] == ["kept"]
        info = second.get_collection("kept")
        assert (info.dimension, info.count, info.metric) == (DIM, 49, "cosine")
        assert second.search("kept", np.eye(DIM)[0], top_k=7, filter={"i": {"$lt": 40}}) == before
        assert second.get_items("kept", [ids[0]]) == []
        assert second.get_items("kept", [ids[1]])[0].metadata == {"i": 99}
        with pytest.raises(NotFoundError):
            second.get_collection("dropped")


def test_collection_records_its_model_across_writes_and_restart(store_path: Path) -> None:
    options = LanceDBOptions(index_threshold=None, optimize_every_writes=2)
    with LanceDBStore(store_path, options) as store:
        info = store.create_collection("m", 4, model="google/siglip2-base-patch16-224")
        assert info.model == "google/siglip2-base-patch16-224"
        store.create_collection("plain", 4)
        store.add_items("m", ["a"], [[1, 0, 0, 0]])
        store.add_items("m", ["a"], [[0, 1, 0, 0]], on_conflict="upsert")
        store.delete_items("m", ["a"])
    with LanceDBStore(store_path, options) as reopened:
        assert [(c.name, c.model) for c in reopened.list_collections()] == [
            ("m", "google/siglip2-base-patch16-224"),
            ("plain", None),
        ]


@pytest.mark.parametrize("model", ["", 5, "a\nb", "x" * 257])
def test_invalid_model_names(store: Any, model: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        store.create_collection("c", 4, model=model)
    assert caught.value.field == "model"


def test_collections_lifecycle(store: Any) -> None:
    assert store.list_collections() == []
    store.create_collection("b-2", 8)
    store.create_collection("A_1", 4)
    assert [(c.name, c.dimension, c.count) for c in store.list_collections()] == [
        ("A_1", 4, 0),
        ("b-2", 8, 0),
    ]
    with pytest.raises(ConflictError, match="exists already"):
        store.create_collection("A_1", 4)
    store.delete_collection("A_1")
    assert [c.name for c in store.list_collections()] == ["b-2"]
    store.create_collection("A_1", 5)
    assert store.get_collection("A_1").dimension == 5
    assert store.search("A_1", [1, 0, 0, 0, 0]) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_collection("nope"),
        lambda s: s.delete_collection("nope"),
        lambda s: s.add_items("nope", ["a"], [[1.0]]),
        lambda s: s.search("nope", [1.0]),
        lambda s: s.get_items("nope", ["a"]),
        lambda s: s.delete_items("nope", ["a"]),
        lambda s: s.list_items("nope"),
        lambda s: s.count("nope"),
    ],
)
def test_unknown_collection(store: Any, call: Any) -> None:
    with pytest.raises(NotFoundError, match="collection 'nope' does not exist; create it"):
        call(store)


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "../x", "a b", "x" * 65, "-a", "_a", ".hidden", "na\u00efve", "a.b", 5, None],
)
def test_invalid_collection_names(store: Any, name: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        store.create_collection(name, 4)
    assert caught.value.field == "name"
    with pytest.raises(InvalidInputError):
        store.search(name, [1.0])


def test_a_64_character_name_is_fine(store: Any) -> None:
    assert store.create_collection("x" * 64, 2).name == "x" * 64


@pytest.mark.parametrize("dimension", [0, -1, 1.5, True, "8", 20_000])
def test_invalid_dimension(store: Any, dimension: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        store.create_collection("c", dimension)
    assert caught.value.field == "dimension"


BAD_ADDS: list[tuple[dict[str, Any], str, str]] = [
    (
        {"vectors": np.ones((1, 3))},
        "vectors",
        "expected 4 values per vector (the collection's dimension), got 3",
    ),
    ({"vectors": np.ones((2, 4))}, "vectors", "must have shape [1, 4]"),
    ({"vectors": [[1, 2], [3]]}, "vectors", "vectors must be 1 lists of 4 numbers"),
    ({"vectors": [[1, 2, float("nan"), 4]]}, "vectors", "vectors[0] holds NaN or infinity"),
    ({"vectors": [[1, 2, float("inf"), 4]]}, "vectors", "NaN or infinity"),
    ({"vectors": [[0, 0, 0, 0]]}, "vectors", "vectors[0] is all zeros"),
    ({"vectors": [["a", "b", "c", "d"]]}, "vectors", "numbers"),
    ({"ids": []}, "ids", "ids is empty"),
    ({"ids": "a"}, "ids", "must be a list of strings"),
    ({"ids": [7]}, "ids", "ids[0] must be a string"),
    ({"ids": [""]}, "ids", "1 to 256 characters"),
    ({"ids": ["x" * 257]}, "ids", "got 257"),
    ({"ids": ["a\nb"]}, "ids", "control character"),
    ({"ids": ["\ud800"]}, "ids", "not valid Unicode"),
    ({"ids": ["a", "a"], "vectors": np.ones((2, 4))}, "ids", "ids repeat within the request: 'a'"),
    ({"metadata": {"a": 1}}, "metadata", "must be a list of 1 JSON objects"),
    ({"metadata": [{"a": 1}, {}]}, "metadata", "2 entries for 1 ids"),
    ({"metadata": ["x"]}, "metadata", "metadata[0] must be a JSON object"),
    ({"metadata": [{"a": float("nan")}]}, "metadata", "metadata[0].a holds nan"),
    ({"metadata": [{"a": [1, 10**400]}]}, "metadata", "metadata[0].a[1] holds"),
    ({"metadata": [{1: "a"}]}, "metadata", "keys must be strings"),
    ({"metadata": [{"a": {1, 2}}]}, "metadata", "metadata values must be JSON"),
    ({"metadata": [{"a": "x" * 20_000}]}, "metadata", "at most 16384"),
    ({"metadata": [{"a": "\udc00"}]}, "metadata", "not valid JSON text"),
    ({"on_conflict": "replace"}, "on_conflict", "'reject' or 'upsert'"),
]


@pytest.mark.parametrize(
    ("change", "field", "message"), BAD_ADDS, ids=[str(i) for i in range(len(BAD_ADDS))]
)
def test_bad_adds_are_refused_with_the_field(
    store: Any, change: dict[str, Any], field: str, message: str
) -> None:
    store.create_collection("c", 4)
    request: dict[str, Any] = {"ids": ["a"], "vectors": [[1, 0, 0, 0]], "metadata": [{}]}
    request.update(change)
    on_conflict = request.pop("on_conflict", "reject")
    with pytest.raises(InvalidInputError) as caught:
        store.add_items(
            "c", request["ids"], request["vectors"], request["metadata"], on_conflict=on_conflict
        )
    assert caught.value.field == field
    assert message in caught.value.message
    assert store.count("c") == 0


def test_deep_metadata_is_refused(store: Any) -> None:
    store.create_collection("c", 2)
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidInputError, match="nested deeper than 16"):
        store.add_items("c", ["a"], [[1, 0]], [{"d": deep}])


def test_too_many_ids_in_one_call(store_path: Path) -> None:
    limits = StoreLimits(max_items_per_call=3)
    with LanceDBStore(store_path, LanceDBOptions(limits=limits)) as small:
        small.create_collection("c", 2)
        with pytest.raises(InvalidInputError, match="4 ids in one call; at most 3"):
            small.add_items("c", list("abcd"), np.ones((4, 2)))
        with pytest.raises(InvalidInputError, match="at most 3"):
            small.delete_items("c", list("abcd"))


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"vector": [1, 0, 0]}, "vector", "expected 4 values per vector"),
        ({"vector": [[1, 0, 0, 0]]}, "vector", "one list of 4 numbers"),
        ({"vector": [0, 0, 0, 0]}, "vector", "all zeros"),
        ({"vector": [1, float("nan"), 0, 0]}, "vector", "NaN"),
        ({"top_k": 0}, "top_k", "from 1 to 1000"),
        ({"top_k": 1001}, "top_k", "from 1 to 1000"),
        ({"top_k": True}, "top_k", "integer"),
        ({"filter": {"a": {"$regex": "x"}}}, "filter", "unknown operator '$regex'"),
        ({"filter": "a = 1"}, "filter", "expected a JSON object"),
    ],
)
def test_bad_searches(store: Any, kwargs: dict[str, Any], field: str, message: str) -> None:
    store.create_collection("c", 4)
    request = {"vector": [1, 0, 0, 0], **kwargs}
    with pytest.raises(InvalidInputError) as caught:
        store.search("c", request.pop("vector"), **request)
    assert caught.value.field == field
    assert message in caught.value.message


def test_bad_list_requests(store: Any) -> None:
    store.create_collection("c", 2)
    with pytest.raises(InvalidInputError, match="limit must be from 1 to 1000"):
        store.list_items("c", limit=0)
    with pytest.raises(InvalidInputError, match="after must be an item id"):
        store.list_items("c", after=5)
    with pytest.raises(InvalidInputError) as caught:
        store.count("c", {"$bad": 1})
    assert caught.value.field == "filter"


@pytest.mark.parametrize("index_type", ["IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ"])
def test_approximate_index_finds_well_separated_neighbours(
    store_path: Path, index_type: str
) -> None:
    rng = np.random.default_rng(6)
    centres = rng.standard_normal((300, 32))
    ids = [f"c{i}" for i in range(300)]
    options = LanceDBOptions(index_threshold=256, index_type=index_type, optimize_every_writes=2)
    with LanceDBStore(store_path, options) as store:
        store.create_collection("ann", 32)
        store.add_items("ann", ids[:200], centres[:200], [{"half": i % 2} for i in range(200)])
        assert not store.get_collection("ann").indexed
        store.add_items("ann", ids[200:], centres[200:], [{"half": i % 2} for i in range(200, 300)])
        assert store.get_collection("ann").indexed
        queries = centres + 0.05 * rng.standard_normal(centres.shape)
        for i in range(0, 300, 7):
            assert store.search("ann", queries[i], top_k=1)[0].id == ids[i]
            assert store.search("ann", queries[i], top_k=1, exact=True)[0].id == ids[i]
            filtered = store.search("ann", queries[i], top_k=3, filter={"half": (i + 1) % 2})
            assert ids[i] not in {hit.id for hit in filtered}
            assert len(filtered) == 3
        # Rows written after the index is built are found too, before and after compaction.
        store.add_items("ann", ["late"], -centres[0][None])
        assert store.search("ann", -centres[0], top_k=1)[0].id == "late"
        store.add_items("ann", ["later"], -centres[1][None])
        assert store.search("ann", -centres[0], top_k=1)[0].id == "late"
    with LanceDBStore(store_path, options) as reopened:
        assert reopened.get_collection("ann").indexed
        assert reopened.search("ann", queries[7], top_k=1)[0].id == ids[7]


def test_nprobes_trades_recall_for_work(store_path: Path) -> None:
    rng = np.random.default_rng(11)
    data = rng.standard_normal((2000, 16))
    options = LanceDBOptions(index_threshold=None, num_partitions=8, refine_factor=None)
    with LanceDBStore(store_path, options) as store:
        store.create_collection("p", 16)
        store.add_items("p", [f"p{i}" for i in range(2000)], data)
        store.build_index("p")
        queries = rng.standard_normal((20, 16))
        truth = [{h.id for h in store.search("p", q, top_k=10, exact=True)} for q in queries]

    def recall(nprobes: int) -> float:
        with LanceDBStore(store_path, replace(options, nprobes=nprobes)) as probing:
            found = [{h.id for h in probing.search("p", q, top_k=10)} for q in queries]
        return float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)]))

    # Random vectors have no clusters: one of eight partitions holds few true neighbours.
    assert recall(1) < 0.7
    assert recall(8) > 0.9


def test_indexed_search_probes_further_for_a_narrow_filter(store_path: Path) -> None:
    rng = np.random.default_rng(10)
    rare = {3, 150, 301, 422, 509}
    options = LanceDBOptions(index_threshold=512, num_partitions=8, nprobes=1)
    with LanceDBStore(store_path, options) as store:
        store.create_collection("narrow", 16)
        ids = [f"n{i}" for i in range(512)]
        store.add_items(
            "narrow", ids, rng.standard_normal((512, 16)), [{"rare": i in rare} for i in range(512)]
        )
        assert store.get_collection("narrow").indexed
        for query in rng.standard_normal((5, 16)):
            hits = store.search("narrow", query, top_k=5, filter={"rare": True})
            assert {hit.id for hit in hits} == {f"n{i}" for i in rare}


def test_index_is_rebuilt_when_the_collection_outgrows_it(store_path: Path) -> None:
    rng = np.random.default_rng(9)
    options = LanceDBOptions(
        index_threshold=100, index_rebuild_growth=2.0, optimize_every_writes=1000
    )
    with LanceDBStore(store_path, options) as store:
        store.create_collection("grow", 8)
        store.add_items("grow", [f"a{i}" for i in range(120)], rng.standard_normal((120, 8)))
        table = store._open("grow").table
        assert table.index_stats("vector_idx").num_indexed_rows == 120
        store.add_items("grow", [f"b{i}" for i in range(100)], rng.standard_normal((100, 8)))
        assert table.index_stats("vector_idx").num_unindexed_rows == 100
        store.add_items("grow", [f"c{i}" for i in range(30)], rng.standard_normal((30, 8)))
        stats = table.index_stats("vector_idx")
        assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (250, 0)


def test_failed_upkeep_does_not_fail_the_stored_write(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_optimize(*args: object) -> None:
        raise RuntimeError("disk trouble during compaction")

    monkeypatch.setattr(LanceDBStore, "_optimize", broken_optimize)
    with LanceDBStore(
        store_path, LanceDBOptions(index_threshold=None, optimize_every_writes=1)
    ) as store:
        store.create_collection("c", 2)
        assert store.add_items("c", ["a"], [[1, 0]]).inserted == 1
        assert store.get_items("c", ["a"])[0].id == "a"
    assert "upkeep of collection 'c' failed" in caplog.text


def test_concurrent_writers_and_readers(store: Any) -> None:
    store.create_collection("c", 8)

    def write(worker: int) -> None:
        rng = np.random.default_rng(worker)
        for batch in range(5):
            ids = [f"w{worker}-{batch}-{i}" for i in range(10)]
            store.add_items("c", ids, rng.standard_normal((10, 8)))

    def read() -> None:
        for _ in range(20):
            store.search("c", np.ones(8), top_k=5)
            store.count("c")

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(write, w) for w in range(3)] + [pool.submit(read) for _ in range(2)]
        for future in futures:
            future.result()
    assert store.count("c") == 150


def test_sync_writes_off_still_persists(store_path: Path) -> None:
    options = LanceDBOptions(index_threshold=None, sync_writes=False)
    with LanceDBStore(store_path, options) as store:
        store.create_collection("c", 2)
        store.add_items("c", ["a"], [[1, 0]])
    with LanceDBStore(store_path, options) as reopened:
        assert reopened.count("c") == 1


def test_importing_without_lancedb_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['lancedb'] = None\n"
        "import imgembed.search\n"
        "try:\n"
        "    import imgembed.search.lancedb_store\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'imgembed[search]'" in result.stdout
