"""Forward-pass cost per item by batch size: what the default batch sizes are chosen from.

    . .venv/bin/activate
    python benchmarks/batch_cost.py     # about 4 minutes on 2 idle CPU cores

Dynamic batching pays off only where one forward pass over B items costs less than B passes over
one. This measures that directly, in-process, on the tensors the batchers hand the models (no
decode, resize or HTTP), for each tower the engine batches: SAM 2's image encoder
(``sam2.1-hiera-tiny``, 1024x1024 inputs), and SigLIP 2's image and text towers
(``siglip2-base-patch16-224``). Beside each imgembed pass, on the same weights in the same run,
the reference implementation does the same work: Meta's ``sam2`` model (``forward_image`` +
``_prepare_backbone_features``, what ``SAM2ImagePredictor.set_image`` runs) and ``transformers``'
``get_image_features`` / ``get_text_features``. Timed runs rotate over every (implementation,
batch size) pair of a tower, so a slow patch of the machine hits them alike.

``--device`` picks where (the GPU when there is one; larger batch sizes are timed there, see
``BATCH_SIZES``) and ``--compute-dtype`` the precision of both sides (``bfloat16``: autocast, as
imgembed computes on a GPU by default); CUDA is synchronised before each clock read.

Writes the ``## Forward pass cost by batch size`` section of ``benchmarks/RESULTS.md`` and the raw
numbers to ``benchmarks/out/batch_cost_<UTC>.json``. Random weights: speed does not depend on
weight values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from bench_util import (
    add_device_argument,
    device_phrase,
    elapsed_s,
    ignoring_result,
    log,
    machine_info,
    markdown_table,
    replace_section,
    resolve_device,
    run_interleaved,
    synchronizer,
    wait_until_quiet,
)
from sam2_fixtures import reference_and_imgembed
from sam2_reference import reference_encode

from imgembed.models import siglip as siglip_math
from imgembed.models.sam2 import encode_images
from imgembed.models.siglip_loading import load_siglip
from imgembed.pipelines import siglip_embed
from imgembed.settings import DEFAULT_BATCH_SIZE, SAM2_ENCODER_BATCH_SIZE_ON_CPU

HERE = Path(__file__).resolve().parent
SAM2_MODEL = "sam2.1-hiera-tiny"
SIGLIP_MODEL = "siglip2-base-patch16-224"
TEXT = "a photo of two cats sleeping on a red sofa"
BATCH_SIZES = {
    "cpu": {"sam2": (1, 2, 4), "siglip_image": (1, 4, 8, 16), "siglip_text": (1, 4, 16, 64)},
    "cuda": {
        "sam2": (1, 2, 4, 8, 16),
        "siglip_image": (1, 8, 32, 64, 128),
        "siglip_text": (1, 16, 64, 256),
    },
}
"""Batch sizes timed per device type: a GPU keeps gaining from batches a CPU gains nothing from."""


@dataclass(frozen=True)
class Tower:
    """One batched forward pass, imgembed's and the reference's, and the batch sizes to time.

    Attributes:
        name: What the table calls it.
        batch_sizes: Items per pass to time.
        repeats: Timed runs per (implementation, batch size).
        imgembed: Runs imgembed's pass on a batch of the given size.
        reference: Runs the reference's pass on the same batch.
        reference_name: What the table calls the reference.
    """

    name: str
    batch_sizes: tuple[int, ...]
    repeats: int
    imgembed: Callable[[int], object]
    reference: Callable[[int], object]
    reference_name: str


@dataclass(frozen=True)
class Placement:
    """Where and in what precision both implementations run.

    Attributes:
        device: The device of the weights and inputs.
        compute_dtype: ``float32``, or the autocast dtype.
    """

    device: torch.device
    compute_dtype: Literal["float32", "bfloat16", "float16"]

    def batch_sizes(self, tower: Literal["sam2", "siglip_image", "siglip_text"]) -> tuple[int, ...]:
        return BATCH_SIZES["cuda" if self.device.type == "cuda" else "cpu"][tower]


def on_batches(
    forward: Callable[[torch.Tensor], object],
    batches: dict[int, torch.Tensor],
    placement: Placement,
) -> Callable[[int], object]:
    """``forward`` on the batch of the given size, in ``torch.inference_mode`` and, unless
    float32, autocast to the placement's compute dtype."""

    def run(size: int) -> object:
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            if placement.compute_dtype != "float32":
                dtype = getattr(torch, placement.compute_dtype)
                stack.enter_context(torch.autocast(placement.device.type, dtype=dtype))
            return forward(batches[size])

    return run


