"""Cold start: process start to ``/health/ready`` answering 200, what the time goes to, and what
the first requests after it cost.

    python benchmarks/cold_start.py              # tiny and large, Meta .pt and HF folder
    python benchmarks/cold_start.py --models sam2.1-hiera-tiny --runs 2
    python benchmarks/cold_start.py --trees before=/tmp/a/src after=/tmp/b/src   # two trees

For each SAM 2 model (random weights of the real architecture, written to local disk in Meta's
``.pt`` layout and as a ``save_pretrained`` folder) and with warm-up on and off, it starts
``imgembed serve`` (``--device``, CPU by default) and times from ``Popen`` to the first 200 of
``/health/ready``, polled every 20 ms. The stages come from the server: ``load_seconds`` and
``warmup_seconds`` of ``/v1/models``; the imports are timed apart (``python -c`` importing what
``serve`` imports before it loads a model). Peak memory is the server's ``VmHWM`` when ready. Then
what warm-up buys: the first ``/v1/sam2/embed`` of an image and the first click on it
(``/v1/sam2/segment`` with its ``image_id``), then a second image and click, each timed by the
client.

``--trees`` starts every cell from each of several checkouts' ``src`` folders (``PYTHONPATH``; make
one with ``git archive COMMIT src | tar -x -C DIR``), alternating between them run by run, so all
see the same load; without it, this checkout runs, labelled 'this'. The weight files are read
from the page cache after the first run (this machine is shared: the caches are not dropped), so
these are process cold starts, not disk cold starts. Results go to RESULTS.md's "Cold start"
section.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from bench_util import CpuSnapshot, log, machine_info, markdown_table, replace_section
from PIL import Image
from sam2_reference import build_reference
from sam2_server import LOOPBACK, free_port, serve_command
from transformers import Sam2Model

from imgembed.codecs import BINARY_HEADER_LENGTH
from imgembed.models.sam2_registry import build_sam2_config, resolve_variant

RESULTS = Path(__file__).with_name("RESULTS.md")
IMPORTS = (
    "import imgembed.cli, imgembed.engine, imgembed.server.app, imgembed.models.sam2_loading, "
    "imgembed.models.siglip_loading"
)


def write_weights(model: str, folder: Path) -> dict[str, Path]:
    """The same random weights as a Meta checkpoint and as a Hugging Face folder."""
    variant = resolve_variant(model)
    torch.manual_seed(0)
    meta = folder / variant.meta_checkpoint
    torch.save({"model": build_reference(variant.meta_config).state_dict()}, meta)
    hf = folder / f"{variant.name}-hf"
    torch.manual_seed(0)
    Sam2Model(build_sam2_config(variant)).save_pretrained(hf)
    return {"meta .pt": meta, "HF folder": hf}


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing what ``serve`` imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png_b64(seed: int) -> str:
    """A 640x480 PNG of random pixels as base64: a different image per seed (no cache hit)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def first_requests(client: httpx.Client, url: str) -> dict[str, float]:
    """Two images, each embedded then clicked once: seconds of the first and of the second."""
    timings: dict[str, float] = {}
    for which, seed in (("first", 1), ("later", 2)):
        body = {"image_b64": png_b64(seed), "dtype": "float16", "encoding": "binary"}
        started = time.perf_counter()
        embedded = client.post(f"{url}/v1/sam2/embed", json=body)
        timings[f"{which}_embed"] = time.perf_counter() - started
        embedded.raise_for_status()
        header = json.loads(embedded.content[: int(embedded.headers[BINARY_HEADER_LENGTH])])
        click = {"image_id": header["image_id"], "points": [[320, 240]], "point_labels": [1]}
        started = time.perf_counter()
        segmented = client.post(f"{url}/v1/sam2/segment", json=click)
        timings[f"{which}_click"] = time.perf_counter() - started
        segmented.raise_for_status()
    return timings


