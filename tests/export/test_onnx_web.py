"""The exported SAM 2 decoders on onnxruntime-web, fed as seed 002's browser tool feeds them.

Issue 13: decoders that carried ``mask_input``/``has_mask_input`` as initializers of the same name
(overridable defaults) ran on ONNX Runtime in Python, but onnxruntime-web does not list such
inputs and refuses a feed for them ("invalid input 'mask_input'"), so the browser tool broke.

Every exported decoder (``decoder.onnx`` and ``decoder_single_mask.onnx`` of the fp32, fp16 and
int8 exports) is run here in Node by ``ort_web_decoder.mjs`` (onnxruntime-web's Node build, the
WebAssembly backend, one thread), with exactly the seven float32 feeds of seed 002: a click prompt
without a previous mask, then the same prompt with the best mask of that first round as
``mask_input`` (``has_mask_input`` 1), and a box prompt (points labelled 2 and 3). The script checks
that the session lists exactly the seven inputs and the two outputs. The masks and scores are
compared with imgembed's PyTorch decoder on the same features, with the bounds the other export
tests use: for float32 those of ``test_onnx_parity.py`` (mask agreement over 99.9 %, IoU
predictions within 1e-4); for fp16 and int8, whose error against PyTorch is only reported (logged
here), the sanity bound of ``test_onnx_export.py`` (mask agreement over 80 %).

Not compared at the float32 bounds: onnxruntime-web against ONNX Runtime in Python on the same
fp16 or int8 graph. The fp16 graphs' scores are float16 values, and the two runtimes differ by one
float16 step (4.9e-4 near 0.6); the int8 graphs quantise activations on the fly, so with a mask
input the runtimes' last-bit float differences move values across quantisation steps (mask
agreement about 99.6 %, scores 4e-4 apart).

Node and onnxruntime-web are part of the project's set-up (``scripts/fetch_ui_assets.sh``); the
tests fail, not skip, without them.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from imgembed.export.onnx_export import ExportResult, write_with_input_defaults
from imgembed.export.sam2_io import DECODER_INPUTS
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import decode_masks
from imgembed.models.sam2_loading import LoadedSam2

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ort_web_decoder.mjs")
ORT_WEB = ROOT / "ui" / "node_modules" / "onnxruntime-web"
ORT_WEB_NODE_BUILD = ORT_WEB / "dist" / "ort.node.min.mjs"
FETCH_COMMAND = "scripts/fetch_ui_assets.sh"
NODE_TIMEOUT_S = 300
"""One decoder run in Node: loading the WebAssembly runtime and the graph, then one prompt."""

SEED_002_INPUTS = (
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
SEED_002_OUTPUTS = ("masks", "iou_predictions")
FEATURE_NAMES = SEED_002_INPUTS[:3]

# test_onnx_parity.py's bounds (ONNX graph against PyTorch, float32).
MASK_AGREEMENT = 0.999
IOU_TOLERANCE = 1e-4
# test_onnx_export.py's sanity bound for the fp16 and int8 graphs against PyTorch.
REDUCED_PRECISION_MASK_AGREEMENT = 0.8

PRECISIONS = ("fp32", "fp16", "int8")
ROLES = ("decoder", "decoder_single_mask")
DECODERS = [
    pytest.param(precision, role, id=f"{precision}-{role}")
    for precision in PRECISIONS
    for role in ROLES
]

CLICKS = ([[407.3, 611.8], [100.0, 900.0]], [1.0, 0.0])
"""A foreground and a background click, ``(x, y)`` in the 1024 frame."""
BOX = ([[120.5, 210.25], [760.0, 905.75]], [2.0, 3.0])
"""A box as its top-left (label 2) and bottom-right (label 3) corners."""


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, with onnxruntime-web installed in ``ui/node_modules``."""
    executable = shutil.which("node")
    if executable is None:
        pytest.fail(
            "node is not on PATH; the project's set-up installs Node.js and onnxruntime-web "
            f"(apt-get install -y nodejs npm, then {FETCH_COMMAND})",
            pytrace=False,
        )
    if not ORT_WEB_NODE_BUILD.is_file():
        pytest.fail(
            f"onnxruntime-web is not installed: {ORT_WEB_NODE_BUILD} is missing; run "
            f"{FETCH_COMMAND} (it installs the version pinned in ui/package-lock.json)",
            pytrace=False,
        )
    return executable


