"""ONNX Runtime backend for SAM 2: the PyTorch path's two operations, run on exported graphs.

:class:`OnnxSam2Backend` loads a folder that :func:`~imgembed.export.onnx_export.export_onnx`
wrote and offers what the engine calls on a PyTorch model:

- :meth:`OnnxSam2Backend.encode`: ``[B,3,1024,1024]`` pixels to
  :class:`~imgembed.models.sam2.Sam2Features`, as :func:`~imgembed.models.sam2.encode_images`.
- :meth:`OnnxSam2Backend.decode`: features and prompts to
  :class:`~imgembed.models.sam2_decoder.Sam2MaskPrediction`, with the semantics and the input
  checks of :func:`~imgembed.models.sam2_decoder.decode_masks` (``multimask_output=False`` runs
  ``decoder_single_mask.onnx``).

Results are float32 torch tensors. On the CPU provider they come back through ``session.run``
(host memory, as before). When the session runs on a GPU (CUDA or TensorRT), :meth:`encode` binds
its outputs (:mod:`imgembed.export.onnx_binding`): ONNX Runtime writes the features straight into
torch tensors on :attr:`OnnxSam2Backend.output_device`, where the PyTorch decoder and the feature
cache use them, with no round trip through host memory.

Execution provider (:mod:`imgembed.export.onnx_providers`): ``auto`` takes CUDA when ONNX Runtime
offers it (the ``onnxruntime-gpu`` package, from the ``onnx-gpu`` extra) and falls back to the CPU
with a warning; ``cuda`` and ``tensorrt`` fail at start-up unless every session runs on them. The
provider in use is in :meth:`OnnxSam2Backend.describe` (``/v1/models``). Threads (CPU provider):
``intra_op_threads`` is how many threads one operator uses (0 lets ONNX Runtime pick: one per
physical core); ``inter_op_threads`` only matters with parallel execution, which is off, so
operators run one after another. Each session is safe to call from several threads, but the
engine runs a model on one device thread, so the intra-op threads are the ones to size against the
other work on the machine.

Needs the ``onnx`` extra (``pip install 'imgembed[onnx]'``), or for CUDA the ``onnx-gpu`` extra
in its place (``onnxruntime-gpu``; the two ONNX Runtime packages must not be installed together).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from imgembed.errors import ImgembedError
from imgembed.export.onnx_binding import run_bound
from imgembed.export.onnx_metadata import ExportResult, read_export
from imgembed.export.onnx_providers import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    ActiveProviders,
    GraphOptimization,
    OnnxRuntimeSettings,
    ProviderList,
    choose_providers,
    installed_runtime_packages,
    open_session,
)
from imgembed.export.sam2_io import DECODER_INPUTS
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction, check_decoder_inputs

try:
    import onnxruntime as ort
except ImportError as e:
    raise ImportError(
        "the ONNX Runtime backend needs the 'onnx' extra: pip install 'imgembed[onnx]' "
        "(or 'imgembed[onnx-gpu]' in its place for CUDA)"
    ) from e

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "TENSORRT_PROVIDER",
    "OnnxRuntimeSettings",
    "OnnxSam2Backend",
    "ProviderList",
    "choose_providers",
]

logger = logging.getLogger(__name__)

_OPTIMIZATION_LEVELS: dict[GraphOptimization, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_ERROR_SEVERITY = 3
"""ONNX Runtime log level that keeps errors only (its constant-folding notes are noise here)."""


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
        settings: Execution provider, its options, and threads.
        output_device: Where :meth:`encode` leaves the features when the sessions run on a GPU
            (the PyTorch decoder's device); ``None``: the provider's own GPU. Ignored on the CPU
            provider.

    Attributes:
        active: The providers the sessions run on, and why ``auto`` fell back to the CPU.
        output_device: Where :meth:`encode` binds its outputs (I/O binding); ``None`` (the CPU
            provider) runs ``session.run`` and returns host tensors.

    Raises:
        ModelLoadError: A graph cannot be loaded, or a requested CUDA or TensorRT provider is
            missing or did not start.
    """

    def __init__(
        self,
        export: ExportResult,
        settings: OnnxRuntimeSettings | None = None,
        *,
        output_device: torch.device | None = None,
    ) -> None:
        self.export = export
        self.settings = settings or OnnxRuntimeSettings()
        self.packages = installed_runtime_packages()
        if len(self.packages) > 1:
            logger.error(
                "%s are all installed: they overwrite each other's onnxruntime files, which can "
                "break either. Uninstall all of them and install one: pip install "
                "'imgembed[onnx]' (CPU) or 'imgembed[onnx-gpu]' (CUDA).",
                " and ".join(self.packages),
            )
        options = _session_options(self.settings)
        gpu_present = torch.cuda.is_available()
        self._sessions: dict[str, ort.InferenceSession] = {}
        actives: dict[str, ActiveProviders] = {}
        for role, path in export.files.items():
            session, active = open_session(
                str(path), options, self.settings, gpu_present=gpu_present
            )
            self._sessions[role] = session
            actives[role] = active
        self.active = actives.get("encoder") or next(iter(actives.values()))
        self.output_device: torch.device | None = None
        if self.active.on_gpu:
            self.output_device = output_device or torch.device("cuda", self.settings.device_id)
        logger.info(
            "ONNX Runtime backend: %s (%s) from %s on %s (asked: %s)%s",
            self.model_id,
            export.precision,
            export.out_dir,
            self.active.active,
            self.settings.provider,
            f", features bound to {self.output_device}" if self.output_device else "",
        )

    @classmethod
    def from_dir(
        cls,
        onnx_dir: str | os.PathLike[str],
        settings: OnnxRuntimeSettings | None = None,
        *,
        output_device: torch.device | None = None,
    ) -> OnnxSam2Backend:
        """Loads the export in ``onnx_dir`` (arguments as the class's).

        Raises:
            InvalidInputError: The folder is not an imgembed ONNX export.
            ModelLoadError: A graph cannot be loaded, or a requested provider is not active.
        """
        return cls(read_export(onnx_dir), settings, output_device=output_device)

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
        return list(self.active.providers)

    @property
    def device(self) -> torch.device:
        """Where the computation runs: ``cuda:N`` on the CUDA or TensorRT provider, else ``cpu``."""
        if self.active.on_gpu:
            return torch.device("cuda", self.settings.device_id)
        return torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        """The backend as ``/v1/models`` lists it: the provider in use and what was asked."""
        return {
            "backend": "onnxruntime",
            "onnxruntime": ort.__version__,
            "packages": self.packages,
            "requested_provider": self.active.requested,
            "provider": self.active.active,
            "providers": self.providers,
            "fallback": self.active.fallback,
            "device": str(self.device),
            "io_binding": self.output_device is not None,
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
            ``high_res_feats_1 [B,64,128,128]``, float32, as
            :func:`~imgembed.models.sam2.encode_images` returns them: on :attr:`output_device`
            when the session runs on a GPU (bound outputs), else on the CPU.

        Raises:
            ValueError: ``pixel_values`` is not ``[B,3,1024,1024]``.
        """
        side = SAM2_INPUT_SIZE
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, side, side):
            raise ValueError(
                f"pixel_values must be [B,3,{side},{side}], got {list(pixel_values.shape)}"
            )
        session = self._sessions["encoder"]
        if self.output_device is not None:
            by_name = run_bound(session, {"image": _tensor(pixel_values)}, self.output_device)
        else:
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
