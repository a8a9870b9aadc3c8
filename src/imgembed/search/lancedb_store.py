"""The vector store on LanceDB: embedded, on disk, one Lance table per collection.

Needs the ``search`` extra (``pip install 'imgembed[search]'``).

One row per item; the columns, and why metadata is filtered through a JSON column, are in
:mod:`imgembed.search.lancedb_layout`.

Search is cosine (``distance_type="cosine"``; the score is ``1 - distance``). A collection is searched
exactly (every row compared) until it holds ``index_threshold`` items; the write that reaches the
threshold then builds an approximate nearest-neighbour index, and later writes fold new rows into
it every ``optimize_every_writes`` writes (rows not yet in the index are still searched, exactly).
``exact=True`` on a search ignores the index.

The index types and their recall trade-offs are in :mod:`imgembed.search.lancedb_options`.

Filters are applied before the vector search (pre-filtering). When a filtered search through the
index finds fewer than ``top_k`` hits in its ``nprobes`` partitions (a narrow filter), it is run
again over every partition, so a filtered search returns ``top_k`` hits whenever that many items
pass.

Durability: each write is one Lance commit (atomic: all of a request's rows or none); on a local
path the store then fsyncs the files the commit wrote (:mod:`imgembed.search.durability`) before
returning. Only one process may write a store directory at a time.

Threads: reads run concurrently; writes to one collection are serialised by a per-collection lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from imgembed.errors import ConflictError, InvalidInputError, NotFoundError
from imgembed.search.durability import TreeSyncer, fsync_path
from imgembed.search.filters import parse_filter, sql_string
from imgembed.search.lancedb_layout import (
    FILTER_COLUMN,
    ITEM_COLUMNS,
    collection_schema,
    id_in_sql,
    is_collection_schema,
    item_rows,
    schema_model,
    table_items,
)
from imgembed.search.lancedb_options import LanceDBOptions, index_config
from imgembed.search.store import (
    AddResult,
    CollectionInfo,
    Item,
    ItemPage,
    OnConflict,
    SearchHit,
    VectorLike,
    VectorsLike,
)
from imgembed.search.validation import (
    check_collection_name,
    check_dimension,
    check_ids,
    check_metadata_list,
    check_model,
    check_positive,
    show_ids,
    unit_query,
    unit_vectors,
)

try:
    import lancedb
    import pyarrow as pa
    from lancedb.query import ColumnOrdering
except ImportError as e:
    raise ImportError(
        "the LanceDB vector store needs the 'search' extra: pip install 'imgembed[search]'"
    ) from e

logger = logging.getLogger(__name__)


@dataclass
class _Collection:
    """An open collection: its table handle, write lock and bookkeeping."""

    table: Any
    dimension: int
    lock: threading.Lock
    syncer: TreeSyncer | None
    indexed: bool
    model: str | None
    rows_at_index_build: int = 0
    writes_since_optimize: int = 0
    dropped: bool = False


class LanceDBStore:
    """:class:`~imgembed.search.store.VectorStore` on an embedded LanceDB directory.

    Args:
        path: Directory holding the collections (created when missing), or a LanceDB URI such as
            ``s3://bucket/prefix`` (then ``sync_writes`` does not apply: object stores are durable
            on acknowledgement).
        options: Indexing, search and durability settings.
    """

    def __init__(self, path: str | Path, options: LanceDBOptions | None = None) -> None:
        self.options = options or LanceDBOptions()
        self.uri = str(path)
        self._local = "://" not in self.uri
        if self._local:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(self.uri)
        self._lock = threading.Lock()
        self._collections: dict[str, _Collection] = {}
        self._closed = False

    def __enter__(self) -> LanceDBStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Forgets open tables; the object is unusable afterwards (the data stays on disk)."""
        with self._lock:
            self._collections.clear()
            self._closed = True

    # Collections

    def create_collection(
        self, name: str, dimension: int, *, model: str | None = None
    ) -> CollectionInfo:
        """Creates an empty collection; ConflictError when the name is taken."""
        limits = self.options.limits
        name = check_collection_name(name, limits)
        dimension = check_dimension(dimension, limits)
        model = check_model(model)
        with self._lock:
            self._check_open()
            if name in self._table_names():
                raise ConflictError(
                    f"collection {name!r} exists already; delete it first or use another name",
                    field="name",
                )
            table = self._db.create_table(name, schema=collection_schema(dimension, model))
            self._collections[name] = self._wrap(name, table)
            if self._local and self.options.sync_writes:
                fsync_path(self.uri, directory=True)
        logger.info("created collection %r (dimension %d)", name, dimension)
        return CollectionInfo(name=name, dimension=dimension, count=0, model=model)

    def get_collection(self, name: str) -> CollectionInfo:
        """Describes a collection; NotFoundError when there is none."""
        collection = self._open(name)
        return CollectionInfo(
            name=name,
            dimension=collection.dimension,
            count=collection.table.count_rows(),
            indexed=collection.indexed,
            model=collection.model,
        )

    def list_collections(self) -> list[CollectionInfo]:
        """Every collection this store made, by name."""
        with self._lock:
            self._check_open()
            names = sorted(self._table_names())
        infos = []
        for name in names:
            try:
                infos.append(self.get_collection(name))
            except NotFoundError:
                continue  # not one of ours, or deleted meanwhile
        return infos

    def delete_collection(self, name: str) -> None:
        """Deletes a collection and its files; NotFoundError when there is none."""
        collection = self._open(name)
        with collection.lock, self._lock:
            try:
                self._db.drop_table(name)
            except ValueError as e:
                raise _not_found(name) from e
            finally:
                collection.dropped = True
                self._collections.pop(name, None)
            if self._local and self.options.sync_writes:
                fsync_path(self.uri, directory=True)
        logger.info("deleted collection %r", name)

    # Writes

    def add_items(
        self,
        name: str,
        ids: Sequence[str],
        vectors: VectorsLike,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        on_conflict: OnConflict = "reject",
    ) -> AddResult:
        """Adds items in one atomic write; see :meth:`VectorStore.add_items`."""
        limits = self.options.limits
        collection = self._open(name)
        checked_ids = check_ids(ids, limits, unique=True)
        unit = unit_vectors(vectors, len(checked_ids), collection.dimension, field="vectors")
        texts = check_metadata_list(metadata, len(checked_ids), limits)
        if on_conflict not in ("reject", "upsert"):
            raise InvalidInputError(
                f"on_conflict must be 'reject' or 'upsert', got {on_conflict!r}",
                field="on_conflict",
            )
        rows = item_rows(checked_ids, unit, texts, collection.dimension)
        with collection.lock:
            _check_not_dropped(name, collection)
            if on_conflict == "reject":
                existing = self._existing_ids(collection, checked_ids)
                if existing:
                    raise ConflictError(
                        f"{len(existing)} of the ids exist in collection {name!r} already: "
                        f"{show_ids(existing)}; nothing was added. Use other ids, delete those "
                        "items first, or add with on_conflict='upsert' to replace them",
                        field="ids",
                    )
                collection.table.add(rows)
                result = AddResult(inserted=len(checked_ids))
            else:
                merged = (
                    collection.table.merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(rows)
                )
                result = AddResult(
                    inserted=int(merged.num_inserted_rows), updated=int(merged.num_updated_rows)
                )
            self._after_write(name, collection)
        return result

    def delete_items(self, name: str, ids: Sequence[str]) -> int:
        """Deletes items in one atomic write; returns how many of the ids existed."""
        collection = self._open(name)
        checked_ids = check_ids(ids, self.options.limits, unique=False)
        with collection.lock:
            _check_not_dropped(name, collection)
            deleted = collection.table.delete(id_in_sql(checked_ids))
            self._after_write(name, collection)
        return int(deleted.num_deleted_rows)

    # Reads

    def search(
        self,
        name: str,
        vector: VectorLike,
        *,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> list[SearchHit]:
        """The ``top_k`` items closest to ``vector`` by cosine among those passing ``filter``."""
        collection = self._open(name)
        top_k = check_positive(top_k, "top_k", self.options.limits.max_top_k)
        query_vector = unit_query(vector, collection.dimension)
        where = self._where(filter)
        if exact or not collection.indexed:
            result = self._vector_query(collection, query_vector, top_k, where, probes=None)
        else:
            result = self._vector_query(collection, query_vector, top_k, where, probes="nprobes")
            if where is not None and result.num_rows < top_k:
                # A narrow filter left too few hits in the probed partitions: search them all.
                result = self._vector_query(collection, query_vector, top_k, where, probes="all")
        hits = [
            SearchHit(id=item_id, score=float(np.clip(1.0 - distance, -1.0, 1.0)), metadata=meta)
            for item_id, meta, distance in zip(
                result["id"].to_pylist(),
                (json.loads(m) for m in result["metadata"].to_pylist()),
                result["_distance"].to_pylist(),
                strict=True,
            )
        ]
        hits.sort(key=lambda hit: (-hit.score, hit.id))
        return hits

    def _vector_query(
        self,
        collection: _Collection,
        query_vector: np.ndarray,
        top_k: int,
        where: str | None,
        probes: Literal["nprobes", "all"] | None,
    ) -> pa.Table:
        """Runs one cosine query: exact when ``probes`` is None, else through the index.

        Args:
            collection: The open collection.
            query_vector: ``[D]`` float32, unit norm.
            top_k: Rows wanted.
            where: SQL filter applied before the vector search, or None.
            probes: ``"nprobes"`` searches the configured number of partitions, ``"all"`` every
                partition (still on the index's compressed vectors, then refined).

        Returns:
            Rows with ``id``, ``metadata`` and ``_distance`` (cosine distance, ``1 - cos``).
        """
        query = (
            collection.table.search(query_vector, vector_column_name="vector")
            .distance_type("cosine")
            .select([*ITEM_COLUMNS, "_distance"])
            .limit(top_k)
        )
        if where is not None:
            query = query.where(where, prefilter=True)
        if probes is None:
            return query.bypass_vector_index().to_arrow()
        options = self.options
        query = query.nprobes(options.nprobes)
        if probes == "all":
            query = query.maximum_nprobes(0)  # 0: no upper bound
        if options.refine_factor is not None:
            query = query.refine_factor(options.refine_factor)
        if options.index_type == "IVF_HNSW_SQ":
            query = query.ef(max(options.ef, top_k))
        return query.to_arrow()

    def get_items(self, name: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[Item]:
        """The stored items with these ids, in the order asked; missing ids are left out."""
        collection = self._open(name)
        checked_ids = check_ids(ids, self.options.limits, unique=False)
        unique_ids = list(dict.fromkeys(checked_ids))
        columns = [*ITEM_COLUMNS, "vector"] if with_vectors else ITEM_COLUMNS
        table = (
            collection.table.search()
            .where(id_in_sql(unique_ids))
            .select(columns)
            .limit(len(unique_ids))
            .to_arrow()
        )
        found = {item.id: item for item in table_items(table, collection.dimension, with_vectors)}
        return [found[item_id] for item_id in checked_ids if item_id in found]

    def list_items(
        self,
        name: str,
        *,
        limit: int = 100,
        after: str | None = None,
        filter: Mapping[str, Any] | None = None,
        with_vectors: bool = False,
    ) -> ItemPage:
        """A page of items in id order after the id ``after`` (keyset paging: stable under writes)."""
        collection = self._open(name)
        limit = check_positive(limit, "limit", self.options.limits.max_page_size)
        clauses = [] if after is None else [f"id > {sql_string(_check_after(after))}"]
        where = self._where(filter)
        if where is not None:
            clauses.append(where)
        query = collection.table.search()
        if clauses:
            query = query.where(" AND ".join(f"({c})" for c in clauses))
        columns = [*ITEM_COLUMNS, "vector"] if with_vectors else ITEM_COLUMNS
        table = (
            query.select(columns)
            .order_by([ColumnOrdering(column_name="id", ascending=True)])
            .limit(limit + 1)
            .to_arrow()
        )
        items = table_items(table, collection.dimension, with_vectors)
        next_after = items[limit - 1].id if len(items) > limit else None
        return ItemPage(items=items[:limit], next_after=next_after)

    def count(self, name: str, filter: Mapping[str, Any] | None = None) -> int:
        """How many items pass ``filter`` (all items when None)."""
        collection = self._open(name)
        return int(collection.table.count_rows(self._where(filter)))

    # Index upkeep

    def build_index(self, name: str) -> None:
        """Builds (or rebuilds) the approximate index now, whatever the collection's size."""
        collection = self._open(name)
        with collection.lock:
            _check_not_dropped(name, collection)
            self._build_index(name, collection)
            self._sync(collection)

    def optimize(self, name: str) -> None:
        """Compacts files, folds new rows into the index and drops versions past their keep time."""
        collection = self._open(name)
        with collection.lock:
            _check_not_dropped(name, collection)
            self._optimize(name, collection)
            self._sync(collection)

    def _after_write(self, name: str, collection: _Collection) -> None:
        """Makes a committed write durable, then does index and compaction upkeep (lock held).

        A failed upkeep is logged, not raised: the write itself is stored and flushed, and the
        upkeep is tried again after the next write.
        """
        self._sync(collection)
        collection.writes_since_optimize += 1
        try:
            upkept = False
            if self._index_due(collection):
                self._build_index(name, collection)
                upkept = True
            if collection.writes_since_optimize >= self.options.optimize_every_writes:
                self._optimize(name, collection)
                upkept = True
            if upkept:
                self._sync(collection)
        except (OSError, RuntimeError, ValueError):
            logger.exception(
                "index or compaction upkeep of collection %r failed; the write itself is stored, "
                "and the upkeep is tried again after the next write",
                name,
            )

    def _index_due(self, collection: _Collection) -> bool:
        """Whether the collection reached the threshold, or outgrew its index's partitions."""
        threshold = self.options.index_threshold
        if threshold is None:
            return False
        rows = collection.table.count_rows()
        if not collection.indexed:
            return rows >= threshold
        growth = self.options.index_rebuild_growth
        return rows >= max(threshold, growth * collection.rows_at_index_build)

    def _build_index(self, name: str, collection: _Collection) -> None:
        rows = collection.table.count_rows()
        logger.info(
            "building %s index on collection %r (%d items)", self.options.index_type, name, rows
        )
        collection.table.create_index("vector", config=index_config(self.options), replace=True)
        collection.indexed = True
        collection.rows_at_index_build = rows

    def _optimize(self, name: str, collection: _Collection) -> None:
        logger.info("optimizing collection %r", name)
        collection.table.optimize(cleanup_older_than=self.options.keep_old_versions)
        collection.writes_since_optimize = 0

    def _sync(self, collection: _Collection) -> None:
        if collection.syncer is not None:
            collection.syncer.sync()

    # Helpers

    def _open(self, name: str) -> _Collection:
        """The open collection ``name``; NotFoundError when there is none (or not ours)."""
        name = check_collection_name(name, self.options.limits)
        with self._lock:
            self._check_open()
            collection = self._collections.get(name)
            if collection is None:
                try:
                    table = self._db.open_table(name)
                except ValueError as e:
                    raise _not_found(name) from e
                if not is_collection_schema(table.schema):
                    raise _not_found(name)
                collection = self._wrap(name, table)
                self._collections[name] = collection
            return collection

    def _wrap(self, name: str, table: Any) -> _Collection:
        syncer = None
        if self._local and self.options.sync_writes:
            syncer = TreeSyncer(self._table_dir(name))
            syncer.sync()
        return _Collection(
            table=table,
            dimension=table.schema.field("vector").type.list_size,
            lock=threading.Lock(),
            syncer=syncer,
            indexed=any("vector" in index.columns for index in table.list_indices()),
            model=schema_model(table.schema),
            rows_at_index_build=table.count_rows(),
            # Each uncompacted write left a small fragment: count those a previous process left.
            writes_since_optimize=int(table.stats()["fragment_stats"]["num_small_fragments"]),
        )

    def _table_names(self) -> list[str]:
        names: list[str] = []
        page_token = None
        while True:
            page = self._db.list_tables(page_token=page_token)
            names.extend(page.tables)
            page_token = page.page_token
            if not page_token:
                return names

    def _table_dir(self, name: str) -> Path:
        return Path(self.uri) / f"{name}.lance"

    def _where(self, spec: Mapping[str, Any] | None) -> str | None:
        tree = parse_filter(spec, self.options.filter_limits)
        return None if tree is None else tree.to_sql(FILTER_COLUMN)

    def _existing_ids(self, collection: _Collection, ids: list[str]) -> list[str]:
        table = (
            collection.table.search()
            .where(id_in_sql(ids))
            .select(["id"])
            .limit(len(ids))
            .to_arrow()
        )
        return sorted(table["id"].to_pylist())

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this LanceDBStore is closed")


def _check_after(after: object) -> str:
    """The ``after`` cursor of ``list_items``: an item id."""
    if not isinstance(after, str):
        raise InvalidInputError(
            f"after must be an item id (string), got {type(after).__name__}", field="after"
        )
    return after


def _check_not_dropped(name: str, collection: _Collection) -> None:
    """Raises NotFoundError when the collection was deleted while the caller waited for its lock."""
    if collection.dropped:
        raise _not_found(name)


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"collection {name!r} does not exist; create it first (list the collections to see "
        "which exist)",
        field="name",
    )