def cold_start(
    model: str, weights: Path, warmup: bool, log_path: Path, source: Path | None, device: str
) -> dict[str, float]:
    """One server start: seconds to ready, the server's load and warm-up seconds, peak RSS, and
    the first requests' seconds; ``source`` is another tree's ``src`` to run instead of this one."""
    port = free_port()
    command = serve_command(model, weights, port)
    command[command.index("--device") + 1] = device
    env = {"IMGEMBED_WARMUP": "true" if warmup else "false", "HF_HUB_OFFLINE": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    url = f"http://{LOOPBACK}:{port}"
    with log_path.open("wb") as out, httpx.Client(trust_env=False, timeout=600) as client:
        before = CpuSnapshot.take([])
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited:\n{log_path.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"not ready after 600 s:\n{log_path.read_text()}")
                time.sleep(0.02)
            ready = time.perf_counter() - started
            rss = peak_rss_mib(process.pid)
            described = client.get(f"{url}/v1/models").json()["data"][0]
            requests = first_requests(client, url)
            other_cores = CpuSnapshot.take([process.pid]).other_cores(
                before, time.perf_counter() - started
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return {
        "ready": ready,
        "load": float(described["load_seconds"]),
        "warmup": float(described["warmup_seconds"] or 0.0),
        "rss": rss,
        "other_cores": other_cores,
        **requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sam2.1-hiera-tiny", "sam2.1-hiera-large"])
    parser.add_argument("--runs", type=int, default=3, help="starts per cell (median kept)")
    parser.add_argument("--device", default="cpu", help="the server's --device (cpu, cuda)")
    parser.add_argument(
        "--trees",
        nargs="+",
        default=[],
        metavar="LABEL=SRC",
        help="checkouts' src folders to compare, each run in turn and labelled LABEL",
    )
    args = parser.parse_args()
    info = machine_info()
    imports = [import_seconds() for _ in range(args.runs)]
    log(f"imports: {statistics.median(imports):.2f} s")
    trees: list[tuple[str, Path | None]] = [("this", None)]
    if args.trees:
        pairs = [tree.split("=", 1) for tree in args.trees]
        trees = [(label, Path(source).resolve()) for label, source in pairs]
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgembed-cold-") as scratch:
        for model in args.models:
            folder = Path(scratch) / model
            folder.mkdir()
            log(f"writing {model} weights")
            for layout, weights in write_weights(model, folder).items():
                for warmup in (True, False):
                    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
                    for _ in range(args.runs):
                        for label, source in trees:
                            log_path = Path(scratch) / "server.log"
                            runs[label].append(
                                cold_start(model, weights, warmup, log_path, source, args.device)
                            )
                    for label, _ in trees:
                        cell = runs[label]
                        median = {
                            key: statistics.median(run[key] for run in cell) for key in cell[0]
                        }
                        log(f"{model} {layout} {label} warm-up {warmup}: {median}")
                        rows.append(
                            [
                                model,
                                layout,
                                label,
                                "on" if warmup else "off",
                                f"{median['ready']:.2f}",
                                f"{median['load']:.2f}",
                                f"{median['warmup']:.2f}",
                                f"{median['first_embed']:.2f}",
                                f"{median['later_embed']:.2f}",
                                f"{median['first_click'] * 1000:.0f}",
                                f"{median['later_click'] * 1000:.0f}",
                                f"{median['rss']:.0f}",
                                f"{max(run['other_cores'] for run in cell):.2f}",
                                len(cell),
                            ]
                        )
    table = markdown_table(
        [
            "model",
            "weights",
            "code",
            "warm-up",
            "ready s",
            "load s",
            "warm-up s",
            "1st embed s",
            "2nd embed s",
            "1st click ms",
            "2nd click ms",
            "peak RSS MiB",
            "other load, cores (max)",
            "runs",
        ],
        rows,
    )
    body = f"""- Machine: {info["cpu_model"]}, {info["cpus_usable"]} usable cores, {info["memory_gib"]} GiB;
  Python {info["python"]}, torch {info["torch"]}, transformers {info["transformers"]}; device {args.device} (CUDA available: {info["cuda_available"]}).
- Date: {time.strftime("%Y-%m-%d")}. Command: `python benchmarks/cold_start.py {" ".join(sys.argv[1:])}`.
- What is timed: `imgembed serve --model M --weights W --device {args.device}` from `Popen` to the first 200
  of `/health/ready` (polled every 20 ms), medians of the runs; 'load s' and 'warm-up s' are the
  server's own `load_seconds` and `warmup_seconds` (`/v1/models`); peak RSS is `VmHWM` at ready.
  Then, by the client: the first `/v1/sam2/embed` (a 640x480 PNG, float16, binary) and the first
  click on it (`/v1/sam2/segment` with its `image_id`), then a second image and click. Random
  weights of the real architecture on local disk, read from the page cache after the first run
  (caches not dropped: a process cold start, not a disk one).
- Imports, timed apart (a fresh interpreter importing what `serve` imports, before the runs):
  {statistics.median(imports):.2f} s, median of {len(imports)}.

{table}
"""
    replace_section(RESULTS, "Cold start", body)
    log("wrote RESULTS.md")


if __name__ == "__main__":
    main()
