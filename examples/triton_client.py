"""Encode once, decode many: SAM 2 masks from a Triton server with ``tritonclient``.

The server is either Triton serving the repository that ``imgembed export triton`` writes, or
imgembed itself (``imgembed serve``): both speak the Open Inference Protocol (v2) with the same
model names, tensor names and shapes, so this file runs against either by changing ``--url``.

    python examples/triton_client.py --url localhost:8000 --image photo.jpg \\
        --point 420,310 --point 600,200:0 --box 100,80,520,460 --out masks/

The image is encoded once (``sam2_encoder``); every prompt then costs one small decoder request
(``sam2_decoder``) that sends the features back with the prompt. All clicks also go in one
request (one prompt per click, features sent once), and the first click is refined with the
previous round's mask as ``mask_input``. Needs ``numpy``, ``Pillow`` and ``tritonclient[http]``.

The decoder request carries one image's features (batch 1) and B prompts: the default
``sam2_decoder`` config of the exported repository (``max_batch_size: 0``). A repository exported
with Triton batching on the decoder needs the features repeated per prompt instead.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

INPUT_SIZE = 1024
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
FEATURES = ("high_res_feats_0", "high_res_feats_1", "image_embed")
LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT = 2, 3


def preprocess(image: Image.Image) -> np.ndarray:
    """SAM 2's input: RGB in [0,1], stretched to 1024x1024 (bilinear with antialias), normalised.

    Pillow's bilinear resize of a float image is the antialiased triangle filter that
    ``torch.nn.functional.interpolate(..., antialias=True)`` reproduces, so this matches SAM 2's
    own preprocessing to float rounding.

    Returns:
        ``[1,3,1024,1024]`` float32.
    """
    rgb = np.asarray(image.convert("RGB"), np.float32) / 255.0  # [H,W,3]
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(rgb[..., channel])).resize(
                (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR
            )
        )
        for channel in range(3)
    ]  # 3 x [1024,1024]
    pixels = (np.stack(channels, axis=-1) - MEAN) / STD  # [1024,1024,3]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], np.float32)  # -> [1,3,1024,1024]


def to_input_frame(points_xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel ``(x, y)`` of the original image to the 1024 frame: ``x' = x * 1024 / W``."""
    scale = np.array([INPUT_SIZE / width, INPUT_SIZE / height], np.float32)
    return (np.asarray(points_xy, np.float32) * scale).astype(np.float32)


def _input(name: str, value: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(value.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(value, np.float32), binary_data=True)
    return tensor


def encode(
    client: httpclient.InferenceServerClient, pixels: np.ndarray, model: str = "sam2_encoder"
) -> dict[str, np.ndarray]:
    """Runs the encoder on ``[B,3,1024,1024]`` pixels; returns the three feature maps by name."""
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in FEATURES]
    result = client.infer(model, [_input("image", pixels)], outputs=outputs)
    return {name: result.as_numpy(name) for name in FEATURES}


