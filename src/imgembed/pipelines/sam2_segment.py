"""SAM 2 prompted segmentation: prompts in original-image pixels -> masks at the original size.

The stages mirror Meta's ``SAM2ImagePredictor.predict`` so that, on the same weights, the masks and
scores are the reference's:

1. :func:`build_prompt_groups` (CPU): map each object's points and box into the 1024 frame
   (``x' = x * scale_w + pad_left``), put the box first as two corner points labelled 2 and 3, then
   the points. Objects with the same number of prompt points form one group, decoded in one batched
   forward pass. Objects are not padded to a common length, because padding tokens are not neutral
   in SAM 2's decoder (each one is attended to); grouping keeps every object's result identical to
   decoding it alone. The common cases (K boxes with the same points, or one point set) are one
   group.
2. The decoder (device): :func:`~imgembed.models.sam2_decoder.decode_masks` per group.
3. :func:`postprocess_object` (CPU): optional hole filling / sprinkle removal on the 256x256 logits,
   bilinear resize (``align_corners=False``) to the original height and width (for a letterboxed
   frame, to 1024 first, then the image's part is cropped and resized), threshold at 0, and each
   mask's box and area.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from imgembed.errors import InvalidInputError
from imgembed.masks.regions import fill_holes_and_remove_sprinkles
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, MASK_LOGIT_LIMIT
from imgembed.preprocess.sam2_frame import FrameMapping

MASK_THRESHOLD = 0.0
"""Logits above this are inside the mask."""
BOX_LABELS = (2, 3)
"""Labels of a box's top-left and bottom-right corner points."""


@dataclass(frozen=True)
class SegmentObject:
    """One object to segment: any mix of points, one box and an earlier mask.

    Attributes:
        points: ``[N,2]`` XY in original-image pixels (N may be 0 when a box is given).
        labels: ``[N]`` labels: 1 foreground, 0 background (also -1, 2, 3 as the decoder takes them).
        box: ``[4]`` XYXY in original-image pixels, or ``None``.
        mask_input: ``[256,256]`` float32 low-resolution logits from an earlier round, or ``None``.
        points_field: Request field of the points, for error messages (``objects[2].points``).
        box_field: Request field of the box (``objects[2].box``, ``boxes[1]``).
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None
    points_field: str = "points"
    box_field: str = "box"

    @property
    def num_prompt_points(self) -> int:
        """Points the decoder sees: the points plus two per box."""
        return len(self.points) + (2 if self.box is not None else 0)


@dataclass(frozen=True)
class SegmentOptions:
    """How masks are produced.

    Attributes:
        multimask_output: Three candidate masks per object; ``False`` for one, chosen with the
            decoder's stability fallback as Meta's predictor does.
        max_hole_area: Background regions of at most this many low-resolution cells (4x4 pixels of
            the 1024 frame) inside a mask are filled; 0 turns it off.
        max_sprinkle_area: Foreground regions of at most this many low-resolution cells are
            removed; 0 turns it off.
    """

    multimask_output: bool = True
    max_hole_area: float = 0.0
    max_sprinkle_area: float = 0.0


@dataclass(frozen=True)
class PromptGroup:
    """Objects that share a prompt length, as decoder inputs.

    Attributes:
        object_indices: Position of each batch item in the request's object list.
        point_coords: ``[B,N,2]`` float32 XY in the 1024 frame, box corners first.
        point_labels: ``[B,N]`` int32.
        mask_input: ``[B,1,256,256]`` float32 (zeros where absent), or ``[1,1,256,256]`` zeros
            shared by every object when none brought a mask.
        has_mask_input: ``[B]`` float32, 1 where the object brought a mask (``[1]`` zero when
            none did).
    """

    object_indices: tuple[int, ...]
    point_coords: torch.Tensor
    point_labels: torch.Tensor
    mask_input: torch.Tensor
    has_mask_input: torch.Tensor


@dataclass(frozen=True)
class ObjectMasks:
    """Masks of one object at the original image size.

    Attributes:
        masks: ``[K,H,W]`` bool, K = 3 (multimask) or 1, in the decoder's token order.
        scores: ``[K]`` float32 predicted IoU.
        low_res_logits: ``[K,256,256]`` float32 logits (clamped to ±32), to send back as
            ``mask_input`` for the next refinement round.
        boxes: ``[K,4]`` float32 XYXY in original pixels, continuous coordinates (a mask covering
            only pixel (0, 0) has box (0, 0, 1, 1)); all zeros for an empty mask.
        areas: ``[K]`` int64 pixel counts.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray


def check_in_image(objects: Sequence[SegmentObject], orig_hw: tuple[int, int]) -> None:
    """Refuses points or boxes outside the image (``0 <= x <= W``, ``0 <= y <= H``).

    Raises:
        InvalidInputError: Names the field, the coordinate and the image size.
    """
    height, width = orig_hw
    for item in objects:
        corners = [("point", item.points_field, item.points)]
        if item.box is not None:
            corners.append(("box corner", item.box_field, item.box.reshape(2, 2)))  # [4] -> [2,2]
        for kind, field, coordinates in corners:
            for x, y in coordinates:
                if not (0 <= x <= width and 0 <= y <= height):
                    raise InvalidInputError(
                        f"{field}: {kind} ({x:g}, {y:g}) is outside the {width}x{height} image; "
                        f"coordinates are original-image pixels with 0 <= x <= {width} and "
                        f"0 <= y <= {height}",
                        field=field,
                    )


