"""Prompted segmentation through the engine against Meta's ``SAM2ImagePredictor.predict``.

Meta's SAM 2.1 tiny gets seeded random weights and is saved as Meta's ``.pt``; the engine loads that
file. Meta's own predictor class runs unchanged (its torchvision imports are lent a test-only
stand-in while it imports, see ``torchvision_shim``) on the same image and prompts in original-image
pixels. The issue's bar: pixel agreement over 99.9% and IoU scores within 1e-4.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from checkpoints import SEED, build_meta_model, save_meta_checkpoint
from torchvision_shim import import_meta_predictors

from imgembed.engine import Engine, Sam2Service
from imgembed.models.sam2_registry import resolve_variant
from imgembed.pipelines.sam2_segment import ObjectMasks, SegmentObject, SegmentOptions
from imgembed.settings import ModelSpec, ServerConfig
from imgembed.types import ImageBytes

pytestmark = pytest.mark.parity

TINY = resolve_variant("sam2.1-hiera-tiny")
PIXEL_AGREEMENT = 0.999
SCORE_TOLERANCE = 1e-4
HEIGHT, WIDTH = 300, 420


def make_image() -> np.ndarray:
    """``[H,W,3]`` uint8: smooth shapes on a textured background, so masks have structure."""
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = rng.integers(0, 60, (HEIGHT, WIDTH, 3)).astype(np.float64)
    image[(x - 120) ** 2 + (y - 140) ** 2 < 70**2] += [180, 40, 20]
    image[(x > 240) & (x < 380) & (y > 60) & (y < 230)] += [20, 150, 190]
    return image.clip(0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Case:
    engine: Engine
    loop: asyncio.AbstractEventLoop
    predictor: object
    image: np.ndarray

    def segment(
        self, objects: list[SegmentObject], options: SegmentOptions | None = None
    ) -> list[ObjectMasks]:
        result = self.loop.run_until_complete(
            self.engine.service(Sam2Service).segment(
                ImageBytes(png_bytes(self.image)), objects, options=options
            )
        )
        return result.objects


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    predictor_module, _ = import_meta_predictors()
    meta_model = build_meta_model(TINY.meta_config, SEED)
    checkpoint = save_meta_checkpoint(
        meta_model, tmp_path_factory.mktemp("segment") / TINY.meta_checkpoint
    )
    spec = ModelSpec(TINY.name, weights=str(checkpoint), device="cpu", warmup=False)
    engine = Engine(ServerConfig(models=(spec,)))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.start())
    image = make_image()
    predictor = predictor_module.SAM2ImagePredictor(meta_model)
    predictor.set_image(image)
    yield Case(engine, loop, predictor, image)
    loop.run_until_complete(engine.close())
    loop.close()


def meta_predict(case: Case, **prompts: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Meta's masks ``[(B,)K,H,W]``, scores ``[(B,)K]`` and low-res logits ``[(B,)K,256,256]``."""
    with torch.inference_mode():
        return case.predictor.predict(**prompts)


def assert_object_matches(ours: ObjectMasks, masks: np.ndarray, scores: np.ndarray) -> None:
    assert ours.masks.shape == masks.shape
    agreement = (ours.masks == masks.astype(bool)).mean()
    assert agreement > PIXEL_AGREEMENT, agreement
    np.testing.assert_allclose(ours.scores, scores, atol=SCORE_TOLERANCE)
    assert ours.masks.any(), "an empty mask would make the comparison vacuous"


def point_object(points: list[list[float]], labels: list[int], **extra: object) -> SegmentObject:
    return SegmentObject(np.array(points, np.float64), np.array(labels, np.int32), **extra)


@pytest.mark.parametrize("multimask", [True, False])
def test_points_match_meta(case: Case, multimask: bool) -> None:
    points, labels = [[120.0, 140.0], [300.0, 150.0]], [1, 0]
    (ours,) = case.segment(
        [point_object(points, labels)], SegmentOptions(multimask_output=multimask)
    )
    masks, scores, _ = meta_predict(
        case,
        point_coords=np.array(points),
        point_labels=np.array(labels),
        multimask_output=multimask,
    )
    assert_object_matches(ours, masks, scores)