def sam2_tower(folder: Path, repeats: int, placement: Placement) -> Tower:
    """SAM 2's image encoder on ``[B,3,1024,1024]`` random inputs."""
    reference, model, _ = reference_and_imgembed(SAM2_MODEL, folder, device=placement.device)
    inputs = {
        size: torch.randn(size, 3, 1024, 1024).to(placement.device)  # [B,3,1024,1024]
        for size in placement.batch_sizes("sam2")
    }
    return Tower(
        f"SAM 2 image encoder ({SAM2_MODEL})",
        tuple(inputs),
        repeats,
        on_batches(lambda batch: encode_images(model, batch), inputs, placement),
        on_batches(lambda batch: reference_encode(reference, batch), inputs, placement),
        "Meta sam2",
    )


def siglip_towers(repeats: int, placement: Placement) -> list[Tower]:
    """SigLIP 2's image tower on ``[B,3,224,224]`` and text tower on ``[B,64]`` token ids."""
    loaded = load_siglip(SIGLIP_MODEL, "dummy", device=placement.device)
    model = loaded.model
    side = loaded.variant.image_size
    images = {
        size: torch.randn(size, 3, side, side).to(placement.device)  # [B,3,S,S]
        for size in placement.batch_sizes("siglip_image")
    }
    texts = {
        size: siglip_embed.prepare_texts(loaded.tokenizer, [TEXT] * size).to(placement.device)
        for size in placement.batch_sizes("siglip_text")  # [B,64]
    }
    return [
        Tower(
            f"SigLIP 2 image tower ({SIGLIP_MODEL})",
            tuple(images),
            repeats * 3,
            on_batches(lambda batch: siglip_math.embed_images(model, batch), images, placement),
            on_batches(
                lambda batch: model.get_image_features(pixel_values=batch).pooler_output,
                images,
                placement,
            ),
            "transformers",
        ),
        Tower(
            f"SigLIP 2 text tower ({SIGLIP_MODEL})",
            tuple(texts),
            repeats * 3,
            on_batches(lambda batch: siglip_math.embed_texts(model, batch), texts, placement),
            on_batches(
                lambda batch: model.get_text_features(input_ids=batch).pooler_output,
                texts,
                placement,
            ),
            "transformers",
        ),
    ]


def peak_memory_per_item(tower: Tower) -> dict[str, float]:
    """CUDA memory one pass allocates beyond what was held before it, per item, in MiB, by
    ``implementation/batch``; empty off CUDA. This is what the GPU batch sizes are sized from
    (``imgembed.runtime.batch_size``)."""
    if not torch.cuda.is_available() or torch.cuda.memory_allocated() == 0:
        return {}
    peaks = {}
    for implementation, forward in (("imgembed", tower.imgembed), ("reference", tower.reference)):
        for size in tower.batch_sizes:
            torch.cuda.synchronize()
            held = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            forward(size)
            torch.cuda.synchronize()
            extra = torch.cuda.max_memory_allocated() - held
            peaks[f"{implementation}/{size}"] = extra / size / 2**20
    return peaks


def time_tower(tower: Tower, synchronize: Callable[[], None]) -> list[dict[str, Any]]:
    """Per-item time of every (implementation, batch size) of one tower, interleaved."""
    log(f"{tower.name}: batch sizes {tower.batch_sizes}, {tower.repeats} timed runs each")
    cases = {}
    for size in tower.batch_sizes:
        cases[f"imgembed/{size}"] = ignoring_result(tower.imgembed, size)
        cases[f"reference/{size}"] = ignoring_result(tower.reference, size)
    samples = run_interleaved(
        cases, repeats=tower.repeats, log=log, retries=tower.repeats, synchronize=synchronize
    )
    peaks = peak_memory_per_item(tower)
    rows = []
    for implementation in ("imgembed", "reference"):
        single = samples[f"{implementation}/1"].median
        for size in tower.batch_sizes:
            runs = samples[f"{implementation}/{size}"]
            rows.append(
                {
                    "tower": tower.name,
                    "implementation": "imgembed"
                    if implementation == "imgembed"
                    else tower.reference_name,
                    "batch": size,
                    "runs": len(runs.wall_s),
                    "median_s": runs.median,
                    "per_item_s": runs.median / size,
                    "vs_batch_1": runs.median / size / single,
                    "max_other_cores": max(runs.other_cores),
                    "discarded": runs.discarded,
                    "peak_mib_per_item": peaks.get(f"{implementation}/{size}"),
                }
            )
    return rows


