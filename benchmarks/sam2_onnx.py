"""ONNX export benchmark: file sizes, numerical error and CPU speed of the exported SAM 2 graphs.

    . .venv/bin/activate
    python benchmarks/sam2_onnx.py            # about 6 minutes on 2 idle CPU cores; --quick: smoke run

For SAM 2.1 tiny with seeded random weights (Meta's model, saved as Meta's ``.pt`` and loaded by
imgembed, as ``benchmarks/run.py`` does):

1. export time, and file sizes of the fp32, fp16 and int8 graphs (``imgembed.export``);
2. numerical error of each precision against imgembed's PyTorch float32 path on the same weights
   and the test photo: relative L2 of each feature map; the decoder (fed PyTorch's features, and
   end to end on its own encoder's features) as mask agreement (cells on the same side of 0) and
   largest IoU difference, over clicks, boxes, padded prompts and a mask refinement;
3. encoder latency on one image, ONNX Runtime CPU (each precision) against PyTorch CPU, timed runs
   interleaved; and the decoder (one prompt, and 16 prompts in one call).

Writes Markdown (a ``## ONNX export`` section) to ``benchmarks/out/onnx_<UTC time>.md`` and every
number to a JSON file beside it; the section is appended to ``RESULTS.md`` by hand.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_util import (
    Samples,
    elapsed_s,
    ignoring_result,
    log,
    machine_info,
    markdown_table,
    paired_ratio,
    run_interleaved,
    wait_until_quiet,
)
from sam2_fixtures import photo_pixel_values, reference_and_imgembed

from imgembed.export.onnx_backend import OnnxRuntimeSettings, OnnxSam2Backend
from imgembed.export.onnx_export import ExportResult, convert_precision, export_loaded_onnx
from imgembed.models.sam2 import Sam2Features, encode_images
from imgembed.models.sam2_decoder import decode_masks
from imgembed.models.sam2_loading import LoadedSam2, load_sam2

MODEL = "sam2.1-hiera-tiny"
PRECISIONS = ("fp32", "fp16", "int8")
FEATURES = ("image_embed", "high_res_feats_0", "high_res_feats_1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed encoder runs per case")
    parser.add_argument("--decoder-repeats", type=int, default=20)
    parser.add_argument("--wait-quiet", type=float, default=60, help="seconds to wait for idle")
    parser.add_argument("--quick", action="store_true", help="2 encoder runs, 5 decoder runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.decoder_repeats = 2, 5
    return args


def prompts() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Named decoder inputs (points, labels, mask_input, has_mask_input) in the 1024 frame."""
    rng = np.random.default_rng(0)
    clicks = torch.from_numpy(rng.uniform(0, 1024, (16, 1, 2)).astype(np.float32))  # [16,1,2]
    corners = np.sort(rng.uniform(0, 1024, (4, 2, 2)), axis=1).astype(np.float32)  # [4,2,2]
    rows = torch.linspace(-1, 1, 256)[:, None]
    blob = (8 * (0.25 - rows**2 - torch.linspace(-1, 1, 256)[None, :] ** 2))[None, None]
    no_mask = (torch.zeros(1, 1, 256, 256), torch.zeros(1))
    padded_points = torch.tensor([[[300.0, 300.0], [700.0, 650.0], [0.0, 0.0]]])
    return [
        ("16 clicks", clicks, torch.ones(16, 1, dtype=torch.int64), *no_mask),
        ("4 boxes", torch.from_numpy(corners), torch.tensor([[2, 3]] * 4), *no_mask),
        ("click + background, padded", padded_points, torch.tensor([[1, 0, -1]]), *no_mask),
        (
            "click + mask",
            torch.tensor([[[512.0, 512.0]]]),
            torch.tensor([[1]]),
            blob,
            torch.ones(1),
        ),
    ]


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def decoder_error(
    backend: OnnxSam2Backend, model: Any, features: Sam2Features, reference: Sam2Features
) -> dict[str, float]:
    """Mask agreement and largest IoU difference of the backend's decoder on ``features``
    against PyTorch's decoder on ``reference`` features, over all prompts."""
    agree, cells, iou_diff = 0, 0, 0.0
    for _, *inputs in prompts():
        ours = backend.decode(features, *inputs)
        theirs = decode_masks(model, reference, *inputs)
        agree += int(((ours.masks > 0) == (theirs.masks > 0)).sum())
        cells += ours.masks.numel()
        iou_diff = max(iou_diff, (ours.iou_predictions - theirs.iou_predictions).abs().max().item())
    return {"mask_agreement": agree / cells, "max_iou_difference": iou_diff}


