"""Settings from ``IMGEMBED_*`` variables (and the seed's ``SAM2_*``), flags and TOML files, read
through the table of :mod:`imgembed.settings.table`.

:func:`server_config_from_env` is pure: it takes the mapping to read (``os.environ`` from the CLI or
an adapter) and returns a :class:`~imgembed.settings.ServerConfig`. Flags override variables; the CLI
passes them as ``overrides``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from imgembed.errors import InvalidInputError
from imgembed.settings.table import SETTINGS, Setting
from imgembed.settings.values import (
    DECODER_BATCHING,
    DEFAULT_MODEL,
    BatchingSettings,
    ModelSpec,
    OnnxRuntimeOptions,
    ServerConfig,
)

_MODEL_TARGETS = frozenset(
    {
        "model",
        "weights",
        "meta_config",
        "device",
        "preprocess",
        "compute_dtype",
        "warmup",
        "alias",
        "backend",
        "onnx_dir",
    }
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
    return target in _MODEL_TARGETS or target.startswith(
        ("batching.", "decoder_batching.", "onnx.")
    )


def model_file_keys() -> list[str]:
    """The keys a ``[[models]]`` table takes, ``name`` first, the rest sorted."""
    keys = {key for key, setting in _FILE_KEYS.items() if _is_model_level(setting.target)}
    return ["name", *sorted((keys - {"model"}) | {"alias"})]


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
    ``[[models]]`` tables (``name`` and the model-level keys, :func:`model_file_keys`: weights,
    device, compute dtype, preprocessing, warm-up, backend, ONNX Runtime and batching settings)
    each describe one model; model-level keys at the top level are defaults for every model.

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
                    f"{', '.join(model_file_keys())}",
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
        onnx = {k.split(".", 1)[1]: v for k, v in merged.items() if k.startswith("onnx.")}
        specs.append(
            ModelSpec(
                name=merged["model"],
                weights=merged.get("weights"),
                meta_config=merged.get("meta_config"),
                device=merged.get("device", "auto"),
                preprocess=merged.get("preprocess", "auto"),
                compute_dtype=merged.get("compute_dtype", "auto"),
                alias=merged.get("alias"),
                batching=BatchingSettings(**batching),
                decoder_batching=replace(DECODER_BATCHING, **decoder_batching),
                backend=merged.get("backend", "torch"),
                onnx_dir=merged.get("onnx_dir"),
                onnx=OnnxRuntimeOptions(**onnx),
                warmup=merged.get("warmup", "auto"),
            )
        )
    return tuple(specs)
