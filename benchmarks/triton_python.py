"""Triton's Python backend beside imgembed: SAM 2 throughput over the same v2 client code.

    . .venv/bin/activate
    scripts/triton_server.sh install                     # once (scripts/bootstrap.sh test does it)
    python benchmarks/triton_python.py --wait-quiet 120  # about 8 minutes on 2 idle cores

For ``sam2.1-hiera-tiny`` with random weights (``dummy``; speed does not depend on weight values),
traced to ONNX once, three servers answer the same requests, all three running on 127.0.0.1 and
sent requests one server at a time:

- ``imgembed serve`` (PyTorch encoder and decoder);
- ``imgembed serve --backend onnxruntime`` on the ONNX export (ONNX Runtime encoder);
- ``tritonserver`` 2.51 (``nvidia-pytriton`` 0.7.0, ``scripts/triton_server.sh``) on the
  ``imgembed export triton --backend python`` repository built from the same export: Triton's
  Python backend runs ``model.py``, which runs the same graphs with ONNX Runtime.

The client is ``examples/triton_client.py`` (``tritonclient.http``, binary tensors), in closed
loops of 1 and 4 concurrent clients: each sends its next request once it holds the previous
answer. Each cell runs ``--rounds`` times per server, the servers in rotating order, so that drift
in the shared machine's speed hits all three alike; the table gives the median and the range.
Encoder: one 1024x1024 image per request (``sam2_encoder``), images/s. Decoder: one click per
request on one image's features, all three feature maps sent each time (``sam2_decoder``),
requests/s. Other processes' CPU use during each cell is recorded. Writes the ``## Triton Python
backend beside imgembed`` section of ``RESULTS.md`` and every latency to
``benchmarks/out/triton_python_<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from bench_util import (
    OTHER_CORES_LIMIT,
    CpuSnapshot,
    elapsed_s,
    log,
    machine_info,
    markdown_table,
    replace_section,
    wait_until_quiet,
)
from sam2_server import LOOPBACK, free_port, serve_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from example_programs import load_example

from imgembed.export.onnx_export import export_onnx
from imgembed.export.triton_config import TritonRepositorySettings
from imgembed.export.triton_repository import export_triton_from_onnx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "triton_server.sh"
MODEL = "sam2.1-hiera-tiny"
HEADING = "Triton Python backend beside imgembed"
Server = tuple[str, list[str], dict[str, str], str]
"""Label, command, extra environment, readiness path."""


def _example() -> ModuleType:
    return load_example("triton_client.py")


def process_family(pid: int) -> list[int]:
    """``pid`` and its descendants (Triton's backend stubs are its children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue += children.get(current, [])
    return found


@contextlib.contextmanager
def running(server: Server, port: int, log_path: Path, timeout_s: float = 300) -> Iterator[int]:
    """Runs a server until the block ends; yields its pid once ``ready_path`` answers 200."""
    import httpx

    label, command, env, ready_path = server
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{label} exited with {process.returncode}; see {log_path}")
                with contextlib.suppress(httpx.TransportError):
                    url = f"http://{LOOPBACK}:{port}{ready_path}"
                    if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label} not ready after {timeout_s} s; see {log_path}")
                time.sleep(0.5)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def closed_loop(
    work: Callable[[Any], object], clients: int, requests: int, make: Callable[[], Any]
) -> tuple[float, list[float]]:
    """``clients`` threads send ``requests`` in all, each its next once the last is answered.

    Returns:
        Wall seconds for all requests, and each request's latency in seconds.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [requests]

    def client() -> None:
        connection = make()
        try:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                work(connection)
                with lock:
                    latencies.append(time.perf_counter() - started)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


@dataclass(frozen=True)
class Target:
    """One running server and the requests it is sent.

    Attributes:
        label: What the server is.
        url: ``host:port`` of its HTTP endpoint.
        pids: Its processes (not counted as other load).
        work: Workload name to one request's work, given a client.
    """

    label: str
    url: str
    pids: list[int]
    work: dict[str, Callable[[Any], object]]


def prepare(example: ModuleType, label: str, url: str, pids: list[int]) -> Target:
    """Warms a server up and builds its requests: an image, and one click on its features."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    pixels = example.preprocess(image)
    warm = example.httpclient.InferenceServerClient(url=url, network_timeout=600)
    features = example.encode(warm, pixels)  # warm-up; also the decoder's features
    coords = example.to_input_frame(np.array([[(800.0, 600.0)]]), 1200, 1600)
    labels = np.ones((1, 1), np.float32)
    example.decode(warm, features, coords, labels)
    warm.close()
    work = {
        "encoder": lambda client: example.encode(client, pixels),
        "decoder": lambda client: example.decode(client, features, coords, labels),
    }
    return Target(label, url, pids, work)


