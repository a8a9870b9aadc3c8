"""imgembed's ONNX export as a drop-in for samexporter's ``export_sam2`` (seed 002's exporter).

Seed 002, the browser ONNX SAM 2 tool imgembed replaces, converts Meta's checkpoints with
``python -m samexporter.export_sam2`` and runs the two graphs in the browser. Here the same seeded
random SAM 2.1 tiny checkpoint is exported by both: samexporter (``samexporter==0.5.0``, installed
``--no-deps`` by ``scripts/bootstrap.sh test``; run in a subprocess exactly as its README says) and
imgembed (:func:`~imgembed.export.onnx_export.export_loaded_onnx`). Then, on ONNX Runtime's CPU
provider:

- graph I/O: imgembed's graphs have the inputs and outputs samexporter's source declares
  (``input_names``, ``output_names``, ``dynamic_axes`` of its ``torch.onnx`` export calls, read
  from the installed file) and that its written graphs have (names, order, float32, ranks, sizes);
- encoders on the same preprocessed image: relative L2 per feature map under 1e-4. Both are float32
  on identical weights but two implementations (Meta's modules traced by TorchScript, transformers'
  ``Sam2Model`` traced by torch.export), so the sums run in another order; 1e-4 is the bound
  imgembed's own ONNX-vs-PyTorch parity uses (tests/export/test_onnx_parity.py), 200 times the
  ~5e-7 measured;
- decoders on the same features (each encoder's in turn) and prompts: clicks (foreground and
  background), a box (labels 2 and 3), a second round with a previous mask (``mask_input`` from
  round one, ``has_mask_input`` 1), and clicks with a ``(0, 0)`` point labelled -1 that the client
  appended itself. Each graph gets what its own code says to send: samexporter's inputs are built
  by its own Python client (``samexporter.sam2_onnx.SAM2ImageDecoder`` and ``samexporter.prompts``),
  imgembed's by its frame mapping; neither client appends SAM's padding point (both graphs append
  it). Masks (logits > 0, in the same 256x256 grid) agree on over 99.9 %
  of cells and IoU predictions are within 1e-4.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imgembed.export.onnx_export import ExportResult
from imgembed.models.sam2_registry import resolve_variant
from imgembed.preprocess.sam2_frame import FrameMapping

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is in the 'onnx' extra")

pytestmark = pytest.mark.parity

SAMEXPORTER_VERSION = "0.5.0"
"""The version ``scripts/bootstrap.sh test`` installs."""
MODEL_TYPE = "sam2.1_hiera_tiny"
"""samexporter's ``--model_type`` for the session's SAM 2.1 tiny checkpoint."""
FEATURE_TOLERANCE = 1e-4
MASK_AGREEMENT = 0.999
IOU_TOLERANCE = 1e-4
IMAGE_HW = (480, 640)
"""The conftest's gradient image (``image_batch[0]``), in original pixels."""
FEATURE_NAMES = ("high_res_feats_0", "high_res_feats_1", "image_embed")
CPU = ["CPUExecutionProvider"]


def _samexporter_file() -> Path:
    """The installed ``samexporter/export_sam2.py``, without importing it; skips when absent."""
    spec = importlib.util.find_spec("samexporter")
    if spec is None or spec.origin is None:
        pytest.skip(
            "samexporter is not installed: `scripts/bootstrap.sh test` installs "
            f"samexporter=={SAMEXPORTER_VERSION} with --no-deps"
        )
    path = Path(spec.origin).parent / "export_sam2.py"
    if not path.is_file():
        pytest.fail(f"samexporter at {spec.origin} has no export_sam2.py")
    return path


@dataclass(frozen=True)
class DeclaredGraph:
    """What one ``torch.onnx`` export call in samexporter's source declares."""

    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


@dataclass(frozen=True)
class SamexporterSource:
    """``export_sam2.py`` as read from its syntax tree."""

    model_configs: dict[str, str]
    encoder: DeclaredGraph
    decoder: DeclaredGraph


