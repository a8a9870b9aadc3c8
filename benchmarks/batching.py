"""Dynamic batching benchmark: throughput and latency with batching on and off, by concurrency.

    . .venv/bin/activate
    python benchmarks/batching.py --wait-quiet 300     # 5 to 8 minutes on 2 idle CPU cores
    python benchmarks/batching.py --model siglip2-base-patch16-224     # 2 to 3 minutes

For each number of concurrent clients (1, 4, 16) and each setting (batching off: max_batch_size 1;
on: max_batch_size 4, max_queue_delay_ms 5), a fresh ``imgembed serve`` subprocess on loopback
(``--weights dummy``: speed does not depend on weight values) answers a fixed number of requests
from a closed loop of clients (each sends its next request when it holds the previous answer).
Requests upload 1600x1200 JPEGs, :data:`PHOTOS` distinct ones in turn, with the server's embedding
cache off, so every request runs the model (concurrent requests for one image would share a SAM 2
encoder pass). SAM 2 requests ask for float16 features in the ``binary`` encoding, so the time goes
to decode, resize and the encoder, not to serialisation; what each model is sent is in
``batching_workloads.py``.

Writes the ``## Dynamic batching`` section of ``benchmarks/RESULTS.md`` (``## Dynamic batching
(SigLIP 2)`` for SigLIP; other sections are kept) and every latency, the batch size histograms and
the load to ``benchmarks/out/batching_<model>_<UTC>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import bench_util
import httpx
import torch
from batching_workloads import WORKLOADS, Send, Workload
from sam2_fixtures import PHOTO_SIZE, make_photo
from sam2_server import running_server, serve_command

HERE = Path(__file__).resolve().parent
PHOTOS = 20
"""Distinct photos sent in turn: more than the most concurrent clients, so no two requests in
flight together send the same image."""
CLIENT_TIMEOUT_S = 1800.0
SERVER_REQUEST_TIMEOUT_S = 1200.0
"""The server's deadline per request: far above any wait here, so no request is dropped."""


@dataclass(frozen=True)
class Setting:
    """One batching configuration of the server."""

    name: str
    max_batch_size: int
    max_queue_delay_ms: float


@dataclass
class Cell:
    """One setting at one concurrency: what was sent and what came back.

    Attributes:
        setting: ``off`` or ``on``.
        clients: Concurrent clients.
        requests: Timed requests.
        warmup_requests: Untimed requests sent first, by as many concurrent clients.
        wall_s: From the first timed request sent to the last answer read.
        latencies_s: Client-side time of each timed request, send to last byte.
        batch_sizes: Batches run during the timed requests, by size range (``"4"``, ``"5-6"``).
        queue_wait_s: Mean wait of a request for its batch to start (server metrics).
        compute_per_batch_s: Mean wall time of one forward pass (server metrics).
        other_cores: Cores other processes kept busy during the timed requests.
        redone: Timed phases discarded because other processes were busy.
    """

    setting: str
    clients: int
    requests: int
    warmup_requests: int
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    queue_wait_s: float = 0.0
    compute_per_batch_s: float = 0.0
    other_cores: float = 0.0
    redone: int = 0

    @property
    def images_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())

    @property
    def compute_per_image_s(self) -> float:
        return self.compute_per_batch_s * self.batches / self.requests

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of the latencies (the maximum when fewer than 1/(1-fraction))."""
        ordered = sorted(self.latencies_s)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="sam2.1-hiera-tiny")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, help="timed requests in every cell")
    parser.add_argument("--max-batch-size", type=int, default=4, help="batching on")
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0, help="batching on")
    parser.add_argument("--retries", type=int, default=2, help="busy cells redone, in all")
    parser.add_argument("--quick", action="store_true", help="1 and 4 clients, 4 requests each")
    parser.add_argument("--wait-quiet", type=float, default=300, metavar="SECONDS")
    bench_util.add_device_argument(parser)
    parser.add_argument("--render", type=Path, help="only rewrite the section from a raw JSON")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.workload = WORKLOADS[args.model]
    args.device = bench_util.resolve_device(args.device)
    if args.quick:
        args.clients, args.requests = [1, 4], 4
    return args


def server_env(setting: Setting) -> dict[str, str]:
    """Variables that configure the server for ``setting`` (added to this process's own)."""
    return {
        "IMGEMBED_MAX_BATCH_SIZE": str(setting.max_batch_size),
        "IMGEMBED_MAX_QUEUE_DELAY_MS": str(setting.max_queue_delay_ms),
        "IMGEMBED_MAX_QUEUE_SIZE": "64",
        "IMGEMBED_REQUEST_TIMEOUT_S": str(SERVER_REQUEST_TIMEOUT_S),
        "IMGEMBED_WARMUP": "true",
        # The photos repeat: without this the embedding cache would answer repeats unencoded.
        "IMGEMBED_CACHE_BYTES": "0",
    }


async def closed_loop(
    base_url: str, send: Send, photos: list[bytes], clients: int, requests: int
) -> tuple[list[float], float]:
    """``requests`` uploads from ``clients`` concurrent clients, one at a time each; request ``i``
    sends ``photos[i % len(photos)]``, so requests in flight together send different images.
    ``send`` makes and checks each request.

    Returns:
        Each request's latency in seconds, and the wall time of the whole loop.
    """
    remaining = [requests]
    latencies: list[float] = []

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, trust_env=False) as client:
            while remaining[0] > 0:
                remaining[0] -= 1
                index = remaining[0] % len(photos)
                started = time.perf_counter()
                await send(client, base_url, index, photos[index])
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(min(clients, requests))))
    return latencies, time.perf_counter() - started


