"""Vector search benchmark: add time, search latency and ANN recall of the LanceDB store.

    python benchmarks/search.py                  # 10k and 100k vectors: 20 to 45 minutes on 2 cores
    python benchmarks/search.py --quick          # 2k vectors, few queries: a smoke run

For each size: random 768-d float32 vectors (standard normal, seed 0) with metadata
``{"label": "l<i % 10>", "year": 2000 + i % 25}`` are added in batches of 1000 to a fresh store
(exact search, no index), then single-item adds are timed (one id per call, the server's case).
Queries are of two kinds: ``random`` (independent random vectors: the hard case, where the
neighbours are barely closer than the rest) and ``near`` (a stored vector plus noise, cosine about
0.8 to it). Exact search gives the ground truth; then each index type is built (``build_index``)
and searched with the store's default settings. Cases are timed per query in rotating order.
Filtered searches ask for ``{"label": "l3"}`` (10 % of the items). Recall@10 is the share of the
exact top-10 (under the same filter) that the index returns.

Writes Markdown to ``benchmarks/out/search_<UTC time>.md`` (a ``## Vector search`` section, to
append to ``RESULTS.md``) and every number to a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from bench_util import CpuSnapshot, log, machine_info, markdown_table, wait_until_quiet

from imgembed.search.lancedb_store import LanceDBOptions, LanceDBStore

DIMENSION = 768
COLLECTION = "bench"
BATCH = 1000
TOP_K = 10
FILTER = {"label": "l3"}
OWN = [os.getpid()]
"""This process: its CPU time is the work, not other load."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    """p50, p99 and mean of durations, in milliseconds."""
    return {
        "p50_ms": percentile(values_s, 50) * 1000,
        "p99_ms": percentile(values_s, 99) * 1000,
        "mean_ms": statistics.fmean(values_s) * 1000,
    }


def dataset(size: int) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """``[size, 768]`` float32 random vectors, their ids and metadata."""
    vectors = np.random.default_rng(0).standard_normal((size, DIMENSION), dtype=np.float32)
    ids = [f"item-{i:07d}" for i in range(size)]
    metadata = [{"label": f"l{i % 10}", "year": 2000 + i % 25} for i in range(size)]
    return vectors, ids, metadata


def query_sets(vectors: np.ndarray, count: int) -> tuple[dict[str, np.ndarray], list[int]]:
    """``random`` and ``near`` queries, ``[count, 768]`` each, and the rows the near ones came from."""
    rng = np.random.default_rng(1)
    planted = rng.choice(len(vectors), count, replace=False)
    noise = rng.standard_normal((count, DIMENSION)).astype(np.float32) * 0.75
    queries = {
        "random": rng.standard_normal((count, DIMENSION)).astype(np.float32),
        "near": vectors[planted] + noise,
    }
    return queries, [int(i) for i in planted]


def timed_adds(store: LanceDBStore, vectors: np.ndarray, ids: list[str], meta: list[dict]) -> dict:
    """Bulk adds in batches of ``BATCH``; per-batch latency and throughput."""
    store.create_collection(COLLECTION, DIMENSION)
    batch_s: list[float] = []
    before = CpuSnapshot.take(OWN)
    started = time.perf_counter()
    for start in range(0, len(ids), BATCH):
        end = start + BATCH
        t0 = time.perf_counter()
        store.add_items(COLLECTION, ids[start:end], vectors[start:end], meta[start:end])
        batch_s.append(time.perf_counter() - t0)
    total_s = time.perf_counter() - started
    return {
        "total_s": total_s,
        "items_per_s": len(ids) / total_s,
        "batch": summary_ms(batch_s),
        "other_cores": CpuSnapshot.take(OWN).other_cores(before, total_s),
    }


def timed_single_adds(store: LanceDBStore, count: int) -> dict:
    """``count`` adds of one item each (then deleted again)."""
    rng = np.random.default_rng(2)
    single_s: list[float] = []
    ids = [f"single-{i}" for i in range(count)]
    for item_id in ids:
        vector = rng.standard_normal((1, DIMENSION))
        t0 = time.perf_counter()
        store.add_items(COLLECTION, [item_id], vector, [{"label": "single"}])
        single_s.append(time.perf_counter() - t0)
    store.delete_items(COLLECTION, ids)
    return summary_ms(single_s)


def run_queries(
    cases: dict[str, Callable[[np.ndarray], list[str]]], queries: np.ndarray
) -> tuple[dict[str, list[float]], dict[str, list[list[str]]], float]:
    """Runs every case on every query, cases in rotating order per query.

    Returns:
        Per case its latencies (s) and result ids; the other processes' load in cores.
    """
    names = list(cases)
    for name in names:  # warm-up: open files, load index partitions
        cases[name](queries[0])
    latencies: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list[list[str]]] = {name: [] for name in names}
    before = CpuSnapshot.take(OWN)
    started = time.perf_counter()
    for index, query in enumerate(queries):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            ids = cases[name](query)
            latencies[name].append(time.perf_counter() - t0)
            results[name].append(ids)
    other = CpuSnapshot.take(OWN).other_cores(before, time.perf_counter() - started)
    return latencies, results, other


def planted_top1(found: list[list[str]], planted: list[str]) -> float:
    """Share of near queries whose first hit is the stored vector they were made from."""
    return statistics.fmean(bool(f) and f[0] == p for f, p in zip(found, planted, strict=True))


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    """Mean share of each true top-k that was found."""
    return statistics.fmean(
        len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)
    )


def searcher(
    store: LanceDBStore, *, exact: bool, filtered: bool
) -> Callable[[np.ndarray], list[str]]:
    filter_spec = FILTER if filtered else None

    def search(query: np.ndarray) -> list[str]:
        hits = store.search(COLLECTION, query, top_k=TOP_K, filter=filter_spec, exact=exact)
        return [hit.id for hit in hits]

    return search


def bench_size(size: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    log(f"size {size}: generating vectors")
    vectors, ids, meta = dataset(size)
    queries, planted_rows = query_sets(vectors, args.queries)
    planted = [ids[i] for i in planted_rows]
    path = workdir / f"store_{size}"
    # One process, no other readers: compaction may drop replaced files at once, so the disk
    # figure is the live data.
    base = LanceDBOptions(index_threshold=None, keep_old_versions=timedelta(0))
    row: dict[str, Any] = {"size": size}
    wait_until_quiet(args.wait_quiet, log)
    with LanceDBStore(path, base) as store:
        row["add"] = timed_adds(store, vectors, ids, meta)
        log(f"  bulk add: {row['add']['total_s']:.1f} s")
        row["single_add"] = timed_single_adds(store, args.single_adds)
        store.optimize(COLLECTION)
        row["disk_mib"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20

        wait_until_quiet(args.wait_quiet, log)
        exact_cases = {
            "exact": searcher(store, exact=True, filtered=False),
            "exact + filter": searcher(store, exact=True, filtered=True),
        }
        truth: dict[str, dict[str, list[list[str]]]] = {}
        row["search"] = {}
        for kind, query_set in queries.items():
            latencies, results, other = run_queries(exact_cases, query_set)
            truth[kind] = results
            for name, values in latencies.items():
                entry = {**summary_ms(values), "other_cores": other}
                if kind == "near" and "filter" not in name:
                    entry["planted_top1"] = planted_top1(results[name], planted)
                row["search"].setdefault(name, {})[kind] = entry
        log("  exact search done")

        row["indexes"] = {}
        for index_type in args.index_types:
            options = replace(base, index_type=index_type)
            with LanceDBStore(path, options) as indexed:
                wait_until_quiet(args.wait_quiet, log)
                t0 = time.perf_counter()
                indexed.build_index(COLLECTION)
                build_s = time.perf_counter() - t0
                log(f"  {index_type}: built in {build_s:.1f} s")
                entry: dict[str, Any] = {"build_s": build_s, "search": {}}
                cases = {
                    "ann": searcher(indexed, exact=False, filtered=False),
                    "ann + filter": searcher(indexed, exact=False, filtered=True),
                }
                for kind, query_set in queries.items():
                    latencies, results, other = run_queries(cases, query_set)
                    for name, values in latencies.items():
                        wanted = truth[kind]["exact" if name == "ann" else "exact + filter"]
                        measured = {
                            **summary_ms(values),
                            "recall_at_10": recall(results[name], wanted),
                            "other_cores": other,
                        }
                        if kind == "near" and "filter" not in name:
                            measured["planted_top1"] = planted_top1(results[name], planted)
                        entry["search"].setdefault(name, {})[kind] = measured
                if index_type == args.index_types[0]:
                    entry["nprobes_sweep"] = nprobes_sweep(path, options, queries, truth, args)
                row["indexes"][index_type] = entry
    return row


def nprobes_sweep(
    path: Path,
    options: LanceDBOptions,
    queries: dict[str, np.ndarray],
    truth: dict[str, dict[str, list[list[str]]]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Recall and latency of the built index at several ``nprobes`` (random queries, no filter)."""
    sweep: dict[str, Any] = {}
    for nprobes in args.nprobes:
        with LanceDBStore(path, replace(options, nprobes=nprobes)) as store:
            latencies, results, _ = run_queries(
                {"ann": searcher(store, exact=False, filtered=False)}, queries["random"]
            )
            sweep[str(nprobes)] = {
                **summary_ms(latencies["ann"]),
                "recall_at_10": recall(results["ann"], truth["random"]["exact"]),
            }
    return sweep


