"""The segment request, shared by HTTP, RunPod and the CLI, and its translation into prompts.

Prompts are in pixels of the original image (after EXIF orientation), continuous coordinates:
``(0, 0)`` is the top-left corner of the top-left pixel and ``(W, H)`` the bottom-right corner.

A request names its objects one of two ways:

- shorthand, Meta's ``predict`` arguments: ``points`` + ``point_labels``, ``box`` or ``boxes``,
  ``mask_input``. Without boxes that is one object; with K boxes it is K objects, each box with the
  same points (``predict(point_coords, point_labels, box=boxes)``);
- ``objects``: a list, each with its own ``points``, ``point_labels``, ``box`` and ``mask_input``.

Every problem raises :class:`~imgembed.errors.InvalidInputError` naming the field
(``objects[2].box``), what was expected and what came.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from imgembed.errors import InvalidInputError
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, POINT_LABELS
from imgembed.pipelines.sam2_segment import SegmentObject, SegmentOptions
from imgembed.settings import InputLimits, ResizeMode

MaskFormat = Literal["rle", "png", "polygons", "npz"]
"""How masks travel: COCO RLE, base64 PNG, COCO polygons, or one base64 ``.npz`` of all masks."""

MASK_INPUT_BYTES = LOW_RES_MASK_SIZE * LOW_RES_MASK_SIZE * 4
"""A ``mask_input`` as base64: 256x256 little-endian float32."""

# What the prompt fields accept, as the JSON Schema documents it. The fields are typed loosely
# (``list[Any]``) so that the checks below name the entry at fault (``objects[2].points[1]``) and
# say what was expected; the schemas say the same.
_NUMBER: dict[str, Any] = {"type": "number"}
_POINT: dict[str, Any] = {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}
POINTS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": _POINT,
    "description": "[[x, y], ...] in original-image pixels: at most IMGEMBED_MAX_PROMPT_POINTS "
    "per object.",
}
POINT_LABELS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer", "enum": list(POINT_LABELS)},
    "description": "One label per point: 1 foreground, 0 background (-1, 2, 3 as SAM 2 takes "
    "them); all 1 when omitted.",
}
BOX_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": _NUMBER,
    "minItems": 4,
    "maxItems": 4,
    "description": "[x0, y0, x1, y1] in original-image pixels, x0 <= x1 and y0 <= y1.",
}
BOXES_SCHEMA: dict[str, Any] = {"type": "array", "items": BOX_SCHEMA, "minItems": 1}
_MASK_INPUT_BASE64_CHARS = 4 * -(-MASK_INPUT_BYTES // 3)
MASK_INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": "^[A-Za-z0-9+/]*={0,2}$",
            "minLength": _MASK_INPUT_BASE64_CHARS,
            "maxLength": _MASK_INPUT_BASE64_CHARS,
            "description": "A mask's low_res_logits string from a response: base64 of 256x256 "
            "little-endian float32.",
        },
        {
            "type": "array",
            "minItems": LOW_RES_MASK_SIZE,
            "maxItems": LOW_RES_MASK_SIZE,
            "items": {
                "type": "array",
                "minItems": LOW_RES_MASK_SIZE,
                "maxItems": LOW_RES_MASK_SIZE,
                "items": _NUMBER,
            },
            "description": "256 rows of 256 logits.",
        },
    ]
}
Points = Annotated[list[list[Any]], WithJsonSchema(POINTS_SCHEMA)]
PointLabels = Annotated[list[Any], WithJsonSchema(POINT_LABELS_SCHEMA)]
Box = Annotated[list[Any], WithJsonSchema(BOX_SCHEMA)]
Boxes = Annotated[list[list[Any]], WithJsonSchema(BOXES_SCHEMA)]
MaskInput = Annotated[str | list[list[float]], WithJsonSchema(MASK_INPUT_SCHEMA)]


class PromptObject(BaseModel):
    """One object's prompts."""

    model_config = ConfigDict(extra="forbid")

    points: Points | None = Field(
        default=None, description="[[x, y], ...] in original-image pixels."
    )
    point_labels: PointLabels | None = Field(
        default=None,
        description="One label per point: 1 foreground, 0 background (-1, 2, 3 as SAM 2 takes "
        "them); all 1 when omitted.",
    )
    box: Box | None = Field(default=None, description="[x0, y0, x1, y1] in original-image pixels.")
    mask_input: MaskInput | None = Field(
        default=None,
        description="256x256 low-resolution logits of an earlier round: a mask's low_res_logits "
        "string from a response (base64 little-endian float32), or nested lists.",
    )