def scrape(base_url: str) -> str:
    return httpx.get(f"{base_url}/metrics", timeout=30, trust_env=False).text


def growth(before: str, after: str, name: str, model: str) -> dict[str, float]:
    """How much each sample of ``name`` for ``model`` grew between two scrapes, by ``le`` label
    (``""`` for a sample without one)."""

    def samples(text: str) -> dict[str, float]:
        found = {}
        for line in text.splitlines():
            if line.startswith(name + "{") and f'model="{model}"' in line:
                bound = re.search(r'le="([^"]+)"', line)
                found[bound.group(1) if bound else ""] = float(line.rsplit(" ", 1)[1])
        return found

    earlier = samples(before)
    return {key: value - earlier.get(key, 0.0) for key, value in samples(after).items()}


def mean_growth(before: str, after: str, name: str, model: str) -> float:
    """Mean of a histogram's observations between two scrapes (0 without any)."""
    count = growth(before, after, name + "_count", model)[""]
    return growth(before, after, name + "_sum", model)[""] / count if count else 0.0


def batch_histogram(before: str, after: str, model: str) -> dict[str, int]:
    """Batches run between two scrapes, by batch size range (``"4"``, ``"5-6"``, ``">256"``)."""
    cumulative = growth(before, after, "imgembed_batch_size_bucket", model)
    histogram: dict[str, int] = {}
    lower, below = 1, 0.0
    for bound in sorted(cumulative, key=float):
        upper, count = float(bound), round(cumulative[bound] - below)
        if count and math.isinf(upper):
            histogram[f">{lower - 1}"] = count
        elif count:
            histogram[f"{lower}-{upper:.0f}" if lower < upper else f"{upper:.0f}"] = count
        lower = lower if math.isinf(upper) else int(upper) + 1
        below = cumulative[bound]
    return histogram


def run_cell(
    setting: Setting, clients: int, requests: int, photos: list[bytes], args: argparse.Namespace
) -> Cell:
    """Times one cell on a fresh server; redoes its timed phase if other processes were busy."""
    workload: Workload = args.workload
    send = workload.new_sender()
    warmup = min(clients, args.max_batch_size)
    cell = Cell(setting.name, clients, requests, warmup)
    server_log = args.out / f"batching_server_{workload.model}_{setting.name}_{clients}.log"
    with (
        mock.patch.dict(os.environ, server_env(setting)),
        running_server(
            workload.model,
            Path("dummy"),
            threads=torch.get_num_threads(),
            log_path=server_log,
            device=args.device.type,
        ) as server,
    ):
        bench_util.log(f"{setting.name}, {clients} clients: {warmup} warm-up requests")
        asyncio.run(closed_loop(server.url, send, photos, warmup, warmup))
        while True:
            bench_util.wait_until_quiet(args.wait_quiet, bench_util.log, own_pids=[server.pid])
            before_text = scrape(server.url)
            before = bench_util.CpuSnapshot.take([os.getpid(), server.pid])
            latencies, wall = asyncio.run(closed_loop(server.url, send, photos, clients, requests))
            other = bench_util.CpuSnapshot.take([os.getpid(), server.pid]).other_cores(before, wall)
            after_text = scrape(server.url)
            note = f"{requests / wall:.3f} images/s in {wall:.1f} s (other processes: {other:.2f})"
            if other <= bench_util.OTHER_CORES_LIMIT or args.retries <= 0:
                break
            args.retries -= 1
            cell.redone += 1
            bench_util.log(f"  discarded: {note}; redoing it")
    cell.wall_s, cell.latencies_s, cell.other_cores = wall, latencies, other
    model = workload.model
    cell.batch_sizes = batch_histogram(before_text, after_text, model)
    cell.queue_wait_s = mean_growth(
        before_text, after_text, "imgembed_queue_duration_seconds", model
    )
    cell.compute_per_batch_s = mean_growth(
        before_text, after_text, "imgembed_compute_duration_seconds", model
    )
    bench_util.log(f"  {note}; batches {cell.batch_sizes}")
    return cell