def render(
    rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace, wall_s: float
) -> str:
    """The ``## Vector search`` section."""
    defaults = LanceDBOptions()
    lines = [
        "## Vector search",
        "",
        f"- Date: {info['date']} (UTC); whole run {wall_s / 60:.1f} min.",
        f"- Machine: {info['cpu_model']}, {info['cpus_usable']} usable of {info['cpu_count']} cores, "
        f"{info['memory_gib']} GiB RAM, local disk; Python {info['python']}, lancedb {info['lancedb']}, "
        f"pyarrow {info['pyarrow']}, numpy {info['numpy']}.",
        f"- Command: `{info['command']}`.",
        f"- Data: random 768-d float32 vectors (standard normal), metadata "
        '`{"label": "l<i % 10>", "year": ...}`; store `LanceDBStore` with fsync on. Queries: '
        f"{args.queries} `random` (independent random vectors) and {args.queries} `near` (a stored "
        "vector plus noise, cosine about 0.8; 'planted item first' is the share whose first hit is "
        'that vector), top-10; filter `{"label": "l3"}` (10 % of items). '
        "Latency per query in this process (no HTTP), cases interleaved per query; p99 nearest-rank.",
        f"- Index settings (the store's defaults): nprobes {defaults.nprobes}, refine_factor "
        f"{defaults.refine_factor}, ef {defaults.ef}, partitions chosen by Lance. Recall@10 = share of "
        "the exact top-10 (same filter) the index returns.",
        "",
        "Adds (exact store, no index yet):",
        "",
    ]
    add_rows = [
        [
            f"{r['size']:,}",
            f"{r['add']['total_s']:.1f}",
            f"{r['add']['items_per_s']:,.0f}",
            f"{r['add']['batch']['p50_ms']:.0f}",
            f"{r['add']['batch']['p99_ms']:.0f}",
            f"{r['single_add']['p50_ms']:.1f}",
            f"{r['single_add']['p99_ms']:.1f}",
            f"{r['disk_mib']:.0f}",
        ]
        for r in rows
    ]
    lines.append(
        markdown_table(
            [
                "items",
                "bulk add s",
                "items/s",
                "1000-item add p50 ms",
                "p99 ms",
                "1-item add p50 ms",
                "p99 ms",
                "disk MiB",
            ],
            add_rows,
        )
    )
    lines += ["", "Search, top-10:", ""]
    search_rows = []
    for r in rows:
        for name, by_kind in r["search"].items():
            search_rows.append(_search_row(r["size"], name, "-", by_kind))
        for index_type, entry in r["indexes"].items():
            for name, by_kind in entry["search"].items():
                search_rows.append(
                    _search_row(
                        r["size"], f"{index_type} {name}", f"{entry['build_s']:.1f}", by_kind
                    )
                )
    lines.append(
        markdown_table(
            [
                "items",
                "search",
                "index build s",
                "random p50 ms",
                "random p99 ms",
                "random recall@10",
                "near p50 ms",
                "near p99 ms",
                "near recall@10",
                "near: planted item first",
                "other load, cores",
            ],
            search_rows,
        )
    )
    sweep_rows = []
    for r in rows:
        for index_type, entry in r["indexes"].items():
            for nprobes, values in entry.get("nprobes_sweep", {}).items():
                sweep_rows.append(
                    [
                        f"{r['size']:,}",
                        index_type,
                        nprobes,
                        f"{values['p50_ms']:.1f}",
                        f"{values['p99_ms']:.1f}",
                        f"{values['recall_at_10']:.3f}",
                    ]
                )
    if sweep_rows:
        lines += ["", "nprobes (random queries, no filter):", ""]
        lines.append(
            markdown_table(
                ["items", "index", "nprobes", "p50 ms", "p99 ms", "recall@10"], sweep_rows
            )
        )
    return "\n".join(lines) + "\n"


