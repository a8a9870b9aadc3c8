"""Configuration: frozen dataclasses with every default (:mod:`~imgembed.settings.values`), the
table of ``IMGEMBED_*`` variables (:mod:`~imgembed.settings.table`), and reading variables, flags
and files into a :class:`ServerConfig` (:mod:`~imgembed.settings.environment`)."""

from __future__ import annotations

from imgembed.settings.environment import read_config_file, server_config_from_env
from imgembed.settings.table import SETTINGS, Setting
from imgembed.settings.values import (
    DECODER_BATCHING,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL,
    MEBIBYTE,
    SAM2_ENCODER_BATCH_SIZE_ON_CPU,
    ArenaExtendStrategy,
    Backend,
    BatchingSettings,
    ComputeDtypeChoice,
    CudnnConvAlgoSearch,
    DeviceChoice,
    Encoding,
    FeatureDtype,
    FetchPolicy,
    InputLimits,
    ModelSpec,
    OnnxProvider,
    OnnxRuntimeOptions,
    PreprocessChoice,
    ResizeMode,
    ServerConfig,
)

__all__ = [
    "DECODER_BATCHING",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MODEL",
    "MEBIBYTE",
    "SAM2_ENCODER_BATCH_SIZE_ON_CPU",
    "SETTINGS",
    "ArenaExtendStrategy",
    "Backend",
    "BatchingSettings",
    "ComputeDtypeChoice",
    "CudnnConvAlgoSearch",
    "DeviceChoice",
    "Encoding",
    "FeatureDtype",
    "FetchPolicy",
    "InputLimits",
    "ModelSpec",
    "OnnxProvider",
    "OnnxRuntimeOptions",
    "PreprocessChoice",
    "ResizeMode",
    "ServerConfig",
    "Setting",
    "read_config_file",
    "server_config_from_env",
]
