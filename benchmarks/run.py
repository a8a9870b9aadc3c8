"""SAM 2 embedding benchmark: imgembed beside Meta's reference implementation, in one run.

    . .venv/bin/activate
    python benchmarks/run.py          # 3 to 5 minutes on 2 idle CPU cores; --quick: a smoke run

Measures, for one model with random weights (speed does not depend on weight values):

1. the encoder alone on one 1024x1024 input: Meta's ``sam2`` model (what
   ``SAM2ImagePredictor.set_image`` runs) against ``imgembed.models.sam2.encode_images`` on the
   same weights, loaded through imgembed from a Meta ``.pt``;
2. a whole request for a 1600x1200 JPEG: the seed worker's work in-process against imgembed's real
   HTTP server (a subprocess on loopback) with each encoding: ``npz_base64`` (the default),
   ``npz_base64_uncompressed`` and ``binary``;
3. wire encodings of the full feature set in float32, float16 and bfloat16.

Both encoders run on ``--device`` (the GPU when there is one) in float32, CUDA synchronised before
each clock read; the server is started with the same ``--device``.

Writes the ``## SAM 2 embedding`` section of ``benchmarks/RESULTS.md`` (other sections are kept)
and every raw number to ``benchmarks/out/sam2_embed_<UTC time>.json``. Only loopback is used.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch
from bench_util import (
    Case,
    CpuSnapshot,
    Samples,
    add_device_argument,
    elapsed_s,
    ignoring_result,
    log,
    machine_info,
    replace_section,
    resolve_device,
    run_interleaved,
    synchronizer,
    wait_until_quiet,
)
from sam2_fixtures import PHOTO_SIZE, make_photo, photo_pixel_values, reference_and_imgembed
from sam2_reference import reference_encode, seed_request
from sam2_report import render_section
from sam2_server import embed_request, running_server, serve_command
from sam2_wire import measure_codecs
from transformers import Sam2Model

from imgembed.api.sam2.embed import NPZ_KEYS
from imgembed.models.sam2 import Sam2Features, encode_images
from imgembed.models.sam2_registry import resolve_variant
from imgembed.pipelines.sam2_embed import Sam2EmbedOptions, finish
from imgembed.preprocess.sam2_frame import FrameMapping

HERE = Path(__file__).resolve().parent
E2E_DTYPE = "float16"
SERVER_ENV = {"IMGEMBED_CACHE_BYTES": "0"}
"""Every request sends the same photo; the cache off makes each one run the encoder, as the seed's
worker does (with the cache, repeats cost a lookup: see the segmentation section)."""
"""Feature dtype of the end-to-end requests: the seed's usual choice, and half of float32's bytes."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam2.1-hiera-tiny")
    parser.add_argument("--encoder-repeats", type=int, default=10)
    parser.add_argument("--e2e-repeats", type=int, default=8)
    parser.add_argument("--wire-repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat of everything (smoke run)")
    add_device_argument(parser)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=300,
        metavar="SECONDS",
        help="wait up to this long for other processes to leave the CPUs idle before starting",
    )
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.device = resolve_device(args.device)
    if args.quick:
        args.encoder_repeats = args.e2e_repeats = args.wire_repeats = 1
    return args


def bench_encoder(
    reference: torch.nn.Module, model: Sam2Model, pixels: torch.Tensor, repeats: int
) -> tuple[dict[str, Samples], dict[str, float], Sam2Features]:
    """Section 1: both encoders on the same input.

    Returns:
        The timed runs, the largest absolute difference between the outputs per level, and
        imgembed's features (for section 3).
    """
    log(f"encoder only: {repeats} timed runs each, interleaved, on {pixels.device}")
    cases = {
        "reference": ignoring_result(reference_encode, reference, pixels),
        "imgembed": ignoring_result(encode_images, model, pixels),
    }
    samples = run_interleaved(
        cases, repeats=repeats, log=log, synchronize=synchronizer(pixels.device)
    )
    expected = reference_encode(reference, pixels)
    features = encode_images(model, pixels)
    parity = {
        name: float((getattr(features, name) - expected[name]).abs().max())
        for name in ("image_embed", "high_res_feats_0", "high_res_feats_1")
    }
    log(f"  parity, max |imgembed - reference|: {parity}")
    return samples, parity, features