class Sam2SegmentRequest(BaseModel):
    """Body of ``POST /v1/sam2/segment`` and input of the RunPod ``segment`` action: exactly one
    image source (``image_b64``, ``input_image_url``, ``image_id`` or a multipart file), and prompts
    either in the shorthand fields or in ``objects``, not both."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["segment"] | None = Field(default=None, description="RunPod action name.")
    image_b64: str | None = Field(default=None, description="Image file bytes as base64.")
    input_image_url: str | None = Field(default=None, description="http(s) URL of the image.")
    image_id: str | None = Field(
        default=None,
        description="An image_id from an earlier embed or segment response: skips the encoder.",
    )
    model: str | None = Field(default=None, description="Model name; the default when omitted.")
    resize_mode: ResizeMode | None = Field(
        default=None, description="stretch (default) or letterbox; ignored with image_id."
    )
    points: Points | None = Field(default=None, description="Shorthand: [[x, y], ...].")
    point_labels: PointLabels | None = Field(default=None, description="Shorthand: labels.")
    box: Box | None = Field(default=None, description="Shorthand: one [x0, y0, x1, y1].")
    boxes: Boxes | None = Field(
        default=None,
        description="Shorthand: several boxes, one object each (not with box); at most "
        "IMGEMBED_MAX_PROMPT_OBJECTS.",
    )
    mask_input: MaskInput | None = Field(
        default=None, description="Shorthand: 256x256 logits of an earlier round."
    )
    objects: list[PromptObject] | None = Field(
        default=None,
        description="Objects, each with its own prompts (instead of the shorthand): at least "
        "one, at most IMGEMBED_MAX_PROMPT_OBJECTS.",
        json_schema_extra={"minItems": 1},
    )
    multimask_output: bool = Field(
        default=True,
        description="Three candidate masks per object; false for one (with SAM 2's stability "
        "fallback).",
    )
    mask_format: MaskFormat = Field(default="rle", description="rle, png, polygons or npz.")
    return_low_res_logits: bool = Field(
        default=True,
        description="Return each mask's 256x256 logits (base64 float32) for the next round.",
    )
    max_hole_area: float = Field(
        default=0.0, ge=0, description="Fill background holes up to this many low-res cells."
    )
    max_sprinkle_area: float = Field(
        default=0.0, ge=0, description="Remove foreground specks up to this many low-res cells."
    )

    def options(self) -> SegmentOptions:
        """The mask options this request asks for."""
        return SegmentOptions(
            multimask_output=self.multimask_output,
            max_hole_area=self.max_hole_area,
            max_sprinkle_area=self.max_sprinkle_area,
        )


_SHORTHAND = ("points", "point_labels", "box", "boxes", "mask_input")


def _number(value: Any, field: str) -> float:
    """A finite number, or an error naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{field} must be a number, got {value!r}", field=field)
    if not math.isfinite(value):
        raise InvalidInputError(
            f"{field} must be a finite number, got {value!r}; send pixel coordinates",
            field=field,
        )
    return float(value)


def _points(raw: list[list[Any]] | None, field: str) -> np.ndarray:
    if raw is None:
        return np.zeros((0, 2), np.float64)
    coordinates = np.zeros((len(raw), 2), np.float64)
    for index, point in enumerate(raw):
        if not isinstance(point, list) or len(point) != 2:
            raise InvalidInputError(
                f"{field}[{index}] must be [x, y], got {point!r}", field=f"{field}[{index}]"
            )
        coordinates[index] = [_number(v, f"{field}[{index}]") for v in point]
    return coordinates


def _labels(raw: list[Any] | None, count: int, field: str, points_field: str) -> np.ndarray:
    if raw is None:
        return np.ones(count, np.int32)
    if len(raw) != count:
        raise InvalidInputError(
            f"{field} has {len(raw)} labels for {count} points in {points_field}; give one label "
            "per point (1 foreground, 0 background)",
            field=field,
        )
    for index, label in enumerate(raw):
        if isinstance(label, bool) or not isinstance(label, int) or label not in POINT_LABELS:
            raise InvalidInputError(
                f"{field}[{index}] must be one of {', '.join(map(str, POINT_LABELS))} (1 "
                f"foreground, 0 background), got {label!r}",
                field=f"{field}[{index}]",
            )
    return np.asarray(raw, np.int32)


def _box(raw: list[Any] | None, field: str) -> np.ndarray | None:
    if raw is None:
        return None
    if len(raw) != 4:
        raise InvalidInputError(
            f"{field} must be [x0, y0, x1, y1], got {len(raw)} values", field=field
        )
    x0, y0, x1, y1 = (_number(value, field) for value in raw)
    if x1 < x0 or y1 < y0:
        raise InvalidInputError(
            f"{field} must have x0 <= x1 and y0 <= y1 (top-left corner first), got {raw!r}",
            field=field,
        )
    return np.array([x0, y0, x1, y1], np.float64)


