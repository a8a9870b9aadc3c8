"""SAM 2 decoder batching: concurrent segment requests with the decoder batcher on and off.

    . .venv/bin/activate
    python benchmarks/decoder_batching.py        # about 6 minutes on 2 idle CPU cores

Concurrent clients (1, 4, 16) in a closed loop (each sends its next request once it holds the
previous answer) call ``Engine.sam2_segment`` in-process with the ``image_id`` of cached features:
one foreground click each, three masks resized to a 1600x1200 photo. Clients either all work on
one image (an annotation tool's users on the same picture) or spread over four images (the
decoder pass then stacks each prompt's features). Two engines with the same weights differ only
in decoder batching: off (``decoder_batching.max_batch_size`` 1, the CPU default) and on (64
prompts, the GPU default; 1 ms). The reference, in the same run: Meta's
``SAM2ImagePredictor.predict``, one click at a time on an image already set (a single-user loop;
it has no server). Everything runs on ``--device``: the engines in their default compute dtype,
Meta's predictor in the precision its examples use there (:func:`bench_util.reference_autocast`).
Each answer holds its masks in host memory, so the clocks read finished work.

Writes the ``## SAM 2 decoder batching`` section of ``benchmarks/RESULTS.md``. No HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from bench_util import (
    CpuSnapshot,
    add_device_argument,
    device_phrase,
    log,
    machine_info,
    markdown_table,
    reference_autocast,
    replace_section,
    resolve_device,
    wait_until_quiet,
)
from sam2_fixtures import PHOTO_SIZE, make_photo, photo_rgb, reference_and_imgembed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from torchvision_shim import import_meta_predictors

from imgembed.engine import Engine, Sam2Service
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.settings import DECODER_BATCHING, ModelSpec, ServerConfig
from imgembed.types import ImageBytes

HERE = Path(__file__).resolve().parent
CLIENTS = (1, 4, 16)
IMAGES = (1, 4)
DECODER_BATCH_SIZE_ON = 64
"""Prompts per decoder pass with batching on: what a 24 GiB GPU gets by default
(``imgembed.runtime.batch_size``)."""


@dataclass(frozen=True)
class Cell:
    """One measured configuration and what it gave."""

    setting: str
    clients: int
    images: int
    requests: int
    wall_s: float
    latencies_s: list[float]
    mean_batch: float
    other_cores: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam2.1-hiera-tiny")
    parser.add_argument("--requests", type=int, default=48, help="timed requests per cell")
    parser.add_argument("--quick", action="store_true", help="8 requests per cell")
    add_device_argument(parser)
    parser.add_argument("--wait-quiet", type=float, default=300, metavar="SECONDS")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 8
    return args


def click(index: int) -> list[SegmentObject]:
    """One foreground click, a different place for each request."""
    rng = np.random.default_rng(index)
    point = rng.uniform((0, 0), PHOTO_SIZE)
    return [SegmentObject(points=point[None], labels=np.ones(1, np.int32))]


def decoder_stats(engine: Engine, model: str) -> tuple[float, float]:
    """Sum and count of the decoder batcher's batch size histogram, from the engine's metrics."""
    text = engine.metrics.render().decode()
    values = []
    for name in ("imgembed_batch_size_sum", "imgembed_batch_size_count"):
        pattern = rf'^{name}\{{model="{re.escape(model)}/decoder"\}} (\S+)$'
        match = re.search(pattern, text, flags=re.MULTILINE)
        values.append(float(match.group(1)) if match else 0.0)
    return values[0], values[1]


async def closed_loop(
    engine: Engine, image_ids: list[str], clients: int, requests: int
) -> tuple[float, list[float]]:
    """``requests`` segment calls from ``clients`` concurrent loops; wall time and latencies."""
    counter = iter(range(requests))
    latencies: list[float] = []

    async def client(number: int) -> None:
        for index in counter:
            image_id = image_ids[(number + index) % len(image_ids)]
            started = time.perf_counter()
            await engine.service(Sam2Service).segment(None, click(index), image_id=image_id)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    return time.perf_counter() - started, latencies


def measure(
    loop: asyncio.AbstractEventLoop,
    engine: Engine,
    setting: str,
    image_ids: list[str],
    clients: int,
    requests: int,
) -> Cell:
    model = engine.models[0].name
    loop.run_until_complete(closed_loop(engine, image_ids, clients, clients))  # warm-up
    batch_sum, batch_count = decoder_stats(engine, model)
    before = CpuSnapshot.take([os.getpid()])
    wall_s, latencies = loop.run_until_complete(closed_loop(engine, image_ids, clients, requests))
    other = CpuSnapshot.take([os.getpid()]).other_cores(before, wall_s)
    after_sum, after_count = decoder_stats(engine, model)
    cell = Cell(
        setting=setting,
        clients=clients,
        images=len(image_ids),
        requests=requests,
        wall_s=wall_s,
        latencies_s=latencies,
        mean_batch=(after_sum - batch_sum) / max(after_count - batch_count, 1),
        other_cores=other,
    )
    log(
        f"{setting} clients={clients} images={len(image_ids)}: {cell.requests_per_s:.2f} req/s, "
        f"p50 {statistics.median(latencies):.2f} s, mean batch {cell.mean_batch:.2f}, "
        f"other load {other:.2f} cores"
    )
    return cell


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/decoder_batching.py", *(argv or sys.argv[1:])])
    machine = machine_info()
    log(f"machine: {machine}")
    quiet_load = wait_until_quiet(args.wait_quiet, log)
    device = resolve_device(args.device)
    machine["device"] = str(device)
    started = time.perf_counter()
    photos = [make_photo(seed=seed) for seed in range(max(IMAGES))]
    predictor_module, _ = import_meta_predictors()
    loop = asyncio.new_event_loop()
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="imgembed-bench-") as folder:
        reference, _, checkpoint = reference_and_imgembed(args.model, Path(folder), device=device)
        spec = ModelSpec(args.model, weights=str(checkpoint), device=device.type)
        settings = {
            name: replace(spec, decoder_batching=replace(DECODER_BATCHING, max_batch_size=size))
            for name, size in (("off", 1), ("on", DECODER_BATCH_SIZE_ON))
        }
        engines = {
            name: Engine(ServerConfig(models=(model_spec,), compute_threads=2))
            for name, model_spec in settings.items()
        }
        image_ids: dict[str, list[str]] = {}
        for name, engine in engines.items():
            loop.run_until_complete(engine.start())
            image_ids[name] = [
                loop.run_until_complete(
                    engine.service(Sam2Service).embed(ImageBytes(photo))
                ).image_id
                for photo in photos
            ]
        predictor = predictor_module.SAM2ImagePredictor(reference)
        with torch.inference_mode(), reference_autocast(device):
            predictor.set_image(photo_rgb())

        def meta_loop(requests: int) -> list[float]:
            latencies = []
            for index in range(requests):
                point = click(index)[0].points
                began = time.perf_counter()
                with torch.inference_mode(), reference_autocast(device):
                    predictor.predict(point_coords=point, point_labels=np.ones(1))
                latencies.append(time.perf_counter() - began)
            return latencies

        meta_loop(2)
        before = CpuSnapshot.take([os.getpid()])
        reference_latencies = meta_loop(args.requests)
        reference_wall = sum(reference_latencies)
        reference_cell = Cell(
            "reference",
            1,
            1,
            args.requests,
            reference_wall,
            reference_latencies,
            1.0,
            CpuSnapshot.take([os.getpid()]).other_cores(before, reference_wall),
        )
        for images in IMAGES:
            for clients in CLIENTS:
                for name in ("off", "on"):
                    ids = image_ids[name][:images]
                    cells.append(measure(loop, engines[name], name, ids, clients, args.requests))
        for engine in engines.values():
            loop.run_until_complete(engine.close())
    loop.close()
    minutes = (time.perf_counter() - started) / 60
    print(render(args, command, machine, cells, reference_cell, quiet_load, minutes))
    replace_section(
        args.results,
        "SAM 2 decoder batching",
        render(args, command, machine, cells, reference_cell, quiet_load, minutes),
    )
    return 0


def render(
    args: argparse.Namespace,
    command: str,
    machine: dict,
    cells: list[Cell],
    reference: Cell,
    quiet_load: float,
    minutes: float,
) -> str:
    off = {(c.clients, c.images): c for c in cells if c.setting == "off"}
    rows = [
        (
            "Meta predict loop",
            1,
            1,
            reference.requests,
            f"{reference.requests_per_s:.2f}",
            "",
            f"{statistics.median(reference.latencies_s) * 1000:.0f}",
            f"{reference.percentile(0.99) * 1000:.0f}",
            "",
            f"{reference.other_cores:.2f}",
        )
    ]
    for cell in cells:
        base = off[(cell.clients, cell.images)]
        rows.append(
            (
                f"imgembed, decoder batching {cell.setting}",
                cell.clients,
                cell.images,
                cell.requests,
                f"{cell.requests_per_s:.2f}",
                f"{cell.requests_per_s / base.requests_per_s:.2f}x",
                f"{statistics.median(cell.latencies_s) * 1000:.0f}",
                f"{cell.percentile(0.99) * 1000:.0f}",
                f"{cell.mean_batch:.2f}",
                f"{cell.other_cores:.2f}",
            )
        )
    table = markdown_table(
        (
            "setting",
            "clients",
            "images",
            "requests",
            "requests/s",
            "vs off",
            "p50 ms",
            "p99 ms",
            "mean decoder batch",
            "other load, cores",
        ),
        rows,
    )
    date = datetime.now(UTC)
    return f"""- Date: {date:%Y-%m-%dT%H:%M:%S%z} (UTC); whole run {minutes:.1f} min.
