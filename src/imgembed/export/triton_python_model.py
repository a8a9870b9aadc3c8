"""The ``model.py`` of a Triton Python-backend model: runs ``model.onnx`` beside it with ONNX Runtime.

``imgembed export triton --backend python`` copies this file, unchanged, into each model's version
folder (``sam2_encoder/1/model.py`` beside ``sam2_encoder/1/model.onnx``). It runs inside Triton's
Python backend stub, not in imgembed: it imports only the standard library, numpy and
onnxruntime, which the stub's Python environment must have (numpy below 2 for the Triton 2.51
stub of ``nvidia-pytriton`` 0.7.0, built against numpy 1; see ``scripts/triton_server.sh``).

What it does is what Triton's ONNX Runtime backend does with the same ``config.pbtxt``:

- The inputs a request carries are fed by name; an optional input a request leaves out
  (``mask_input`` and ``has_mask_input`` of the unbatched decoder) is not fed, and ONNX Runtime
  uses the zero default the export wrote into the graph.
- A batching model (``max_batch_size`` > 0) gets the batch Triton's dynamic batcher formed as a
  list of requests: their inputs are joined on the batch axis, the graph runs once, and each
  request gets its own rows of every output back.
- Outputs are those the config lists; Triton sends a client the ones it asked for.

ONNX Runtime's telemetry is turned off (``ORT_DISABLE_TELEMETRY=1`` unless the environment says
otherwise) before onnxruntime is imported: the PyPI onnxruntime otherwise looks up Microsoft's
event collector from a background thread a few seconds after start-up, which a model server has
no business doing.

Config parameters read (all optional, as strings): ``intra_op_thread_count`` and
``inter_op_thread_count`` (ONNX Runtime's thread pools, as the ONNX Runtime backend names them).
A ``KIND_GPU`` instance uses ONNX Runtime's CUDA provider when the installed onnxruntime has it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # read when onnxruntime starts its runtime
import onnxruntime as ort  # after the line above, on purpose

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton's stub (imgembed's own imports and tests)
    pb_utils = None

GRAPH_FILE = "model.onnx"
"""The graph's file name in the model's version folder."""


def _string_parameters(config: dict[str, Any]) -> dict[str, str]:
    """The config's ``parameters`` as plain strings."""
    return {
        key: str(value.get("string_value", ""))
        for key, value in config.get("parameters", {}).items()
    }


def session_options(parameters: dict[str, str]) -> ort.SessionOptions:
    """ONNX Runtime options from the config's thread parameters.

    Args:
        parameters: The config's parameters (:func:`_string_parameters`).

    Returns:
        Options with the thread pools set where a parameter names a positive count.

    Raises:
        ValueError: A thread parameter is not an integer.
    """
    options = ort.SessionOptions()
    for key, attribute in (
        ("intra_op_thread_count", "intra_op_num_threads"),
        ("inter_op_thread_count", "inter_op_num_threads"),
    ):
        text = parameters.get(key, "").strip()
        if not text:
            continue
        try:
            count = int(text)
        except ValueError as error:
            raise ValueError(
                f"config parameter {key} must be an integer thread count, got {text!r}; set it "
                "to 0 to let ONNX Runtime choose"
            ) from error
        setattr(options, attribute, max(count, 0))
    return options


def split_rows(outputs: list[np.ndarray], sizes: list[int]) -> list[list[np.ndarray]]:
    """Cuts each batched output into the rows of each request.

    Args:
        outputs: The graph's outputs for the joined batch, each ``[sum(sizes), ...]``.
        sizes: Each request's batch size, in order.

    Returns:
        Per request, its outputs (``[size, ...]`` each), contiguous.
    """
    bounds = np.cumsum(sizes)[:-1]
    pieces = [np.split(output, bounds) for output in outputs]
    return [[np.ascontiguousarray(piece[index]) for piece in pieces] for index in range(len(sizes))]


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        """Opens the graph of this model version.

        Args:
            args: What Triton passes: ``model_config`` (JSON), ``model_repository`` (the
                model's folder), ``model_version``, ``model_instance_kind`` and the rest.

        Raises:
            FileNotFoundError: The version folder has no ``model.onnx``.
            RuntimeError: A ``KIND_GPU`` instance asked for CUDA (the stub's onnxruntime has it)
                and the session does not run on it.
        """
        config = json.loads(args["model_config"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [tensor["name"] for tensor in config.get("input", [])]
        self.output_names = [tensor["name"] for tensor in config.get("output", [])]
        graph = Path(args["model_repository"]) / str(args["model_version"]) / GRAPH_FILE
        if not graph.is_file():
            raise FileNotFoundError(
                f"expected the ONNX graph at {graph} (imgembed export triton --backend python "
                "writes it beside model.py); got no such file. Export the repository again."
            )
        providers = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        options = session_options(_string_parameters(config))
        # ONNX Runtime's own fallback would print a line and carry on with the CPU.
        self.session = ort.InferenceSession(
            str(graph), options, providers=providers, enable_fallback=0
        )
        if len(providers) > 1 and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError(
                f"this KIND_GPU instance asked ONNX Runtime {ort.__version__} for "
                f"CUDAExecutionProvider, but the session runs on {self.session.get_providers()}: "
                "the provider did not start (usually CUDA 12 or cuDNN 9 libraries missing from the "
                "stub's environment; ONNX Runtime's message above names the library). Install "
                "them (pip install 'onnxruntime-gpu[cuda,cudnn]'), or give the model instance "
                "kind cpu."
            )

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        """The request's inputs by name; inputs it left out are not fed."""
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = tensor.as_numpy()
        return feeds

    def run(self, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Runs the graph for a batch of requests' feeds.

        A batching model joins requests that feed the same inputs and runs the graph once;
        otherwise each request runs alone.

        Args:
            feeds: Each request's inputs by name.

        Returns:
            Each request's outputs, in :attr:`output_names` order.
        """
        if self.batching and len(feeds) > 1 and all(f.keys() == feeds[0].keys() for f in feeds):
            sizes = [next(iter(feed.values())).shape[0] for feed in feeds]
            joined = {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}
            return split_rows(self.session.run(self.output_names, joined), sizes)
        return [self.session.run(self.output_names, feed) for feed in feeds]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answers one batch of requests, in order.

        Args:
            requests: The batch Triton formed (one request for an unbatched model, unless
                several instances or sequence batching say otherwise).

        Returns:
            One response per request: its outputs. An error ONNX Runtime raises fails every
            request of the batch; Triton's Python backend answers each with its message.
        """
        results = self.run([self._feeds(request) for request in requests])
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, value)
                    for name, value in zip(self.output_names, outputs, strict=True)
                ]
            )
            for outputs in results
        ]

    def finalize(self) -> None:
        """Drops the session when Triton unloads the model."""
        self.session = None