def _literal_keywords(call: ast.Call) -> dict[str, Any]:
    return {
        keyword.arg: ast.literal_eval(keyword.value)
        for keyword in call.keywords
        if keyword.arg in {"input_names", "output_names", "dynamic_axes"}
    }


@pytest.fixture(scope="module")
def samexporter_source() -> SamexporterSource:
    """The graph I/O samexporter publishes, parsed from its installed source (not copied)."""
    tree = ast.parse(_samexporter_file().read_text())
    model_configs: dict[str, str] | None = None
    graphs: dict[str, DeclaredGraph] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "MODEL_CONFIGS" for target in node.targets
        ):
            model_configs = ast.literal_eval(node.value)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "export"
        ):
            keywords = _literal_keywords(node)
            if "output_names" not in keywords:
                continue
            role = "decoder" if "masks" in keywords["output_names"] else "encoder"
            graphs[role] = DeclaredGraph(
                input_names=keywords["input_names"],
                output_names=keywords["output_names"],
                dynamic_axes=keywords.get("dynamic_axes", {}),
            )
    assert model_configs is not None, "export_sam2.py has no MODEL_CONFIGS"
    assert set(graphs) == {"encoder", "decoder"}, f"export calls found: {sorted(graphs)}"
    return SamexporterSource(model_configs, graphs["encoder"], graphs["decoder"])


