"""Settings from ``IMGEMBED_*`` variables (and the seed's ``SAM2_*``), in one table.

:func:`server_config_from_env` is pure: it takes the mapping to read (``os.environ`` from the CLI or
an adapter) and returns a :class:`~imgembed.config.ServerConfig`. Flags override variables; the CLI
passes them as ``overrides``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imgembed.config import (
    DECODER_BATCHING,
    BatchingSettings,
    FetchPolicy,
    InputLimits,
    ModelSpec,
    ServerConfig,
)
from imgembed.errors import InvalidInputError


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


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
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "IMGEMBED_MODEL",
        "model",
        str,
        "sam2.1-hiera-tiny",
        "SAM 2 model to serve (name or hub id).",
    ),
    Setting(
        "IMGEMBED_WEIGHTS",
        "weights",
        str,
        None,
        "Weights: hub id, HF folder, Meta .pt, or 'dummy'.",
    ),
    Setting(
        "IMGEMBED_META_CONFIG", "meta_config", str, None, "Meta config name for a .pt checkpoint."
    ),
    Setting(
        "SAM2_CHECKPOINT", "weights", str, None, "Seed worker's variable; same as IMGEMBED_WEIGHTS."
    ),
    Setting(
        "SAM2_MODEL_CFG",
        "meta_config",
        str,
        None,
        "Seed worker's variable; same as IMGEMBED_META_CONFIG.",
    ),
    Setting(
        "IMGEMBED_DEVICE", "device", _choice("auto", "cpu", "cuda"), "auto", "auto, cpu or cuda."
    ),
    Setting(
        "IMGEMBED_BACKEND",
        "backend",
        _choice("torch", "onnxruntime"),
        "torch",
        "What runs the SAM 2 encoder: torch, or onnxruntime (needs IMGEMBED_ONNX_DIR).",
    ),
    Setting(
        "IMGEMBED_ONNX_DIR",
        "onnx_dir",
        str,
        None,
        "An 'imgembed export onnx' folder of the model, for the onnxruntime backend.",
    ),
    Setting("IMGEMBED_HOST", "host", str, "127.0.0.1", "Interface to bind."),
    Setting("IMGEMBED_PORT", "port", _integer(0, 65535), 8000, "TCP port."),
    Setting(
        "IMGEMBED_RESIZE_MODE",
        "default_resize_mode",
        _choice("stretch", "letterbox"),
        "stretch",
        "stretch or letterbox.",
    ),
    Setting(
        "IMGEMBED_COMPUTE_THREADS",
        "compute_threads",
        _COUNT,
        2,
        "Threads for decode/resize/serialise.",
    ),
    Setting(
        "IMGEMBED_TORCH_THREADS",
        "torch_threads",
        _SIZE_OR_AUTO,
        0,
        "torch's threads for forward passes (process-wide); 0: torch's default, one per core.",
    ),
    Setting(
        "IMGEMBED_WARMUP",
        "warmup",
        _boolean,
        True,
        "Run one forward pass at start-up before reporting ready.",
    ),
    Setting(
        "IMGEMBED_MAX_BATCH_SIZE",
        "batching.max_batch_size",
        _SIZE_OR_AUTO,
        BatchingSettings.max_batch_size,
        "Most requests per forward pass; 1: off; 0: 1 for SAM 2's encoder on CPU, else 4.",
    ),
    Setting(
        "IMGEMBED_MAX_QUEUE_DELAY_MS",
        "batching.max_queue_delay_ms",
        _DELAY,
        BatchingSettings.max_queue_delay_ms,
        "Longest wait for a batch to fill once the device is free.",
    ),
    Setting(
        "IMGEMBED_MAX_QUEUE_SIZE",
        "batching.max_queue_size",
        _COUNT,
        BatchingSettings.max_queue_size,
        "Requests waiting per model before new ones get 429.",
    ),
    Setting(
        "IMGEMBED_DECODER_MAX_BATCH_SIZE",
        "decoder_batching.max_batch_size",
        _SIZE_OR_AUTO,
        DECODER_BATCHING.max_batch_size,
        "Most SAM 2 prompts per decoder pass, across requests; 0: 64 on a GPU, 1 (off) on CPU.",
    ),
    Setting(
        "IMGEMBED_DECODER_MAX_QUEUE_DELAY_MS",
        "decoder_batching.max_queue_delay_ms",
        _DELAY,
        DECODER_BATCHING.max_queue_delay_ms,
        "Longest wait for a decoder batch to fill once the device is free.",
    ),
    Setting(
        "IMGEMBED_DECODER_MAX_QUEUE_SIZE",
        "decoder_batching.max_queue_size",
        _COUNT,
        DECODER_BATCHING.max_queue_size,
        "Decode requests waiting per SAM 2 model before new ones get 429.",
    ),
    Setting(
        "IMGEMBED_REQUEST_TIMEOUT_S",
        "request_timeout_s",
        _SECONDS,
        ServerConfig.request_timeout_s,
        "Deadline per request; unstarted work past it is dropped (504).",
    ),
    Setting(
        "IMGEMBED_SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        _DELAY,
        ServerConfig.shutdown_timeout_s,
        "On SIGTERM, how long requests in flight may take to finish.",
    ),
    Setting(
        "IMGEMBED_API_KEY",
        "api_key",
        str,
        None,
        "When set, requests need 'Authorization: Bearer <key>' (health and metrics stay public).",
    ),
    Setting(
        "IMGEMBED_PUBLIC_PATHS",
        "public_paths",
        _host_list,
        ServerConfig.public_paths,
        "Comma-separated paths answered without a key.",
    ),
    Setting(
        "IMGEMBED_MAX_BODY_BYTES",
        "limits.max_body_bytes",
        _COUNT,
        InputLimits.max_body_bytes,
        "Largest request body.",
    ),
    Setting(
        "IMGEMBED_MAX_IMAGE_PIXELS",
        "limits.max_image_pixels",
        _COUNT,
        InputLimits.max_image_pixels,
        "Largest image, width x height.",
    ),
    Setting(
        "IMGEMBED_MAX_PROMPT_POINTS",
        "limits.max_prompt_points",
        _COUNT,
        InputLimits.max_prompt_points,
        "Most points per segmentation object.",
    ),
    Setting(
        "IMGEMBED_MAX_PROMPT_OBJECTS",
        "limits.max_prompt_objects",
        _COUNT,
        InputLimits.max_prompt_objects,
        "Most objects per segment request.",
    ),
    Setting(
        "IMGEMBED_MAX_BATCH_IMAGES",
        "limits.max_batch_images",
        _COUNT,
        InputLimits.max_batch_images,
        "Most images per SigLIP embedding request.",
    ),
    Setting(
        "IMGEMBED_MAX_TEXTS",
        "limits.max_texts",
        _COUNT,
        InputLimits.max_texts,
        "Most texts per text embedding request.",
    ),
    Setting(
        "IMGEMBED_MAX_TEXT_CHARS",
        "limits.max_text_chars",
        _COUNT,
        InputLimits.max_text_chars,
        "Longest text, in characters.",
    ),
    Setting(
        "IMGEMBED_COLLECTIONS_DIR",
        "collections_dir",
        str,
        ServerConfig.collections_dir,
        "Folder (or s3:// URI) of the vector store's collections.",
    ),
    Setting(
        "IMGEMBED_CACHE_BYTES",
        "cache_bytes",
        _integer(0),
        ServerConfig.cache_bytes,
        "Embedding cache budget per model in bytes (16 MiB per float32 SAM 2 image); 0 = off.",
    ),
    Setting(
        "IMGEMBED_FETCH_TIMEOUT_S",
        "fetch.timeout_s",
        _SECONDS,
        FetchPolicy.timeout_s,
        "Image URL download timeout, seconds.",
    ),
    Setting(
        "IMGEMBED_FETCH_MAX_BYTES",
        "fetch.max_bytes",
        _COUNT,
        FetchPolicy.max_bytes,
        "Largest image download.",
    ),
    Setting(
        "IMGEMBED_FETCH_MAX_REDIRECTS",
        "fetch.max_redirects",
        _integer(0),
        FetchPolicy.max_redirects,
        "Redirects followed.",
    ),
    Setting(
        "IMGEMBED_FETCH_ALLOW_PRIVATE",
        "fetch.allow_private_networks",
        _boolean,
        False,
        "Allow private/loopback URLs.",
    ),
    Setting(
        "IMGEMBED_FETCH_ALLOWED_HOSTS",
        "fetch.allowed_hosts",
        _host_list,
        (),
        "Comma-separated hosts or CIDRs always allowed.",
    ),
)


DEFAULT_MODEL = "sam2.1-hiera-tiny"
_MODEL_TARGETS = frozenset(
    {"model", "weights", "meta_config", "device", "warmup", "alias", "backend", "onnx_dir"}
)
_TOP_LEVEL_TARGETS = frozenset(
    {
        "host",
        "port",
        "default_resize_mode",
        "compute_threads",
        "torch_threads",
        "request_timeout_s",
        "shutdown_timeout_s",
        "cache_bytes",
        "collections_dir",
        "api_key",
        "public_paths",
    }
)
_FILE_KEYS = {
    setting.env.removeprefix("IMGEMBED_").lower(): setting
    for setting in SETTINGS
    if setting.env.startswith("IMGEMBED_")
}
"""Config file key (``port``, ``max_batch_size``, ...) to its setting: the variable's name, lower case,
without ``IMGEMBED_``."""


def _is_model_level(target: str) -> bool:
    return target in _MODEL_TARGETS or target.startswith(("batching.", "decoder_batching."))


def _parse(setting: Setting, raw: object, where: str) -> Any:
    """Parses a variable's text or a config file's TOML value with the setting's own parser."""
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, list):
        text = ",".join(str(item) for item in raw)
    else:
        text = str(raw)
    try:
        return setting.parse(text)
    except ValueError as error:
        raise InvalidInputError(f"{where}={raw!r} is invalid: {error}", field=where) from error


