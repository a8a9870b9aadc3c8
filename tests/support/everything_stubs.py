"""Stand-ins for segment everything's encode and decode callables: features of the real shapes
on any device, and a decoder stub on any device that records where its inputs were."""

from __future__ import annotations

import torch
from fakes import fake_decode

from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction


def features_on(device: str) -> Sam2Features:
    """Batch-1 features of the real shapes (zeros) on ``device``."""
    return Sam2Features(
        image_embed=torch.zeros(1, 256, 64, 64, device=device),
        high_res_feats_0=torch.zeros(1, 32, 256, 256, device=device),
        high_res_feats_1=torch.zeros(1, 64, 128, 128, device=device),
    )


class DecoderOn:
    """A decoder stub on ``device``: records where its inputs were, answers :func:`fake_decode`'s
    masks there (``meta`` answers nothing: it raises :class:`DecoderReachedError` after recording)."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.input_devices: list[set[str]] = []

    def __call__(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: bool,
    ) -> Sam2MaskPrediction:
        prompts = (point_coords, point_labels, mask_input, has_mask_input)
        self.input_devices.append({tensor.device.type for tensor in prompts})
        if self.device.type == "meta":
            raise DecoderReachedError
        answer = fake_decode(
            features_on("cpu"),
            point_coords.cpu(),
            point_labels.cpu(),
            mask_input.cpu(),
            has_mask_input.cpu(),
            multimask_output=multimask_output,
            clamp=False,
        )
        return Sam2MaskPrediction(
            answer.masks.to(self.device), answer.iou_predictions.to(self.device)
        )


class DecoderReachedError(Exception):
    """Raised by a ``meta`` decoder once it has seen its inputs."""
