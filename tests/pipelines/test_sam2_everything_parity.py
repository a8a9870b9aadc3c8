"""Segment everything against Meta's ``SAM2AutomaticMaskGenerator`` on identical random weights.

Meta's SAM 2.1 tiny gets seeded random weights and is saved as Meta's ``.pt``; imgembed loads that
file through :func:`load_sam2` and runs its own encoder and decoder (``prepare`` + ``encode``,
``decode_masks``) under :func:`generate_everything`. Meta's generator runs unchanged on the same
image (its torchvision imports are lent a test-only stand-in, see ``torchvision_shim``).

Random weights rarely reach the reference's default thresholds, so the cases lower
``pred_iou_thresh`` / ``stability_score_thresh`` until masks come out, and every case asserts that
some do. The bar: the same number of masks; each mask matched (by IoU) to one of the reference's
with IoU above 0.99, and the other fields equal (scores within 1e-4).

``min_mask_region_area`` makes Meta's predictor call its CUDA connected-components kernel, which a
CPU lacks (Meta then warns and skips the step); that case lends the kernel an OpenCV stand-in with
the same contract, and turns warnings into errors so a skipped step cannot pass.
"""

from __future__ import annotations

import sys
import types
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from checkpoints import SEED, build_meta_model, save_meta_checkpoint
from torchvision_shim import import_meta_predictors

from imgembed.masks.rle import rle_to_mask
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction, decode_masks
from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.pipelines import sam2_embed
from imgembed.pipelines.sam2_embed import Sam2EmbedOptions
from imgembed.pipelines.sam2_everything import EverythingResult, generate_everything
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams
from imgembed.preprocess.image import DecodedImage
from imgembed.runtime.device import DevicePlacement

