"""Cold start: process start to ``/health/ready`` answering 200, and what the time goes to.

    python benchmarks/cold_start.py              # tiny and large, Meta .pt and HF folder, about 10 min
    python benchmarks/cold_start.py --models sam2.1-hiera-tiny --runs 2

For each SAM 2 model (random weights of the real architecture, written to local disk in Meta's
``.pt`` layout and as a ``save_pretrained`` folder) and with warm-up on and off, it starts
``imgembed serve`` (CPU) and times from ``Popen`` to the first 200 of ``/health/ready``, polled every
20 ms. The stages come from the server: ``load_seconds`` and ``warmup_seconds`` of ``/v1/models``;
the imports are timed apart (``python -c`` importing what ``serve`` imports before it loads a
model), and 'other' is the rest (interpreter start, uvicorn, the engine's threads, polling).
Peak memory is the server's ``VmHWM`` when ready. The weight files are read from the page cache
after the first run (this machine is shared: the caches are not dropped), so these are process
cold starts, not disk cold starts. Results go to RESULTS.md's "Cold start" section.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from bench_util import CpuSnapshot, log, machine_info, markdown_table, replace_section
from sam2_reference import build_reference
from sam2_server import LOOPBACK, free_port, serve_command
from transformers import Sam2Model

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


def cold_start(model: str, weights: Path, warmup: bool, log_path: Path) -> dict[str, float]:
    """One server start: seconds to ready, the server's load and warm-up seconds, peak RSS."""
    port = free_port()
    env = {"IMGEMBED_WARMUP": "true" if warmup else "false", "HF_HUB_OFFLINE": "1"}
    url = f"http://{LOOPBACK}:{port}"
    with log_path.open("wb") as out, httpx.Client(trust_env=False, timeout=2) as client:
        before = CpuSnapshot.take([])
        started = time.perf_counter()
        process = subprocess.Popen(
            serve_command(model, weights, port),
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited:\n{log_path.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{url}/health/ready").status_code == 200:
                        break
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"not ready after 600 s:\n{log_path.read_text()}")
                time.sleep(0.02)
            ready = time.perf_counter() - started
            other_cores = CpuSnapshot.take([process.pid]).other_cores(before, ready)
            described = client.get(f"{url}/v1/models").json()["data"][0]
            rss = peak_rss_mib(process.pid)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sam2.1-hiera-tiny", "sam2.1-hiera-large"])
    parser.add_argument("--runs", type=int, default=3, help="starts per cell (median kept)")
    args = parser.parse_args()
    info = machine_info()
    imports = [import_seconds() for _ in range(args.runs)]
    log(f"imports: {statistics.median(imports):.2f} s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgembed-cold-") as scratch:
        for model in args.models:
            folder = Path(scratch) / model
            folder.mkdir()
            log(f"writing {model} weights")
            for layout, weights in write_weights(model, folder).items():
                for warmup in (True, False):
                    runs = [
                        cold_start(model, weights, warmup, Path(scratch) / "server.log")
                        for _ in range(args.runs)
                    ]
                    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                    other = median["ready"] - statistics.median(imports)
                    other -= median["load"] + median["warmup"]
                    log(f"{model} {layout} warm-up {warmup}: {median}")
                    rows.append(
                        [
                            model,
                            layout,
                            "on" if warmup else "off",
                            f"{median['ready']:.2f}",
                            f"{statistics.median(imports):.2f}",
                            f"{median['load']:.2f}",
                            f"{median['warmup']:.2f}",
                            f"{max(other, 0.0):.2f}",
                            f"{median['rss']:.0f}",
                            f"{max(run['other_cores'] for run in runs):.2f}",
                            len(runs),
                        ]
                    )
    table = markdown_table(
        [
            "model",
            "weights",
            "warm-up",
            "ready s",
            "imports s",
            "load s",
            "warm-up s",
            "other s",
            "peak RSS MiB",
            "other load, cores (max)",
            "runs",
        ],
        rows,
    )
    body = f"""- Machine: {info["cpu_model"]}, {info["cpus_usable"]} usable cores, {info["memory_gib"]} GiB;
  Python {info["python"]}, torch {info["torch"]}, transformers {info["transformers"]}; no GPU.
- Date: {time.strftime("%Y-%m-%d")}. Command: `python benchmarks/cold_start.py {" ".join(sys.argv[1:])}`.
- What is timed: `imgembed serve --model M --weights W --device cpu` from `Popen` to the first 200
  of `/health/ready` (polled every 20 ms), medians of the runs. 'imports s' is a fresh interpreter
  importing what `serve` imports (timed apart); 'load s' and 'warm-up s' are the server's own
  `load_seconds` and `warmup_seconds` (`/v1/models`); 'other s' is the rest (interpreter start,
  uvicorn, the engine's threads). Random weights of the real architecture on local disk, read from
  the page cache after the first run (caches not dropped: a process cold start, not a disk one).

{table}
"""
    replace_section(RESULTS, "Cold start", body)
    log("wrote RESULTS.md")


if __name__ == "__main__":
    main()
