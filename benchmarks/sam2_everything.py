"""SAM 2 "segment everything": imgembed beside Meta's ``SAM2AutomaticMaskGenerator``, in one run.

    . .venv/bin/activate
    python benchmarks/sam2_everything.py --points-per-side 16 --repeats 3   # about 5 min, 2 CPUs

Both generate masks for the same image with the same weights and the same settings, the whole
job each time (encode the image, decode every grid point, filter, NMS, encode the masks as RLE),
timed in interleaved rounds; the table gives medians. Meta's generator runs unchanged (its
torchvision imports are lent the tests' stand-in, ``tests/support/torchvision_shim.py``);
imgembed runs :func:`~imgembed.pipelines.sam2_everything.generate_everything` with its own
encoder and decoder, as the engine does. Both use 64 prompts per decoder pass (Meta's default;
imgembed's automatic choice on a CPU), on ``--device``, in float32 (so that their masks can be
compared), with CUDA synchronised before each clock read.

Weights are random (seeded, the tests' ``randomise_``): speed does not depend on their values, but
random weights seldom reach the reference's default score thresholds, so by default the
thresholds are lowered until some masks come out (``--pred-iou-thresh``,
``--stability-score-thresh``) and the post-processing does real work. The run also checks that
both produce the same masks.

Prints the ``## SAM 2 segment everything`` section for ``benchmarks/RESULTS.md`` on stdout, and
writes every raw number to ``benchmarks/out/sam2_everything_<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import warnings
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_util import (
    Samples,
    add_device_argument,
    device_phrase,
    elapsed_s,
    log,
    machine_info,
    markdown_table,
    paired_ratio,
    resolve_device,
    run_interleaved,
    synchronizer,
    wait_until_quiet,
)
from sam2_fixtures import PHOTO_SIZE, photo_rgb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))  # the reference's torchvision stand-in

from checkpoints import SEED, build_meta_model, save_meta_checkpoint  # noqa: E402
from torchvision_shim import import_meta_predictors  # noqa: E402

from imgembed.masks.rle import rle_to_mask  # noqa: E402
from imgembed.models.sam2 import Sam2Features  # noqa: E402
from imgembed.models.sam2_decoder import Sam2MaskPrediction, decode_masks  # noqa: E402
from imgembed.models.sam2_loading import load_sam2  # noqa: E402
from imgembed.models.sam2_registry import resolve_variant  # noqa: E402
from imgembed.pipelines import sam2_embed  # noqa: E402
from imgembed.pipelines.sam2_everything import EverythingResult, generate_everything  # noqa: E402
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams  # noqa: E402
from imgembed.preprocess.image import DecodedImage  # noqa: E402
from imgembed.runtime.device import DevicePlacement  # noqa: E402

REFERENCE = "Meta SAM2AutomaticMaskGenerator"
OURS = "imgembed generate_everything"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam2.1-hiera-tiny")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.3)
    parser.add_argument("--stability-score-thresh", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    add_device_argument(parser)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=300,
        metavar="SECONDS",
        help="wait up to this long for other processes to leave the CPUs idle before starting",
    )
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--render", type=Path, help="only print the section from a raw JSON")
    return parser.parse_args(argv)


class Runner:
    """Both generators on the same weights and image."""

    def __init__(
        self,
        model_name: str,
        folder: Path,
        params: Sam2EverythingParams,
        device: torch.device,
    ) -> None:
        variant = resolve_variant(model_name)
        self.params = params
        self.meta_model = build_meta_model(variant.meta_config, SEED)
        checkpoint = save_meta_checkpoint(self.meta_model, folder / variant.meta_checkpoint)
        self.meta_model.to(device)
        self.model = load_sam2(variant.name, str(checkpoint), None, device=device).model
        self.placement = DevicePlacement(device, "float32")
        _, self.generator_module = import_meta_predictors()
        self.generator = self.generator_module.SAM2AutomaticMaskGenerator(
            self.meta_model, **self.reference_settings()
        )
        self.image = photo_rgb()

    def encode(self, image: np.ndarray) -> Sam2Features:
        prepared = sam2_embed.prepare(
            DecodedImage(image, "JPEG", "RGB", exif_transposed=False),
            sam2_embed.Sam2EmbedOptions(),
        )
        return sam2_embed.encode(self.model, self.placement, [prepared.pixel_values])

    def decode(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: bool,
    ) -> Sam2MaskPrediction:
        return decode_masks(
            self.model,
            features,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
            multimask_output=multimask_output,
        )

    def ours(self) -> EverythingResult:
        return generate_everything(self.image, self.encode, self.decode, self.params)

    def reference(self, generator: Any = None) -> list[dict[str, Any]]:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return (generator or self.generator).generate(self.image)

    def check(self) -> dict[str, Any]:
        """Both generators once more with RLE output, compared (see :func:`same_masks`)."""
        generator = self.generator_module.SAM2AutomaticMaskGenerator(
            self.meta_model, **self.reference_settings(output_mode="uncompressed_rle")
        )
        params = replace(self.params, output_mode="uncompressed_rle")
        ours = generate_everything(self.image, self.encode, self.decode, params)
        return same_masks(ours, self.reference(generator))

    def reference_settings(self, **changes: Any) -> dict[str, Any]:
        """The reference generator's keyword arguments for :attr:`params`."""
        return {**asdict(self.params), **changes}