def read_config_file(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads a TOML config file.

    Top-level keys are the ``IMGEMBED_*`` variables' names in lower case without the prefix
    (``port = 9000``, ``max_batch_size = 8``, ``fetch_allowed_hosts = ["10.0.0.0/8"]``);
    ``[[models]]`` tables (``name``, ``weights``, ``meta_config``, ``device``, ``alias``,
    ``warmup``, ``max_batch_size``, ``max_queue_delay_ms``, ``max_queue_size``) each describe one
    model; model-level keys at the top level are defaults for every model.

    Returns:
        Top-level values keyed by :attr:`Setting.target`, and one dict per ``[[models]]`` table.

    Raises:
        InvalidInputError: The file is missing, not TOML, or has an unknown key or a bad value.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise InvalidInputError(
            f"config file {path} cannot be read: {error}", field="config"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise InvalidInputError(
            f"config file {path} is not valid TOML: {error}", field="config"
        ) from error
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key == "models":
            continue
        setting = _FILE_KEYS.get(key)
        if setting is None:
            raise InvalidInputError(
                f"config file {path}: unknown key {key!r}; expected one of {', '.join(sorted(_FILE_KEYS))} "
                "or [[models]] tables",
                field=key,
            )
        values[setting.target] = _parse(setting, raw, f"{path}: {key}")
    models = []
    for index, table in enumerate(data.get("models", [])):
        if not isinstance(table, dict) or "name" not in table:
            raise InvalidInputError(
                f'config file {path}: models[{index}] needs a name, e.g. name = "{DEFAULT_MODEL}"',
                field=f"models[{index}]",
            )
        model: dict[str, Any] = {"model": str(table["name"])}
        for key, raw in table.items():
            if key == "name":
                continue
            setting = _FILE_KEYS.get(key)
            if key == "alias":
                model["alias"] = str(raw)
            elif setting is not None and _is_model_level(setting.target):
                model[setting.target] = _parse(setting, raw, f"{path}: models[{index}].{key}")
            else:
                raise InvalidInputError(
                    f"config file {path}: models[{index}] has unknown key {key!r}; a model takes "
                    "name, weights, meta_config, device, alias, warmup, backend, onnx_dir, "
                    "max_batch_size, max_queue_delay_ms, max_queue_size",
                    field=f"models[{index}].{key}",
                )
        models.append(model)
    return values, models


def server_config_from_env(
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> ServerConfig:
    """Builds the server configuration: defaults, then the config file, then variables, then flags.

    Args:
        env: Variables to read (``os.environ``).
        overrides: Values from flags, keyed by :attr:`Setting.target`; ``None`` values are ignored.
            ``model`` and ``weights`` may be lists (one model each; one weight source for all).
        config_file: Optional TOML file, see :func:`read_config_file`; when ``None``, the file
            ``IMGEMBED_CONFIG`` names, if any.

    Returns:
        The configuration.

    Raises:
        InvalidInputError: A variable, file value or flag combination is invalid; the message
            names it and what was expected.
    """
    if config_file is None and env.get("IMGEMBED_CONFIG"):
        config_file = Path(env["IMGEMBED_CONFIG"])
    values, file_models = read_config_file(config_file) if config_file else ({}, [])
    from_env: dict[str, Any] = {}
    for setting in SETTINGS:
        if env.get(setting.env, "") != "":
            from_env.setdefault(setting.target, _parse(setting, env[setting.env], setting.env))
    values.update(from_env)
    for target, value in (overrides or {}).items():
        if value is not None and value != []:
            values[target] = value
    config = ServerConfig(models=_model_specs(values, file_models))
    config = replace(config, **{key: values[key] for key in _TOP_LEVEL_TARGETS if key in values})
    limits = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("limits.")}
    fetch = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("fetch.")}
    return replace(
        config, limits=replace(config.limits, **limits), fetch=replace(config.fetch, **fetch)
    )


def _model_specs(
    values: dict[str, Any], file_models: list[dict[str, Any]]
) -> tuple[ModelSpec, ...]:
    """One spec per model named by flags or variables, else per ``[[models]]``, else the default."""
    names = values.get("model")
    if isinstance(names, str):
        names = [names]
    if names:
        tables: list[dict[str, Any]] = [{"model": name} for name in names]
    elif file_models:
        tables = file_models
    else:
        # The seed selects the architecture with SAM2_MODEL_CFG alone.
        tables = [{"model": values.get("meta_config") or DEFAULT_MODEL}]
    weights = values.get("weights")
    if isinstance(weights, list) and len(weights) not in (1, len(tables)):
        raise InvalidInputError(
            f"{len(weights)} --weights for {len(tables)} --model: give one --weights for all "
            "models, or one per --model in the same order",
            field="weights",
        )
    defaults = {target: value for target, value in values.items() if _is_model_level(target)}
    specs = []
    for index, table in enumerate(tables):
        merged = {**defaults, **table}
        if isinstance(weights, list) and "weights" not in table:
            merged["weights"] = weights[0] if len(weights) == 1 else weights[index]
        batching = {k.split(".", 1)[1]: v for k, v in merged.items() if k.startswith("batching.")}
        decoder_batching = {
            k.split(".", 1)[1]: v for k, v in merged.items() if k.startswith("decoder_batching.")
        }
        specs.append(
            ModelSpec(
                name=merged["model"],
                weights=merged.get("weights"),
                meta_config=merged.get("meta_config"),
                device=merged.get("device", "auto"),
                alias=merged.get("alias"),
                batching=BatchingSettings(**batching),
                decoder_batching=replace(DECODER_BATCHING, **decoder_batching),
                backend=merged.get("backend", "torch"),
                onnx_dir=merged.get("onnx_dir"),
                warmup=merged.get("warmup", True),
            )
        )
    return tuple(specs)