def _mask_input(raw: str | list[list[float]] | None, field: str) -> np.ndarray | None:
    if raw is None:
        return None
    size = LOW_RES_MASK_SIZE
    if isinstance(raw, str):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidInputError(
                f"{field} is not valid base64 ({error}); send a mask's low_res_logits string "
                "as returned",
                field=field,
            ) from error
        if len(data) != MASK_INPUT_BYTES:
            raise InvalidInputError(
                f"{field} must be {size}x{size} float32 ({MASK_INPUT_BYTES} bytes), got "
                f"{len(data)} bytes",
                field=field,
            )
        mask = np.frombuffer(data, dtype="<f4").reshape(size, size)  # [65536] -> [256,256]
    else:
        rows = len(raw)
        columns = {len(row) for row in raw}
        if rows != size or columns != {size}:
            raise InvalidInputError(
                f"{field} must be {size}x{size}, got {rows} rows of lengths {sorted(columns)[:3]}",
                field=field,
            )
        mask = np.asarray(raw, np.float32)
    if not np.isfinite(mask).all():
        raise InvalidInputError(f"{field} has NaN or infinite values", field=field)
    return mask.astype(np.float32)


def _object(
    points: list[list[Any]] | None,
    labels: list[Any] | None,
    box: list[Any] | None,
    mask_input: str | list[list[float]] | None,
    prefix: str,
    box_field: str | None,
    *,
    limits: InputLimits,
) -> SegmentObject:
    """One object from its raw prompts; ``box_field`` names the box when it is not ``prefix + box``
    (an entry of the shorthand ``boxes``, which shares the shorthand points)."""
    coordinates = _points(points, f"{prefix}points")
    if len(coordinates) > limits.max_prompt_points:
        raise InvalidInputError(
            f"{prefix}points has {len(coordinates)} points; at most {limits.max_prompt_points} "
            "per object (IMGEMBED_MAX_PROMPT_POINTS)",
            field=f"{prefix}points",
        )
    parsed_box = _box(box, box_field or f"{prefix}box")
    if len(coordinates) == 0 and parsed_box is None:
        raise InvalidInputError(
            f"{prefix.rstrip('.') or 'the request'} has no prompt; give points (with point_labels) "
            "or a box (a mask_input alone is not a prompt: it refines points or a box)",
            field=f"{prefix}points",
        )
    return SegmentObject(
        points=coordinates,
        labels=_labels(labels, len(coordinates), f"{prefix}point_labels", f"{prefix}points"),
        box=parsed_box,
        mask_input=_mask_input(mask_input, f"{prefix}mask_input"),
        points_field=f"{prefix}points",
        box_field=box_field or f"{prefix}box",
    )


def segment_objects(
    request: Sam2SegmentRequest, limits: InputLimits, *, prefix: str = ""
) -> list[SegmentObject]:
    """The objects a request asks to segment, validated (image bounds are checked later).

    Raises:
        InvalidInputError: A prompt is malformed, too large, or missing.
    """
    shorthand = [name for name in _SHORTHAND if getattr(request, name) is not None]
    if request.objects is not None:
        if shorthand:
            raise InvalidInputError(
                f"{prefix}objects and {prefix}{shorthand[0]} were both given; put every prompt "
                "inside objects, or use the shorthand fields alone",
                field=f"{prefix}{shorthand[0]}",
            )
        if not request.objects:
            raise InvalidInputError(
                f"{prefix}objects is empty; give at least one object", field=f"{prefix}objects"
            )
        items: Sequence[tuple[Any, ...]] = [
            (
                item.points,
                item.point_labels,
                item.box,
                item.mask_input,
                f"{prefix}objects[{i}].",
                None,
            )
            for i, item in enumerate(request.objects)
        ]
    else:
        if request.box is not None and request.boxes is not None:
            raise InvalidInputError(
                f"{prefix}box and {prefix}boxes were both given; send one of them",
                field=f"{prefix}box",
            )
        if request.boxes is not None and not request.boxes:
            raise InvalidInputError(
                f"{prefix}boxes is empty; give at least one box", field=f"{prefix}boxes"
            )
        if request.boxes is not None and len(request.boxes) > 1 and request.mask_input:
            raise InvalidInputError(
                f"{prefix}mask_input with several boxes is ambiguous; use objects, one mask_input "
                "each",
                field=f"{prefix}mask_input",
            )
        boxes: list[tuple[list[Any] | None, str | None]] = [(request.box, None)]
        if request.boxes is not None:
            boxes = [(box, f"{prefix}boxes[{i}]") for i, box in enumerate(request.boxes)]
        items = [
            (request.points, request.point_labels, box, request.mask_input, prefix, box_field)
            for box, box_field in boxes
        ]
    if len(items) > limits.max_prompt_objects:
        raise InvalidInputError(
            f"{len(items)} objects requested; at most {limits.max_prompt_objects} per request "
            "(IMGEMBED_MAX_PROMPT_OBJECTS)",
            field=f"{prefix}objects" if request.objects is not None else f"{prefix}boxes",
        )
    return [_object(*item, limits=limits) for item in items]