def table(cells: list[Cell]) -> str:
    off = {cell.clients: cell.images_per_s for cell in cells if cell.setting == "off"}
    rows = [
        [
            cell.clients,
            cell.setting,
            f"{cell.requests} (+{cell.warmup_requests})",
            f"{cell.images_per_s:.3f}",
            f"{cell.images_per_s / off[cell.clients]:.2f}x" if cell.clients in off else "-",
            f"{cell.percentile(0.5):.2f}",
            f"{cell.percentile(0.99):.2f}",
            f"{cell.requests / max(cell.batches, 1):.2f}",
            ", ".join(f"{size}: {count}" for size, count in cell.batch_sizes.items()),
            f"{cell.queue_wait_s:.2f}",
            f"{cell.compute_per_image_s:.3f}",
            f"{cell.other_cores:.2f}",
            cell.redone,
        ]
        for cell in cells
    ]
    headers = ["clients", "batching", "requests (warm-up)", "images/s", "vs off", "p50 s"]
    headers += ["p99 s", "mean batch", "batches by size", "queue wait s", "compute per image s"]
    return bench_util.markdown_table([*headers, "other load, cores", "redone"], rows)


def reading(cells: list[Cell]) -> str:
    """One paragraph stating what the numbers show, computed from them."""
    by_key = {(cell.clients, cell.setting): cell for cell in cells}
    pairs = [
        (by_key[clients, "off"], by_key[clients, "on"])
        for clients in sorted({cell.clients for cell in cells})
        if (clients, "off") in by_key and (clients, "on") in by_key
    ]
    text = "Measured here, batching off to on: " + "; ".join(
        f"at {on.clients} client{'s' if on.clients > 1 else ''}, mean batch "
        f"{on.requests / max(on.batches, 1):.2f}, throughput "
        f"{(on.images_per_s / off.images_per_s - 1) * 100:+.1f} % ({off.images_per_s:.3f} to "
        f"{on.images_per_s:.3f} images/s), p50 {off.percentile(0.5):.2f} to "
        f"{on.percentile(0.5):.2f} s, p99 {off.percentile(0.99):.2f} to {on.percentile(0.99):.2f} s"
        for off, on in pairs
    )
    batched = [(off, on) for off, on in pairs if on.requests > on.batches]
    if batched:
        off, on = batched[-1]
        saving = 1 - on.compute_per_image_s / off.compute_per_image_s
        if abs(saving) < 0.05:
            verdict = (
                "a batch costs about as much per image as single passes, so on this CPU batching "
                "cannot add much throughput"
            )
        elif saving > 0:
            verdict = f"batches saved {saving * 100:.0f} % of the compute per image"
        else:
            verdict = (
                f"batches cost {-saving * 100:.0f} % more compute per image than single passes, "
                "so on this CPU batching loses throughput"
            )
        text += (
            f". At {on.clients} clients a forward pass took {off.compute_per_image_s:.3f} s per "
            f"image alone and {on.compute_per_image_s:.3f} s per image in batches: {verdict}"
        )
    first, last = pairs[0][0], pairs[-1][0]
    if last.compute_per_image_s > 1.05 * first.compute_per_image_s:
        clients = f"{first.clients} client{'s' if first.clients > 1 else ''}"
        text += (
            f". With batching off, the forward pass took {first.compute_per_image_s:.3f} s per "
            f"image at {clients} and {last.compute_per_image_s:.3f} s at {last.clients}, sharing "
            "the cores with other requests' decode, resize and serialisation; throughput went "
            f"from {first.images_per_s:.3f} to {last.images_per_s:.3f} images/s"
        )
    off, on = pairs[0]
    if on.requests == on.batches and off.requests == off.batches:
        text += (
            f". At {off.clients} client{'s' if off.clients > 1 else ''} no batch formed in "
            f"either setting, so the {abs(on.images_per_s / off.images_per_s - 1) * 100:.1f} % "
            "between them is run-to-run noise"
        )
    return text + (
        ". In a closed loop, mean latency is clients / throughput, so latency follows "
        "throughput; the percentiles show how the waiting is spread. No GPU was measured: on a "
        "GPU, where a batch costs much less than its images one by one, batching is where "
        "throughput comes from, but these numbers do not show that. With fewer than 100 "
        "requests per cell, p99 is the slowest request."
    )


