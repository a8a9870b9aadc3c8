"""``examples/triton_client.py`` against a real ``imgembed serve``, and imgembed's features fed
straight into the exported decoder.

The server serves the same Meta checkpoint the export was made from, over imgembed's v2
endpoints (what Triton speaks). No Triton server runs here; the repository's configs are checked
in test_triton_repository.py. What this shows: the example runs end to end (encode once, decode
many, batched prompts, refinement); its Pillow preprocessing equals imgembed's; the features the
server returns feed the exported ONNX decoder by name, with no renaming, and give the server's
masks; the exported encoder gives the server's features.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
import torch
from checkpoints import relative_error
from example_programs import load_example
from PIL import Image
from servers import imgembed_server

from imgembed.export.onnx_export import ExportResult
from imgembed.preprocess.sam2_frame import sam2_pixel_values

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "triton_client.py"
POINTS = [(180.0, 150.0, 1), (60.0, 200.0, 0)]
BOXES = [(40.0, 30.0, 260.0, 210.0)]


@pytest.fixture(scope="module")
def example() -> ModuleType:
    pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra")
    return load_example("triton_client.py")


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("example_server") / "server.log"
    args = ["--model", "sam2.1-hiera-tiny", "--weights", str(tiny_checkpoint), "--device", "cpu"]
    with imgembed_server(args, log_path=log) as base_url:
        yield base_url.removeprefix("http://")


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """A 320x240 picture with a bright disc on a dark gradient."""
    rows, cols = np.mgrid[0:240, 0:320]
    disc = ((rows - 120) ** 2 + (cols - 160) ** 2 < 70**2)[..., None]
    background = np.stack([rows / 3, cols / 4, np.full_like(rows, 40)], axis=-1)
    pixels = np.where(disc, np.array([230, 200, 60]), background)
    return Image.fromarray(pixels.astype(np.uint8))


def test_preprocessing_matches_imgembed(example: ModuleType, picture: Image.Image) -> None:
    ours = torch.from_numpy(example.preprocess(picture))
    reference, _ = sam2_pixel_values(torch.from_numpy(np.array(picture)), 1024, "stretch")
    assert relative_error(ours[0], reference) < 1e-5


def test_example_against_imgembed_and_the_exported_graphs(
    example: ModuleType, server: str, picture: Image.Image, onnx_export: ExportResult
) -> None:
    features, results = example.run(server, picture, POINTS, BOXES)
    names = [result.name for result in results]
    assert names == [
        "click 180,150 label 1",
        "click 60,200 label 0",
        "box 40,30,260,210",
        "batched click 0",
        "batched click 1",
        "refined first click",
    ]
    for result in results:
        assert result.mask.shape == (240, 320)
        assert result.low_res_logits.shape == (256, 256)
        assert 0.0 <= result.iou <= 1.0
    # A click decoded alone or as one prompt of a batched request gives the same mask.
    np.testing.assert_allclose(results[3].low_res_logits, results[0].low_res_logits, atol=1e-4)

    # The exported encoder computes the server's features from the same pixels.
    encoder = ort.InferenceSession(
        str(onnx_export.encoder_path), providers=["CPUExecutionProvider"]
    )
    onnx_features = dict(
        zip(
            [output.name for output in encoder.get_outputs()],
            encoder.run(None, {"image": example.preprocess(picture)}),
            strict=True,
        )
    )
    for name, value in features.items():
        error = relative_error(torch.from_numpy(onnx_features[name]), torch.tensor(value))
        assert error < 1e-4, f"{name}: relative L2 {error:.2e}"

    # The server's features go into the exported decoder as they come: same names, no renaming.
    decoder = ort.InferenceSession(
        str(onnx_export.decoder_path), providers=["CPUExecutionProvider"]
    )
    coords = example.to_input_frame(np.array([[(180.0, 150.0)], [(60.0, 200.0)]]), 240, 320)
    labels = np.array([[1.0], [0.0]], np.float32)
    no_mask = {
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    }
    onnx_masks, onnx_iou = decoder.run(
        None, {**features, "point_coords": coords, "point_labels": labels, **no_mask}
    )
    client = example.httpclient.InferenceServerClient(url=server)
    try:
        server_masks, server_iou = example.decode(client, features, coords, labels)
    finally:
        client.close()
    agreement = ((onnx_masks > 0) == (server_masks > 0)).mean()
    assert agreement > 0.999, f"mask agreement {agreement:.5f}"
    np.testing.assert_allclose(onnx_iou, server_iou, atol=1e-4)


def test_command_line_writes_masks(
    example: ModuleType, server: str, picture: Image.Image, tmp_path: Path
) -> None:
    image_path = tmp_path / "picture.png"
    picture.save(image_path)
    out = tmp_path / "masks"
    example.main(
        ["--url", server, "--image", str(image_path), "--point", "180,150", "--out", str(out)]
    )
    written = sorted(path.name for path in out.iterdir())
    assert written == ["mask_00.png", "mask_01.png", "mask_02.png"]
    with Image.open(out / "mask_00.png") as mask:
        assert mask.size == (320, 240)
