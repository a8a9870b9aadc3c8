"""Pictures a person can look at: masks drawn over the image, with the prompts that made them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
)
"""Distinct colours, reused in order for more masks."""
FILL_OPACITY = 0.5


def draw_overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: Sequence[np.ndarray] = (),
) -> Image.Image:
    """The image with each mask tinted in its own colour and outlined, prompts marked.

    Args:
        image: ``[H,W,3]`` uint8 RGB.
        masks: ``[H,W]`` bool masks, drawn in order (later ones on top).
        points: ``[N,2]`` XY pixels; foreground as green dots, background as red.
        point_labels: ``[N]`` labels of ``points`` (1 foreground).
        boxes: ``[4]`` XYXY pixel boxes, drawn as yellow rectangles.

    Returns:
        An RGB picture of the image's size.
    """
    canvas = image.astype(np.float32)
    edges = np.zeros(image.shape[:2], bool)
    for index, mask in enumerate(masks):
        colour = np.array(PALETTE[index % len(PALETTE)], np.float32)
        canvas[mask] = canvas[mask] * (1 - FILL_OPACITY) + colour * FILL_OPACITY
        edge = _edge(mask)
        canvas[edge] = colour
        edges |= edge
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(3, min(image.shape[:2]) // 100)
    for box in boxes:
        draw.rectangle([float(value) for value in box], outline=(255, 225, 25), width=2)
    if points is not None:
        labels = np.ones(len(points)) if point_labels is None else point_labels
        for (x, y), label in zip(points, labels, strict=True):
            colour = (0, 200, 0) if label == 1 else (220, 0, 0)
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius], fill=colour, outline="white"
            )
    return picture


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the outline)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior
