"""A writer killed with SIGKILL mid-stream loses no acknowledged add and leaves a readable store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from imgembed.search import lancedb_store

WRITER = Path(__file__).with_name("crash_writer.py")
BATCH_SIZE = 20


def run_and_kill(
    store_dir: Path, round_label: str, acks_before_kill: int, delay_s: float
) -> list[str]:
    """Starts the writer, kills it after ``acks_before_kill`` acknowledgements plus ``delay_s``.

    Returns:
        The batch labels the writer reported as acknowledged.
    """
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(store_dir), round_label, str(BATCH_SIZE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    acked: list[str] = []
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "READY"
        while len(acked) < acks_before_kill:
            line = writer.stdout.readline()
            assert line.startswith("ACK "), f"writer stopped early: {line!r}"
            acked.append(line.split()[1])
        time.sleep(delay_s)
        os.kill(writer.pid, signal.SIGKILL)
        # Acknowledgements printed before the kill landed still count.
        acked.extend(line.split()[1] for line in writer.stdout if line.startswith("ACK "))
    finally:
        writer.kill()
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    return acked


def test_sigkill_mid_stream_loses_no_acknowledged_add(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    all_acked: list[str] = []
    present_total = 0
    for round_number, (acks, delay_s) in enumerate([(4, 0.0), (9, 0.003), (15, 0.011)]):
        label = f"r{round_number}"
        acked = run_and_kill(store_dir, label, acks, delay_s)
        all_acked.extend(acked)
        with lancedb_store.LanceDBStore(store_dir) as store:
            # Every acknowledged batch is there, whole.
            for batch in acked:
                ids = [f"{batch}-{i}" for i in range(BATCH_SIZE)]
                assert len(store.get_items("crash", ids, with_vectors=False)) == BATCH_SIZE
                assert store.count("crash", {"batch": batch}) == BATCH_SIZE
            # The batch in flight at the kill is there whole or not at all.
            in_flight = f"{label}-{len(acked)}"
            in_flight_rows = store.count("crash", {"batch": in_flight})
            assert in_flight_rows in (0, BATCH_SIZE)
            present_total += (len(acked) * BATCH_SIZE) + in_flight_rows
            assert store.count("crash") == present_total
            # The table reads in full and searches.
            listed = []
            after = None
            while True:
                page = store.list_items("crash", limit=1000, after=after)
                listed.extend(item.id for item in page.items)
                if page.next_after is None:
                    break
                after = page.next_after
            assert len(listed) == present_total
            hits = store.search("crash", np.ones(64), top_k=5, filter={"i": {"$lt": 3}})
            assert len(hits) == 5
    assert len(all_acked) >= 4 + 9 + 15