def measure_cell(
    example: ModuleType,
    target: Target,
    workload: str,
    clients: int,
    requests: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One closed loop against one server, redone while other processes keep the CPUs busy."""
    own = [os.getpid(), *target.pids]

    def make() -> Any:
        return example.httpclient.InferenceServerClient(url=target.url, network_timeout=600)

    for attempt in range(args.retries + 1):
        wait_until_quiet(args.wait_quiet, log, own_pids=target.pids)
        before = CpuSnapshot.take(own)
        wall, latencies = closed_loop(target.work[workload], clients, requests, make)
        other = CpuSnapshot.take(own).other_cores(before, wall)
        if other <= OTHER_CORES_LIMIT:
            break
        log(f"  {target.label}, try {attempt + 1}: other load {other:.2f}")
    log(f"  {target.label}: {workload}, {clients} client(s): {requests / wall:.2f}/s")
    return {
        "per_s": requests / wall,
        "wall_s": wall,
        "p50_s": statistics.median(latencies),
        "max_s": max(latencies),
        "other_cores": other,
        "redone": attempt,
        "latencies_s": latencies,
    }


def throughput_table(cells: list[dict[str, Any]], units: dict[str, str], digits: int) -> str:
    """One row per (workload, clients, server): the median rate over rounds in ``units`` of the
    workload, its range, p50 latency, the worst other load and the runs redone."""
    rows = []
    for cell in cells:
        unit = units[cell["workload"]]
        for label, runs in cell["servers"].items():
            rates = [run["per_s"] for run in runs]
            rows.append(
                [
                    cell["workload"],
                    cell["clients"],
                    label,
                    f"{statistics.median(rates):.{digits}f} {unit}",
                    f"{min(rates):.{digits}f} to {max(rates):.{digits}f}",
                    f"{statistics.median(run['p50_s'] for run in runs) * 1000:.0f}",
                    f"{max(run['other_cores'] for run in runs):.2f}",
                    sum(run["redone"] for run in runs),
                ]
            )
    return markdown_table(
        [
            "workload",
            "clients",
            "server",
            "throughput (median of rounds)",
            "range over rounds",
            "p50 latency ms",
            "other load, cores (worst)",
            "redone",
        ],
        rows,
    )


def render(results: dict[str, Any]) -> str:
    """The results section."""
    info = results["machine"]
    units = {"encoder": "images/s", "decoder": "requests/s"}
    table = throughput_table(results["cells"], units, digits=2)
    return f"""- Date: {results["date"]} (UTC); whole run {results["minutes"]:.1f} min.
- Machine: {info["cpu_model"]}, {info["cpus_usable"]} usable of {info["cpu_count"]} cores, {info["memory_gib"]} GiB RAM, no GPU; {info["platform"]}.
- Software: imgembed's venv: Python {info["python"]}, torch {info["torch"]}, onnxruntime {results["onnxruntime"]}, numpy {info["numpy"]}. Triton: tritonserver 2.51 from nvidia-pytriton 0.7.0, its Python 3.11 backend stub with numpy<2 and the same onnxruntime, Python backend shared memory 128 MiB growing by 64 MiB (`scripts/triton_server.sh`).
- Model: {MODEL} with random weights (`dummy`), traced to ONNX once (opset 18, fp32); Triton serves `imgembed export triton --backend python` of that export (encoder: max_batch_size 8, preferred 4 and 8, 2 ms queue delay; decoder unbatched), imgembed its default batching (`IMGEMBED_CACHE_BYTES=0`, `OMP_NUM_THREADS=2`).
- Command: `{results["command"]}`. Servers (all three running, idle but one at a time): {"; ".join(f"`{c}`" for c in results["commands"])}.
- Client: `examples/triton_client.py` (tritonclient.http, binary tensors) in closed loops; encoder requests carry one 1024x1024 image (12 MiB in, 16 MiB of features out), decoder requests one click and the three feature maps (16 MiB in). {results["rounds"]} rounds; in each, every cell runs against the three servers in rotating order, so drift in the machine's speed hits all three alike. Other load is what the rest of the machine (other engineers share these 2 cores) used during a run; a run with more than 0.15 cores was redone (up to `--retries`).
- Raw numbers: `{results["raw"]}` in `benchmarks/out/` (not committed).

{table}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--encoder-requests", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--decoder-requests", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each cell per server")
    parser.add_argument("--wait-quiet", type=float, default=60, help="longest wait, seconds")
    parser.add_argument(
        "--retries", type=int, default=2, help="redos of a cell run on a busy machine"
    )
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("out"))
    args = parser.parse_args(argv)
    found = subprocess.run([str(SCRIPT), "path"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        parser.error(f"expected an installed tritonserver; {found.stderr.strip()}")
    example = _example()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imgembed-triton-bench-") as temporary:
        folder = Path(temporary)
        log("tracing the ONNX export")
        export_onnx(MODEL, "dummy", folder / "onnx")
        settings = TritonRepositorySettings(backend="python")
        repository = export_triton_from_onnx(folder / "onnx", folder / "triton", settings=settings)
        ports = [free_port() for _ in range(3)]
        base = serve_command(MODEL, Path("dummy"), ports[0])
        onnx = serve_command(MODEL, Path("dummy"), ports[1])
        onnx += ["--backend", "onnxruntime", "--onnx-dir", str(folder / "onnx")]
        triton = [str(SCRIPT), "run", "--model-repository", str(repository.out_dir)]
        for endpoint, endpoint_port in (("http", ports[2]), ("grpc", free_port())):
            triton += [f"--{endpoint}-address", LOOPBACK, f"--{endpoint}-port", str(endpoint_port)]
        triton += ["--allow-metrics=false", "--exit-timeout-secs=5"]
        env = {"OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "IMGEMBED_CACHE_BYTES": "0"}
        servers: list[Server] = [
            ("imgembed (PyTorch)", base, env, "/health"),
            ("imgembed (ONNX Runtime encoder)", onnx, env, "/health"),
            ("Triton Python backend (ONNX Runtime)", triton, {}, "/v2/health/ready"),
        ]
        results: dict[str, Any] = {"rounds": args.rounds, "cells": []}
        with contextlib.ExitStack() as stack:
            targets = []
            for index, (server, port) in enumerate(zip(servers, ports, strict=True)):
                log(f"{server[0]}: starting")
                log_path = args.out / f"triton_python_{index}.log"
                pid = stack.enter_context(running(server, port, log_path))
                url = f"{LOOPBACK}:{port}"
                targets.append(prepare(example, server[0], url, process_family(pid)))
            plan = [
                ("encoder", clients, requests)
                for clients, requests in zip(args.clients, args.encoder_requests, strict=True)
            ] + [
                ("decoder", clients, requests)
                for clients, requests in zip(args.clients, args.decoder_requests, strict=True)
            ]
            for workload, clients, requests in plan:
                cell: dict[str, Any] = {
                    "workload": workload,
                    "clients": clients,
                    "requests": requests,
                    "servers": {target.label: [] for target in targets},
                }
                for round_index in range(args.rounds):
                    shift = round_index % len(targets)
                    for target in targets[shift:] + targets[:shift]:
                        run = measure_cell(example, target, workload, clients, requests, args)
                        cell["servers"][target.label].append(run)
                results["cells"].append(cell)
    stamp = datetime.now(UTC)
    raw = f"triton_python_{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    results.update(
        date=stamp.isoformat(timespec="seconds"),
        minutes=elapsed_s() / 60,
        machine=machine_info(),
        onnxruntime=version("onnxruntime"),
        command=shlex.join(["python", "benchmarks/triton_python.py", *(argv or sys.argv[1:])]),
        commands=[shlex.join(command).replace(temporary, "<tmp>") for _, command, _, _ in servers],
        raw=raw,
    )
    (args.out / raw).write_text(json.dumps(results, indent=2), encoding="utf-8")
    replace_section(args.results, HEADING, render(results))
    log(f"wrote {args.results} and {args.out / raw}")


if __name__ == "__main__":
    main()
