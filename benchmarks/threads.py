"""Thread settings: the CPU worker pool (``IMGEMBED_COMPUTE_THREADS``) against torch's threads.

    . .venv/bin/activate
    python benchmarks/threads.py        # about 5 minutes on 2 idle CPU cores

The engine decodes, resizes and serialises on a pool of ``compute_threads`` while the model's
device thread runs the forward pass with torch's intra-op threads (``torch.set_num_threads``,
``OMP_NUM_THREADS``). On a CPU-only machine both share the cores. Four concurrent clients in a
closed loop send ``Engine.sam2_embed`` requests in-process (a distinct 1600x1200 JPEG each, so
every request runs the encoder) and ``Engine.sam2_segment`` requests by
``image_id`` (one click, three masks resized to the photo) in equal numbers; each cell is one
(compute_threads, torch threads) pair. There is no reference implementation of a server here:
the comparison is between settings of this one, in one run.

Writes the ``## Thread settings`` section of ``benchmarks/RESULTS.md``. No HTTP, no GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from bench_util import (
    CpuSnapshot,
    log,
    machine_info,
    markdown_table,
    replace_section,
    wait_until_quiet,
)
from sam2_fixtures import PHOTO_SIZE, make_photo, reference_and_imgembed

from imgembed.engine import Engine, Sam2Service
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.settings import BatchingSettings, ModelSpec, ServerConfig
from imgembed.types import ImageBytes

HERE = Path(__file__).resolve().parent
CELLS = ((1, 1), (1, 2), (2, 1), (2, 2), (4, 2))
"""(compute_threads, torch threads) pairs; (2, 2) is the default on a 2-core machine."""
CLIENTS = 4
ENCODER_BATCHING = BatchingSettings(max_batch_size=4, max_queue_delay_ms=5.0)
"""Set, not left to the default (1 on a CPU), so concurrent embeds can share encoder passes."""


@dataclass(frozen=True)
class Cell:
    compute_threads: int
    torch_threads: int
    wall_s: float
    embed_latencies_s: list[float]
    segment_latencies_s: list[float]
    other_cores: float

    @property
    def requests_per_s(self) -> float:
        return (len(self.embed_latencies_s) + len(self.segment_latencies_s)) / self.wall_s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam2.1-hiera-tiny")
    parser.add_argument("--requests", type=int, default=16, help="timed requests per cell")
    parser.add_argument("--quick", action="store_true", help="4 requests per cell")
    parser.add_argument("--wait-quiet", type=float, default=300, metavar="SECONDS")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 4
    return args


async def closed_loop(
    engine: Engine, photos: list[bytes], image_id: str, indices: range
) -> tuple[float, list[float], list[float]]:
    """Alternating embed (even index: ``photos[index]``, unseen) and segment requests (odd
    index: a click on the image of ``image_id``) from :data:`CLIENTS` loops."""
    counter = iter(indices)
    embeds: list[float] = []
    segments: list[float] = []

    async def client() -> None:
        for index in counter:
            started = time.perf_counter()
            if index % 2 == 0:
                await engine.service(Sam2Service).embed(ImageBytes(photos[index]))
                embeds.append(time.perf_counter() - started)
            else:
                point = np.random.default_rng(index).uniform((0, 0), PHOTO_SIZE)
                objects = [SegmentObject(points=point[None], labels=np.ones(1, np.int32))]
                await engine.service(Sam2Service).segment(None, objects, image_id=image_id)
                segments.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return time.perf_counter() - started, embeds, segments


def measure(
    checkpoint: Path, model: str, photos: list[bytes], compute: int, threads: int, requests: int
) -> Cell:
    """One cell on a fresh engine: warm-up requests, then ``requests`` timed ones."""
    torch.set_num_threads(threads)
    spec = ModelSpec(model, weights=str(checkpoint), device="cpu", batching=ENCODER_BATCHING)
    loop = asyncio.new_event_loop()
    engine = Engine(ServerConfig(models=(spec,), compute_threads=compute))
    loop.run_until_complete(engine.start())
    image_id = loop.run_until_complete(
        engine.service(Sam2Service).embed(ImageBytes(photos[-1]))
    ).image_id
    loop.run_until_complete(closed_loop(engine, photos, image_id, range(2 * CLIENTS)))
    before = CpuSnapshot.take([os.getpid()])
    wall_s, embeds, segments = loop.run_until_complete(
        closed_loop(engine, photos, image_id, range(2 * CLIENTS, 2 * CLIENTS + requests))
    )
    other = CpuSnapshot.take([os.getpid()]).other_cores(before, wall_s)
    loop.run_until_complete(engine.close())
    loop.close()
    cell = Cell(compute, threads, wall_s, embeds, segments, other)
    log(
        f"compute_threads={compute} torch_threads={threads}: {cell.requests_per_s:.2f} req/s, "
        f"other load {other:.2f} cores"
    )
    return cell


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/threads.py", *(argv or sys.argv[1:])])
    machine = machine_info()
    log(f"machine: {machine}")
    quiet_load = wait_until_quiet(args.wait_quiet, log)
    started = time.perf_counter()
    photos = [make_photo(seed=seed) for seed in range(2 * CLIENTS + args.requests + 1)]
    with tempfile.TemporaryDirectory(prefix="imgembed-bench-") as folder:
        _, _, checkpoint = reference_and_imgembed(args.model, Path(folder))
        cells = [
            measure(checkpoint, args.model, photos, compute, threads, args.requests)
            for compute, threads in CELLS
        ]
    minutes = (time.perf_counter() - started) / 60
    default = next(c for c in cells if (c.compute_threads, c.torch_threads) == (2, 2))
    rows = [
        (
            cell.compute_threads,
            cell.torch_threads,
            f"{cell.requests_per_s:.2f}",
            f"{cell.requests_per_s / default.requests_per_s:.2f}x",
            f"{statistics.median(cell.embed_latencies_s) * 1000:.0f}",
            f"{statistics.median(cell.segment_latencies_s) * 1000:.0f}",
            f"{cell.other_cores:.2f}",
        )
        for cell in cells
    ]
    table = markdown_table(
        (
            "compute_threads",
            "torch threads",
            "requests/s",
            "vs (2, 2)",
            "embed p50 ms",
            "segment p50 ms",
            "other load, cores",
        ),
        rows,
    )
    date = datetime.now(UTC)
    body = f"""- Date: {date:%Y-%m-%dT%H:%M:%S%z} (UTC); whole run {minutes:.1f} min.
- Machine: {machine["cpu_model"]}, {machine["cpus_usable"]} usable of {machine["cpu_count"]} cores, {machine["memory_gib"]} GiB RAM, no GPU used; Python {machine["python"]}, torch {machine["torch"]}.
- Command: `{command}`. Other processes' load when the run began: {quiet_load:.2f} cores.
- Model: {args.model}, random weights; CPU, float32; encoder batching {ENCODER_BATCHING.max_batch_size}, {ENCODER_BATCHING.max_queue_delay_ms:g} ms.
- Requests: {CLIENTS} clients in a closed loop, {args.requests} timed requests per cell, half
  `Engine.sam2_embed` of an unseen 1600x1200 JPEG (decode, resize, encoder, float16 features),
  half `Engine.sam2_segment` by `image_id` (one click, three masks resized to the photo);
  in-process, no HTTP. compute_threads is `IMGEMBED_COMPUTE_THREADS` (decode, resize,
  serialise, mask post-processing); torch threads is `IMGEMBED_TORCH_THREADS`
  (`torch.set_num_threads`, the forward passes).

{table}
"""
    print(body)
    replace_section(args.results, "Thread settings", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