@pytest.fixture(scope="module")
def samexporter_export(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """samexporter's encoder and decoder of the session checkpoint, exported as its README says.

    Run in a subprocess: ``export_sam2`` is a script (argparse at module level, Hydra's global
    state). It imports only torch, onnx, hydra and Meta's sam2, none of them torchvision, so no
    stand-in is needed.
    """
    _samexporter_file()
    folder = tmp_path_factory.mktemp("samexporter")
    paths = {"encoder": folder / "encoder.onnx", "decoder": folder / "decoder.onnx"}
    command = [
        sys.executable,
        "-m",
        "samexporter.export_sam2",
        "--checkpoint",
        str(tiny_checkpoint),
        "--output_encoder",
        str(paths["encoder"]),
        "--output_decoder",
        str(paths["decoder"]),
        "--model_type",
        MODEL_TYPE,
    ]
    result = subprocess.run(
        command,
        cwd=folder,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    if result.returncode != 0:
        last_lines = "\n".join(result.stderr.strip().splitlines()[-5:])
        pytest.fail(f"{' '.join(command[1:4])} failed ({result.returncode}):\n{last_lines}")
    return paths


def _session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=CPU)


@pytest.fixture(scope="module")
def sessions(
    samexporter_export: dict[str, Path], onnx_export: ExportResult
) -> dict[str, dict[str, Any]]:
    """ONNX Runtime CPU sessions: ``{"samexporter"|"imgembed": {"encoder", "decoder"}}``."""
    return {
        "samexporter": {role: _session(path) for role, path in samexporter_export.items()},
        "imgembed": {role: _session(onnx_export.files[role]) for role in ("encoder", "decoder")},
    }


@pytest.fixture(scope="module")
def features(
    sessions: dict[str, dict[str, Any]], image_batch: torch.Tensor
) -> dict[str, dict[str, np.ndarray]]:
    """Each exporter's encoder output for the same preprocessed gradient image ``[1,3,1024,1024]``."""
    image = image_batch[:1].numpy()
    result = {}
    for exporter, graphs in sessions.items():
        encoder = graphs["encoder"]
        names = [output.name for output in encoder.get_outputs()]
        result[exporter] = dict(zip(names, encoder.run(None, {"image": image}), strict=True))
    return result


@pytest.fixture(scope="module")
def samexporter_client(samexporter_export: dict[str, Path]) -> Any:
    """samexporter's own Python decoder client (its input preparation is what we feed it)."""
    sam2_onnx = pytest.importorskip(
        "samexporter.sam2_onnx", reason="samexporter's client needs cv2 (opencv, a test extra)"
    )
    return sam2_onnx.SAM2ImageDecoder(
        str(samexporter_export["decoder"]), (1024, 1024), orig_im_size=IMAGE_HW, providers=CPU
    )


# Graph I/O


def _io(session: Any) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """``(inputs, outputs)`` as ``(name, type, shape)``; a shape entry is a size or an axis name."""

    def describe(arguments: list[Any]) -> list[tuple[str, str, list[Any]]]:
        return [(argument.name, argument.type, list(argument.shape)) for argument in arguments]

    return describe(session.get_inputs()), describe(session.get_outputs())


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_io_matches_samexporter_source(
    samexporter_source: SamexporterSource, onnx_export: ExportResult, role: str
) -> None:
    """Names and order of samexporter's declared inputs and outputs, and every axis it declares
    dynamic is dynamic in imgembed's graph too (so whatever sizes its clients send are accepted)."""
    declared: DeclaredGraph = getattr(samexporter_source, role)
    graphs = ["decoder", "decoder_single_mask"] if role == "decoder" else ["encoder"]
    for graph in graphs:
        inputs, outputs = _io(_session(onnx_export.files[graph]))
        assert [name for name, _, _ in inputs] == declared.input_names, graph
        assert [name for name, _, _ in outputs] == declared.output_names, graph
        assert {kind for _, kind, _ in inputs + outputs} == {"tensor(float)"}, graph
        shapes = {name: shape for name, _, shape in inputs}
        for name, axes in declared.dynamic_axes.items():
            for axis in axes:
                assert isinstance(shapes[name][axis], str), f"{graph} {name} axis {axis}"


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_io_matches_samexporter_graphs(sessions: dict[str, dict[str, Any]], role: str) -> None:
    """The written graphs: same names, order, dtypes and ranks; each of samexporter's fixed input
    sizes is the same fixed size in imgembed's graph or a dynamic axis there, and each of its
    dynamic input axes is dynamic in imgembed's."""
    peer_inputs, peer_outputs = _io(sessions["samexporter"][role])
    our_inputs, our_outputs = _io(sessions["imgembed"][role])
    for peer, ours in ((peer_inputs, our_inputs), (peer_outputs, our_outputs)):
        assert [(name, kind, len(shape)) for name, kind, shape in ours] == [
            (name, kind, len(shape)) for name, kind, shape in peer
        ]
    for (name, _, peer_shape), (_, _, our_shape) in zip(peer_inputs, our_inputs, strict=True):
        for axis, (peer_size, our_size) in enumerate(zip(peer_shape, our_shape, strict=True)):
            if isinstance(peer_size, int):
                assert our_size == peer_size or isinstance(our_size, str), f"{name}[{axis}]"
            else:
                assert isinstance(our_size, str), f"{name}[{axis}] is dynamic in samexporter's"


def test_model_types_name_the_same_models(samexporter_source: SamexporterSource) -> None:
    """Every ``--model_type`` samexporter accepts is an ``imgembed export onnx --model`` name for
    the same Meta config."""
    assert len(samexporter_source.model_configs) == 8
    for model_type, config in samexporter_source.model_configs.items():
        variant = resolve_variant(model_type)
        assert Path(variant.meta_config).name == Path(config).name, model_type


# Numbers


def test_encoders_agree(features: dict[str, dict[str, np.ndarray]]) -> None:
    for name in FEATURE_NAMES:
        ours = features["imgembed"][name].astype(np.float64)
        peer = features["samexporter"][name].astype(np.float64)
        assert ours.shape == peer.shape, name
        error = np.linalg.norm(ours - peer) / np.linalg.norm(peer)
        print(f"{name}: relative L2 {error:.1e}, max |diff| {np.abs(ours - peer).max():.1e}")
        assert error < FEATURE_TOLERANCE, f"{name}: relative L2 {error:.2e}"


CLICKS = [
    {"type": "point", "data": [300, 200], "label": 1},
    {"type": "point", "data": [500, 400], "label": 0},
]
BOX = [{"type": "rectangle", "data": [100, 80, 400, 350]}]


def _imgembed_prompt(marks: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """imgembed's inputs for the same marks: pixels mapped with the embed response's frame
    mapping (stretch: ``x' = x * 1024 / W``), boxes as corners labelled 2 and 3, no padding point."""
    mapping = FrameMapping.for_image(*IMAGE_HW, 1024, "stretch")
    points: list[list[float]] = []
    labels: list[float] = []
    for mark in marks:
        if mark["type"] == "point":
            points.append(mark["data"])
            labels.append(mark["label"])
        else:
            x0, y0, x1, y1 = mark["data"]
            points += [[x0, y0], [x1, y1]]
            labels += [2, 3]
    coords = mapping.to_frame(np.array(points))[None].astype(np.float32)  # [N,2] -> [1,N,2]
    return coords, np.array([labels], np.float32)  # [1,N]


def _run(session: Any, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    masks, iou = session.run(["masks", "iou_predictions"], feeds)
    return masks, iou


def _decode_both(
    sessions: dict[str, dict[str, Any]],
    client: Any,
    features: dict[str, np.ndarray],
    marks: list[dict[str, Any]],
    mask_input: np.ndarray | None = None,
    *,
    padding_point: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both decoders on the same features and marks, each fed as its own client code feeds it.

    ``padding_point``: then also append a ``(0, 0)`` point labelled -1 to both feeds, as a client
    written for SAM 1's ONNX decoder does.
    """
    from samexporter.prompts import geometric_prompt_arrays

    peer_points, peer_labels = geometric_prompt_arrays(marks)
    peer_inputs = client.prepare_inputs(
        features["image_embed"],
        features["high_res_feats_0"],
        features["high_res_feats_1"],
        peer_points,
        peer_labels,
    )
    peer_feeds = dict(zip(client.input_names, peer_inputs, strict=True))
    coords, labels = _imgembed_prompt(marks)
    # The two clients put the prompt in the same place: no padding point, the same 1024 frame.
    np.testing.assert_allclose(peer_feeds["point_coords"], coords, atol=1e-3)
    np.testing.assert_array_equal(peer_feeds["point_labels"], labels)
    our_feeds = {
        **{name: features[name] for name in FEATURE_NAMES},
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    }
    if mask_input is not None:
        for feeds in (peer_feeds, our_feeds):
            feeds["mask_input"] = mask_input
            feeds["has_mask_input"] = np.ones(1, np.float32)
    if padding_point:
        for feeds in (peer_feeds, our_feeds):
            feeds["point_coords"] = np.concatenate(
                [feeds["point_coords"], np.zeros((1, 1, 2), np.float32)], axis=1
            )  # [1,N,2] -> [1,N+1,2]
            feeds["point_labels"] = np.concatenate(
                [feeds["point_labels"], -np.ones((1, 1), np.float32)], axis=1
            )  # [1,N] -> [1,N+1]
    return {
        "samexporter": _run(sessions["samexporter"]["decoder"], peer_feeds),
        "imgembed": _run(sessions["imgembed"]["decoder"], our_feeds),
    }


def _assert_agree(outputs: dict[str, tuple[np.ndarray, np.ndarray]], label: str) -> None:
    (peer_masks, peer_iou), (masks, iou) = outputs["samexporter"], outputs["imgembed"]
    assert masks.shape == peer_masks.shape == (1, 3, 256, 256), label
    assert iou.shape == peer_iou.shape == (1, 3), label
    agreement = ((masks > 0) == (peer_masks > 0)).mean()
    inside = (peer_masks > 0).mean()
    iou_difference = np.abs(iou - peer_iou).max()
    print(
        f"{label}: mask agreement {agreement:.6f}, IoU max |diff| {iou_difference:.1e}, "
        f"{inside:.1%} inside"
    )
    assert agreement > MASK_AGREEMENT, f"{label}: mask agreement {agreement:.5f}"
    # Not trivially all inside or all outside, so agreement means something.
    assert 0.001 < inside < 0.999, f"{label}: masks are {inside:.1%} inside"
    assert iou_difference < IOU_TOLERANCE, f"{label}: IoU differs by {iou_difference:.1e}"


@pytest.mark.parametrize("feature_source", ["imgembed", "samexporter"])
def test_decoders_agree(
    sessions: dict[str, dict[str, Any]],
    samexporter_client: Any,
    features: dict[str, dict[str, np.ndarray]],
    feature_source: str,
) -> None:
    """Clicks, a box, the clicks again with round one's best mask as ``mask_input``, and the clicks
    with an extra padding point appended by the client."""
    same_features = features[feature_source]
    clicks = _decode_both(sessions, samexporter_client, same_features, CLICKS)
    _assert_agree(clicks, f"{feature_source} features, clicks")
    box = _decode_both(sessions, samexporter_client, same_features, BOX)
    _assert_agree(box, f"{feature_source} features, box")
    masks, iou = clicks["imgembed"]
    best = masks[:, [int(iou[0].argmax())]]  # [1,3,256,256] -> [1,1,256,256]
    refined = _decode_both(sessions, samexporter_client, same_features, CLICKS, best)
    _assert_agree(refined, f"{feature_source} features, clicks + previous mask")
    # The mask prompt changed the result, so it was used by both graphs.
    assert not np.allclose(refined["samexporter"][0], clicks["samexporter"][0])
    padded = _decode_both(sessions, samexporter_client, same_features, CLICKS, padding_point=True)
    _assert_agree(padded, f"{feature_source} features, clicks + a client's own padding point")


def test_prompt_batch(
    sessions: dict[str, dict[str, Any]],
    samexporter_client: Any,
    features: dict[str, dict[str, np.ndarray]],
) -> None:
    """Two prompts in one call (what docs/switching-from-samexporter.md says about it).

    samexporter's own client builds ``has_mask_input`` of shape ``[B]``, which its graph refuses
    for B = 2; its graph takes two prompts with ``mask_input [2,...]`` and ``has_mask_input [1]``,
    and then agrees with imgembed's, which takes both ``has_mask_input [2]`` and ``[1]``.
    """
    from samexporter.prompts import geometric_prompt_arrays

    same = features["imgembed"]
    prompts = [geometric_prompt_arrays(CLICKS), geometric_prompt_arrays(BOX)]
    peer_inputs = samexporter_client.prepare_inputs(
        same["image_embed"],
        same["high_res_feats_0"],
        same["high_res_feats_1"],
        [points for points, _ in prompts],
        [labels for _, labels in prompts],
    )
    feeds = dict(zip(samexporter_client.input_names, peer_inputs, strict=True))
    assert feeds["has_mask_input"].shape == (2,)
    refusal = ort.capi.onnxruntime_pybind11_state.Fail
    with pytest.raises(refusal, match="broadcast"):
        sessions["samexporter"]["decoder"].run(None, feeds)
    shared_flag = {**feeds, "has_mask_input": np.zeros(1, np.float32)}
    peer = _run(sessions["samexporter"]["decoder"], shared_flag)
    for label, our_feeds in (("has_mask_input [2]", feeds), ("has_mask_input [1]", shared_flag)):
        ours = _run(sessions["imgembed"]["decoder"], our_feeds)
        for index in range(2):
            _assert_agree(
                {
                    "samexporter": (peer[0][index : index + 1], peer[1][index : index + 1]),
                    "imgembed": (ours[0][index : index + 1], ours[1][index : index + 1]),
                },
                f"prompt {index} of a batch of 2, imgembed fed {label}",
            )
