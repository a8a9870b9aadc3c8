"""A stand-in of SAM 2's exported encoder for ONNX Runtime tests: the same input and output names,
small fixed output shapes, built in milliseconds (the real export takes minutes)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from imgembed.export.onnx_metadata import ExportResult

SIDE = 1024
LEVELS = {"image_embed": 16, "high_res_feats_0": 4, "high_res_feats_1": 8}
"""Each stand-in output is the image max-pooled by this stride: [B,3,64,64], [B,3,256,256] and
[B,3,128,128]."""


def stand_in_encoder(path: Path) -> Path:
    """An ``encoder.onnx`` with SAM 2's input and output names: ``image [batch,3,1024,1024]`` to
    three max-pooled maps whose sizes are fixed but for the batch."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])
    nodes, outputs = [], []
    for name, stride in LEVELS.items():
        pool = helper.make_node(
            "MaxPool", ["image"], [name], kernel_shape=[stride, stride], strides=[stride, stride]
        )
        nodes.append(pool)
        size = SIDE // stride
        outputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, size, size])
        )
    graph = helper.make_graph(nodes, "stand_in_encoder", [image], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def stand_in_export(encoder_path: Path) -> ExportResult:
    """An export result listing only the stand-in encoder."""
    metadata = {"model_id": "sam2.1-hiera-tiny", "weights": {"untrained": True}, "opset": 18}
    return ExportResult(
        out_dir=encoder_path.parent,
        precision="fp32",
        files={"encoder": encoder_path},
        metadata_path=encoder_path.parent / "imgembed-export.json",
        metadata=metadata,
    )