def _export(request: pytest.FixtureRequest, precision: str) -> ExportResult:
    """The session's export in ``precision`` (conftest's ``onnx_export``, ``fp16_export``, ...)."""
    name = "onnx_export" if precision == "fp32" else f"{precision}_export"
    export: ExportResult = request.getfixturevalue(name)
    assert export.precision == precision
    return export


def _decoder_path(request: pytest.FixtureRequest, precision: str, role: str) -> Path:
    path = _export(request, precision).files.get(role)
    assert path is not None, f"the {precision} export has no {role}.onnx"
    return path


def _write_tensors(folder: Path, tensors: dict[str, np.ndarray]) -> None:
    """Writes ``tensors.json`` (names and shapes, in order) and one little-endian ``.f32`` each."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in tensors.items():
        (folder / f"{name}.f32").write_bytes(np.ascontiguousarray(array, "<f4").tobytes())
    entries = [{"name": name, "shape": list(array.shape)} for name, array in tensors.items()]
    (folder / "tensors.json").write_text(json.dumps(entries), encoding="utf-8")


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a folder that :func:`_write_tensors` or the Node script wrote."""
    entries = json.loads((folder / "tensors.json").read_text(encoding="utf-8"))
    tensors = {}
    for entry in entries:
        values = np.fromfile(folder / f"{entry['name']}.f32", dtype="<f4")
        tensors[entry["name"]] = torch.from_numpy(values.reshape(entry["shape"]))  # flat -> shape
    return tensors


def _run_node(
    node: str, graph: Path, feeds: dict[str, np.ndarray], folder: Path
) -> subprocess.CompletedProcess[str]:
    """Runs ``ort_web_decoder.mjs`` on ``graph`` with ``feeds``; its outputs go to ``folder/out``."""
    _write_tensors(folder / "feeds", feeds)
    return subprocess.run(
        [node, str(SCRIPT), str(graph), str(folder / "feeds"), str(folder / "out")],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )


def run_on_ort_web(
    node: str, graph: Path, feeds: dict[str, np.ndarray], folder: Path
) -> dict[str, torch.Tensor]:
    """Runs one decoder graph on onnxruntime-web with exactly ``feeds``.

    Args:
        node: The ``node`` executable.
        graph: A decoder ``.onnx`` file.
        feeds: The seven seed-002 inputs, in order.
        folder: An empty folder for the feeds and outputs.

    Returns:
        ``masks`` and ``iou_predictions`` as onnxruntime-web computed them.
    """
    completed = _run_node(node, graph, feeds, folder)
    if completed.returncode != 0:
        pytest.fail(
            f"onnxruntime-web could not run {graph} (exit {completed.returncode}):\n"
            f"{completed.stderr.strip()}",
            pytrace=False,
        )
    session = json.loads((folder / "out" / "session.json").read_text(encoding="utf-8"))
    assert tuple(session["inputNames"]) == SEED_002_INPUTS
    assert tuple(session["outputNames"]) == SEED_002_OUTPUTS
    outputs = _read_tensors(folder / "out")
    assert tuple(outputs) == SEED_002_OUTPUTS
    return outputs


