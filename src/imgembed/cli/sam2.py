"""SAM 2 subcommands: ``embed``, ``segment`` and ``segment-everything`` (local engine, no server)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgembed.cli.common import add_model_flags, config_from_args, read_image_file
from imgembed.cli.overlay import draw_overlay
from imgembed.errors import InvalidInputError


def _embed(args: argparse.Namespace) -> int:
    from imgembed.engine import Engine
    from imgembed.pipelines.sam2_embed import Sam2EmbedOptions
    from imgembed.types import ImageBytes
    from imgembed.wire import NPZ_KEYS, sam2_embed_meta

    image_path = Path(args.image)
    data = read_image_file(args.image)
    output = Path(args.output) if args.output else image_path.with_suffix(".npz")
    config = config_from_args(args)
    options = Sam2EmbedOptions(
        dtype=args.dtype,
        include_high_res=not args.no_high_res,
        resize_mode=args.resize_mode or config.default_resize_mode,
    )

    async def run() -> Any:
        async with Engine(config) as engine:
            return await engine.sam2_embed(ImageBytes(data, field="image"), options=options)

    result = asyncio.run(run())
    meta = {
        **sam2_embed_meta(result),
        "dtype": result.embedding.dtype,
        "device": result.model.placement.device_name,
        "untrained": result.model.loaded.untrained,
    }
    arrays = {NPZ_KEYS[name]: array for name, array in result.embedding.arrays.items()}
    with output.open("wb") as file:
        np.savez(file, **arrays, meta_json=np.array(json.dumps(meta)))
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in arrays.items())
    print(f"wrote {output}: {shapes} {result.embedding.dtype}", file=sys.stderr)
    return 0


def _numbers(text: str, count: tuple[int, ...], flag: str) -> list[float]:
    """Comma-separated numbers from a flag value, ``count`` of them."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as error:
        raise InvalidInputError(
            f"{flag} {text!r}: expected numbers separated by commas", field=flag
        ) from error
    if len(values) not in count:
        shapes = {2: "X,Y", 3: "X,Y,LABEL", 4: "X0,Y0,X1,Y1"}
        expected = " or ".join(shapes[n] for n in count)
        raise InvalidInputError(f"{flag} {text!r}: expected {expected}", field=flag)
    return values


def _segment(args: argparse.Namespace) -> int:
    from imgembed.engine import Engine
    from imgembed.preprocess.image import decode_image
    from imgembed.segment_schemas import Sam2SegmentRequest, segment_objects
    from imgembed.types import ImageBytes

    data = read_image_file(args.image)
    parsed = [_numbers(text, (2, 3), "--point") for text in args.point or []]
    points = [values[:2] for values in parsed]
    labels = [int(values[2]) if len(values) == 3 else 1 for values in parsed]
    boxes = [_numbers(text, (4,), "--box") for text in args.box or []]
    request = Sam2SegmentRequest(
        points=points or None,
        point_labels=labels or None,
        boxes=boxes or None,
        multimask_output=args.multimask,
    )
    config = config_from_args(args)
    objects = segment_objects(request, config.limits)
    image = decode_image(data, config.limits, field="image")

    async def run() -> Any:
        async with Engine(config) as engine:
            return await engine.sam2_segment(
                ImageBytes(data, field="image"),
                objects,
                resize_mode=args.resize_mode,
                options=request.options(),
            )

    result = asyncio.run(run())
    output = Path(args.output)
    best_masks = [item.masks[int(np.argmax(item.scores))] for item in result.objects]
    written = []
    for index, mask in enumerate(best_masks):
        path = (
            output
            if len(best_masks) == 1
            else output.with_name(f"{output.stem}_{index}{output.suffix}")
        )
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        written.append(str(path))
    overlay_path = (
        Path(args.overlay) if args.overlay else output.with_name(f"{output.stem}_overlay.png")
    )
    draw_overlay(
        image.pixels,
        best_masks,
        points=np.array(points).reshape(-1, 2),
        point_labels=np.array(labels),
        boxes=[np.array(box) for box in boxes],
    ).save(overlay_path)
    summary = {
        "masks": written,
        "overlay": str(overlay_path),
        "untrained": result.model.loaded.untrained,
        "objects": [
            {
                "scores": [round(float(score), 4) for score in item.scores],
                "best_mask": int(np.argmax(item.scores)),
                "box": [float(value) for value in item.boxes[int(np.argmax(item.scores))]],
                "area": int(item.areas[int(np.argmax(item.scores))]),
            }
            for item in result.objects
        ],
    }
    print(json.dumps(summary, indent=2))
    return 0


def add_commands(commands: Any) -> None:
    """Registers ``embed``, ``segment`` and ``segment-everything``."""
    embed = commands.add_parser("embed", help="compute SAM 2 features of one image into an .npz")
    embed.add_argument("image", help="image file")
    embed.add_argument("-o", "--output", help="output .npz (default: IMAGE with .npz suffix)")
    add_model_flags(embed)
    embed.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    embed.add_argument("--resize-mode", choices=("stretch", "letterbox"))
    embed.add_argument(
        "--no-high-res", action="store_true", help="only image_embed (SAM 1 style decoders)"
    )
    embed.set_defaults(handler=_embed)

    segment = commands.add_parser(
        "segment",
        help="segment objects from points and boxes into mask PNGs plus an overlay picture",
    )
    segment.add_argument("image", help="image file")
    segment.add_argument(
        "--point",
        action="append",
        metavar="X,Y[,LABEL]",
        help="a prompt point in image pixels; LABEL 1 foreground (default) or 0 background; repeat",
    )
    segment.add_argument(
        "--box",
        action="append",
        metavar="X0,Y0,X1,Y1",
        help="a box in image pixels; each box is its own object (with every --point); repeat",
    )
    segment.add_argument(
        "-o", "--output", default="mask.png", help="mask PNG (one per object: NAME_i.png)"
    )
    segment.add_argument("--overlay", help="overlay picture (default: OUTPUT_overlay.png)")
    segment.add_argument(
        "--multimask", action="store_true", help="decode three candidates and keep the best"
    )
    segment.add_argument("--resize-mode", choices=("stretch", "letterbox"))
    add_model_flags(segment)
    segment.set_defaults(handler=_segment)
