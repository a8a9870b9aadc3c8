"""SAM 2 subcommands: ``embed``, ``segment`` and ``segment-everything`` (local engine, no server)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgembed.cli.common import (
    add_model_flags,
    call_operation,
    config_from_args,
    read_image_file,
)
from imgembed.cli.overlay import draw_overlay
from imgembed.errors import InvalidInputError


def _embed(args: argparse.Namespace) -> int:
    from imgembed.api.sam2 import operations
    from imgembed.api.sam2.embed import NPZ_KEYS, sam2_embed_meta
    from imgembed.types import ImageBytes

    image_path = Path(args.image)
    data = read_image_file(args.image)
    output = Path(args.output) if args.output else image_path.with_suffix(".npz")
    payload = {"dtype": args.dtype, "include_high_res": not args.no_high_res}
    if args.resize_mode:
        payload["resize_mode"] = args.resize_mode
    _, result = call_operation(
        config_from_args(args), operations.EMBED, payload, [ImageBytes(data, field="image")]
    )
    meta = {
        **sam2_embed_meta(result),
        "dtype": result.embedding.dtype,
        "device": result.model.placement.device_name,
        "compute_dtype": result.model.placement.compute_dtype,
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
    from imgembed.api.sam2 import operations
    from imgembed.preprocess.image import decode_image
    from imgembed.types import ImageBytes

    data = read_image_file(args.image)
    parsed = [_numbers(text, (2, 3), "--point") for text in args.point or []]
    points = [values[:2] for values in parsed]
    labels = [int(values[2]) if len(values) == 3 else 1 for values in parsed]
    boxes = [_numbers(text, (4,), "--box") for text in args.box or []]
    payload = {
        "points": points or None,
        "point_labels": labels or None,
        "boxes": boxes or None,
        "multimask_output": args.multimask,
        "resize_mode": args.resize_mode,
    }
    config = config_from_args(args)
    image = decode_image(data, config.limits, field="image")
    _, result = call_operation(
        config, operations.SEGMENT, payload, [ImageBytes(data, field="image")]
    )
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
        "compute_dtype": result.model.placement.compute_dtype,
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


def _segment_everything(args: argparse.Namespace) -> int:
    from imgembed.api.sam2 import operations
    from imgembed.api.sam2.everything import sam2_everything_json
    from imgembed.masks.rle import rle_to_mask
    from imgembed.preprocess.image import decode_image
    from imgembed.types import ImageBytes

    data = read_image_file(args.image)
    settings = {
        name: getattr(args, name)
        for name in (
            "points_per_side",
            "points_per_batch",
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_n_layers",
            "min_mask_region_area",
        )
        if getattr(args, name) is not None
    }
    payload = {**settings, "use_m2m": args.use_m2m, "output_mode": "coco_rle"}
    operations.SEGMENT_EVERYTHING.parse(payload).params()  # refuses bad settings before loading
    config = config_from_args(args)
    image = decode_image(data, config.limits, field="image")
    _, result = call_operation(
        config, operations.SEGMENT_EVERYTHING, payload, [ImageBytes(data, field="image")]
    )
    output = Path(args.output)
    body = sam2_everything_json(result, "coco_rle")
    output.write_text(json.dumps(body, indent=1))
    records = result.everything.records
    binary = [rle_to_mask(record.segmentation) for record in records]  # type: ignore[arg-type]
    overlay_path = (
        Path(args.overlay) if args.overlay else output.with_name(f"{output.stem}_overlay.png")
    )
    draw_overlay(image.pixels, binary).save(overlay_path)
    print(
        json.dumps(
            {
                "masks": len(records),
                "output": str(output),
                "overlay": str(overlay_path),
                "untrained": result.model.loaded.untrained,
                "compute_dtype": result.model.placement.compute_dtype,
                "timings_ms": body["timings_ms"],
            },
            indent=2,
        )
    )
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

    everything = commands.add_parser(
        "segment-everything",
        help="every object in an image (automatic mask generator) into a JSON file and an overlay",
    )
    everything.add_argument("image", help="image file")
    everything.add_argument(
        "-o", "--output", default="masks.json", help="records as JSON, COCO RLE segmentations"
    )
    everything.add_argument("--overlay", help="overlay picture (default: OUTPUT_overlay.png)")
    everything.add_argument("--points-per-side", type=int, help="default 32")
    everything.add_argument("--points-per-batch", type=int, help="default: sized to the device")
    everything.add_argument("--pred-iou-thresh", type=float, help="default 0.8")
    everything.add_argument("--stability-score-thresh", type=float, help="default 0.95")
    everything.add_argument("--box-nms-thresh", type=float, help="default 0.7")
    everything.add_argument("--crop-n-layers", type=int, help="default 0")
    everything.add_argument("--min-mask-region-area", type=int, help="default 0")
    everything.add_argument("--use-m2m", action="store_true", help="refine each mask once")
    add_model_flags(everything)
    everything.set_defaults(handler=_segment_everything)
