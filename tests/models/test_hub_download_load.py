"""What ``imgembed download`` fetches is what an offline start loads: random SAM 2 tiny weights in
both hub layouts are served by the loopback stand-in hub, downloaded, then loaded by
:func:`~imgembed.models.sam2_loading.load_sam2` with the hub switched off.

Slow tier: it builds and loads real (tiny) models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hub_standin import HubStandIn, running_hub
from transformers import Sam2VideoModel

from imgembed.models.hub import HubAccess
from imgembed.models.hub_download import download_model
from imgembed.models.sam2_loading import load_sam2

REPO = "facebook/sam2.1-hiera-tiny"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _download_then_load_offline(files: dict[str, bytes], cache: Path) -> torch.nn.Module:
    with running_hub(HubStandIn(repos={REPO: {**files, "README.md": b"card"}})) as hub:
        model = download_model(REPO, HubAccess(cache_dir=str(cache), endpoint=hub.url))
    assert "README.md" not in {f.path for f in model.files}
    loaded = load_sam2(
        "sam2.1-hiera-tiny",
        None,
        device=torch.device("cpu"),
        hub_cache_dir=str(cache),
        hub_offline=True,
    )
    assert (loaded.source, loaded.weights_location, loaded.untrained) == ("hub", REPO, False)
    return loaded.model


def test_transformers_layout_downloads_and_loads_offline(
    hf_video_tiny_folder: tuple[Path, Sam2VideoModel], tmp_path: Path
) -> None:
    folder, video_model = hf_video_tiny_folder
    model = _download_then_load_offline(_files(folder), tmp_path)
    video_state = video_model.state_dict()
    different = [k for k, v in model.state_dict().items() if not torch.equal(v, video_state[k])]
    assert different == []


def test_meta_layout_downloads_and_loads_offline(
    meta_tiny_checkpoint: Path, meta_tiny_model: torch.nn.Module, tmp_path: Path
) -> None:
    model = _download_then_load_offline(
        {"sam2.1_hiera_tiny.pt": meta_tiny_checkpoint.read_bytes()}, tmp_path
    )
    expected = meta_tiny_model.state_dict()["sam_mask_decoder.iou_token.weight"]
    assert torch.equal(model.state_dict()["mask_decoder.iou_token.weight"], expected)