def same_masks(ours: EverythingResult, reference: list[dict[str, Any]]) -> dict[str, Any]:
    """How the two sets of masks compare: counts, and the smallest IoU of same-position masks."""
    ious = []
    for record, expected in zip(ours.records, reference, strict=False):
        first = rle_to_mask(record.segmentation)
        second = rle_to_mask(expected["segmentation"])
        union = np.logical_or(first, second).sum()
        ious.append(float(np.logical_and(first, second).sum() / union) if union else 1.0)
    return {
        "masks_imgembed": len(ours.records),
        "masks_reference": len(reference),
        "min_iou": min(ious) if ious else None,
    }


def render(raw: dict[str, Any], samples: dict[str, Samples]) -> str:
    machine = raw["machine"]
    params = raw["params"]
    comparison = raw["comparison"]
    ratio = paired_ratio(samples[OURS].wall_s, samples[REFERENCE].wall_s)
    rows = []
    for name in (REFERENCE, OURS):
        runs = samples[name]
        rows.append(
            [
                name,
                f"{runs.median:.2f}",
                f"{runs.best:.2f}",
                f"{ratio:.2f}x" if name == OURS else "1.00x",
                comparison["masks_imgembed" if name == OURS else "masks_reference"],
                f"{statistics.median(runs.other_cores):.2f}",
                runs.discarded,
            ]
        )
    headers = ["generator", "median s", "min s", "vs Meta (paired)", "masks", "other load, cores"]
    table = markdown_table([*headers, "redone"], rows)
    phases = samples[OURS]
    breakdown = ", ".join(
        f"{phase} {phases.detail_median(phase) / 1000:.2f} s"
        for phase in ("encode", "decode", "postprocess")
    )
    min_iou = comparison["min_iou"]
    same = (
        f"the same {comparison['masks_imgembed']} masks in the same order (smallest IoU "
        f"{min_iou:.4f})"
        if comparison["masks_imgembed"] == comparison["masks_reference"] and min_iou is not None
        else f"{comparison['masks_imgembed']} vs {comparison['masks_reference']} masks"
    )
    return f"""- Date: {raw["date"]} (UTC); whole run {raw["total_s"] / 60:.1f} min.
- Machine: {machine["cpu_model"]}, {machine["cpus_usable"]} usable of {machine["cpu_count"]} cores, \
{machine["memory_gib"]} GiB RAM, {device_phrase(machine)}; {machine["platform"]}; Python {machine["python"]}, \
torch {machine["torch"]}, transformers {machine["transformers"]}.
- Command: `{raw["command"]}`
- Work, identical for both: {raw["model"]} with seeded random weights (the tests' `randomise_`; \
speed does not depend on weight values), one {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} RGB photo \
(`benchmarks/sam2_fixtures.py`), `points_per_side` {params["points_per_side"]} \
({params["points_per_side"] ** 2} prompts, 3 masks each), 64 prompts per decoder pass, float32, \
`pred_iou_thresh` {params["pred_iou_thresh"]} and `stability_score_thresh` \
{params["stability_score_thresh"]} (lowered so that random weights leave masks to post-process), \
other settings the reference's defaults, `output_mode` binary_mask. Each run is the whole job: \
encode, decode every point, filter, NMS, masks out.
- Method: {raw["repeats"]} timed runs each after one warm-up, interleaved; 'paired' is the median \
of same-round ratios (below 1: imgembed faster). A run during which other processes kept more \
than 0.15 cores busy was redone (at most {2 * raw["repeats"]} in all), then kept; 'other load' is \
the median over the kept runs. Result check: {same}.
- imgembed's own split (medians): {breakdown}.
- Raw numbers: `{raw["raw_file"]}` in `benchmarks/out/` (not committed).

{table}
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        raw = json.loads(args.render.read_text(encoding="utf-8"))
        samples = {name: Samples(**runs) for name, runs in raw["samples"].items()}
        print("## SAM 2 segment everything\n")
        print(render(raw, samples))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/sam2_everything.py", *(argv or sys.argv[1:])])
    date = datetime.now(UTC)
    machine = machine_info()
    log(f"machine: {machine}")
    machine["other_cores_at_start"] = wait_until_quiet(args.wait_quiet, log)
    device = resolve_device(args.device)
    machine["device"] = str(device)
    params = Sam2EverythingParams(
        points_per_side=args.points_per_side,
        points_per_batch=64,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    with tempfile.TemporaryDirectory(prefix="imgembed-bench-") as folder:
        runner = Runner(args.model, Path(folder), params, device)
        comparison = runner.check()
        log(f"result check: {comparison}")
        samples = run_interleaved(
            {
                REFERENCE: lambda: {"masks": len(runner.reference())},
                OURS: lambda: dict(runner.ours().timings_ms),
            },
            repeats=args.repeats,
            log=log,
            synchronize=synchronizer(device),
        )
    raw_file = f"sam2_everything_{date.strftime('%Y%m%dT%H%M%SZ')}.json"
    raw = {
        "date": date.isoformat(timespec="seconds"),
        "command": command,
        "model": args.model,
        "machine": machine,
        "params": asdict(params),
        "repeats": args.repeats,
        "comparison": comparison,
        "samples": {name: asdict(runs) for name, runs in samples.items()},
        "raw_file": raw_file,
    }
    raw["total_s"] = elapsed_s()
    (args.out / raw_file).write_text(json.dumps(raw, indent=2, default=str), encoding="utf-8")
    print("## SAM 2 segment everything\n")
    print(render(raw, samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
