"""Settings from ``IMGEMBED_*`` variables (and the seed's ``SAM2_*``), in one table.

:func:`server_config_from_env` is pure: it takes the mapping to read (``os.environ`` from the CLI or
an adapter) and returns a :class:`~imgembed.config.ServerConfig`. Flags override variables; the CLI
passes them as ``overrides``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from imgembed.config import BatchingSettings, FetchPolicy, InputLimits, ModelSpec, ServerConfig
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
    Setting("IMGEMBED_HOST", "host", str, "127.0.0.1", "Interface to bind."),
    Setting("IMGEMBED_PORT", "port", int, 8000, "TCP port."),
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
        int,
        2,
        "Threads for decode/resize/serialise.",
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
        int,
        BatchingSettings.max_batch_size,
        "Most requests per forward pass; 1 turns batching off.",
    ),
    Setting(
        "IMGEMBED_MAX_QUEUE_DELAY_MS",
        "batching.max_queue_delay_ms",
        float,
        BatchingSettings.max_queue_delay_ms,
        "Longest wait for a batch to fill once the device is free.",
    ),
    Setting(
        "IMGEMBED_MAX_QUEUE_SIZE",
        "batching.max_queue_size",
        int,
        BatchingSettings.max_queue_size,
        "Requests waiting per model before new ones get 429.",
    ),
    Setting(
        "IMGEMBED_REQUEST_TIMEOUT_S",
        "request_timeout_s",
        float,
        ServerConfig.request_timeout_s,
        "Deadline per request; unstarted work past it is dropped (504).",
    ),
    Setting(
        "IMGEMBED_SHUTDOWN_TIMEOUT_S",
        "shutdown_timeout_s",
        float,
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
        int,
        InputLimits.max_body_bytes,
        "Largest request body.",
    ),
    Setting(
        "IMGEMBED_MAX_IMAGE_PIXELS",
        "limits.max_image_pixels",
        int,
        InputLimits.max_image_pixels,
        "Largest image, width x height.",
    ),
    Setting(
        "IMGEMBED_FETCH_TIMEOUT_S",
        "fetch.timeout_s",
        float,
        FetchPolicy.timeout_s,
        "Image URL download timeout, seconds.",
    ),
    Setting(
        "IMGEMBED_FETCH_MAX_BYTES",
        "fetch.max_bytes",
        int,
        FetchPolicy.max_bytes,
        "Largest image download.",
    ),
    Setting(
        "IMGEMBED_FETCH_MAX_REDIRECTS",
        "fetch.max_redirects",
        int,
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


def server_config_from_env(
    env: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> ServerConfig:
    """Builds the server configuration from variables, then flags.

    Args:
        env: Variables to read (``os.environ``).
        overrides: Values from flags, keyed by :attr:`Setting.target`; ``None`` values are ignored.

    Returns:
        The configuration; one model, as the variables and flags describe it.

    Raises:
        InvalidInputError: A variable does not parse; the message names it and what was expected.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.env in env and env[setting.env] != "":
            try:
                parsed = setting.parse(env[setting.env])
            except ValueError as error:
                raise InvalidInputError(
                    f"environment variable {setting.env}={env[setting.env]!r} is invalid: {error}",
                    field=setting.env,
                ) from error
            values.setdefault(setting.target, parsed)
    for target, value in (overrides or {}).items():
        if value is not None:
            values[target] = value
    model_name = values.get("model")
    if model_name is None:
        # The seed selects the architecture with SAM2_MODEL_CFG alone.
        model_name = values.get("meta_config") or "sam2.1-hiera-tiny"
    batching = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("batching.")}
    spec = ModelSpec(
        name=model_name,
        weights=values.get("weights"),
        meta_config=values.get("meta_config"),
        device=values.get("device", "auto"),
        batching=BatchingSettings(**batching),
        warmup=values.get("warmup", True),
    )
    config = ServerConfig(models=(spec,))
    top_level = {
        "host",
        "port",
        "default_resize_mode",
        "compute_threads",
        "request_timeout_s",
        "shutdown_timeout_s",
        "api_key",
        "public_paths",
    }
    config = replace(config, **{key: values[key] for key in top_level if key in values})
    limits = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("limits.")}
    fetch = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("fetch.")}
    return replace(
        config, limits=replace(config.limits, **limits), fetch=replace(config.fetch, **fetch)
    )
