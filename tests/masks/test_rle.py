"""COCO RLE: byte-for-byte what pycocotools writes, round trips, and refusals of broken strings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgembed.errors import InvalidInputError
from imgembed.masks.rle import (
    coco_rle_to_uncompressed,
    decode_counts,
    encode_coco_rle,
    encode_coco_rles,
    encode_counts,
    masks_to_counts,
    masks_to_uncompressed_rle,
    rle_area,
    rle_to_mask,
    uncompressed_to_coco_rle,
)

mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is a test-only dependency")
pytestmark = pytest.mark.filterwarnings(
    # pycocotools' decode under NumPy 2: its own deprecation, not ours.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def random_masks(seed: int, count: int = 60) -> list[np.ndarray]:
    """Masks of many shapes and densities, with the corner cases (empty, full, one pixel)."""
    rng = np.random.default_rng(seed)
    masks = [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        np.eye(1, dtype=bool),
        np.zeros((1, 1), bool),
        np.ones((1, 300), bool),
        np.ones((300, 1), bool),
    ]
    for _ in range(count):
        height, width = rng.integers(1, 80, 2)
        masks.append(rng.random((height, width)) < rng.random())
    # Long runs: differences between runs two apart exceed one 5-bit group, both signs.
    big = np.zeros((700, 900), bool)
    big[100:650, 50:800] = True
    big[300:310, 400:420] = False
    masks.append(big)
    return masks


def pycocotools_encode(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


@pytest.mark.parametrize("seed", [0, 1])
def test_compressed_counts_are_byte_identical_to_pycocotools(seed: int) -> None:
    for mask in random_masks(seed):
        ours = encode_coco_rle(mask)
        reference = pycocotools_encode(mask)
        assert ours["counts"] == reference["counts"].decode("ascii")
        assert ours["size"] == [int(side) for side in reference["size"]]


def test_pycocotools_decodes_ours_and_we_decode_pycocotools() -> None:
    for mask in random_masks(2):
        ours = encode_coco_rle(mask)
        decoded = mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)
        np.testing.assert_array_equal(rle_to_mask(pycocotools_encode(mask)), mask)
        assert rle_area(ours) == int(mask.sum()) == int(mask_utils.area(pycocotools_encode(mask)))


def test_uncompressed_matches_meta_and_pycocotools_compresses_it_the_same() -> None:
    amg = pytest.importorskip("sam2.utils.amg", reason="Meta's sam2 is test-only")
    masks = [mask for mask in random_masks(3) if mask.shape == (37, 41)]
    rng = np.random.default_rng(3)
    stack = np.stack([*masks, *(rng.random((8, 37, 41)) < 0.5), np.zeros((37, 41), bool)])
    ours = masks_to_uncompressed_rle(torch.from_numpy(stack))
    assert ours == amg.mask_to_rle_pytorch(torch.from_numpy(stack))
    for rle, mask in zip(ours, stack, strict=True):
        from_lists = mask_utils.frPyObjects(rle, *rle["size"])
        assert uncompressed_to_coco_rle(rle)["counts"] == from_lists["counts"].decode("ascii")
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
        np.testing.assert_array_equal(amg.rle_to_mask(rle), mask)


def test_batched_counts_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(4)
    stack = rng.random((12, 20, 30)) < 0.3
    stack[3] = False
    stack[4] = True
    batched = masks_to_counts(torch.from_numpy(stack))
    assert batched == [masks_to_counts(mask[None])[0] for mask in stack]
    assert [sum(runs) for runs in batched] == [600] * 12
    assert batched[3] == [600]
    assert batched[4] == [0, 600]
    assert [rle["counts"] for rle in encode_coco_rles(stack)] == [
        encode_coco_rle(mask)["counts"] for mask in stack
    ]


def test_counts_string_round_trip_and_conversions() -> None:
    runs = [0, 5, 1000, 3, 70000, 2, 2, 99999, 0, 1]
    assert decode_counts(encode_counts(runs)) == runs
    assert decode_counts(encode_counts(runs).encode()) == runs
    plain = {"size": [1, sum(runs)], "counts": runs}
    compressed = uncompressed_to_coco_rle(plain)
    assert coco_rle_to_uncompressed(compressed) == plain
    assert coco_rle_to_uncompressed(plain) == plain
    assert encode_counts([]) == ""
    assert decode_counts("") == []


def test_empty_stack_and_zero_sized_masks() -> None:
    assert masks_to_counts(torch.zeros(0, 4, 4, dtype=torch.bool)) == []
    assert masks_to_counts(torch.zeros(2, 0, 4, dtype=torch.bool)) == [[0], [0]]


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [2, 2], "counts": "0~"}, "outside"),
        ({"size": [2, 2], "counts": "P"}, "truncated"),
        ({"size": [2, 2], "counts": [1, 2]}, "add up to 3"),
        ({"size": [2, 2], "counts": [5, -1]}, "smallest run -1"),
        ({"counts": [4]}, "size"),
    ],
)
def test_broken_rles_are_refused_with_a_clear_message(rle: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        rle_to_mask(rle)


def test_encode_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        encode_coco_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        masks_to_counts(np.zeros((2, 2), bool))


def test_crops_encode_in_the_image_frame_like_meta_uncrop_then_encode() -> None:
    amg = pytest.importorskip("sam2.utils.amg", reason="Meta's sam2 is test-only")
    rng = np.random.default_rng(6)
    for trial in range(120):
        height, width = (int(side) for side in rng.integers(1, 30, 2))
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        right, bottom = (
            int(rng.integers(left + 1, width + 1)),
            int(rng.integers(top + 1, height + 1)),
        )
        if trial % 4 == 0:
            top, bottom = 0, height  # full-height crops: runs continue across columns
        crops = torch.from_numpy(rng.random((3, bottom - top, right - left)) < rng.random())
        if trial % 5 == 0:
            crops[:] = True  # a run reaching the image's last pixel
        box = (left, top, right, bottom)
        expected = amg.mask_to_rle_pytorch(amg.uncrop_masks(crops, list(box), height, width))
        assert masks_to_uncompressed_rle(crops, crop_box=box, image_hw=(height, width)) == expected
    with pytest.raises(ValueError, match="does not fit"):
        masks_to_counts(
            torch.zeros(1, 2, 2, dtype=torch.bool), crop_box=(0, 0, 3, 2), image_hw=(4, 4)
        )
    with pytest.raises(ValueError, match="image_hw"):
        masks_to_counts(torch.zeros(1, 2, 2, dtype=torch.bool), crop_box=(0, 0, 2, 2))
