"""The ``IMGEMBED_*`` variables (and the seed's ``SAM2_*``): where each lands in the configuration,
how its text parses, and what it does. Defaults are not restated: each is read from the
configuration classes (:mod:`imgembed.settings.values`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from imgembed.settings.values import ServerConfig


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _boolean_or_auto(text: str) -> bool | Literal["auto"]:
    """``auto``, or a boolean."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _boolean(text)
    except ValueError:
        raise ValueError(f"expected auto or true/false, got {text!r}") from None


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return text

    return parse


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers in ``minimum..maximum`` (no upper bound when ``None``)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
            raise ValueError(f"expected a whole number {bounds}, got {value}")
        return value

    return parse


def _number(*, positive: bool) -> Callable[[str], float]:
    """A parser of finite numbers above 0 (``positive``) or at least 0."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            wanted = "above 0" if positive else "0 or more"
            raise ValueError(f"expected a finite number {wanted}, got {text.strip()}")
        return value

    return parse


_COUNT = _integer(1)
"""A limit or size that must allow at least one."""
_SIZE_OR_AUTO = _integer(0)
"""A size where 0 means a default chosen at run time."""
_SECONDS = _number(positive=True)
_DELAY = _number(positive=False)


def _host_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Setting:
    """One environment variable: where it lands, how it parses, and what it does."""

    env: str
    target: str
    parse: Callable[[str], Any]
    help: str

    @property
    def default(self) -> Any:
        """The value when no variable, flag or file sets it: the configuration classes' default
        (a model-level target reads :class:`ModelSpec`, the rest :class:`ServerConfig`)."""
        config = ServerConfig()
        model = config.models[0]
        path = "name" if self.target == "model" else self.target
        head = path.split(".", 1)[0]
        value: Any = model if hasattr(model, head) else config
        for part in path.split("."):
            value = getattr(value, part)
        return value


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "IMGEMBED_MODEL",
        "model",
        str,
        "SAM 2 model to serve (name or hub id).",
    ),
    Setting(
        "IMGEMBED_WEIGHTS",
        "weights",
        str,
        "Weights: hub id, HF folder, Meta .pt, or 'dummy'.",
    ),
    Setting("IMGEMBED_META_CONFIG", "meta_config", str, "Meta config name for a .pt checkpoint."),
    Setting("SAM2_CHECKPOINT", "weights", str, "Seed worker's variable; same as IMGEMBED_WEIGHTS."),
    Setting(
        "SAM2_MODEL_CFG",
        "meta_config",
        str,
        "Seed worker's variable; same as IMGEMBED_META_CONFIG.",
    ),
    Setting("IMGEMBED_DEVICE", "device", _choice("auto", "cpu", "cuda"), "auto, cpu or cuda."),
    Setting(
        "IMGEMBED_PREPROCESS",
        "preprocess",
        _choice("auto", "cpu", "device"),
        "Where images are resized and normalised: cpu, device (uint8 uploaded, resized on the "
        "model's device), or auto (device on CUDA, else cpu).",
    ),
    Setting(
        "IMGEMBED_COMPUTE_DTYPE",
        "compute_dtype",
        _choice("auto", "float32", "bfloat16", "float16"),
        "Forward-pass precision: auto (float32 on CPU, bfloat16 or float16 on CUDA), float32, "
        "bfloat16, or float16 (CUDA only).",
    ),
    Setting(
        "IMGEMBED_BACKEND",
        "backend",
        _choice("torch", "onnxruntime"),
        "What runs the SAM 2 encoder: torch, or onnxruntime (needs IMGEMBED_ONNX_DIR).",
    ),
    Setting(
        "IMGEMBED_ONNX_DIR",
        "onnx_dir",
        str,
        "An 'imgembed export onnx' folder of the model, for the onnxruntime backend.",
    ),
    Setting(
        "IMGEMBED_ONNX_PROVIDER",
        "onnx.provider",
        _choice("auto", "cpu", "cuda", "tensorrt"),
        "ONNX Runtime's provider: auto (CUDA if installed, else CPU, with a warning; cpu for "
        "a model placed on the CPU), cpu, cuda or tensorrt (start-up fails unless the session "
        "runs on it).",
    ),
    Setting(
        "IMGEMBED_ONNX_GPU_MEM_LIMIT",
        "onnx.gpu_mem_limit",
        _integer(0),
        "Most bytes ONNX Runtime's CUDA memory arena may hold (beside PyTorch's); 0 = no limit.",
    ),
    Setting(
        "IMGEMBED_ONNX_ARENA_EXTEND_STRATEGY",
        "onnx.arena_extend_strategy",
        _choice("kSameAsRequested", "kNextPowerOfTwo"),
        "How ONNX Runtime's CUDA arena grows: kSameAsRequested or kNextPowerOfTwo.",
    ),
    Setting(
        "IMGEMBED_ONNX_CUDNN_CONV_ALGO_SEARCH",
        "onnx.cudnn_conv_algo_search",
        _choice("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
        "How ONNX Runtime's CUDA provider picks cuDNN convolution algorithms.",
    ),
    Setting("IMGEMBED_HOST", "host", str, "Interface to bind."),
    Setting("IMGEMBED_PORT", "port", _integer(0, 65535), "TCP port."),
    Setting(
        "IMGEMBED_RESIZE_MODE",
        "default_resize_mode",
        _choice("stretch", "letterbox"),
        "stretch or letterbox.",
    ),
    Setting(
        "IMGEMBED_COMPUTE_THREADS",
        "compute_threads",
        _SIZE_OR_AUTO,
        "Threads for decode/resize/serialise; 0: one per available CPU, 2 to 32.",
    ),
    Setting(
        "IMGEMBED_TORCH_THREADS",
        "torch_threads",
        _SIZE_OR_AUTO,
        "torch's threads for forward passes (process-wide); 0: torch's default, one per core.",
    ),
    Setting(
        "IMGEMBED_WARMUP",
        "warmup",
        _boolean_or_auto,
        "One forward pass of each kind at start-up, before reporting ready: true, false, or auto "
        "(on a GPU only; on a CPU it delays readiness and does not speed up the first request).",
    ),
    Setting(
        "IMGEMBED_MAX_BATCH_SIZE",
        "batching.max_batch_size",
        _SIZE_OR_AUTO,
        "Most requests per forward pass; 1: off; 0: on CPU 1 for SAM 2's encoder, 4 for "
        "SigLIP; on a GPU by its free memory.",
    ),
    Setting(
        "IMGEMBED_MAX_QUEUE_DELAY_MS",
        "batching.max_queue_delay_ms",
        _DELAY,
        "Longest wait for a batch to fill once the device is free.",
    ),
    Setting(
        "IMGEMBED_MAX_QUEUE_SIZE",
        "batching.max_queue_size",
        _COUNT,
        "Requests waiting per model before new ones get 429.",
    ),
    Setting(
        "IMGEMBED_DECODER_MAX_BATCH_SIZE",
        "decoder_batching.max_batch_size",
        _SIZE_OR_AUTO,
        "Most SAM 2 prompts per decoder pass, across requests; 0: 1 (off) on CPU, by free "
        "memory on a GPU.",
    ),
    Setting(
        "IMGEMBED_DECODER_MAX_QUEUE_DELAY_MS",
        "decoder_batching.max_queue_delay_ms",
        _DELAY,
        "Longest wait for a decoder batch to fill once the device is free.",
    ),
    Setting(
        "IMGEMBED_DECODER_MAX_QUEUE_SIZE",
        "decoder_batching.max_queue_size",
        _COUNT,
        "Decode requests waiting per SAM 2 model before new ones get 429.",
    ),
    Setting(
        "IMGEMBED_REQUEST_TIMEOUT_S",
        "request_timeout_s",
        _SECONDS,
        "Deadline per request; unstarted work past it is dropped (504).",
    ),
    Setting(
        "IMGEMBED_SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        _DELAY,
        "On SIGTERM, how long requests in flight may take to finish.",
    ),
    Setting(
        "IMGEMBED_HEADER_TIMEOUT_S",
        "header_timeout_s",
        _SECONDS,
        "Longest time to send a request's line and headers; then 408 and the connection closes.",
    ),
    Setting(
        "IMGEMBED_BODY_IDLE_TIMEOUT_S",
        "body_idle_timeout_s",
        _SECONDS,
        "Longest wait for the next part of a request body; then 408 and the connection closes.",
    ),
    Setting(
        "IMGEMBED_BODY_TIMEOUT_S",
        "body_timeout_s",
        _SECONDS,
        "Longest time a whole request body may take; then 408 and the connection closes.",
    ),
    Setting(
        "IMGEMBED_API_KEY",
        "api_key",
        str,
        "When set, requests need 'Authorization: Bearer <key>' (health and metrics stay public).",
    ),
    Setting(
        "IMGEMBED_PUBLIC_PATHS",
        "public_paths",
        _host_list,
        "Comma-separated paths answered without a key.",
    ),
    Setting(
        "IMGEMBED_MAX_BODY_BYTES",
        "limits.max_body_bytes",
        _COUNT,
        "Largest request body.",
    ),
    Setting(
        "IMGEMBED_MAX_IMAGE_PIXELS",
        "limits.max_image_pixels",
        _COUNT,
        "Largest image, width x height.",
    ),
    Setting(
        "IMGEMBED_MAX_PROMPT_POINTS",
        "limits.max_prompt_points",
        _COUNT,
        "Most points per segmentation object.",
    ),
    Setting(
        "IMGEMBED_MAX_PROMPT_OBJECTS",
        "limits.max_prompt_objects",
        _COUNT,
        "Most objects per segment request.",
    ),
    Setting(
        "IMGEMBED_MAX_BATCH_IMAGES",
        "limits.max_batch_images",
        _COUNT,
        "Most images per SigLIP embedding request.",
    ),
    Setting(
        "IMGEMBED_MAX_TEXTS",
        "limits.max_texts",
        _COUNT,
        "Most texts per text embedding request.",
    ),
    Setting(
        "IMGEMBED_MAX_TEXT_CHARS",
        "limits.max_text_chars",
        _COUNT,
        "Longest text, in characters.",
    ),
    Setting(
        "IMGEMBED_MAX_JSON_DEPTH",
        "limits.max_json_depth",
        _COUNT,
        "Deepest nesting of arrays and objects in a JSON body or RunPod input.",
    ),
    Setting(
        "IMGEMBED_MAX_JSON_NUMBER_CHARS",
        "limits.max_json_number_chars",
        _COUNT,
        "Longest number in a JSON body, in characters.",
    ),
    Setting(
        "IMGEMBED_COLLECTIONS_DIR",
        "collections_dir",
        str,
        "Folder (or s3:// URI) of the vector store's collections.",
    ),
    Setting(
        "IMGEMBED_CACHE_BYTES",
        "cache_bytes",
        _integer(0),
        "Embedding cache budget per model in bytes (16 MiB per float32 SAM 2 image); 0 = off.",
    ),
    Setting(
        "IMGEMBED_FETCH_TIMEOUT_S",
        "fetch.timeout_s",
        _SECONDS,
        "Image URL download timeout, seconds.",
    ),
    Setting(
        "IMGEMBED_FETCH_MAX_BYTES",
        "fetch.max_bytes",
        _COUNT,
        "Largest image download.",
    ),
    Setting(
        "IMGEMBED_FETCH_MAX_REDIRECTS",
        "fetch.max_redirects",
        _integer(0),
        "Redirects followed.",
    ),
    Setting(
        "IMGEMBED_FETCH_ALLOW_PRIVATE",
        "fetch.allow_private_networks",
        _boolean,
        "Allow private/loopback URLs.",
    ),
    Setting(
        "IMGEMBED_FETCH_ALLOWED_HOSTS",
        "fetch.allowed_hosts",
        _host_list,
        "Comma-separated hosts or CIDRs always allowed.",
    ),
)
