"""ONNX Runtime's execution providers for imgembed's sessions: which to ask for, with which
options, and whether the built session really runs on them.

ONNX Runtime does not fail when a requested provider cannot start: a CUDA provider listed for a
CPU-only ``onnxruntime``, or an ``onnxruntime-gpu`` whose CUDA or cuDNN libraries are missing or of
another major version, leaves a session that quietly runs every node on the CPU. So the providers
a session reports (``session.get_providers()``) are checked against the request after it is built
(:func:`check_providers`): a requested ``cuda`` or ``tensorrt`` that is not active is a
:class:`~imgembed.errors.ModelLoadError`; ``auto`` may end on the CPU, but says so in a warning and
in :class:`ActiveProviders`, which ``/v1/models`` shows.

The CPU ``onnxruntime`` and ``onnxruntime-gpu`` packages install the same ``onnxruntime`` module:
exactly one may be installed (the ``onnx`` or the ``onnx-gpu`` extra). With both, whichever was
installed last has overwritten part of the other's files; :func:`installed_runtime_packages` lets
the backend say so.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from imgembed.errors import ModelLoadError
from imgembed.settings import (
    ArenaExtendStrategy,
    CudnnConvAlgoSearch,
    OnnxProvider,
    OnnxRuntimeOptions,
)

# ONNX Runtime 1.32 sends telemetry (a DNS lookup of a Microsoft host) unless this is set.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

try:
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
except ImportError as e:
    raise ImportError(
        "the ONNX Runtime backend needs the 'onnx' extra: pip install 'imgembed[onnx]' (or "
        "'imgembed[onnx-gpu]' for CUDA, never both)"
    ) from e

logger = logging.getLogger(__name__)

GraphOptimization = Literal["disable", "basic", "extended", "all"]
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS: dict[str, str] = {"cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER}
"""The provider each GPU choice requires to be active."""
RUNTIME_PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
)
"""Distributions that each install the ``onnxruntime`` module; at most one may be installed."""

LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.InvalidGraph,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    ort_errors.EPFail,
    RuntimeError,
    ValueError,
)
"""What ``InferenceSession`` raises for a graph or a provider it cannot load."""

ProviderList = list[str | tuple[str, dict[str, Any]]]
"""What ``InferenceSession(providers=...)`` takes: names, or (name, provider options) pairs."""


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    """How the ONNX Runtime sessions run.

    Attributes:
        provider: ``auto`` (CUDA when this ONNX Runtime has it, else the CPU), ``cuda`` or
            ``tensorrt`` (fail unless the session runs on it), or ``cpu``.
        intra_op_threads: Threads one operator may use on the CPU; 0 lets ONNX Runtime choose
            (one per physical core).
        inter_op_threads: Threads for running independent operators at once; only used with
            parallel execution, which these sessions do not enable.
        device_id: CUDA device index.
        graph_optimization: ONNX Runtime graph optimisation level.
        gpu_mem_limit: Most bytes the CUDA provider's memory arena may hold; 0: no limit.
        arena_extend_strategy: How the CUDA arena grows: ``kSameAsRequested`` (by what a request
            needs) or ``kNextPowerOfTwo`` (ONNX Runtime's default: fewer, larger steps).
        cudnn_conv_algo_search: How cuDNN picks convolution algorithms: ``EXHAUSTIVE`` (timed
            once per input shape), ``HEURISTIC`` or ``DEFAULT``.
    """

    provider: OnnxProvider = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    device_id: int = 0
    graph_optimization: GraphOptimization = "all"
    gpu_mem_limit: int = 0
    arena_extend_strategy: ArenaExtendStrategy = "kSameAsRequested"
    cudnn_conv_algo_search: CudnnConvAlgoSearch = "EXHAUSTIVE"

    @classmethod
    def from_options(
        cls, options: OnnxRuntimeOptions, *, device_id: int = 0
    ) -> OnnxRuntimeSettings:
        """The settings of a served model: its ``IMGEMBED_ONNX_*`` options on CUDA device
        ``device_id`` (threads and optimisation level at their defaults)."""
        return cls(
            provider=options.provider,
            device_id=device_id,
            gpu_mem_limit=options.gpu_mem_limit,
            arena_extend_strategy=options.arena_extend_strategy,
            cudnn_conv_algo_search=options.cudnn_conv_algo_search,
        )


@dataclass(frozen=True)
class ActiveProviders:
    """What a session was asked for and what it runs on.

    Attributes:
        requested: The provider choice (``auto``, ``cpu``, ``cuda``, ``tensorrt``).
        active: The best provider the session runs on, for example ``CUDAExecutionProvider``.
        providers: Every provider of the session, best first (``session.get_providers()``).
        fallback: Why ``auto`` runs on the CPU while a GPU is there; ``None`` when it does not.
    """

    requested: OnnxProvider
    active: str
    providers: tuple[str, ...]
    fallback: str | None = None

    @property
    def on_gpu(self) -> bool:
        """Whether the session's best provider runs on a GPU (CUDA or TensorRT)."""
        return self.active in GPU_PROVIDERS.values()


def cuda_provider_options(settings: OnnxRuntimeSettings) -> dict[str, Any]:
    """The CUDA provider's options: device, memory arena and cuDNN's algorithm search.

    ``gpu_mem_limit`` is left out when 0, which keeps ONNX Runtime's default (no limit).
    """
    options: dict[str, Any] = {
        "device_id": settings.device_id,
        "arena_extend_strategy": settings.arena_extend_strategy,
        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
    }
    if settings.gpu_mem_limit:
        options["gpu_mem_limit"] = settings.gpu_mem_limit
    return options


def installed_runtime_packages() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` module (one is right)."""
    installed = []
    for name in RUNTIME_PACKAGES:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(name)
    return installed


def _missing_provider(wanted: str, available: list[str]) -> ModelLoadError:
    packages = installed_runtime_packages()
    if len(packages) > 1:
        fix = (
            f"Both {' and '.join(packages)} are installed and overwrite each other's files: "
            "uninstall all of them, then install one (pip install 'imgembed[onnx-gpu]')"
        )
    else:
        fix = (
            "Install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime, then "
            "pip install 'imgembed[onnx-gpu]') on a machine with an NVIDIA GPU"
        )
    return ModelLoadError(
        f"The ONNX Runtime backend was asked for {wanted}, but onnxruntime {ort.__version__} "
        f"({', '.join(packages) or 'no known package'}) offers only {available}. {fix}, or "
        "choose the cpu or auto provider (IMGEMBED_ONNX_PROVIDER)."
    )


def choose_providers(
    settings: OnnxRuntimeSettings, available: list[str] | None = None
) -> ProviderList:
    """The execution providers to ask ONNX Runtime for, best first, with their options.

    Args:
        settings: The provider choice and the CUDA options.
        available: What this ONNX Runtime offers; ``ort.get_available_providers()`` when ``None``.

    Returns:
        ``[CPU]`` for ``cpu`` (and ``auto`` without CUDA); ``[(CUDA, options), CPU]`` for ``cuda``
        and ``auto`` with CUDA; ``[(TensorRT, {device_id}), (CUDA, options), CPU]`` for
        ``tensorrt`` (nodes TensorRT does not take run on CUDA, then the CPU).

    Raises:
        ModelLoadError: ``cuda`` or ``tensorrt`` was asked for and this ONNX Runtime lacks it.
    """
    available = ort.get_available_providers() if available is None else available
    if settings.provider == "cpu":
        return [CPU_PROVIDER]
    cuda = (CUDA_PROVIDER, cuda_provider_options(settings))
    if settings.provider == "tensorrt":
        if TENSORRT_PROVIDER not in available:
            raise _missing_provider(TENSORRT_PROVIDER, available)
        tensorrt = (TENSORRT_PROVIDER, {"device_id": settings.device_id})
        return (
            [tensorrt, cuda, CPU_PROVIDER]
            if CUDA_PROVIDER in available
            else [tensorrt, CPU_PROVIDER]
        )
    if CUDA_PROVIDER in available:
        return [cuda, CPU_PROVIDER]
    if settings.provider == "cuda":
        raise _missing_provider(CUDA_PROVIDER, available)
    return [CPU_PROVIDER]


def _names(providers: ProviderList) -> list[str]:
    return [entry if isinstance(entry, str) else entry[0] for entry in providers]


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def open_session(
    graph: str,
    options: ort.SessionOptions,
    settings: OnnxRuntimeSettings,
    *,
    gpu_present: bool,
    session_factory: Callable[..., Any] | None = None,
) -> tuple[Any, ActiveProviders]:
    """Builds an ``InferenceSession`` on the providers ``settings`` asks for, and checks them.

    ONNX Runtime's own fallbacks are off (``enable_fallback=0``): without that, a provider
    failing at session creation, or at a later ``run``, makes it print a line and carry on with
    the CPU. Here ``auto`` retries with the CPU itself, and says so (:func:`check_providers`).

    Args:
        graph: The ``.onnx`` file.
        options: Session options (threads, optimisation level).
        settings: Provider choice and provider options.
        gpu_present: Whether the machine has a GPU (``torch.cuda.is_available()``).
        session_factory: Builds the session; ``None``: ``ort.InferenceSession`` (a stand-in in
            tests).

    Returns:
        The session and the providers it runs on.

    Raises:
        ModelLoadError: The graph cannot be loaded, or a requested ``cuda`` or ``tensorrt``
            provider is missing or did not start.
    """
    asked = choose_providers(settings)
    session_factory = session_factory or ort.InferenceSession
    try:
        session = session_factory(graph, sess_options=options, providers=asked, enable_fallback=0)
    except LOAD_ERRORS as error:
        if settings.provider != "auto" or asked == [CPU_PROVIDER]:
            raise ModelLoadError(
                f"ONNX Runtime cannot load {graph} on {_names(asked)}: {_first_line(error)}. "
                "Export the model again with `imgembed export onnx`"
                + ("." if asked == [CPU_PROVIDER] else ", or choose the cpu provider.")
            ) from error
        failure = f"{_names(asked)[0]} failed: {_first_line(error)}"
        cpu = dataclasses.replace(settings, provider="cpu")
        session, _ = open_session(
            graph, options, cpu, gpu_present=False, session_factory=session_factory
        )
        active = ActiveProviders("auto", CPU_PROVIDER, tuple(session.get_providers()), failure)
        _warn_fallback(graph, failure)
        return session, active
    return session, check_providers(
        session.get_providers(), settings, asked, graph=graph, gpu_present=gpu_present
    )


def _warn_fallback(graph: str, reason: str) -> None:
    logger.warning(
        "ONNX Runtime provider auto runs %s on the CPU, not a GPU: %s. Set "
        "IMGEMBED_ONNX_PROVIDER=cuda to make this an error, or cpu to choose the CPU.",
        graph,
        reason,
    )


def check_providers(
    session_providers: list[str],
    settings: OnnxRuntimeSettings,
    asked: ProviderList,
    *,
    graph: str,
    gpu_present: bool,
) -> ActiveProviders:
    """Checks a built session's providers against the request.

    Args:
        session_providers: ``session.get_providers()`` of the built session, best first.
        settings: The provider choice.
        asked: The providers the session was built with (:func:`choose_providers`).
        graph: The graph's file, for the messages.
        gpu_present: Whether the machine has a GPU (``torch.cuda.is_available()``): ``auto`` on
            the CPU of a machine with a GPU is a fallback, and is logged as a warning.

    Returns:
        The provider in use, and for ``auto`` why it is not a GPU's when it could have been.

    Raises:
        ModelLoadError: ``cuda`` or ``tensorrt`` was asked for and the session does not run on it
            (ONNX Runtime started without it and would have used the CPU instead).
    """
    active = session_providers[0] if session_providers else CPU_PROVIDER
    wanted = GPU_PROVIDERS.get(settings.provider)
    if wanted is not None and wanted not in session_providers:
        raise ModelLoadError(
            f"ONNX Runtime was asked for {wanted} (device {settings.device_id}) for {graph}, but "
            f"the session runs on {session_providers}: the provider did not start, and ONNX "
            "Runtime would quietly run on the CPU. Usually the CUDA 12 or cuDNN 9 libraries "
            f"onnxruntime-gpu {ort.__version__} needs are missing or of another major version "
            "(ONNX Runtime's own message above names the library): import a CUDA build of torch "
            "of the same CUDA major version (imgembed imports torch first), or install the "
            "nvidia-* libraries (pip install 'onnxruntime-gpu[cuda,cudnn]'); or choose the cpu "
            "or auto provider (IMGEMBED_ONNX_PROVIDER)."
        )
    fallback = None
    if settings.provider == "auto" and active not in GPU_PROVIDERS.values():
        if CUDA_PROVIDER in _names(asked):
            fallback = (
                f"{CUDA_PROVIDER} did not start (ONNX Runtime's message above names the missing "
                "CUDA or cuDNN library)"
            )
        elif gpu_present:
            packages = ", ".join(installed_runtime_packages()) or "no known package"
            fallback = (
                f"this onnxruntime ({packages}) has no {CUDA_PROVIDER}; install "
                "'imgembed[onnx-gpu]' in place of 'imgembed[onnx]'"
            )
    if fallback is not None:
        _warn_fallback(graph, fallback)
    return ActiveProviders(
        requested=settings.provider,
        active=active,
        providers=tuple(session_providers),
        fallback=fallback,
    )