def bench_wire(
    features: Sam2Features, height: int, width: int, repeats: int
) -> list[dict[str, Any]]:
    """Section 3: every codec on the full feature set in every dtype."""
    mapping = FrameMapping.for_image(height, width, 1024, "stretch")
    rows = []
    for dtype in ("float32", "float16", "bfloat16"):
        embedding = finish(features, mapping, Sam2EmbedOptions(dtype=dtype))
        arrays = {NPZ_KEYS[name]: array for name, array in embedding.arrays.items()}
        wait_until_quiet(120, log)
        before, started = CpuSnapshot.take([os.getpid()]), time.perf_counter()
        measured = measure_codecs(arrays, dtype, repeats)
        other = CpuSnapshot.take([os.getpid()]).other_cores(before, time.perf_counter() - started)
        log(f"wire encodings, {dtype} (other processes: {other:.2f} cores)")
        rows += [{**row, "other_cores": other} for row in measured]
    return rows


def bench_end_to_end(
    reference: torch.nn.Module, checkpoint: Path, args: argparse.Namespace
) -> tuple[dict[str, Samples], dict[str, Any]]:
    """Section 2: the seed's request in-process against imgembed's HTTP server.

    Returns:
        The timed requests, and facts about the test photo.
    """
    photo = make_photo()
    image_b64 = base64.b64encode(photo).decode("ascii")
    threads = torch.get_num_threads()
    log(f"end-to-end: {len(photo)} byte JPEG, starting the server ({threads} threads)")
    server_log = args.out / "sam2_embed_server.log"
    with (
        running_server(
            args.model,
            checkpoint,
            threads=threads,
            log_path=server_log,
            env=SERVER_ENV,
            device=args.device.type,
        ) as server,
        httpx.Client(trust_env=False, timeout=600) as client,
    ):

        def request(encoding: str) -> Case:
            return lambda: embed_request(
                client, server.url, image_b64, encoding=encoding, dtype=E2E_DTYPE
            )

        started = time.perf_counter()
        request("npz_base64")()
        log(f"  warm-up imgembed server: {time.perf_counter() - started:.2f} s")
        samples = run_interleaved(
            {
                "reference (seed work, in-process)": lambda: seed_request(
                    reference, image_b64, E2E_DTYPE
                ),
                "imgembed HTTP, npz_base64": request("npz_base64"),
                "imgembed HTTP, npz_base64_uncompressed": request("npz_base64_uncompressed"),
                "imgembed HTTP, binary": request("binary"),
            },
            repeats=args.e2e_repeats,
            warmup=0,
            log=log,
            own_pids=[server.pid],
        )
    return samples, {"jpeg_bytes": len(photo), "size": list(PHOTO_SIZE), "dtype": E2E_DTYPE}


def main(argv: list[str] | None = None) -> int:
    """Runs the three sections and writes the results; returns the exit status."""
    args = parse_args(argv)
    # A plain `kill` should still stop the server subprocess: exit through the `finally` blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])])
    date = datetime.now(UTC)
    machine = machine_info()
    log(f"machine: {machine}")
    machine["other_cores_at_start"] = wait_until_quiet(args.wait_quiet, log)
    variant = resolve_variant(args.model)
    machine["device"] = str(args.device)
    pixels = photo_pixel_values().to(args.device)  # [1,3,1024,1024], the same input for both
    with tempfile.TemporaryDirectory(prefix="imgembed-bench-") as folder:
        reference, model, checkpoint = reference_and_imgembed(
            variant.name, Path(folder), device=args.device
        )
        encoder, parity, features = bench_encoder(reference, model, pixels, args.encoder_repeats)
        wire = bench_wire(features, *reversed(PHOTO_SIZE), args.wire_repeats)
        del model, features
        end_to_end, photo_info = bench_end_to_end(reference, checkpoint, args)

    total_s = elapsed_s()
    raw = {
        "date": date.isoformat(timespec="seconds"),
        "command": command,
        "total_runtime_s": total_s,
        "machine": machine,
        "model": variant.name,
        "server_command": " ".join(f"{k}={v}" for k, v in SERVER_ENV.items())
        + " python "
        + shlex.join(serve_command(variant.name, checkpoint, 0, args.device.type)[1:]).replace(
            "--port 0", "--port <free port>"
        ),
        "encoder": {name: asdict(samples) for name, samples in encoder.items()},
        "encoder_parity_max_abs": parity,
        "end_to_end": {name: asdict(samples) for name, samples in end_to_end.items()},
        "photo": photo_info,
        "wire": wire,
    }
    raw_path = args.out / f"sam2_embed_{date.strftime('%Y%m%dT%H%M%SZ')}.json"
    raw_path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    section = render_section(raw, encoder, end_to_end, raw_path)
    replace_section(args.results, "SAM 2 embedding", section)
    print(section)
    log(f"wrote {args.results} and {raw_path}; total {total_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
