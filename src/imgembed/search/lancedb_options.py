"""Settings of the LanceDB vector store, and the Lance index each index type builds.

Needs the ``search`` extra (``pip install 'imgembed[search]'``).

Index types and their recall trade-offs (numbers: ``benchmarks/RESULTS.md``, "Vector search"). All
three split the vectors into IVF partitions (Lance picks about one per 8k rows unless
``num_partitions`` says otherwise) and search the ``nprobes`` partitions nearest the query; fewer
probes than partitions is where recall is lost on large collections:

- ``IVF_SQ`` (default): vectors quantised to 8 bits per value (a quarter of float32), candidates
  then re-ranked with the full vectors (``refine_factor * top_k`` of them). Builds in seconds;
  with refinement its recall is close to exact search whenever the probes cover the neighbours.
- ``IVF_PQ``: product quantisation (``num_sub_vectors`` codes of 8 bits, 1/64 of float32 at
  ``dimension / 16`` sub-vectors): the smallest index, slow to train, and the coarsest distances,
  so recall depends heavily on ``refine_factor`` and on how clustered the data are.
- ``IVF_HNSW_SQ``: a navigable graph per partition over 8-bit vectors (search breadth ``ef``):
  fewer distance computations per query on large partitions, slowest to build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from imgembed.search.filters import FilterLimits
from imgembed.search.validation import StoreLimits

try:
    from lancedb.index import HnswSq, IvfPq, IvfSq
except ImportError as e:
    raise ImportError(
        "the LanceDB vector store needs the 'search' extra: pip install 'imgembed[search]'"
    ) from e

IndexType = Literal["IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ"]


@dataclass(frozen=True)
class LanceDBOptions:
    """How the LanceDB store indexes, searches and keeps its files.

    Attributes:
        index_threshold: Items at which a collection gets an approximate index; None never builds
            one (every search exact).
        index_type: ``"IVF_SQ"``, ``"IVF_PQ"`` or ``"IVF_HNSW_SQ"`` (trade-offs above).
        num_partitions: IVF partitions; None lets Lance choose (about one per 8,000 rows).
        num_sub_vectors: PQ sub-vectors (IVF_PQ only); None lets Lance choose.
        nprobes: Partitions searched per query (all of them when a filter leaves too few hits).
        refine_factor: Candidates re-ranked with full vectors, as a multiple of ``top_k``; None
            ranks by the index's compressed distances alone.
        ef: HNSW search breadth (IVF_HNSW_SQ only).
        index_rebuild_growth: Rebuild the index (new partitions) when the collection has grown
            by this factor since the index was built (or since the store opened it), so that
            partitions stay near their intended size.
        optimize_every_writes: Writes to a collection between compactions (merging small files,
            folding new rows into the index, dropping old versions).
        keep_old_versions: How long replaced data files stay on disk for readers still using them.
        sync_writes: Fsync each write's files before acknowledging it (local paths only).
        limits: Bounds on each call's input.
        filter_limits: Bounds on filters.
    """

    index_threshold: int | None = 10_000
    index_type: IndexType = "IVF_SQ"
    num_partitions: int | None = None
    num_sub_vectors: int | None = None
    nprobes: int = 20
    refine_factor: int | None = 10
    ef: int = 100
    index_rebuild_growth: float = 4.0
    optimize_every_writes: int = 100
    keep_old_versions: timedelta = timedelta(minutes=10)
    sync_writes: bool = True
    limits: StoreLimits = field(default_factory=StoreLimits)
    filter_limits: FilterLimits = field(default_factory=FilterLimits)


def index_config(options: LanceDBOptions) -> Any:
    """The Lance index configuration (cosine) for ``options.index_type``."""
    if options.index_type == "IVF_SQ":
        return IvfSq(distance_type="cosine", num_partitions=options.num_partitions)
    if options.index_type == "IVF_PQ":
        return IvfPq(
            distance_type="cosine",
            num_partitions=options.num_partitions,
            num_sub_vectors=options.num_sub_vectors,
        )
    return HnswSq(distance_type="cosine", num_partitions=options.num_partitions)