pytestmark = [
    pytest.mark.parity,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

TINY = resolve_variant("sam2.1-hiera-tiny")
CPU = torch.device("cpu")
HEIGHT, WIDTH = 240, 304
MATCH_IOU = 0.99
SCORE_TOLERANCE = 1e-4
LOW_THRESHOLDS = {"pred_iou_thresh": 0.3, "stability_score_thresh": 0.5}


def make_image() -> np.ndarray:
    """``[H,W,3]`` uint8: a disc and a rectangle on a textured background."""
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = rng.integers(0, 60, (HEIGHT, WIDTH, 3)).astype(np.float64)
    image[(x - 100) ** 2 + (y - 120) ** 2 < 60**2] += [180, 40, 20]
    image[(x > 180) & (x < 290) & (y > 40) & (y < 200)] += [20, 150, 190]
    return image.clip(0, 255).astype(np.uint8)


@dataclass
class Case:
    meta_model: torch.nn.Module
    generator_module: types.ModuleType
    model: torch.nn.Module
    image: np.ndarray

    def encode(self, image: np.ndarray) -> Sam2Features:
        decoded = DecodedImage(image, "PNG", "RGB", exif_transposed=False)
        prepared = sam2_embed.prepare(decoded, Sam2EmbedOptions())
        placement = DevicePlacement(CPU, "float32")
        return sam2_embed.encode(self.model, placement, [prepared.pixel_values])

    def decode(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: bool,
    ) -> Sam2MaskPrediction:
        return decode_masks(
            self.model,
            features,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
            multimask_output=multimask_output,
        )

    def ours(self, params: Sam2EverythingParams) -> EverythingResult:
        return generate_everything(self.image, self.encode, self.decode, params)

    def meta(self, params: Sam2EverythingParams) -> list[dict[str, Any]]:
        settings = {
            name: getattr(params, name)
            for name in (
                "points_per_side",
                "pred_iou_thresh",
                "stability_score_thresh",
                "stability_score_offset",
                "mask_threshold",
                "box_nms_thresh",
                "crop_n_layers",
                "crop_nms_thresh",
                "crop_overlap_ratio",
                "crop_n_points_downscale_factor",
                "min_mask_region_area",
                "output_mode",
                "use_m2m",
                "multimask_output",
            )
        }
        generator = self.generator_module.SAM2AutomaticMaskGenerator(self.meta_model, **settings)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("error")
            return generator.generate(self.image)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    _, generator_module = import_meta_predictors()
    meta_model = build_meta_model(TINY.meta_config, SEED)
    checkpoint = save_meta_checkpoint(
        meta_model, tmp_path_factory.mktemp("everything") / TINY.meta_checkpoint
    )
    model = load_sam2(TINY.name, str(checkpoint), None, device=CPU).model
    return Case(meta_model, generator_module, model, make_image())


def as_mask(segmentation: Any) -> np.ndarray:
    return segmentation if isinstance(segmentation, np.ndarray) else rle_to_mask(segmentation)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return float(np.logical_and(first, second).sum() / union) if union else 1.0


def assert_same_records(ours: EverythingResult, reference: list[dict[str, Any]]) -> None:
    assert len(reference) > 0, "no masks: the comparison would be vacuous"
    assert len(ours.records) == len(reference)
    remaining = list(range(len(reference)))
    for record in ours.records:
        mask = as_mask(record.segmentation)
        overlaps = [iou(mask, as_mask(reference[index]["segmentation"])) for index in remaining]
        best = remaining.pop(int(np.argmax(overlaps)))
        expected = reference[best]
        assert max(overlaps) > MATCH_IOU
        assert type(record.segmentation) is type(expected["segmentation"])
        if isinstance(expected["segmentation"], dict):
            assert record.segmentation["size"] == expected["segmentation"]["size"]
        assert record.area == expected["area"]
        assert record.bbox == expected["bbox"]
        assert record.point_coords == expected["point_coords"]
        assert record.crop_box == expected["crop_box"]
        assert record.predicted_iou == pytest.approx(expected["predicted_iou"], abs=SCORE_TOLERANCE)
        assert record.stability_score == pytest.approx(
            expected["stability_score"], abs=SCORE_TOLERANCE, nan_ok=True
        )
        assert record.as_dict().keys() == expected.keys()


def test_low_thresholds_binary_masks_match_meta(case: Case) -> None:
    params = Sam2EverythingParams(points_per_side=8, **LOW_THRESHOLDS)
    result = case.ours(params)
    assert_same_records(result, case.meta(params))
    assert result.records[0].segmentation.shape == (HEIGHT, WIDTH)
    assert result.prompts == 64


def test_crop_layer_matches_meta(case: Case) -> None:
    """One crop layer (four crops beside the image), one mask per point, nothing filtered by
    score: masks of two crops survive beside the image's, so the NMS across crops decides."""
    params = Sam2EverythingParams(
        points_per_side=5,
        crop_n_layers=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        multimask_output=False,
        output_mode="coco_rle",
    )
    result = case.ours(params)
    reference = case.meta(params)
    assert_same_records(result, reference)
    assert result.crops == 5
    assert any(record.crop_box != [0, 0, WIDTH, HEIGHT] for record in result.records)
    assert [record.segmentation["counts"] for record in result.records] == [
        record["segmentation"]["counts"] for record in reference
    ], "COCO strings and the order of records are the reference's"


def test_mask_to_mask_refinement_matches_meta_at_any_batch_size(case: Case) -> None:
    params = Sam2EverythingParams(
        points_per_side=6,
        use_m2m=True,
        box_nms_thresh=0.95,
        output_mode="uncompressed_rle",
        **LOW_THRESHOLDS,
    )
    result = case.ours(replace(params, points_per_batch=25))  # the reference batches by 64
    assert_same_records(result, case.meta(params))
    assert result.points_per_batch == 25
    assert result.prompts == 36 + 36 * 3, "every multimask output refined once"


def opencv_cuda_kernel_stand_in(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sam2._C.get_connected_componnets``' contract, with OpenCV: ``[N,1,H,W]`` uint8 in,
    int32 labels (> 0 on foreground) and per-pixel component areas out."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a test-only dependency")
    labels = np.zeros(masks.shape, np.int32)
    counts = np.zeros(masks.shape, np.int32)
    for index, mask in enumerate(masks[:, 0].numpy()):
        _, mask_labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        labels[index, 0] = mask_labels
        counts[index, 0] = np.where(mask_labels > 0, stats[mask_labels, cv2.CC_STAT_AREA], 0)
    return torch.from_numpy(labels), torch.from_numpy(counts)


def test_min_mask_region_area_matches_meta_with_its_kernel(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cv2", reason="opencv-python-headless is a test-only dependency")
    kernel = types.ModuleType("sam2._C")
    kernel.get_connected_componnets = opencv_cuda_kernel_stand_in  # Meta's spelling
    monkeypatch.setitem(sys.modules, "sam2._C", kernel)
    monkeypatch.setattr(sys.modules["sam2"], "_C", kernel, raising=False)
    params = Sam2EverythingParams(
        points_per_side=4,
        min_mask_region_area=200,
        box_nms_thresh=0.95,
        output_mode="uncompressed_rle",
        **LOW_THRESHOLDS,
    )
    result = case.ours(params)
    assert_same_records(result, case.meta(params))
    without = case.ours(replace(params, min_mask_region_area=0))
    assert [record.segmentation for record in without.records] != [
        record.segmentation for record in result.records
    ], "the clean-up must change something, or this case tests nothing"
