"""The Lance table layout of a collection: schema, rows in, items out, id predicates.

Needs the ``search`` extra (``pip install 'imgembed[search]'``).

Table layout (one row per item):

- ``id`` (string): the item id; ``add_items`` keeps it unique.
- ``vector`` (fixed-size list of float32, the collection's dimension): the unit-normalised vector.
- ``metadata`` (string): the item's JSON object as compact text, returned as given.
- ``filter_doc`` (Lance JSON, stored as JSONB): the flattened, type-tagged copy of the metadata
  that filters run on (:func:`imgembed.search.filters.filter_document`). Why not one column per
  metadata key: keys are arbitrary client text with values of any type, which would mean a schema
  change per new key and columns that clash in type between items; the JSON column takes any key
  and Lance's ``json_get*`` functions read one key without path syntax, so keys are matched
  literally.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from imgembed.search.filters import filter_document, sql_string
from imgembed.search.store import Item

try:
    import pyarrow as pa
except ImportError as e:
    raise ImportError(
        "the LanceDB vector store needs the 'search' extra: pip install 'imgembed[search]'"
    ) from e

FILTER_COLUMN = "filter_doc"
"""The JSON column filters run on."""
ITEM_COLUMNS = ["id", "metadata"]
"""Columns every read returns (``vector`` too when vectors are asked for)."""
SCHEMA_MARK = {"imgembed.kind": "vector-collection", "imgembed.metric": "cosine"}
"""Schema metadata that marks a Lance table as one of this store's collections."""


MODEL_KEY = "imgembed.model"
"""Schema metadata naming the model whose embeddings a collection holds (when one was given)."""


def row_schema(dimension: int) -> pa.Schema:
    """The columns of a collection with ``dimension``-long vectors (no table metadata)."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),
            pa.field(FILTER_COLUMN, pa.json_(pa.string())),
        ]
    )


def collection_schema(dimension: int, model: str | None) -> pa.Schema:
    """A new collection's schema: its columns, this store's mark and the model, if any."""
    marks = dict(SCHEMA_MARK) if model is None else {**SCHEMA_MARK, MODEL_KEY: model}
    return row_schema(dimension).with_metadata(marks)


def schema_model(schema: pa.Schema) -> str | None:
    """The model a collection was created for, or None."""
    value = (schema.metadata or {}).get(MODEL_KEY.encode())
    return None if value is None else value.decode()


def is_collection_schema(schema: pa.Schema) -> bool:
    """Whether a Lance table's schema carries this store's mark."""
    marks = schema.metadata or {}
    return all(marks.get(k.encode()) == v.encode() for k, v in SCHEMA_MARK.items())


def item_rows(ids: list[str], unit: np.ndarray, texts: list[str], dimension: int) -> pa.Table:
    """The Arrow rows of an add: ids, ``[N,D]`` unit vectors, metadata text, filter documents."""
    documents = [json.dumps(filter_document(json.loads(text))) for text in texts]
    flat = pa.array(np.ascontiguousarray(unit).reshape(-1))  # [N*D], row-major
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dimension),
            "metadata": pa.array(texts, pa.string()),
            FILTER_COLUMN: pa.array(documents, pa.json_(pa.string())),
        },
        schema=row_schema(dimension),
    )


def table_items(table: pa.Table, dimension: int, with_vectors: bool) -> list[Item]:
    """Rows of a query result as items; vectors ``[D]`` float32 when asked for."""
    ids = table["id"].to_pylist()
    metadata = [json.loads(text) for text in table["metadata"].to_pylist()]
    if not with_vectors:
        return [Item(id=i, vector=None, metadata=m) for i, m in zip(ids, metadata, strict=True)]
    values = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = values.astype(np.float32).reshape(len(ids), dimension)  # [N*D] -> [N,D]
    return [
        Item(id=i, vector=v.copy(), metadata=m)
        for i, v, m in zip(ids, vectors, metadata, strict=True)
    ]


def id_in_sql(ids: Sequence[str]) -> str:
    """``id IN (...)`` with every id a quoted SQL literal."""
    return "id IN (" + ", ".join(sql_string(i) for i in ids) + ")"
