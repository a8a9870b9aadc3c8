"""SAM 2 click latency while the encoder is busy: is a click stuck behind encoder batches?

    . .venv/bin/activate
    python benchmarks/click_latency.py --device cuda     # what only a GPU can answer
    python benchmarks/click_latency.py --device cpu --quick

One engine in-process (no HTTP), one SAM 2 model with random weights (``dummy``: speed does not
depend on weight values). A client clicks on an image whose features are cached (a segment request
by ``image_id``: one decoder pass, three masks resized to the photo), one click after another,
first with the encoder idle, then while ``--load`` clients keep the encoder busy embedding photos
it has never seen (every one a cache miss, so every one an encoder batch). On a GPU the decoder
runs on its own highest-priority CUDA stream (``imgembed.runtime.streams``): a click's decoder
pass should not wait for the encoder batches queued before it, so its latency under load should
stay near its idle latency (the GPU is shared, so some slowdown remains). On a CPU both passes
share the cores, so clicks slow down under load whatever the streams do; the CPU run only shows
that the script works.

Reports per phase the click latency (median, 90th percentile, max), the mean device time of a
decoder and of an encoder batch (``imgembed_compute_duration_seconds``: CUDA events on a GPU)
and the encoder's images per second under load. Writes the ``## Click latency under encoder
load`` section of ``benchmarks/RESULTS.md`` (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from bench_util import (
    add_device_argument,
    device_phrase,
    log,
    machine_info,
    markdown_table,
    replace_section,
    resolve_device,
)
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from engine_metrics import histogram_totals

from imgembed.engine import Engine, Sam2Service
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.settings import ModelSpec, ServerConfig
from imgembed.types import ImageBytes

HERE = Path(__file__).resolve().parent
HEADING = "Click latency under encoder load"
PHOTO = (1600, 1200)


@dataclass(frozen=True)
class Phase:
    """One measured phase: the clicks' latencies and what the batchers did meanwhile."""

    name: str
    latencies_s: list[float]
    decoder_batch_s: float
    encoder_batch_s: float
    encoded_per_s: float

    def row(self) -> list[object]:
        ordered = sorted(self.latencies_s)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * len(ordered)) - 1)]
        return [
            self.name,
            len(ordered),
            f"{statistics.median(ordered) * 1000:.1f}",
            f"{p90 * 1000:.1f}",
            f"{ordered[-1] * 1000:.1f}",
            f"{self.decoder_batch_s * 1000:.1f}",
            "-" if self.encoder_batch_s == 0 else f"{self.encoder_batch_s * 1000:.1f}",
            "-" if self.encoded_per_s == 0 else f"{self.encoded_per_s:.2f}",
        ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam2.1-hiera-tiny")
    add_device_argument(parser)
    parser.add_argument("--clicks", type=int, default=40, help="timed clicks per phase")
    parser.add_argument("--load", type=int, default=4, help="concurrent embedding clients")
    parser.add_argument("--quick", action="store_true", help="8 clicks per phase, 2 clients")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.clicks, args.load = 8, 2
    return args


def photo(seed: int) -> bytes:
    """A JPEG of random colour blobs; a different image (a cache miss) per seed."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    blobs.resize(PHOTO, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def click(index: int) -> list[SegmentObject]:
    """One foreground click, somewhere else each time."""
    point = np.random.default_rng(index).uniform((0, 0), PHOTO)
    return [SegmentObject(points=point[None], labels=np.ones(1, np.int32))]


def batch_time(engine: Engine, model: str) -> tuple[float, float]:
    """Sum and count of a batcher's compute-time histogram, from the engine's metrics."""
    return histogram_totals(engine, "imgembed_compute_duration_seconds", model)


async def phase(engine: Engine, name: str, image_id: str, clicks: int, load: int) -> Phase:
    """``clicks`` clicks one after another, with ``load`` clients embedding new photos meanwhile
    (from a second before the first click until the last click's answer, then each finishes its
    photo: images/s is over that whole time)."""
    service = engine.service(Sam2Service)
    model = engine.models[0].name
    before = {kind: batch_time(engine, kind) for kind in (model, model + "/decoder")}
    stop = asyncio.Event()
    encoded = 0
    seeds = iter(range(1_000_000, 2_000_000))

    async def embedder() -> None:
        nonlocal encoded
        while not stop.is_set():
            await service.embed(ImageBytes(photo(next(seeds))))
            encoded += 1

    load_started = time.perf_counter()
    loaders = [asyncio.create_task(embedder()) for _ in range(load)]
    if load:
        await asyncio.sleep(1.0)  # let the encoder's queue fill before the first click
    latencies = []
    for index in range(clicks):
        clicked = time.perf_counter()
        await service.segment(None, click(index), image_id=image_id)
        latencies.append(time.perf_counter() - clicked)
    stop.set()
    await asyncio.gather(*loaders)  # each client finishes the photo it is embedding
    load_s = time.perf_counter() - load_started
    after = {kind: batch_time(engine, kind) for kind in before}

    def mean(kind: str) -> float:
        total, count = (a - b for a, b in zip(after[kind], before[kind], strict=True))
        return total / count if count else 0.0

    encoded_per_s = encoded / load_s if load else 0.0
    result = Phase(name, latencies, mean(model + "/decoder"), mean(model), encoded_per_s)
    log(f"{name}: {result.row()}")
    return result


async def run(args: argparse.Namespace, device: str) -> list[Phase]:
    spec = ModelSpec(args.model, weights="dummy", device=device, warmup=True)  # type: ignore[arg-type]
    async with Engine(ServerConfig(models=(spec,))) as engine:
        service = engine.service(Sam2Service)
        first = await service.embed(ImageBytes(photo(0)))
        for index in range(3):  # the decoder's first passes (allocator growth, autotuning)
            await service.segment(None, click(index), image_id=first.image_id)
        served = engine.models[0]
        log(
            f"batching {served.describe()['batching']}, decoder {served.describe()['decoder_batching']}"
        )
        return [
            await phase(engine, "encoder idle", first.image_id, args.clicks, 0),
            await phase(
                engine, f"{args.load} clients embedding", first.image_id, args.clicks, args.load
            ),
        ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/click_latency.py", *(argv or sys.argv[1:])])
    machine = machine_info()
    device = resolve_device(args.device)
    machine["device"] = str(device)
    started = time.perf_counter()
    phases = asyncio.run(run(args, device.type))
    idle, loaded = (statistics.median(phase.latencies_s) for phase in phases)
    table = markdown_table(
        [
            "phase",
            "clicks",
            "p50 ms",
            "p90 ms",
            "max ms",
            "decoder batch ms",
            "encoder batch ms",
            "images/s encoded",
        ],
        [phase.row() for phase in phases],
    )
    body = f"""- Date: {datetime.now(UTC).isoformat(timespec="seconds")} (UTC); run {time.perf_counter() - started:.0f} s.
- Machine: {machine["cpu_model"]}, {machine["cpus_usable"]} usable of {machine["cpu_count"]} cores, {device_phrase(machine)}; torch {machine["torch"]}.
- Model: {args.model}, random weights (`dummy`), default batching for the device; a click is a segment request by `image_id` (one decoder pass, three masks resized to {PHOTO[0]}x{PHOTO[1]}); load: {args.load} clients embedding new {PHOTO[0]}x{PHOTO[1]} JPEGs (all cache misses).
- Command: `{command}`.
- Batch times are the batchers' `imgembed_compute_duration_seconds` (device time from CUDA events on a GPU, wall time on a CPU).

{table}

Median click under load / idle: {loaded / idle:.2f}x.
"""
    if device.type == "cpu":
        body += (
            "\nOn a CPU the encoder and the decoder share the cores, so a click slows down under "
            "load whatever the streams do: this run shows the script works, not the streams' "
            "effect. Run `--device cuda` on a GPU for that: a click under load near its idle "
            "latency means it no longer waits behind the queued encoder batches.\n"
        )
    print(body)
    if not args.no_write:
        replace_section(args.results, HEADING, body)
        log(f"wrote '## {HEADING}' to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