def _frame_prompt(item: SegmentObject, mapping: FrameMapping) -> tuple[np.ndarray, np.ndarray]:
    """One object's points ``[N,2]`` in the 1024 frame and labels ``[N]``, box corners first."""
    coords = [mapping.to_frame(np.asarray(item.points, dtype=np.float64).reshape(-1, 2))]
    labels = [np.asarray(item.labels, dtype=np.int32).reshape(-1)]
    if item.box is not None:
        corners = np.asarray(item.box, dtype=np.float64).reshape(2, 2)  # [4] -> [2 corners, XY]
        coords.insert(0, mapping.to_frame(corners))
        labels.insert(0, np.array(BOX_LABELS, dtype=np.int32))
    return np.concatenate(coords), np.concatenate(labels)


def build_prompt_groups(
    objects: Sequence[SegmentObject], mapping: FrameMapping
) -> list[PromptGroup]:
    """Decoder inputs for the objects, one group per distinct prompt length, in first-seen order."""
    by_length: dict[int, list[int]] = {}
    for index, item in enumerate(objects):
        by_length.setdefault(item.num_prompt_points, []).append(index)
    groups = []
    for indices in by_length.values():
        framed = [_frame_prompt(objects[index], mapping) for index in indices]
        # One zero mask shared by the group when no object brought one (nothing per object to
        # upload); one row per object otherwise.
        rows = len(indices) if any(objects[i].mask_input is not None for i in indices) else 1
        masks = np.zeros((rows, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), np.float32)
        has_mask = np.zeros(rows, np.float32)
        for row, index in enumerate(indices):
            if objects[index].mask_input is not None:
                masks[row, 0] = objects[index].mask_input
                has_mask[row] = 1.0
        groups.append(
            PromptGroup(
                object_indices=tuple(indices),
                point_coords=torch.from_numpy(np.stack([c for c, _ in framed]).astype(np.float32)),
                point_labels=torch.from_numpy(np.stack([lab for _, lab in framed])),
                mask_input=torch.from_numpy(masks),
                has_mask_input=torch.from_numpy(has_mask),
            )
        )
    return groups


def upscale_logits(low_res: torch.Tensor, mapping: FrameMapping) -> torch.Tensor:
    """Resizes ``[K,256,256]`` low-resolution logits to ``[K,H,W]`` float32 at the original size.

    Stretch: one bilinear resize straight to H x W, as Meta's ``postprocess_masks``. Letterbox: to
    the 1024 frame, crop the image's part (top-left), then to H x W.
    """
    logits = low_res.float().unsqueeze(0)  # [K,256,256] -> [1,K,256,256]
    if mapping.resize_mode == "letterbox":
        size = mapping.input_size
        logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
        logits = logits[..., : mapping.resized_hw[0], : mapping.resized_hw[1]]
    logits = F.interpolate(logits, mapping.orig_hw, mode="bilinear", align_corners=False)
    return logits[0]  # [1,K,H,W] -> [K,H,W]


def mask_boxes_and_areas(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[K,4]`` float32 XYXY boxes (continuous pixel coordinates; zeros for an empty mask) and
    ``[K]`` int64 areas of ``[K,H,W]`` bool masks."""
    count, height, width = masks.shape
    rows = masks.any(axis=2)  # [K,H]
    columns = masks.any(axis=1)  # [K,W]
    boxes = np.stack(
        [
            columns.argmax(axis=1),
            rows.argmax(axis=1),
            width - columns[:, ::-1].argmax(axis=1),
            height - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.float32)  # 4 x [K] -> [K,4]
    boxes[~rows.any(axis=1)] = 0.0
    areas = np.count_nonzero(masks.reshape(count, -1), axis=1).astype(np.int64)  # [K,H*W] -> [K]
    return boxes, areas


def postprocess_object(
    low_res_logits: torch.Tensor,
    scores: torch.Tensor,
    mapping: FrameMapping,
    options: SegmentOptions,
) -> ObjectMasks:
    """Turns one object's decoder output into masks at the original size (CPU stage).

    Args:
        low_res_logits: ``[K,256,256]`` float32 CPU logits, unclamped (they are upscaled as they
            are, as Meta's predictor does, and returned clamped to ±32).
        scores: ``[K]`` float32 predicted IoU.
        mapping: The image's frame mapping.
        options: Hole and sprinkle settings.
    """
    refined = low_res_logits
    if options.max_hole_area > 0 or options.max_sprinkle_area > 0:
        refined = fill_holes_and_remove_sprinkles(
            refined, options.max_hole_area, options.max_sprinkle_area, MASK_THRESHOLD
        )
    masks = (upscale_logits(refined, mapping) > MASK_THRESHOLD).numpy()  # [K,H,W] bool
    boxes, areas = mask_boxes_and_areas(masks)
    return ObjectMasks(
        masks=masks,
        scores=scores.float().numpy(),
        low_res_logits=low_res_logits.float().clamp(-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT).numpy(),
        boxes=boxes,
        areas=areas,
    )