- Machine: {machine["cpu_model"]}, {machine["cpus_usable"]} usable of {machine["cpu_count"]} cores, {machine["memory_gib"]} GiB RAM, {device_phrase(machine)}; Python {machine["python"]}, torch {machine["torch"]}.
- Command: `{command}`. Other processes' load when the run began: {quiet_load:.2f} cores.
- Model: {args.model}, random weights saved as Meta's `.pt` and loaded by both sides; {machine["device"]}, {"float32" if machine["device"] == "cpu" else "imgembed's default compute dtype, Meta's under bfloat16 autocast"}.
- Requests: `Engine.sam2_segment` in-process (no HTTP) by the `image_id` of cached features of
  1600x1200 photos, one foreground click each, three masks resized to the photo (box, area);
  closed loop of N clients; p99 is nearest-rank. Decoder batching off:
  `IMGEMBED_DECODER_MAX_BATCH_SIZE=1` (the CPU default); on: 64 prompts, 1 ms (the GPU default). Mean decoder batch
  from the engine's `imgembed_batch_size{{model="<model>/decoder"}}` histogram.
- Reference: Meta's `SAM2ImagePredictor.predict`, one click at a time on an image already set
  (a single-user loop; Meta ships no server).

{table}
"""


if __name__ == "__main__":
    sys.exit(main())
