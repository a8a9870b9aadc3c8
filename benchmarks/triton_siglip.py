"""SigLIP 2 through Triton's Python backend beside imgembed: the same tritonclient program.

    . .venv/bin/activate
    scripts/triton_server.sh install                     # once (scripts/bootstrap.sh test does it)
    python benchmarks/triton_siglip.py --wait-quiet 120

For ``siglip2-base-patch16-224`` with random weights (``dummy``; speed does not depend on weight
values), two servers answer the same requests, both running on 127.0.0.1 and sent requests one
server at a time:

- ``imgembed serve --model siglip2-base-patch16-224 --weights dummy`` (PyTorch);
- ``tritonserver`` 2.51 (``nvidia-pytriton`` 0.7.0, ``scripts/triton_server.sh``) on the
  ``imgembed export triton --backend python`` repository's SigLIP models, exported from the same
  dummy weights: the ensembles ``siglip`` / ``siglip_text`` (Python preprocessing step, then the
  encoder graph run by ONNX Runtime in the Python backend, batched by Triton).

The client is ``examples/triton_siglip_client.py`` (``tritonclient.http``), in closed loops of 1
and 4 concurrent clients (each sends its next request once it holds the previous answer). Image
requests carry one 640x480 JPEG, text requests one short sentence. Each cell runs ``--rounds``
times per server, the servers in rotating order. Writes the ``## Triton Python backend beside
imgembed (SigLIP 2)`` section of ``RESULTS.md`` and every latency to
``benchmarks/out/triton_siglip_<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from bench_util import (
    elapsed_s,
    log,
    machine_info,
    replace_section,
)
from sam2_server import LOOPBACK, free_port, serve_command
from triton_python import Target, measure_cell, process_family, running, throughput_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from example_programs import load_example

from imgembed.export.siglip_onnx import export_loaded_siglip_onnx
from imgembed.export.triton_config import TritonRepositorySettings
from imgembed.export.triton_siglip import export_siglip_triton_from_onnx
from imgembed.models.siglip_loading import load_siglip

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "triton_server.sh"
MODEL = "siglip2-base-patch16-224"
HEADING = "Triton Python backend beside imgembed (SigLIP 2)"
TEXT = "a photo of a dog playing in the snow"


def _example() -> ModuleType:
    return load_example("triton_siglip_client.py")


def _jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def target(example: ModuleType, label: str, url: str, pids: list[int]) -> Target:
    """A running server and its two workloads: one JPEG to embed, or one text."""
    image = _jpeg()
    work = {
        "image": lambda client: example.embed_images(client, [image]),
        "text": lambda client: example.embed_texts(client, [TEXT]),
    }
    return Target(label, url, pids, work)


def render(results: dict[str, Any]) -> str:
    """The results section."""
    info = results["machine"]
    table = throughput_table(results["cells"], {"image": "images/s", "text": "texts/s"}, 1)
    return f"""- Date: {results["date"]} (UTC); whole run {results["minutes"]:.1f} min.
- Machine: {info["cpu_model"]}, {info["cpus_usable"]} usable of {info["cpu_count"]} cores, {info["memory_gib"]} GiB RAM, no GPU; {info["platform"]}.
- Software: imgembed's venv: Python {info["python"]}, torch {info["torch"]}, onnxruntime {results["onnxruntime"]}. Triton: tritonserver 2.51 from nvidia-pytriton 0.7.0, its Python 3.11 backend stub with numpy<2 and the same onnxruntime, Pillow and tokenizers (`scripts/triton_server.sh`).
- Model: {MODEL} with random weights (`dummy`), its image and text encoders traced to ONNX (opset 18, fp32); Triton serves the `--backend python` repository's `siglip` / `siglip_text` ensembles (encoders: max_batch_size 32, preferred 8, 16, 32, 2 ms queue delay; one preprocessing instance), imgembed its default batching (`OMP_NUM_THREADS=2`).
- Command: `{results["command"]}`. Servers (both running, one at a time sent requests): {"; ".join(f"`{c}`" for c in results["commands"])}.
- Client: `examples/triton_siglip_client.py` (tritonclient.http) in closed loops; image requests carry one 640x480 JPEG, text requests one sentence. {results["rounds"]} rounds, servers in rotating order. A run during which the rest of the machine used more than 0.15 cores was redone (up to `--retries`).
- Raw numbers: `{results["raw"]}` in `benchmarks/out/` (not committed).