def seed_002_feeds(
    features: Sam2Features,
    prompt: tuple[list[list[float]], list[float]],
    previous_mask: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """The seven float32 feeds of seed 002's browser tool for one prompt on one image.

    Args:
        features: One image's encoder features (batch 1).
        prompt: ``N`` points ``(x, y)`` in the 1024 frame and their ``N`` labels.
        previous_mask: ``[256,256]`` low-resolution logits of an earlier round, or ``None``.

    Returns:
        ``image_embed``, ``high_res_feats_0``, ``high_res_feats_1``, ``point_coords [1,N,2]``,
        ``point_labels [1,N]``, ``mask_input [1,1,256,256]`` (zeros without a previous mask) and
        ``has_mask_input [1]`` (0 or 1), in that order.
    """
    points, labels = prompt
    if previous_mask is None:
        mask_input = np.zeros((1, 1, 256, 256), np.float32)
        has_mask_input = np.zeros(1, np.float32)
    else:
        mask_input = previous_mask.numpy().reshape(1, 1, 256, 256)  # [256,256] -> [1,1,256,256]
        has_mask_input = np.ones(1, np.float32)
    feeds = {name: getattr(features, name).numpy() for name in FEATURE_NAMES}
    feeds["point_coords"] = np.array([points], np.float32)  # [1,N,2]
    feeds["point_labels"] = np.array([labels], np.float32)  # [1,N]
    feeds["mask_input"] = mask_input
    feeds["has_mask_input"] = has_mask_input
    assert tuple(feeds) == SEED_002_INPUTS
    return feeds


def run_on_pytorch(
    tiny: LoadedSam2, features: Sam2Features, feeds: dict[str, np.ndarray], role: str
) -> dict[str, torch.Tensor]:
    """imgembed's PyTorch decoder on the same features and prompt (one mask for the single-mask
    graph, three otherwise)."""
    prediction = decode_masks(
        tiny.model,
        features,
        torch.from_numpy(feeds["point_coords"]),
        torch.from_numpy(feeds["point_labels"]).long(),
        torch.from_numpy(feeds["mask_input"]),
        torch.from_numpy(feeds["has_mask_input"]),
        multimask_output=role == "decoder",
    )
    return {"masks": prediction.masks, "iou_predictions": prediction.iou_predictions}


def mask_agreement(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Share of mask cells on the same side of 0 (inside or outside the object)."""
    return ((actual > 0) == (expected > 0)).double().mean().item()


@dataclass(frozen=True)
class Comparison:
    """How far onnxruntime-web's outputs are from another implementation's."""

    agreement: float
    iou_error: float

    def __str__(self) -> str:
        return f"mask agreement {self.agreement:.5f}, IoU error {self.iou_error:.2e}"


def compare(web: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> Comparison:
    """Checks shapes and returns the mask agreement and largest IoU prediction difference."""
    for name in SEED_002_OUTPUTS:
        assert web[name].shape == other[name].shape, name
    # The reference masks are not trivially all inside or all outside, so agreement means something.
    inside = (other["masks"] > 0).double().mean().item()
    assert 0.001 < inside < 0.999, f"reference masks are {inside:.1%} inside"
    iou_error = (web["iou_predictions"] - other["iou_predictions"]).abs().max().item()
    return Comparison(mask_agreement(web["masks"], other["masks"]), iou_error)


def assert_web_matches(
    precision: str,
    graph: Path,
    web: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    label: str,
) -> None:
    """onnxruntime-web against PyTorch, with the bounds of the export's precision.

    Args:
        precision: The export's precision, which picks the bounds (see the module docstring).
        graph: The decoder graph that ran.
        web: onnxruntime-web's outputs.
        reference: PyTorch's outputs for the same features and prompt.
        label: Names the case in failure messages and the log.
    """
    expected_masks = 3 if graph.stem == "decoder" else 1
    assert web["masks"].shape == (1, expected_masks, 256, 256), label
    assert web["iou_predictions"].shape == (1, expected_masks), label
    to_pytorch = compare(web, reference)
    logger.info("%s: onnxruntime-web vs PyTorch: %s", label, to_pytorch)
    if precision == "fp32":
        assert to_pytorch.agreement > MASK_AGREEMENT, f"{label} vs PyTorch: {to_pytorch}"
        assert to_pytorch.iou_error < IOU_TOLERANCE, f"{label} vs PyTorch: {to_pytorch}"
        return
    assert torch.isfinite(web["iou_predictions"]).all(), f"{label}: {web['iou_predictions']}"
    assert to_pytorch.agreement > REDUCED_PRECISION_MASK_AGREEMENT, (
        f"{label} vs PyTorch: {to_pytorch}"
    )


@pytest.mark.parametrize(("precision", "role"), DECODERS)
def test_no_input_is_an_initializer(
    request: pytest.FixtureRequest, precision: str, role: str
) -> None:
    """The graph's inputs are seed 002's seven, none shadowed by an initializer of its name
    (onnxruntime-web hides such an input and refuses its feed)."""
    graph = onnx.load(str(_decoder_path(request, precision, role))).graph
    inputs = [value.name for value in graph.input]
    assert tuple(inputs) == SEED_002_INPUTS
    assert tuple(value.name for value in graph.output) == SEED_002_OUTPUTS
    shadowed = sorted({init.name for init in graph.initializer} & set(inputs))
    assert shadowed == [], f"{role}.onnx ({precision}) has initializers named like inputs"


@pytest.mark.parametrize(("precision", "role"), DECODERS)
def test_clicks_then_previous_mask_on_ort_web(
    request: pytest.FixtureRequest,
    node: str,
    tiny: LoadedSam2,
    torch_features: Sam2Features,
    tmp_path: Path,
    precision: str,
    role: str,
) -> None:
    """Round 1: clicks, no mask. Round 2: the same clicks with round 1's best mask (highest
    score) as ``mask_input`` and ``has_mask_input`` 1, as the browser tool refines a mask."""
    graph = _decoder_path(request, precision, role)
    started = time.perf_counter()
    first_feeds = seed_002_feeds(torch_features, CLICKS)
    first = run_on_ort_web(node, graph, first_feeds, tmp_path / "first")
    assert_web_matches(
        precision,
        graph,
        first,
        run_on_pytorch(tiny, torch_features, first_feeds, role),
        f"{precision} {role} clicks",
    )

    best = int(first["iou_predictions"][0].argmax())
    second_feeds = seed_002_feeds(torch_features, CLICKS, first["masks"][0, best])
    second = run_on_ort_web(node, graph, second_feeds, tmp_path / "second")
    assert_web_matches(
        precision,
        graph,
        second,
        run_on_pytorch(tiny, torch_features, second_feeds, role),
        f"{precision} {role} clicks + previous mask",
    )
    # The previous mask was used, not ignored: the masks changed.
    assert not torch.equal(second["masks"], first["masks"])
    logger.info("%s %s: two rounds in %.1f s", precision, role, time.perf_counter() - started)


@pytest.mark.parametrize(("precision", "role"), DECODERS)
def test_box_on_ort_web(
    request: pytest.FixtureRequest,
    node: str,
    tiny: LoadedSam2,
    torch_features: Sam2Features,
    tmp_path: Path,
    precision: str,
    role: str,
) -> None:
    """A box prompt: two corner points labelled 2 and 3, no mask."""
    graph = _decoder_path(request, precision, role)
    feeds = seed_002_feeds(torch_features, BOX)
    assert_web_matches(
        precision,
        graph,
        run_on_ort_web(node, graph, feeds, tmp_path),
        run_on_pytorch(tiny, torch_features, feeds, role),
        f"{precision} {role} box",
    )


def test_a_graph_with_input_defaults_is_caught(
    node: str, onnx_export: ExportResult, torch_features: Sam2Features, tmp_path: Path
) -> None:
    """The check works: the decoder written with zero defaults (as decoders were before issue 13,
    and as Triton's unbatched decoder still is) hides mask_input and has_mask_input from
    onnxruntime-web."""
    graph = tmp_path / "decoder_with_defaults.onnx"
    write_with_input_defaults(onnx_export.decoder_path, graph, DECODER_INPUTS)
    completed = _run_node(node, graph, seed_002_feeds(torch_features, CLICKS), tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert "inputNames are [image_embed,high_res_feats_0,high_res_feats_1,point_coords," in (
        completed.stderr
    )
    session = json.loads((tmp_path / "out" / "session.json").read_text(encoding="utf-8"))
    assert session["inputNames"] == list(SEED_002_INPUTS[:5])
