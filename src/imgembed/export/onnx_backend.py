"""ONNX Runtime backend for SAM 2: the PyTorch path's two operations, run on exported graphs.

:class:`OnnxSam2Backend` loads a folder that :func:`~imgembed.export.onnx_export.export_onnx`
wrote and offers what the engine calls on a PyTorch model:

- :meth:`OnnxSam2Backend.encode`: ``[B,3,1024,1024]`` pixels to
  :class:`~imgembed.models.sam2.Sam2Features`, as :func:`~imgembed.models.sam2.encode_images`.
- :meth:`OnnxSam2Backend.decode`: features and prompts to
  :class:`~imgembed.models.sam2_decoder.Sam2MaskPrediction`, with the semantics and the input
  checks of :func:`~imgembed.models.sam2_decoder.decode_masks` (``multimask_output=False`` runs
  ``decoder_single_mask.onnx``).

Results are float32 CPU torch tensors whatever the execution provider, so the rest of the engine
handles them as it handles the PyTorch path's.

Execution provider: ``auto`` takes CUDA when ONNX Runtime offers it (the ``onnxruntime-gpu``
package on a machine with a GPU), else the CPU. Threads (CPU provider): ``intra_op_threads`` is how
many threads one operator uses (0 lets ONNX Runtime pick: one per physical core);
``inter_op_threads`` only matters with parallel execution, which is off, so operators run one after
another. Each session is safe to call from several threads, but the engine runs a model on one
device thread, so the intra-op threads are the ones to size against the other work on the machine.

Needs the ``onnx`` extra (``pip install 'imgembed[onnx]'``; ``onnxruntime-gpu`` instead of
``onnxruntime`` for CUDA).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from imgembed.errors import ImgembedError, ModelLoadError
from imgembed.export.onnx_metadata import ExportResult, read_export
from imgembed.export.sam2_io import DECODER_INPUTS
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction, check_decoder_inputs

# ONNX Runtime 1.32 sends telemetry (a DNS lookup of a Microsoft host) unless this is set.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

try:
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
except ImportError as e:
    raise ImportError(
        "the ONNX Runtime backend needs the 'onnx' extra: pip install 'imgembed[onnx]' "
        "(onnxruntime-gpu instead of onnxruntime for CUDA)"
    ) from e

logger = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cuda", "cpu"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.InvalidGraph,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    RuntimeError,
)
"""What ``InferenceSession`` raises for a file it cannot load."""
_ERROR_SEVERITY = 3
"""ONNX Runtime log level that keeps errors only (its constant-folding notes are noise here)."""


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    """How the ONNX Runtime sessions run.

    Attributes:
        provider: ``auto`` (CUDA when available, else CPU), ``cuda`` (fail without it) or ``cpu``.
        intra_op_threads: Threads one operator may use on the CPU; 0 lets ONNX Runtime choose
            (one per physical core).
        inter_op_threads: Threads for running independent operators at once; only used with
            parallel execution, which these sessions do not enable.
        device_id: CUDA device index.
        graph_optimization: ONNX Runtime graph optimisation level.
    """

    provider: ProviderChoice = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    device_id: int = 0
    graph_optimization: GraphOptimization = "all"


def choose_providers(settings: OnnxRuntimeSettings) -> list[str | tuple[str, dict[str, Any]]]:
    """The execution providers to ask ONNX Runtime for, best first.

    Raises:
        ModelLoadError: ``cuda`` was asked for and this ONNX Runtime has no CUDA provider.
    """
    available = ort.get_available_providers()
    cuda = (CUDA_PROVIDER, {"device_id": settings.device_id})
    if settings.provider == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [cuda, CPU_PROVIDER]
    if settings.provider == "cuda":
        raise ModelLoadError(
            f"The ONNX Runtime backend was asked for CUDA, but onnxruntime {ort.__version__} "
            f"offers only {available}. Install onnxruntime-gpu (in place of onnxruntime) on a "
            "machine with an NVIDIA GPU, or choose the cpu or auto provider."
        )
    return [CPU_PROVIDER]


def _session_options(settings: OnnxRuntimeSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[settings.graph_optimization]
    options.log_severity_level = _ERROR_SEVERITY
    return options


def _float32_array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A contiguous float32 NumPy array of ``values`` (copied to the CPU when needed)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(values, dtype=np.float32)


def _tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))


class OnnxSam2Backend:
    """SAM 2 encoder and decoder on ONNX Runtime.

    Args:
        export: The export to run (see :func:`~imgembed.export.onnx_metadata.read_export`).
        settings: Execution provider and threads.

    Raises:
        ModelLoadError: A graph cannot be loaded, or CUDA was required and is missing.
    """

    def __init__(self, export: ExportResult, settings: OnnxRuntimeSettings | None = None) -> None:
        self.export = export
        self.settings = settings or OnnxRuntimeSettings()
        providers = choose_providers(self.settings)
        options = _session_options(self.settings)
        self._sessions: dict[str, ort.InferenceSession] = {}
        for role, path in export.files.items():
            try:
                self._sessions[role] = ort.InferenceSession(
                    str(path), sess_options=options, providers=providers
                )
            except _LOAD_ERRORS as error:
                raise ModelLoadError(
                    f"ONNX Runtime cannot load {path}: {str(error).splitlines()[0]}. Export the "
                    "model again with `imgembed export onnx`."
                ) from error
        logger.info(
            "ONNX Runtime backend: %s (%s) from %s on %s",
            self.model_id,
            export.precision,
            export.out_dir,
            self.providers,
        )

    @classmethod
    def from_dir(
        cls, onnx_dir: str | os.PathLike[str], settings: OnnxRuntimeSettings | None = None
    ) -> OnnxSam2Backend:
        """Loads the export in ``onnx_dir``.

        Raises:
            InvalidInputError: The folder is not an imgembed ONNX export.
            ModelLoadError: A graph cannot be loaded.
        """
        return cls(read_export(onnx_dir), settings)

    @property
    def model_id(self) -> str:
        """Canonical name of the exported model, for example ``sam2.1-hiera-tiny``."""
        return str(self.export.metadata["model_id"])

    @property
    def untrained(self) -> bool:
        """Whether the export was made from random (dummy) weights."""
        return bool(self.export.metadata["weights"]["untrained"])

    @property
    def providers(self) -> list[str]:
        """Execution providers the encoder session runs on, best first."""
        return self._sessions["encoder"].get_providers()

    @property
    def device(self) -> torch.device:
        """Where the computation runs (results always come back on the CPU)."""
        if CUDA_PROVIDER in self.providers:
            return torch.device("cuda", self.settings.device_id)
        return torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        """The backend as ``/v1/models`` may list it."""
        return {
            "backend": "onnxruntime",
            "onnxruntime": ort.__version__,
            "providers": self.providers,
            "precision": self.export.precision,
            "opset": self.export.metadata["opset"],
            "folder": str(self.export.out_dir),
            "intra_op_threads": self.settings.intra_op_threads,
            "single_mask_decoder": "decoder_single_mask" in self._sessions,
        }

    def encode(self, pixel_values: torch.Tensor | np.ndarray) -> Sam2Features:
        """Runs the encoder graph.

        Args:
            pixel_values: ``[B,3,1024,1024]`` normalised images (ImageNet mean/std), any float
                dtype, any device.

        Returns:
            ``image_embed [B,256,64,64]``, ``high_res_feats_0 [B,32,256,256]`` and
            ``high_res_feats_1 [B,64,128,128]``, float32 on the CPU, as
            :func:`~imgembed.models.sam2.encode_images` returns them.

        Raises:
            ValueError: ``pixel_values`` is not ``[B,3,1024,1024]``.
        """
        side = SAM2_INPUT_SIZE
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, side, side):
            raise ValueError(
                f"pixel_values must be [B,3,{side},{side}], got {list(pixel_values.shape)}"
            )
        session = self._sessions["encoder"]
        outputs = session.run(None, {"image": _float32_array(pixel_values)})
        by_name = {
            output.name: torch.from_numpy(value)
            for output, value in zip(session.get_outputs(), outputs, strict=True)
        }
        return Sam2Features(
            image_embed=by_name["image_embed"],
            high_res_feats_0=by_name["high_res_feats_0"],
            high_res_feats_1=by_name["high_res_feats_1"],
        )

    def decode(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor | np.ndarray,
        point_labels: torch.Tensor | np.ndarray,
        mask_input: torch.Tensor | np.ndarray,
        has_mask_input: torch.Tensor | np.ndarray,
        *,
        multimask_output: bool = True,
    ) -> Sam2MaskPrediction:
        """Runs the decoder graph on B prompts, as
        :func:`~imgembed.models.sam2_decoder.decode_masks` does.

        Args:
            features: ``[1|B,...]`` encoder features (from either backend).
            point_coords: ``[B,N,2]`` ``(x, y)`` in the 1024x1024 input frame; boxes as two
                points labelled 2 and 3.
            point_labels: ``[B,N]`` labels -1, 0, 1, 2, 3 (integer or float).
            mask_input: ``[1|B,1,256,256]`` mask logits from an earlier round.
            has_mask_input: ``[1|B]`` 1 to use ``mask_input``, 0 to ignore it.
            multimask_output: Three masks per prompt; ``False`` for one, with the stability
                fallback (needs ``decoder_single_mask.onnx`` in the export).

        Returns:
            ``masks [B,K,256,256]`` clamped logits (stride 4 of the 1024 frame) and
            ``iou_predictions [B,K]``, K = 3 or 1, float32 on the CPU.

        Raises:
            ValueError: A tensor's shape does not fit; the message names it.
            ImgembedError: Single-mask output was asked for and the export has no single-mask
                decoder.
        """
        check_decoder_inputs(
            features,
            _tensor(point_coords),
            _tensor(point_labels),
            _tensor(mask_input),
            _tensor(has_mask_input),
        )
        role = "decoder" if multimask_output else "decoder_single_mask"
        session = self._sessions.get(role)
        if session is None:
            raise ImgembedError(
                f"The ONNX export in {self.export.out_dir} has no decoder_single_mask.onnx, so it "
                "cannot return one mask per prompt. Export again with the single-mask decoder "
                "(the default of `imgembed export onnx`)."
            )
        values = {
            "image_embed": features.image_embed,
            "high_res_feats_0": features.high_res_feats_0,
            "high_res_feats_1": features.high_res_feats_1,
            "point_coords": point_coords,
            "point_labels": point_labels,
            "mask_input": mask_input,
            "has_mask_input": has_mask_input,
        }
        feeds = {tensor.name: _float32_array(values[tensor.name]) for tensor in DECODER_INPUTS}
        masks, iou_predictions = session.run(["masks", "iou_predictions"], feeds)
        return Sam2MaskPrediction(
            masks=torch.from_numpy(masks), iou_predictions=torch.from_numpy(iou_predictions)
        )