def export_all(
    loaded: LoadedSam2, folder: Path
) -> tuple[dict[str, ExportResult], dict[str, float]]:
    """The fp32 export and its two smaller variants, with the time each took."""
    seconds = {}
    started = time.perf_counter()
    exports = {"fp32": export_loaded_onnx(loaded, folder / "fp32")}
    seconds["fp32"] = time.perf_counter() - started
    for precision in PRECISIONS[1:]:
        started = time.perf_counter()
        exports[precision] = convert_precision(folder / "fp32", folder / precision, precision)
        seconds[precision] = time.perf_counter() - started
        log(f"{precision}: converted in {seconds[precision]:.1f} s")
    return exports, seconds


def accuracy(
    exports: dict[str, ExportResult],
    backends: dict[str, OnnxSam2Backend],
    model: Any,
    pixels: torch.Tensor,
) -> tuple[dict[str, Any], Sam2Features]:
    """Per precision: sizes, feature errors, decoder errors (PyTorch features and end to end)."""
    reference = encode_images(model, pixels)
    results = {}
    for precision, backend in backends.items():
        features = backend.encode(pixels)
        results[precision] = {
            "bytes": {role: path.stat().st_size for role, path in exports[precision].files.items()},
            "feature_relative_l2": {
                name: relative_l2(getattr(features, name), getattr(reference, name))
                for name in FEATURES
            },
            "decoder_on_pytorch_features": decoder_error(backend, model, reference, reference),
            "decoder_end_to_end": decoder_error(backend, model, features, reference),
        }
        log(f"{precision}: {results[precision]}")
    return results, reference


def timings(
    backends: dict[str, OnnxSam2Backend],
    model: Any,
    pixels: torch.Tensor,
    features: Sam2Features,
    args: argparse.Namespace,
) -> tuple[dict[str, Samples], dict[str, Samples]]:
    """Encoder (one image) and decoder (1 and 16 prompts) latency, PyTorch vs ONNX Runtime."""
    encoder_cases = {"PyTorch fp32": ignoring_result(encode_images, model, pixels)}
    for precision, backend in backends.items():
        encoder_cases[f"ONNX Runtime {precision}"] = ignoring_result(backend.encode, pixels)
    encoder = run_interleaved(encoder_cases, repeats=args.repeats, log=log)

    _, clicks, labels, mask, has_mask = prompts()[0]
    decoder_cases = {}
    for count in (1, 16):
        inputs = (features, clicks[:count], labels[:count], mask, has_mask)
        decoder_cases[f"PyTorch fp32, {count} prompt(s)"] = ignoring_result(
            decode_masks, model, *inputs
        )
        decoder_cases[f"ONNX Runtime fp32, {count} prompt(s)"] = ignoring_result(
            backends["fp32"].decode, *inputs
        )
    decoder = run_interleaved(decoder_cases, repeats=args.decoder_repeats, log=log)
    return encoder, decoder


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f}"


def render(raw: dict[str, Any], encoder: dict[str, Samples], decoder: dict[str, Samples]) -> str:
    machine = raw["machine"]
    lines = [
        "## ONNX export",
        "",
        f"- Date: {raw['date']} (UTC); whole run {raw['total_runtime_s'] / 60:.1f} min.",
        f"- Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable of "
        f"{machine['cpu_count']} cores, {machine['memory_gib']} GiB RAM, no GPU used; "
        f"{machine['platform']}.",
        "- Software: "
        + ", ".join(f"{name} {value}" for name, value in raw["versions"].items())
        + ".",
        f"- Threads: PyTorch intra-op {machine['torch_threads']}; ONNX Runtime intra-op 0 (its "
        "default: one per core), sequential execution, all graph optimisations, CPU provider.",
        f"- Model: {MODEL} with random weights (Meta's model, seeded, saved as Meta's `.pt`, "
        "loaded by imgembed's `load_sam2`); opset "
        f"{raw['opset']}. Input: the 1600x1200 test photo of `benchmarks/run.py`, preprocessed.",
        f"- Command: `{raw['command']}`. Raw numbers: `{raw['raw_file']}` in `benchmarks/out/` "
        "(not committed).",
        f"- Export time: fp32 traced in {raw['export_seconds']['fp32']:.0f} s (encoder, decoder, "
        f"single-mask decoder); fp16 converted in {raw['export_seconds']['fp16']:.0f} s, int8 in "
        f"{raw['export_seconds']['int8']:.0f} s.",
        "",
        "### Sizes and error against PyTorch float32",
        "",
        "Relative L2 = ||onnx - pytorch|| / ||pytorch|| per feature map. Decoder: agreement = share "
        "of the 256x256 mask cells on the same side of 0, over 16 clicks, 4 boxes, a padded "
        "click + background prompt and a click with a mask prompt (three masks each); "
        "'on PyTorch features' feeds the ONNX decoder imgembed's float32 features (the decoder's "
        "own error), 'end to end' feeds it its own encoder's features.",
        "",
    ]
    rows = []
    for precision, result in raw["accuracy"].items():
        sizes, errors = result["bytes"], result["feature_relative_l2"]
        alone, chained = result["decoder_on_pytorch_features"], result["decoder_end_to_end"]
        rows.append(
            [
                precision,
                _mib(sizes["encoder"]),
                _mib(sizes["decoder"]),
                *(f"{errors[name]:.1e}" for name in FEATURES),
                f"{100 * alone['mask_agreement']:.3f} %",
                f"{alone['max_iou_difference']:.1e}",
                f"{100 * chained['mask_agreement']:.3f} %",
                f"{chained['max_iou_difference']:.1e}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "precision",
                "encoder MiB",
                "decoder MiB",
                "image_embed rel. L2",
                "high_res_feats_0 rel. L2",
                "high_res_feats_1 rel. L2",
                "decoder agreement (on PyTorch features)",
                "max IoU diff",
                "agreement end to end",
                "max IoU diff end to end",
            ],
            rows,
        )
    )
    lines += [
        "",
        "The weights are random, so these errors describe the arithmetic, not segmentation "
        "quality on real images; trained weights may react differently to fp16 and int8.",
        "",
        "### Encoder latency, one 1024x1024 image, CPU",
        "",
        "One warm-up run each, then timed runs in rotating order; 'vs PyTorch' is the median over "
        "rounds of the case's time / PyTorch's time in the same round.",
        "",
    ]
    lines.append(_latency_table(encoder, dict.fromkeys(encoder, "PyTorch fp32"), "s", 1))
    lines += [
        "",
        "### Decoder latency, CPU (features already computed, three masks per prompt)",
        "",
    ]
    pairs = {name: name.replace("ONNX Runtime", "PyTorch") for name in decoder}
    lines.append(_latency_table(decoder, pairs, "ms", 1000))
    return "\n".join(lines) + "\n"