def render(report: dict[str, Any], raw_path: Path) -> str:
    machine = report["machine"]
    headers = [
        "tower",
        "implementation",
        "batch",
        "runs",
        "ms per item",
        "per item vs batch 1",
        "max other load, cores",
    ]
    rows = [
        [
            row["tower"],
            row["implementation"],
            row["batch"],
            row["runs"],
            f"{row['per_item_s'] * 1000:.1f}",
            f"{row['vs_batch_1']:.2f}x",
            f"{row['max_other_cores']:.2f}",
        ]
        for row in report["rows"]
    ]
    if any(row.get("peak_mib_per_item") is not None for row in report["rows"]):  # CUDA runs
        headers.append("peak MiB per item")
        for cells, row in zip(rows, report["rows"], strict=True):
            cells.append(f"{row['peak_mib_per_item']:.0f}")
    table = markdown_table(headers, rows)
    return "\n".join(
        [
            f"- Date: {report['date']} (UTC); whole run {report['wall_s'] / 60:.1f} min.",
            f"- Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable of "
            f"{machine['cpu_count']} cores, {machine['memory_gib']} GiB RAM, "
            f"{device_phrase(machine)}; Python {machine['python']}, torch {machine['torch']}, transformers "
            f"{machine['transformers']}, {machine['torch_threads']} torch threads.",
            f"- Command: `{report['command']}`.",
            "- What is timed: one forward pass over a batch of inputs already on the device, in "
            f"`torch.inference_mode`, {report['compute_dtype']}: imgembed's `encode_images` / `embed_images` / "
            "`embed_texts` beside the reference on the same weights (Meta's `forward_image` + "
            "`_prepare_backbone_features`; `transformers`' `get_image_features` / "
            "`get_text_features`). Random inputs, random weights. Per item = median pass time / "
            "batch size; runs rotate over every (implementation, batch size) of a tower.",
            f"- Raw numbers: `{raw_path.name}` in `benchmarks/out/` (not committed).",
            "",
            table,
            "",
            reading(report["rows"], machine.get("device", "cpu")),
        ]
    )


def reading(rows: list[dict[str, Any]], device: str) -> str:
    """One paragraph stating what the numbers show, computed from them."""
    parts, costlier, agreeing = [], [], True
    for tower in dict.fromkeys(row["tower"] for row in rows):
        ours = [
            row for row in rows if row["tower"] == tower and row["implementation"] == "imgembed"
        ]
        theirs = [row for row in rows if row["tower"] == tower and row not in ours]
        largest, reference_largest = ours[-1], theirs[-1]
        parts.append(
            f"{tower}: an item in a batch of {largest['batch']} costs "
            f"{largest['vs_batch_1']:.2f}x what it costs alone in imgembed and "
            f"{reference_largest['vs_batch_1']:.2f}x in {reference_largest['implementation']}"
        )
        if largest["vs_batch_1"] > 1.05:
            costlier.append(tower)
            agreeing = agreeing and reference_largest["vs_batch_1"] > 1.05
    text = "Measured here: " + "; ".join(parts) + "."
    if costlier:
        text += (
            f" Where a batch costs more per item than single passes ({', '.join(costlier)}), "
            "batching can only lose throughput on this device"
            + (
                "; the reference shows the same, so it is the model on this device, not "
                "imgembed's code."
                if agreeing
                else "."
            )
        )
    return text + (
        " `batching.max_batch_size` 0 (the default) means "
        f"{SAM2_ENCODER_BATCH_SIZE_ON_CPU} for SAM 2's image encoder on a CPU and "
        f"{DEFAULT_BATCH_SIZE} elsewhere (`imgembed.settings`)."
        + (" No GPU was measured." if not device.startswith("cuda") else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per SAM 2 case")
    parser.add_argument("--quick", action="store_true", help="one timed run each, a smoke test")
    parser.add_argument("--wait-quiet", type=float, default=120.0)
    add_device_argument(parser)
    parser.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="precision of both sides: float32, or autocast to bfloat16/float16",
    )
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    torch.manual_seed(0)
    started = datetime.now(UTC)
    wait_until_quiet(args.wait_quiet, log)
    placement = Placement(resolve_device(args.device), args.compute_dtype)
    with tempfile.TemporaryDirectory() as folder:
        towers = [sam2_tower(Path(folder), repeats, placement), *siglip_towers(repeats, placement)]
        synchronize = synchronizer(placement.device)
        rows = [row for tower in towers for row in time_tower(tower, synchronize)]
    report = {
        "date": started.isoformat(timespec="seconds"),
        "wall_s": elapsed_s(),
        "command": shlex.join(["python", "benchmarks/batch_cost.py", *sys.argv[1:]]),
        "machine": {**machine_info(), "device": str(placement.device)},
        "compute_dtype": placement.compute_dtype,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    raw_path = args.out / f"batch_cost_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    raw_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    replace_section(args.results, "Forward pass cost by batch size", render(report, raw_path))
    log(f"wrote {args.results} and {raw_path}")


if __name__ == "__main__":
    main()
