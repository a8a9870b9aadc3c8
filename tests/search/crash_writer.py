"""Adds batches to a LanceDB store forever, printing ``ACK <batch>`` after each add returns.

Run by test_crash.py, which kills it with SIGKILL mid-stream and checks the store afterwards.
Usage: ``python crash_writer.py STORE_DIR ROUND BATCH_SIZE``.
"""

from __future__ import annotations

import sys

import numpy as np

from imgembed.errors import NotFoundError
from imgembed.search.lancedb_store import LanceDBOptions, LanceDBStore

COLLECTION = "crash"
DIMENSION = 64


def main() -> None:
    store_dir, round_label, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = LanceDBStore(store_dir, LanceDBOptions(index_threshold=None, optimize_every_writes=7))
    try:
        store.get_collection(COLLECTION)
    except NotFoundError:
        store.create_collection(COLLECTION, DIMENSION)
    rng = np.random.default_rng(abs(hash(round_label)) % 2**32)
    print("READY", flush=True)
    batch = 0
    while True:
        label = f"{round_label}-{batch}"
        ids = [f"{label}-{i}" for i in range(batch_size)]
        vectors = rng.standard_normal((batch_size, DIMENSION))
        metadata = [{"batch": label, "i": i} for i in range(batch_size)]
        store.add_items(COLLECTION, ids, vectors, metadata)
        sys.stdout.write(f"ACK {label}\n")
        sys.stdout.flush()
        batch += 1


if __name__ == "__main__":
    main()