def _latency_table(
    samples: dict[str, Samples], baselines: dict[str, str], unit: str, scale: float
) -> str:
    """One row per case; ``baselines`` maps a case to the PyTorch case it is compared with."""
    digits = 2 if scale == 1 else 1
    rows = []
    for name, runs in samples.items():
        baseline = baselines.get(name, name)
        rows.append(
            [
                name,
                f"{runs.median * scale:.{digits}f}",
                f"{runs.best * scale:.{digits}f}",
                f"{max(runs.wall_s) * scale:.{digits}f}",
                f"{len(runs.wall_s)} ({runs.discarded})",
                f"{max(runs.other_cores):.2f}",
                f"{paired_ratio(runs.wall_s, samples[baseline].wall_s):.2f}x",
            ]
        )
    return markdown_table(
        [
            "case",
            f"median {unit}",
            f"min {unit}",
            f"max {unit}",
            "runs (redone)",
            "other load, cores",
            "vs PyTorch (paired)",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/sam2_onnx.py", *(argv or sys.argv[1:])])
    date = datetime.now(UTC)
    machine = machine_info()
    machine["other_cores_at_start"] = wait_until_quiet(args.wait_quiet, log)
    pixels = photo_pixel_values()  # [1,3,1024,1024]
    with tempfile.TemporaryDirectory(prefix="imgembed-onnx-bench-") as folder:
        _, _, checkpoint = reference_and_imgembed(MODEL, Path(folder))
        loaded = load_sam2(MODEL, str(checkpoint), device=torch.device("cpu"))
        exports, export_seconds = export_all(loaded, Path(folder) / "onnx")
        settings = OnnxRuntimeSettings(provider="cpu")
        backends = {name: OnnxSam2Backend(export, settings) for name, export in exports.items()}
        results, reference = accuracy(exports, backends, loaded.model, pixels)
        wait_until_quiet(args.wait_quiet, log)
        encoder, decoder = timings(backends, loaded.model, pixels, reference, args)

    stamp = date.strftime("%Y%m%dT%H%M%SZ")
    raw_path = args.out / f"onnx_{stamp}.json"
    raw = {
        "date": date.isoformat(timespec="seconds"),
        "command": command,
        "total_runtime_s": elapsed_s(),
        "raw_file": raw_path.name,
        "machine": machine,
        "versions": {
            name: version(name)
            for name in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy")
        },
        "opset": exports["fp32"].metadata["opset"],
        "export_seconds": export_seconds,
        "accuracy": results,
        "encoder": {name: vars(samples) for name, samples in encoder.items()},
        "decoder": {name: vars(samples) for name, samples in decoder.items()},
        "encoder_median_s": {name: statistics.median(s.wall_s) for name, s in encoder.items()},
    }
    raw_path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    section = render(raw, encoder, decoder)
    markdown_path = args.out / f"onnx_{stamp}.md"
    markdown_path.write_text(section, encoding="utf-8")
    print(section)
    log(f"wrote {markdown_path} and {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