@pytest.mark.parametrize("threshold", [-1.0, 2.0], ids=["always-stable", "never-stable"])
def test_single_mask_stability_fallback_matches_meta(case: Case, threshold: float) -> None:
    """Both branches of ``dynamic_multimask_via_stability``: keep token 0, or fall back."""
    meta_decoder = case.predictor.model.sam_mask_decoder
    our_decoder = case.engine.models[0].loaded.model.mask_decoder
    saved = (
        meta_decoder.dynamic_multimask_stability_thresh,
        our_decoder.dynamic_multimask_stability_thresh,
    )
    meta_decoder.dynamic_multimask_stability_thresh = threshold
    our_decoder.dynamic_multimask_stability_thresh = threshold
    try:
        points, labels = [[200.0, 100.0]], [1]
        (ours,) = case.segment(
            [point_object(points, labels)], SegmentOptions(multimask_output=False)
        )
        masks, scores, _ = meta_predict(
            case,
            point_coords=np.array(points),
            point_labels=np.array(labels),
            multimask_output=False,
        )
    finally:
        meta_decoder.dynamic_multimask_stability_thresh = saved[0]
        our_decoder.dynamic_multimask_stability_thresh = saved[1]
    assert_object_matches(ours, masks, scores)


def test_box_and_points_match_meta(case: Case) -> None:
    box = [50.0, 70.0, 200.0, 215.0]
    (ours,) = case.segment([point_object([[120.0, 140.0]], [1], box=np.array(box))])
    masks, scores, _ = meta_predict(
        case, point_coords=np.array([[120.0, 140.0]]), point_labels=np.array([1]), box=np.array(box)
    )
    assert_object_matches(ours, masks, scores)


def test_many_boxes_decode_together_and_match_meta_batched(case: Case) -> None:
    boxes = [[50.0, 70.0, 200.0, 215.0], [240.0, 60.0, 380.0, 230.0], [0.0, 0.0, 420.0, 300.0]]
    ours = case.segment([point_object([], [], box=np.array(box)) for box in boxes])
    masks, scores, _ = meta_predict(case, box=np.array(boxes))
    for index, item in enumerate(ours):
        assert_object_matches(item, masks[index], scores[index])


def test_objects_with_different_prompt_lengths_match_meta_one_by_one(case: Case) -> None:
    objects = [
        point_object([[120.0, 140.0]], [1]),
        point_object([[300.0, 150.0], [310.0, 120.0], [100.0, 250.0]], [1, 1, 0]),
        point_object([], [], box=np.array([240.0, 60.0, 380.0, 230.0])),
    ]
    ours = case.segment(objects)
    for item, result in zip(objects, ours, strict=True):
        prompts: dict[str, object] = {}
        if len(item.points):
            prompts.update(point_coords=item.points, point_labels=item.labels)
        if item.box is not None:
            prompts["box"] = item.box
        masks, scores, _ = meta_predict(case, **prompts)
        assert_object_matches(result, masks, scores)


def test_refinement_with_mask_input_matches_meta(case: Case) -> None:
    """Round two: the best mask's low-res logits go back in, as a client sends them (base64)."""
    points, labels = np.array([[120.0, 140.0]]), np.array([1])
    (first,) = case.segment([point_object(points.tolist(), labels.tolist())])
    best = int(np.argmax(first.scores))
    wire = base64.b64encode(first.low_res_logits[best].astype("<f4").tobytes())
    mask_input = np.frombuffer(base64.b64decode(wire), "<f4").reshape(256, 256)
    second_points = np.array([[120.0, 140.0], [150.0, 200.0]])
    (ours,) = case.segment(
        [point_object(second_points.tolist(), [1, 0], mask_input=mask_input.copy())]
    )
    _, _, meta_low_res = meta_predict(case, point_coords=points, point_labels=labels)
    np.testing.assert_allclose(first.low_res_logits, meta_low_res, atol=1e-3)
    masks, scores, _ = meta_predict(
        case,
        point_coords=second_points,
        point_labels=np.array([1, 0]),
        mask_input=meta_low_res[best][None],
    )
    assert_object_matches(ours, masks, scores)
