"""The ``## SAM 2 embedding`` section of ``RESULTS.md``, from one run's numbers."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench_util import OTHER_CORES_LIMIT, Samples, device_phrase, markdown_table, paired_ratio
from sam2_wire import LINK_MBIT_S

NOISE = 0.03
"""Paired ratios up to ``1 + NOISE`` count as "no slower": the median of paired ratios on this
kind of machine moves by about this much between whole runs."""
OVERHEAD_TARGET = 0.10
STAGES = ("decode", "preprocess", "encode", "postprocess")


def _verdict(ratio: float) -> str:
    if ratio <= 1 + NOISE:
        return f"meets 'no slower than the reference' (≤ {1 + NOISE:.2f}x)"
    return f"MISSES 'no slower than the reference': {(ratio - 1) * 100:.0f} % slower"


def _overheads(samples: Samples) -> list[float]:
    """Per run: (request wall time - encode time) / request wall time."""
    return [(d["wall"] - d["encode"]) / d["wall"] for d in samples.details]


def _around_ms(samples: Samples) -> float:
    """Median time of a request spent outside the encoder, in milliseconds."""
    return statistics.median(d["wall"] - d["encode"] for d in samples.details)


def _header(raw: Mapping[str, Any], raw_path: Path) -> str:
    machine = raw["machine"]
    return "\n".join(
        [
            f"- Date: {raw['date']} (UTC); whole run {raw['total_runtime_s'] / 60:.1f} min.",
            f"- Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable of "
            f"{machine['cpu_count']} cores, {machine['memory_gib']} GiB RAM, "
            f"{device_phrase(machine)}; {machine['platform']}.",
            f"- Software: Python {machine['python']}, torch {machine['torch']}, transformers "
            f"{machine['transformers']}, numpy {machine['numpy']}.",
            f"- Threads: torch intra-op {machine['torch_threads']}, inter-op "
            f"{machine['torch_interop_threads']} (OMP_NUM_THREADS="
            f"{machine['omp_num_threads_env'] or 'unset'}); the server subprocess gets "
            f"OMP_NUM_THREADS={machine['torch_threads']}.",
            f"- Model: {raw['model']} with random weights (speed does not depend on weight values); "
            "Meta's model built by `sam2.build_sam.build_sam2(config, ckpt_path=None)`, its state "
            "dict saved as `{'model': sd}` and loaded by imgembed's `load_sam2`.",
            f"- Command: `{raw['command']}`; server: `{raw['server_command']}`.",
            f"- Other processes' load: {machine['other_cores_at_start']:.2f} cores when timing "
            f"began; a timed run during which they kept more than {OTHER_CORES_LIMIT} cores busy "
            "was redone ('runs (redone)'; 'other load' is the worst kept run).",
            f"- Raw numbers: `{raw_path.name}` in `benchmarks/out/` (not committed).",
        ]
    )


def _encoder(raw: Mapping[str, Any], encoder: Mapping[str, Samples]) -> str:
    reference = encoder["reference"]
    rows = [
        [
            name,
            f"{s.median:.2f}",
            f"{s.best:.2f}",
            f"{max(s.wall_s):.2f}",
            f"{len(s.wall_s)} ({s.discarded})",
            f"{max(s.other_cores):.2f}",
            f"{paired_ratio(s.wall_s, reference.wall_s):.3f}",
        ]
        for name, s in encoder.items()
    ]
    headers = ["encoder", "median s", "min s", "max s", "runs (redone)", "other load, cores"]
    table = markdown_table([*headers, "vs reference (paired)"], rows)
    parity = ", ".join(f"{k} {v:.1e}" for k, v in raw["encoder_parity_max_abs"].items())
    return (
        "### 1. Encoder only (one 1024x1024 image, batch 1, `torch.inference_mode`)\n\n"
        "reference: `forward_image` + `_prepare_backbone_features` + `no_mem_embed` (what "
        "`SAM2ImagePredictor.set_image` runs); imgembed: `imgembed.models.sam2.encode_images`. "
        "Same input tensor (the test photo, preprocessed), one warm-up run each, timed runs "
        "interleaved; 'paired' is the median over rounds of imgembed's time / the reference's time "
        "in the same round.\n\n"
        f"{table}\n\nSame weights, same output: max |imgembed - reference| = {parity}."
    )


def _end_to_end(raw: Mapping[str, Any], end_to_end: Mapping[str, Samples]) -> str:
    reference_walls = [d["wall"] for d in next(iter(end_to_end.values())).details]
    rows = []
    for name, s in end_to_end.items():
        walls = [d["wall"] for d in s.details]
        outside = [d["wall"] - sum(d[stage] for stage in STAGES) for d in s.details]
        rows.append(
            [
                name,
                f"{statistics.median(walls) / 1000:.2f}",
                f"{min(walls) / 1000:.2f}",
                *(f"{s.detail_median(stage):.0f}" for stage in STAGES),
                f"{statistics.median(outside):.0f}",
                f"{s.detail_median('response_bytes') / 2**20:.2f}",
                f"{statistics.median(_overheads(s)) * 100:.1f} %",
                f"{len(walls)} ({s.discarded})",
                f"{max(s.other_cores):.2f}",
                f"{paired_ratio(walls, reference_walls):.3f}",
            ]
        )
    headers = ["path", "wall median s", "wall min s", *(f"{st} ms" for st in STAGES)]
    headers += ["outside stages ms", "response MiB", "overhead", "runs (redone)"]
    headers += ["other load, cores", "wall vs reference (paired)"]
    photo = raw["photo"]
    return (
        f"### 2. End-to-end request ({photo['size'][0]}x{photo['size'][1]} JPEG, "
        f"{photo['jpeg_bytes'] / 1024:.0f} KiB, base64 in JSON; {photo['dtype']} features, all three "
        "levels)\n\n"
        "reference: the seed's work in one process (base64 and PIL decode, RGB, resize "
        "+ normalise, Meta's encoder, `np.savez_compressed` of the three maps, base64, JSON); no "
        "HTTP. imgembed: the real server over loopback HTTP, wall time measured by the client "
        "from sending the request to holding the last byte of the body. Stage columns are the "
        "server's own `timings_ms` (for the reference, the same stages timed in-process); "
        "'outside stages' is HTTP, JSON/body building and the client; overhead = "
        "(wall - encode) / wall, median over runs. The reference was warmed up by section 1, "
        "the server by one untimed request.\n\n"
        f"{markdown_table(headers, rows)}"
    )


def _wire(raw: Mapping[str, Any]) -> str:
    rows = [
        [
            row["dtype"],
            row["codec"],
            f"{row['bytes'] / 2**20:.2f}",
            f"{row['bytes'] / row['raw_bytes'] * 100:.1f} %",
            f"{row['encode_ms']:.0f}",
            f"{row['decode_ms']:.0f}",
            f"{row['transfer_ms']:.0f}",
            f"{row['encode_ms'] + row['decode_ms'] + row['transfer_ms']:.0f}",
        ]
        for row in raw["wire"]
    ]
    busiest = max(row["other_cores"] for row in raw["wire"])
    headers = ["dtype", "encoding", "MiB on the wire", "of raw", "encode ms", "decode ms"]
    headers += [f"transfer ms at {LINK_MBIT_S} Mbit/s", "encode + transfer + decode ms"]
    return (
        "### 3. Wire encodings (image_embed 256x64x64 + high_res_feats_0 32x256x256 + "
        "high_res_feats_1 64x128x128)\n\n"
        "Features: imgembed's encoder output for the test photo (random weights: real, non-zero "
        "activations, but features of trained weights may compress differently). Median of "
        "repeated calls after one untimed call; every payload is checked to decode to the exact "
        "arrays. bfloat16 travels as uint16 bit patterns; base64 adds a third to the bytes. "
        f"Other processes' load while measuring: at most {busiest:.2f} cores.\n\n"
        f"{markdown_table(headers, rows)}"
    )


def render_section(
    raw: Mapping[str, Any],
    encoder: Mapping[str, Samples],
    end_to_end: Mapping[str, Samples],
    raw_path: Path,
) -> str:
    """The section body (without its ``## `` heading)."""
    encoder_ratio = paired_ratio(encoder["imgembed"].wall_s, encoder["reference"].wall_s)
    verdicts = [
        f"- Encoder, imgembed vs reference: {encoder_ratio:.3f}x (median of paired runs): "
        f"{_verdict(encoder_ratio)}."
    ]
    names = list(end_to_end)
    reference_walls = [d["wall"] for d in end_to_end[names[0]].details]
    reference_around = _around_ms(end_to_end[names[0]])
    for name in names[1:]:
        walls = [d["wall"] for d in end_to_end[name].details]
        ratio = paired_ratio(walls, reference_walls)
        overhead = statistics.median(_overheads(end_to_end[name]))
        verdicts.append(
            f"- Request, {name} vs reference: {ratio:.3f}x (median of paired runs): "
            f"{_verdict(ratio)}. Time around the model {_around_ms(end_to_end[name]):.0f} ms "
            f"(reference {reference_around:.0f} ms); overhead {overhead * 100:.1f} % of the "
            f"request ({'meets' if overhead < OVERHEAD_TARGET else 'MISSES'} the < 10 % target)."
        )
    caveat = (
        "Encoder time varies by about ±10 % from run to run on this machine even when it is idle, "
        "and whole-request ratios inherit that noise; the time around the model does not vary much, "
        "so compare requests by it, and encoders by section 1 and the encoder variants section."
    )
    return "\n\n".join(
        [
            _header(raw, raw_path),
            "### Verdict\n\n" + "\n".join(verdicts) + "\n\n" + caveat,
            _encoder(raw, encoder),
            _end_to_end(raw, end_to_end),
            _wire(raw),
        ]
    )