{table}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--image-requests", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--text-requests", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each cell per server")
    parser.add_argument("--wait-quiet", type=float, default=60, help="longest wait, seconds")
    parser.add_argument("--retries", type=int, default=2, help="redos of a run on a busy machine")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("out"))
    args = parser.parse_args(argv)
    # A terminated run stops its servers too (the ExitStack below), instead of leaving them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    found = subprocess.run([str(SCRIPT), "path"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        parser.error(f"expected an installed tritonserver; {found.stderr.strip()}")
    example = _example()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imgembed-triton-siglip-") as temporary:
        folder = Path(temporary)
        log("tracing the SigLIP export")
        loaded = load_siglip(MODEL, "dummy", device=torch.device("cpu"))
        export_loaded_siglip_onnx(loaded, folder / "onnx")
        del loaded
        settings = TritonRepositorySettings(backend="python")
        repository = export_siglip_triton_from_onnx(
            folder / "onnx", folder / "triton", settings=settings
        )
        ports = [free_port() for _ in range(2)]
        imgembed = serve_command(MODEL, Path("dummy"), ports[0])
        triton = [str(SCRIPT), "run", "--model-repository", str(repository.out_dir)]
        for endpoint, endpoint_port in (("http", ports[1]), ("grpc", free_port())):
            triton += [f"--{endpoint}-address", LOOPBACK, f"--{endpoint}-port", str(endpoint_port)]
        triton += ["--allow-metrics=false", "--exit-timeout-secs=5"]
        env = {"OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
        servers = [
            ("imgembed (PyTorch)", imgembed, env, "/health"),
            ("Triton Python backend (ONNX Runtime)", triton, {}, "/v2/health/ready"),
        ]
        results: dict[str, Any] = {"rounds": args.rounds, "cells": []}
        with contextlib.ExitStack() as stack:
            targets = []
            for index, (server, port) in enumerate(zip(servers, ports, strict=True)):
                log(f"{server[0]}: starting")
                pid = stack.enter_context(
                    running(server, port, args.out / f"triton_siglip_{index}.log")
                )
                url = f"{LOOPBACK}:{port}"
                warm = example.httpclient.InferenceServerClient(url=url, network_timeout=600)
                example.embed_images(warm, [_jpeg()])
                example.embed_texts(warm, [TEXT])
                warm.close()
                targets.append((server[0], url, process_family(pid)))
            plan = [
                ("image", clients, requests)
                for clients, requests in zip(args.clients, args.image_requests, strict=True)
            ] + [
                ("text", clients, requests)
                for clients, requests in zip(args.clients, args.text_requests, strict=True)
            ]
            for workload, clients, requests in plan:
                cell: dict[str, Any] = {
                    "workload": workload,
                    "clients": clients,
                    "requests": requests,
                    "servers": {label: [] for label, _, _ in targets},
                }
                for round_index in range(args.rounds):
                    shift = round_index % len(targets)
                    for label, url, pids in targets[shift:] + targets[:shift]:
                        server = target(example, label, url, pids)
                        run = measure_cell(example, server, workload, clients, requests, args)
                        cell["servers"][label].append(run)
                results["cells"].append(cell)
    stamp = datetime.now(UTC)
    raw = f"triton_siglip_{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    results.update(
        date=stamp.isoformat(timespec="seconds"),
        minutes=elapsed_s() / 60,
        machine=machine_info(),
        onnxruntime=version("onnxruntime"),
        command=shlex.join(["python", "benchmarks/triton_siglip.py", *(argv or sys.argv[1:])]),
        commands=[shlex.join(command).replace(temporary, "<tmp>") for _, command, _, _ in servers],
        raw=raw,
    )
    (args.out / raw).write_text(json.dumps(results, indent=2), encoding="utf-8")
    replace_section(args.results, HEADING, render(results))
    log(f"wrote {args.results} and {args.out / raw}")


if __name__ == "__main__":
    main()