def _search_row(
    size: int, name: str, build: str, by_kind: dict[str, dict[str, float]]
) -> list[str]:
    """One row of the search table: latency and recall for both query kinds."""
    random_q, near_q = by_kind["random"], by_kind["near"]
    return [
        f"{size:,}",
        name,
        build,
        f"{random_q['p50_ms']:.1f}",
        f"{random_q['p99_ms']:.1f}",
        f"{random_q['recall_at_10']:.3f}" if "recall_at_10" in random_q else "1 (exact)",
        f"{near_q['p50_ms']:.1f}",
        f"{near_q['p99_ms']:.1f}",
        f"{near_q['recall_at_10']:.3f}" if "recall_at_10" in near_q else "1 (exact)",
        f"{near_q['planted_top1']:.2f}" if "planted_top1" in near_q else "-",
        f"{max(random_q['other_cores'], near_q['other_cores']):.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=100, help="queries of each kind")
    parser.add_argument("--single-adds", type=int, default=50)
    parser.add_argument("--index-types", nargs="+", default=["IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ"])
    parser.add_argument("--nprobes", type=int, nargs="+", default=[1, 3, 20])
    parser.add_argument("--wait-quiet", type=float, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--quick", action="store_true", help="2k vectors, 10 queries: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries, args.single_adds, args.wait_quiet = [2000], 10, 5, 0
    import lancedb
    import pyarrow

    machine = machine_info()
    info = {
        **{
            k: machine[k]
            for k in ("cpu_model", "cpu_count", "cpus_usable", "memory_gib", "python", "numpy")
        },
        "lancedb": lancedb.__version__,
        "pyarrow": pyarrow.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/search.py" + (" --quick" if args.quick else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="imgembed-search-bench-"))
    started = time.perf_counter()
    try:
        rows = [bench_size(size, args, workdir) for size in args.sizes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    section = render(rows, info, args, time.perf_counter() - started)
    (args.out / f"search_{stamp}.json").write_text(
        json.dumps({"info": info, "rows": rows}, indent=1)
    )
    (args.out / f"search_{stamp}.md").write_text(section, encoding="utf-8")
    print(section)
    log(f"wrote {args.out / f'search_{stamp}.md'}")


if __name__ == "__main__":
    main()
