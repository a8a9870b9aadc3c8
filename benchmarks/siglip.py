"""SigLIP 2 image embedding benchmark: imgembed beside ``transformers``' own pipeline, in one run.

    . .venv/bin/activate
    python benchmarks/siglip.py             # about 20 minutes on 2 idle cores; --quick: a smoke run

With random (``dummy``) weights of the real architectures (speed does not depend on weight values),
for ``siglip2-base-patch16-224`` and the seed worker's ``siglip2-large-patch16-512``:

1. **Throughput** for batches of 1, 8 and 32 photo-like 1600x1200 images (decoded pixels in
   memory, the state both pipelines start from): imgembed's ``prepare_image`` + ``encode_images``
   + ``finish`` against ``transformers``' pipeline, ``SiglipImageProcessorPil`` (what
   ``AutoProcessor`` gives without torchvision, configured as the released checkpoints: bilinear,
   mean and std 0.5) + ``get_image_features`` + L2 normalisation, on the same model object. Cases
   are timed in rotating order; large-512 gets fewer repeats (see ``REPEATS``).
2. **Preprocessing alone**, per image, for the same images.
3. **The 2048 px intermediate reduction** for a 6000x4000 photo: peak resident memory added by the
   preprocessing (each path in a fresh subprocess; after the image exists, freed memory is handed
   back with ``malloc_trim`` and ``VmHWM`` reset through ``/proc/self/clear_refs``), its time,
   and the cosine between the reduced and the full-resolution path: of the model input, and of
   the embeddings of both models.

Models run on ``--device`` in float32 on both sides (the same precision, so the comparison is of
the pipelines), with CUDA synchronised before each clock read; preprocessing runs on the CPU.

Writes Markdown (a ``## SigLIP 2 embedding`` section, to append to ``RESULTS.md``) to
``benchmarks/out/siglip_<UTC time>.md`` and every number to a JSON file beside it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_util import (
    Case,
    Samples,
    add_device_argument,
    device_phrase,
    log,
    machine_info,
    markdown_table,
    paired_ratio,
    resolve_device,
    run_interleaved,
    synchronizer,
    wait_until_quiet,
)
from PIL import Image, ImageDraw
from transformers import SiglipImageProcessorPil

from imgembed.models.siglip_loading import LoadedSiglip, load_siglip
from imgembed.models.siglip_registry import resolve_siglip_variant
from imgembed.pipelines import siglip_embed
from imgembed.pipelines.siglip_embed import SiglipEmbedOptions
from imgembed.preprocess.image import DecodedImage
from imgembed.preprocess.siglip_pixels import fixres_pixel_values
from imgembed.runtime.device import DevicePlacement

MODELS = ("siglip2-base-patch16-224", "siglip2-large-patch16-512")
BATCHES = (1, 8, 32)
REPEATS = {
    "siglip2-base-patch16-224": {1: 5, 8: 3, 32: 2},
    "siglip2-large-patch16-512": {1: 3, 8: 1, 32: 1},
}
"""Timed runs per case; large-512 at batch 32 takes minutes per run on two cores."""
PHOTO_HW = (1200, 1600)
HUGE_HW = (4000, 6000)
TYPICAL_HUGE_HW = (2699, 1800)
"""The seed's example of a typical photo above 2048 px."""
MEMORY_PATHS = ("imgembed_reduced", "imgembed_full", "transformers_full", "seed_thumbnail")


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """``[H,W,3]`` uint8: smooth shading, hard-edged shapes and a fine striped print."""
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x0, x1 = sorted(generator.integers(0, width, 2).tolist())
        y0, y1 = sorted(generator.integers(0, height, 2).tolist())
        colour = tuple(generator.integers(0, 256, 3).tolist())
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    pixels = np.array(image)
    period = max(2, width // 250)
    top, bottom, left, right = height // 4, height // 2, width // 3, 2 * width // 3
    stripes = ((np.arange(right - left) // period) % 2 * 70).astype(np.uint16)
    region = pixels[top:bottom, left:right]
    region[:] = np.minimum(region.astype(np.uint16) + stripes[None, :, None], 255).astype(np.uint8)
    return pixels


def decoded(pixels: np.ndarray) -> DecodedImage:
    return DecodedImage(
        pixels=pixels, source_format="JPEG", source_mode="RGB", exif_transposed=False
    )


def reference_processor(loaded: LoadedSiglip) -> SiglipImageProcessorPil:
    """``transformers``' Pillow image processor as the released checkpoint configures it."""
    side = loaded.variant.image_size
    return SiglipImageProcessorPil(
        size={"height": side, "width": side},
        resample=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def imgembed_case(
    loaded: LoadedSiglip, placement: DevicePlacement, images: list[DecodedImage]
) -> Case:
    def case() -> None:
        siglip_embed.embed_images(loaded, placement, images)

    return case


def transformers_case(
    loaded: LoadedSiglip, processor: SiglipImageProcessorPil, images: list[Image.Image]
) -> Case:
    def case() -> None:
        device = next(loaded.model.parameters()).device
        with torch.inference_mode():
            inputs = processor(images=images, return_tensors="pt").to(device)
            features = loaded.model.get_image_features(**inputs).pooler_output
            torch.nn.functional.normalize(features, dim=-1).cpu().numpy()

    return case


def throughput(
    loaded: LoadedSiglip, placement: DevicePlacement, batches: tuple[int, ...], quick: bool
) -> list[dict[str, Any]]:
    """Images per second of both pipelines per batch size."""
    processor = reference_processor(loaded)
    pixels = [photo_like(*PHOTO_HW, seed=index) for index in range(max(batches))]
    rows = []
    for batch in batches:
        ours = [decoded(p) for p in pixels[:batch]]
        theirs = [Image.fromarray(p) for p in pixels[:batch]]
        repeats = 1 if quick else REPEATS[loaded.variant.name][batch]
        log(f"{loaded.variant.name} batch {batch}: {repeats} timed run(s) per pipeline")
        samples = run_interleaved(
            {
                "imgembed": imgembed_case(loaded, placement, ours),
                "transformers": transformers_case(loaded, processor, theirs),
            },
            repeats=repeats,
            warmup=1 if batch == batches[0] else 0,
            log=log,
            retries=2 if repeats > 1 else 0,  # a lone minutes-long run is kept, with its load
            quiet_timeout_s=60,
            synchronize=synchronizer(placement.device),
        )
        rows.append(
            {
                "model": loaded.variant.name,
                "batch": batch,
                "repeats": repeats,
                "imgembed_s": samples["imgembed"].wall_s,
                "transformers_s": samples["transformers"].wall_s,
                "imgembed_images_per_s": batch / samples["imgembed"].median,
                "transformers_images_per_s": batch / samples["transformers"].median,
                "paired_time_ratio": paired_ratio(
                    samples["imgembed"].wall_s, samples["transformers"].wall_s
                ),
                "other_cores_max": max(
                    max(s.other_cores) for s in samples.values() if s.other_cores
                ),
                "discarded": sum(s.discarded for s in samples.values()),
            }
        )
    return rows


def preprocessing_only(loaded: LoadedSiglip, quick: bool) -> dict[str, Any]:
    """Milliseconds per 1600x1200 image of each pipeline's preprocessing, 8 images a run."""
    processor = reference_processor(loaded)
    pixels = [photo_like(*PHOTO_HW, seed=index) for index in range(8)]
    ours = [decoded(p) for p in pixels]
    theirs = [Image.fromarray(p) for p in pixels]
    options = SiglipEmbedOptions()

    def imgembed_prepare() -> None:
        for image in ours:
            siglip_embed.prepare_image(image, loaded.image_processing, options)

    def transformers_prepare() -> None:
        processor(images=theirs, return_tensors="pt")

    samples: dict[str, Samples] = run_interleaved(
        {"imgembed": imgembed_prepare, "transformers": transformers_prepare},
        repeats=2 if quick else 7,
        log=log,
        retries=4,
        quiet_timeout_s=30,
    )
    return {
        "model": loaded.variant.name,
        "imgembed_ms_per_image": samples["imgembed"].median / 8 * 1000,
        "transformers_ms_per_image": samples["transformers"].median / 8 * 1000,
    }


def cosine(first: np.ndarray | torch.Tensor, second: np.ndarray | torch.Tensor) -> float:
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def reduction_agreement(loaded: LoadedSiglip, placement: DevicePlacement) -> list[dict[str, Any]]:
    """Cosine of reduced vs full-resolution input and embedding for photos above 2048 px."""
    rows = []
    full_options = SiglipEmbedOptions(max_intermediate_side=None)
    for index, hw in enumerate((TYPICAL_HUGE_HW, (3000, 4000), HUGE_HW)):
        pixels = photo_like(*hw, seed=100 + index)
        image = decoded(pixels)
        processing = loaded.image_processing
        reduced_input = fixres_pixel_values(pixels, processing)
        full_input = fixres_pixel_values(pixels, processing, max_intermediate_side=None)
        reduced = siglip_embed.embed_images(loaded, placement, [image])[0]
        full = siglip_embed.embed_images(loaded, placement, [image], full_options)[0]
        rows.append(
            {
                "model": loaded.variant.name,
                "image_hw": hw,
                "input_cosine": cosine(reduced_input, full_input),
                "input_max_abs_diff": float((reduced_input - full_input).abs().max()),
                "embedding_cosine": cosine(reduced, full),
            }
        )
        log(f"  {hw[1]}x{hw[0]}: {rows[-1]}")
    return rows


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(path: str) -> dict[str, Any]:
    """In a fresh process: peak RSS the preprocessing of one 6000x4000 photo adds, and its time."""
    settings = resolve_siglip_variant("siglip2-large-patch16-512").image_processing()
    processor = SiglipImageProcessorPil(
        size={"height": 512, "width": 512}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    pixels = photo_like(*HUGE_HW, seed=7)
    picture = Image.fromarray(pixels) if path in ("transformers_full", "seed_thumbnail") else None
    image = decoded(pixels)
    runs: dict[str, Callable[[], object]] = {
        "imgembed_reduced": lambda: siglip_embed.prepare_image(
            image, settings, SiglipEmbedOptions()
        ),
        "imgembed_full": lambda: siglip_embed.prepare_image(
            image, settings, SiglipEmbedOptions(max_intermediate_side=None)
        ),
        "transformers_full": lambda: processor(images=picture, return_tensors="pt"),
        "seed_thumbnail": lambda: processor(images=_thumbnail(picture), return_tensors="pt"),
    }
    if picture is not None:
        del pixels, image  # the seed worker holds a Pillow image, not an array
    run = runs[path]
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory leaves RSS, so reuse cannot hide growth
    before_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")  # resets VmHWM to VmRSS
    started = time.perf_counter()
    run()
    first_s = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM")
    times = [first_s]
    for _ in range(2):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return {"path": path, "added_peak_mib": (peak_kib - before_kib) / 1024, "time_s": times}


def _thumbnail(picture: Image.Image | None) -> Image.Image:
    """The seed's intermediate step as its README describes it: the long side to 2048 px (Lanczos
    assumed; the seed's filter is not published)."""
    assert picture is not None
    copy = picture.copy()
    copy.thumbnail((2048, 2048), Image.Resampling.LANCZOS)
    return copy


def memory(quick: bool) -> list[dict[str, Any]]:
    """Each preprocessing path of the 6000x4000 photo in its own subprocess."""
    results = []
    for path in MEMORY_PATHS[:2] if quick else MEMORY_PATHS:
        wait_until_quiet(30, log)
        output = subprocess.run(
            [sys.executable, __file__, "--memory-probe", path],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        log(f"  memory {path}: {results[-1]}")
    return results


def render(report: dict[str, Any], command: str) -> str:
    """The ``## SigLIP 2 embedding`` section."""
    machine = report["machine"]
    lines = [
        "## SigLIP 2 embedding",
        "",
        f"- Date: {report['date']} (UTC); whole run {report['duration_min']:.1f} min.",
        f"- Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable of "
        f"{machine['cpu_count']} cores, {machine['memory_gib']} GiB RAM, "
        f"{device_phrase(machine)}; {machine['platform']}; Python {machine['python']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}, {machine['torch_threads']} torch threads.",
        f"- Command: `{command}`.",
        "- Models: `dummy` weights (seeded random) of the real architectures, float32 on "
        f"{machine.get('device', 'cpu')}; speed does not depend on weight values, embedding cosines do (see the last paragraph).",
        "- Reference: `transformers`' `SiglipImageProcessorPil` (what `AutoProcessor` gives "
        "without torchvision; bilinear, mean and std 0.5, as the released configs) + "
        "`get_image_features` + L2 normalisation, on the same model object.",
        "- Raw numbers: `" + report["json_name"] + "` in `benchmarks/out/` (not committed).",
        "",
        "### Throughput, photo-like 1600x1200 images (decoded pixels in memory)",
        "",
    ]
    rows = [
        [
            row["model"],
            row["batch"],
            row["repeats"],
            f"{row['imgembed_images_per_s']:.3g}",
            f"{row['transformers_images_per_s']:.3g}",
            f"{row['paired_time_ratio']:.3f}",
            f"{row['other_cores_max']:.2f}",
        ]
        for row in report["throughput"]
    ]
    headers = ["model", "batch", "runs", "imgembed images/s", "transformers images/s"]
    headers += ["time ratio (imgembed / transformers)", "max other load, cores"]
    lines += [markdown_table(headers, rows), ""]
    lines += ["### Preprocessing alone, per 1600x1200 image", ""]
    rows = [
        [r["model"], f"{r['imgembed_ms_per_image']:.1f}", f"{r['transformers_ms_per_image']:.1f}"]
        for r in report["preprocessing"]
    ]
    lines += [markdown_table(["model", "imgembed ms", "transformers ms"], rows), ""]
    lines += ["### Intermediate reduction to 2048 px: memory for a 6000x4000 photo (512 model)", ""]
    labels = {
        "imgembed_reduced": "imgembed, reduced to at most 2048 px first (default)",
        "imgembed_full": "imgembed, full resolution (`max_intermediate_side=None`)",
        "transformers_full": "transformers processor on the full-size Pillow image",
        "seed_thumbnail": "seed's way: Pillow thumbnail to 2048 (Lanczos assumed), then processor",
    }
    rows = [
        [
            labels[m["path"]],
            f"{m['added_peak_mib']:.1f}",
            f"{sorted(m['time_s'])[len(m['time_s']) // 2] * 1000:.0f}",
        ]
        for m in report["memory"]
    ]
    headers = ["preprocessing path", "peak RSS added, MiB", "median time, ms (3 runs)"]
    lines += [markdown_table(headers, rows), ""]
    lines += ["### Intermediate reduction: reduced vs full-resolution path", ""]
    rows = [
        [
            r["model"],
            f"{r['image_hw'][1]}x{r['image_hw'][0]}",
            f"{r['input_cosine']:.6f}",
            f"{r['input_max_abs_diff']:.3f}",
            f"{r['embedding_cosine']:.6f}",
        ]
        for r in report["agreement"]
    ]
    headers = ["model", "image (WxH)", "input cosine", "input max abs diff", "embedding cosine"]
    lines += [markdown_table(headers, rows), "", reading(report), ""]
    return "\n".join(lines)


def reading(report: dict[str, Any]) -> str:
    """What the numbers say, computed from them."""
    ratios = [row["paired_time_ratio"] for row in report["throughput"]]
    memory = {m["path"]: m["added_peak_mib"] for m in report["memory"]}
    worst = min(r["embedding_cosine"] for r in report["agreement"])
    worst_input = min(r["input_cosine"] for r in report["agreement"])
    text = (
        f"Measured here: imgembed's time per batch is {min(ratios):.3f} to {max(ratios):.3f} times "
        "transformers' on the same model (below 1 is faster); the forward pass dominates, and the "
        "preprocessing differs by the amounts in the second table. Above 2048 px the reduced path's "
        f"embedding has cosine at least {worst:.6f} to the full-resolution path's (input cosine "
        f"at least {worst_input:.6f}), inside the 1e-3 asked for. Images of at "
        "most 2048 px are not reduced: their input is bit-identical to transformers' (tested)."
    )
    if "imgembed_reduced" in memory and "imgembed_full" in memory:
        saved = memory["imgembed_full"] - memory["imgembed_reduced"]
        text += (
            f" For the 6000x4000 photo the reduction saves {saved:.0f} MiB of peak memory "
            f"({saved / memory['imgembed_full']:.0%}) against imgembed's own full-resolution "
            "path"
        )
        if "transformers_full" in memory:
            text += f" and needs {memory['imgembed_reduced'] / memory['transformers_full']:.0%}"
            text += " of what transformers' processor adds"
        text += "; the reduction works strip by strip, so the full-size image is never copied."
    return text + (
        " Embedding cosines come from random weights: a trained model's may differ, the input "
        "cosines do not depend on the model."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each, batches 1 and 8")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--memory-probe", choices=MEMORY_PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe)))
        return
    started = time.perf_counter()
    batches = (1, 8) if args.quick else BATCHES
    placement = DevicePlacement(device=resolve_device(args.device), compute_dtype="float32")
    report: dict[str, Any] = {"machine": machine_info(), "throughput": [], "preprocessing": []}
    report["machine"]["device"] = str(placement.device)
    report["agreement"] = []
    for name in args.models:
        log(f"loading {name} with dummy weights")
        loaded = load_siglip(name, "dummy", device=placement.device)
        report["preprocessing"].append(preprocessing_only(loaded, args.quick))
        report["agreement"] += reduction_agreement(loaded, placement)
        report["throughput"] += throughput(loaded, placement, batches, args.quick)
        del loaded
    report["memory"] = memory(args.quick)
    stamp = datetime.now(UTC)
    report["date"] = stamp.isoformat(timespec="seconds")
    report["duration_min"] = (time.perf_counter() - started) / 60
    name = f"siglip_{stamp.strftime('%Y%m%dT%H%M%SZ')}"
    report["json_name"] = f"{name}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    command = "python benchmarks/siglip.py" + (" --quick" if args.quick else "")
    command += f" --device {args.device}" if args.device != "auto" else ""
    (args.out / f"{name}.md").write_text(render(report, command), encoding="utf-8")
    log(f"wrote {args.out / name}.md and .json")


if __name__ == "__main__":
    main()
