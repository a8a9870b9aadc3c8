"""The SAM 2 decoder graphs the browser runs: exported from the served model on first request.

Why on demand and not at start-up: an export traces the model (tens of seconds on a small CPU) and
only people who open the page need it, so the service's start-up and readiness do not wait for
it. Why on disk: the export is kept in a cache folder, keyed by the served weights, so it is paid
once per set of weights, not once per process.

The key is a hash of every parameter and buffer outside the image encoder (the prompt encoder, mask
decoder and positional embedding the decoder graph is made of), the model name, and the versions
of imgembed and of the export format: new weights, or a new exporter, get a new folder; a restart
with the same weights finds the graphs already there. The export runs on a copy of the served
model on the CPU, in a worker thread, so requests keep being served by the original meanwhile;
concurrent first requests for one model share one export.

Layout: ``<export_dir>/<model>-<key>/`` holds what
:func:`~imgembed.export.onnx_export.export_loaded_onnx` writes (``encoder.onnx``, ``decoder.onnx``,
``decoder_single_mask.onnx``, ``imgembed-export.json``: the same format as ``imgembed export``).
Browsers get the decoder graphs as exported: every input, ``mask_input`` and ``has_mask_input``
included, is a plain graph input, as onnxruntime-web needs to accept seed 002's seven feeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Literal

import torch

import imgembed
from imgembed.errors import ImgembedError, ServiceUnavailableError
from imgembed.models.sam2_loading import LoadedSam2

logger = logging.getLogger(__name__)

DecoderGraph = Literal["decoder", "decoder_single_mask"]
"""``decoder``: three masks per prompt; ``decoder_single_mask``: one, with the stability fallback."""

DECODER_FILES: dict[DecoderGraph, str] = {
    "decoder": "decoder.onnx",
    "decoder_single_mask": "decoder_single_mask.onnx",
}
ENCODER_PREFIX = "vision_encoder."
"""State-dict prefix of the image encoder, whose weights the decoder graphs do not hold."""
CACHE_LAYOUT_VERSION = 2
"""2: the exported graphs are served as they are (1 kept browser copies in ``web/``)."""


def default_export_dir() -> Path:
    """``~/.cache/imgembed/ui-decoders``: where decoder graphs go when no folder is configured."""
    return Path.home() / ".cache" / "imgembed" / "ui-decoders"


def decoder_weights_key(loaded: LoadedSam2) -> str:
    """A 20-hex-digit hash of what the decoder graphs are made of (see the module docstring)."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(
        f"{loaded.variant.name}|imgembed {imgembed.__version__}|layout {CACHE_LAYOUT_VERSION}".encode()
    )
    for name, tensor in sorted(loaded.model.state_dict().items()):
        if name.startswith(ENCODER_PREFIX):
            continue
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{list(values.shape)}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def _onnx_extra_missing(error: ImportError) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The browser page needs the SAM 2 decoder as ONNX, and exporting it needs the onnx "
        f"extra, which is not installed ({error}). Install it on the server with "
        "pip install 'imgembed[onnx]' and restart.",
        field="model",
    )


def host_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of ``model`` in host memory, for exporting beside the served original.

    The copy is built without storage and filled tensor by tensor from host copies of the state
    dict: a deep copy of a model served on a GPU would first duplicate every weight in device
    memory (the memory the served model's batches need) before moving it off.

    Raises:
        ImgembedError: The model holds tensors outside its state dict (non-persistent buffers),
            which a state-dict copy would leave empty.
    """
    with torch.device("meta"):
        copied = type(model)(model.config)
    state = {
        name: tensor.detach().to(
            "cpu", torch.float32 if tensor.is_floating_point() else None, copy=True
        )
        for name, tensor in model.state_dict().items()
    }
    copied.load_state_dict(state, strict=True, assign=True)
    left_empty = [name for name, tensor in copied.named_buffers() if tensor.is_meta]
    if left_empty:
        raise ImgembedError(
            f"Cannot copy {type(model).__name__} to the CPU for the decoder export: "
            f"{', '.join(left_empty[:5])} are not in its state dict. This transformers version "
            "builds the model differently from what imgembed expects; export with "
            "`imgembed export onnx` instead."
        )
    return copied.eval()


def _prepare_decoders(loaded: LoadedSam2, folder: Path) -> None:
    """Exports a CPU copy of ``loaded`` into ``folder`` unless its decoder graphs are there
    (blocks for seconds to minutes)."""
    if all((folder / name).is_file() for name in DECODER_FILES.values()):
        return
    try:
        from imgembed.export.onnx_export import export_loaded_onnx
    except ImportError as error:
        raise _onnx_extra_missing(error) from error
    export_loaded_onnx(
        dataclasses.replace(loaded, model=host_copy(loaded.model)),
        folder,
        single_mask_decoder=True,
        overwrite=True,
    )


class DecoderExportCache:
    """Decoder graphs per served model, exported on first request (see the module docstring).

    Args:
        export_dir: The cache folder; created when the first export runs.
    """

    def __init__(self, export_dir: Path) -> None:
        self.export_dir = export_dir
        self._keys: dict[int, str] = {}
        self._exports: dict[Path, asyncio.Task[None]] = {}

    def _export_finished(self, folder: Path, export: asyncio.Future[None]) -> None:
        """Forgets a finished export (a failed one is retried by the next request) and logs a
        failure, which is also raised to every request that waited for it."""
        self._exports.pop(folder, None)
        if not export.cancelled() and export.exception() is not None:
            logger.error("decoder export into %s failed", folder, exc_info=export.exception())

    async def graph_path(self, loaded: LoadedSam2, graph: DecoderGraph) -> Path:
        """The ``.onnx`` file of ``graph`` for ``loaded``'s weights, exported first if missing.

        Raises:
            ServiceUnavailableError: The onnx extra is missing.
            ImgembedError: The export failed (the message says why; the next request tries again).
        """
        key = self._keys.get(id(loaded.model))
        if key is None:
            key = await asyncio.to_thread(decoder_weights_key, loaded)
            self._keys[id(loaded.model)] = key
        folder = self.export_dir / f"{loaded.variant.name}-{key}"
        path = folder / DECODER_FILES[graph]
        if path.is_file():
            return path
        export = self._exports.get(folder)
        if export is None:
            logger.info(
                "exporting the %s decoder for the browser page into %s (first use of these "
                "weights; this takes a while once)",
                loaded.variant.name,
                folder,
            )
            export = asyncio.ensure_future(asyncio.to_thread(_prepare_decoders, loaded, folder))
            self._exports[folder] = export
            export.add_done_callback(lambda done: self._export_finished(folder, done))
        try:
            await asyncio.shield(export)
        except ImgembedError:
            raise
        except Exception as error:
            raise ImgembedError(
                f"Exporting the {loaded.variant.name} decoder to ONNX for the browser page failed "
                f"({type(error).__name__}: {error}); the server log has the details. The next "
                "request tries again.",
                field="model",
            ) from error
        if not path.is_file():
            raise ImgembedError(
                f"The decoder export for {loaded.variant.name} in {folder} has no {path.name}.",
                field="model",
            )
        return path
