"""Preprocessing per image: the CPU path against the device path, on the machine it runs on.

One command: ``.venv/bin/python benchmarks/preprocess.py [--device cpu|cuda] [--repeats N]``.

For each image size and model input (SAM 2's 1024 stretch, SigLIP 2 FixRes 224 and NaFlex 256
patches, bilinear), times ``prepare`` from decoded ``[H,W,3]`` uint8 pixels (JPEG decoding, on the
CPU either way, is not included) to the model input: the CPU path (torch/Pillow on the worker
thread) and the device path (upload through ImageStaging, resize and normalise on ``--device``; on
CUDA from a pinned buffer, timed to completion since ImageStaging waits for its stream). The median
of ``--repeats`` runs after one warm-up run. On a CPU "device" the device path shows what the
arithmetic costs on a CPU (integer Pillow emulation for SigLIP), which is why ``auto`` keeps the
CPU path there.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from imgembed.models.siglip_variants import ImageProcessing
from imgembed.pipelines import sam2_embed, siglip_embed
from imgembed.preprocess.image import DecodedImage
from imgembed.runtime.staging import ImageStaging

SIZES = ((480, 640), (1080, 1920), (3024, 4032))
FIXRES = ImageProcessing("fixres", 224, 16, None, "bilinear")
NAFLEX = ImageProcessing("naflex", None, 16, 256, "bilinear")


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where the device path runs (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    staging = ImageStaging(device)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device path on {device}"
    )
    print("| image | model input | CPU path ms | device path ms |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = DecodedImage(pixels, "JPEG", "RGB", False)
        sam2 = sam2_embed.Sam2EmbedOptions()
        siglip = siglip_embed.SiglipEmbedOptions()
        cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "SAM 2 1024 stretch",
                partial(sam2_embed.prepare, image, sam2),
                partial(sam2_embed.prepare, image, sam2, staging),
            ),
            (
                "SigLIP 2 FixRes 224",
                partial(siglip_embed.prepare_image, image, FIXRES, siglip),
                partial(siglip_embed.prepare_image, image, FIXRES, siglip, staging),
            ),
            (
                "SigLIP 2 NaFlex 256",
                partial(siglip_embed.prepare_image, image, NAFLEX, siglip),
                partial(siglip_embed.prepare_image, image, NAFLEX, siglip, staging),
            ),
        ]
        for name, on_cpu, on_device in cases:
            cpu_ms = median_ms(on_cpu, args.repeats)
            device_ms = median_ms(on_device, args.repeats)
            print(f"| {width}x{height} | {name} | {cpu_ms:.1f} | {device_ms:.1f} |")


if __name__ == "__main__":
    main()