def decode(
    client: httpclient.InferenceServerClient,
    features: dict[str, np.ndarray],
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    mask_input: np.ndarray | None = None,
    model: str = "sam2_decoder",
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes B prompts on one image's features.

    Args:
        client: A connected client.
        features: The encoder's three maps, batch 1.
        point_coords: ``[B,N,2]`` in the 1024 frame; pad shorter prompts with label -1.
        point_labels: ``[B,N]``: 1 foreground, 0 background, 2/3 box corners, -1 padding.
        mask_input: ``[B,1,256,256]`` logits of an earlier round to refine, or ``None``.
        model: The decoder's model name.

    Returns:
        ``masks [B,3,256,256]`` low-resolution logits and ``iou_predictions [B,3]``.
    """
    inputs = [_input(name, features[name]) for name in ("image_embed", *FEATURES[:2])]
    inputs += [_input("point_coords", point_coords), _input("point_labels", point_labels)]
    if mask_input is not None:  # optional inputs: left out, they mean "no mask"
        has_mask = np.ones(mask_input.shape[0], np.float32)
        inputs += [_input("mask_input", mask_input), _input("has_mask_input", has_mask)]
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=True)
        for name in ("masks", "iou_predictions")
    ]
    result = client.infer(model, inputs, outputs=outputs)
    return result.as_numpy("masks"), result.as_numpy("iou_predictions")


def upscale(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """One ``[256,256]`` logit map to a ``[H,W]`` boolean mask (bilinear, threshold 0)."""
    resized = Image.fromarray(np.ascontiguousarray(logits, np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized) > 0


@dataclass(frozen=True)
class PromptResult:
    """The best of the three masks of one prompt.

    Attributes:
        name: What the prompt was.
        low_res_logits: ``[256,256]`` logits of the best mask.
        iou: Its predicted IoU.
        mask: ``[H,W]`` boolean mask at the image's size.
    """

    name: str
    low_res_logits: np.ndarray
    iou: float
    mask: np.ndarray


def _best(name: str, masks: np.ndarray, iou: np.ndarray, height: int, width: int) -> PromptResult:
    best = int(np.argmax(iou))
    return PromptResult(name, masks[best], float(iou[best]), upscale(masks[best], height, width))


def run(
    url: str,
    image: Image.Image,
    points: Sequence[tuple[float, float, int]],
    boxes: Sequence[tuple[float, float, float, float]] = (),
    *,
    encoder: str = "sam2_encoder",
    decoder: str = "sam2_decoder",
) -> tuple[dict[str, np.ndarray], list[PromptResult]]:
    """Encodes ``image`` once and decodes every prompt against the server at ``url``.

    Args:
        url: ``host:port`` of the HTTP endpoint.
        image: The picture.
        points: Clicks ``(x, y, label)`` in image pixels (label 1 foreground, 0 background).
        boxes: Boxes ``(x0, y0, x1, y1)`` in image pixels.
        encoder: Encoder model name.
        decoder: Decoder model name.

    Returns:
        The features, and one result per prompt: each click, each box, all clicks in one
        request, then the first click refined with its own mask.
    """
    width, height = image.size
    client = httpclient.InferenceServerClient(url=url)
    try:
        started = time.perf_counter()
        features = encode(client, preprocess(image), encoder)
        print(f"encoded once in {time.perf_counter() - started:.2f} s")
        results = []
        prompts = [
            (f"click {x:g},{y:g} label {label}", [(x, y)], [label]) for x, y, label in points
        ] + [
            (
                f"box {x0:g},{y0:g},{x1:g},{y1:g}",
                [(x0, y0), (x1, y1)],
                [LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT],
            )
            for x0, y0, x1, y1 in boxes
        ]
        for name, xy, labels in prompts:
            started = time.perf_counter()
            coords = to_input_frame(np.array([xy]), height, width)  # [1,N,2]
            masks, iou = decode(
                client, features, coords, np.array([labels], np.float32), model=decoder
            )
            results.append(_best(name, masks[0], iou[0], height, width))
            print(f"{name}: IoU {results[-1].iou:.3f} in {time.perf_counter() - started:.3f} s")
        if points:
            # Every click as its own prompt, in one request: B prompts, features sent once.
            coords = to_input_frame(np.array([[(x, y)] for x, y, _ in points]), height, width)
            labels = np.array([[label] for _, _, label in points], np.float32)
            masks, iou = decode(client, features, coords, labels, model=decoder)
            results += [
                _best(f"batched click {index}", masks[index], iou[index], height, width)
                for index in range(len(points))
            ]
            # Refinement: the first click again, with its best mask as the mask prompt.
            x, y, label = points[0]
            previous = results[0].low_res_logits[None, None]  # [256,256] -> [1,1,256,256]
            masks, iou = decode(
                client,
                features,
                to_input_frame(np.array([[(x, y)]]), height, width),
                np.array([[label]], np.float32),
                mask_input=previous,
                model=decoder,
            )
            results.append(_best("refined first click", masks[0], iou[0], height, width))
        return features, results
    finally:
        client.close()


def _point(text: str) -> tuple[float, float, int]:
    """``x,y`` or ``x,y:label``."""
    position, _, label = text.partition(":")
    x, y = (float(value) for value in position.split(","))
    return x, y, int(label or 1)


def _box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(value) for value in text.split(","))
    return x0, y0, x1, y1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="localhost:8000", help="Triton or imgembed, host:port")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--point", type=_point, action="append", default=[], help="x,y[:label]")
    parser.add_argument("--box", type=_box, action="append", default=[], help="x0,y0,x1,y1")
    parser.add_argument("--encoder", default="sam2_encoder")
    parser.add_argument("--decoder", default="sam2_decoder")
    parser.add_argument("--out", type=Path, help="folder for one PNG mask per prompt")
    args = parser.parse_args(argv)
    if not args.point and not args.box:
        parser.error("give at least one --point or --box")
    with Image.open(args.image) as image:
        _, results = run(
            args.url, image, args.point, args.box, encoder=args.encoder, decoder=args.decoder
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for index, result in enumerate(results):
            path = args.out / f"mask_{index:02d}.png"
            Image.fromarray(result.mask.astype(np.uint8) * 255).save(path)
            print(f"{result.name}: {path}")


if __name__ == "__main__":
    main()