def render_section(
    raw: dict[str, Any], workload: Workload, cells: list[Cell], raw_path: Path
) -> str:
    machine, on = raw["machine"], raw["settings"]["on"]
    lines = [
        f"- Date: {raw['date']} (UTC); whole run {raw['total_runtime_s'] / 60:.1f} min.",
        f"- Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable of "
        f"{machine['cpu_count']} cores, {machine['memory_gib']} GiB RAM, "
        f"{bench_util.device_phrase(machine)}; {machine['platform']}; Python {machine['python']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}.",
        f"- Command: `{raw['command']}`; each cell a fresh `python {raw['server_command']}` with "
        f"OMP_NUM_THREADS={machine['torch_threads']} and a start-up warm-up pass.",
        f"- Server: {workload.model}, random weights (speed does not depend on weight values), "
        + (
            "CPU, float32 compute"
            if machine.get("device", "cpu") == "cpu"
            else f"{machine['device']}, the server's default compute dtype"
        )
        + ". Batching off: `IMGEMBED_MAX_BATCH_SIZE=1`; on: "
        f"`IMGEMBED_MAX_BATCH_SIZE={on['max_batch_size']}`, "
        f"`IMGEMBED_MAX_QUEUE_DELAY_MS={on['max_queue_delay_ms']:g}`; queue limit 64.",
        f"- Requests: {raw.get('photos', 1)} distinct {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs in "
        f"turn (about {raw['photo_bytes'] / 1024:.0f} KiB), the server's "
        f"cache off (`IMGEMBED_CACHE_BYTES=0`), {workload.description}.",
        "- Method: closed loop (each client sends its next request once it holds the previous "
        "answer); untimed warm-up requests first, min(clients, batch size) of them at once; "
        "images/s = timed requests / wall time from the first send to the last answer; latency "
        "measured by the client, send to last byte; p99 is nearest-rank. Batch sizes, queue "
        "wait and compute per image (forward pass time / images in it) come from the server's "
        "`/metrics` over the timed requests. A cell during which other processes kept more "
        f"than {bench_util.OTHER_CORES_LIMIT} cores busy was redone (at most {raw['retries']} "
        "in all); "
        "'other load' is the kept run's. Other processes' load when the run began: "
        f"{machine['other_cores_at_start']:.2f} cores.",
        f"- Raw numbers: `{raw_path.name}` in `benchmarks/out/` (not committed).",
    ]
    return "\n".join(lines) + "\n\n" + table(cells) + "\n\n" + reading(cells) + "\n"


def measure(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Runs every cell; returns the raw record (the cells as dicts under ``cells``)."""
    date = datetime.now(UTC)
    machine = bench_util.machine_info()
    bench_util.log(f"machine: {machine}")
    machine["other_cores_at_start"] = bench_util.wait_until_quiet(args.wait_quiet, bench_util.log)
    machine["device"] = str(args.device)
    retries = args.retries
    settings = {
        "off": Setting("off", 1, 0.0),
        "on": Setting("on", args.max_batch_size, args.max_queue_delay_ms),
    }
    photos = [make_photo(seed=seed) for seed in range(PHOTOS)]
    cells = []
    for index, clients in enumerate(args.clients):
        requests = args.requests or args.workload.requests_per_cell.get(clients, 2 * clients)
        order = ["off", "on"] if index % 2 == 0 else ["on", "off"]
        cells += [run_cell(settings[name], clients, requests, photos, args) for name in order]
    cells.sort(key=lambda cell: (cell.clients, cell.setting))
    server_command = shlex.join(
        serve_command(args.workload.model, Path("dummy"), 0, args.device.type)[1:]
    )
    return {
        "date": date.isoformat(timespec="seconds"),
        "command": command,
        "server_command": server_command.replace("--port 0", "--port <free port>"),
        "total_runtime_s": bench_util.elapsed_s(),
        "machine": machine,
        "retries": retries,
        "settings": {name: asdict(setting) for name, setting in settings.items()},
        "photo_bytes": sum(map(len, photos)) // len(photos),
        "photos": len(photos),
        "model": args.workload.model,
        "cells": [asdict(cell) for cell in cells],
    }


def main(argv: list[str] | None = None) -> int:
    """Runs every cell (or reads a raw record) and writes the results; returns the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.render:
        raw_path = args.render
        raw = json.loads(raw_path.read_text(encoding="utf-8"))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        arguments = sys.argv[1:] if argv is None else argv
        raw = measure(args, shlex.join(["python", "benchmarks/batching.py", *arguments]))
        stamp = datetime.fromisoformat(raw["date"]).strftime("%Y%m%dT%H%M%SZ")
        raw_path = args.out / f"batching_{raw['model']}_{stamp}.json"
        raw_path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    known = {cell_field.name for cell_field in fields(Cell)}
    cells = [Cell(**{key: cell[key] for key in known if key in cell}) for cell in raw["cells"]]
    workload = WORKLOADS[raw.get("model", "sam2.1-hiera-tiny")]
    section = render_section(raw, workload, cells, raw_path)
    bench_util.replace_section(args.results, workload.section, section)
    print(section)
    bench_util.log(f"wrote {args.results} from {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
