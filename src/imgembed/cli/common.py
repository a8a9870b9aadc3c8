"""Flags and configuration shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from imgembed.errors import ImgembedError
from imgembed.settings import ServerConfig

if TYPE_CHECKING:  # imported by the calls that need them: the command starts without torch
    from pydantic import BaseModel

    from imgembed.api.operation import Operation
    from imgembed.engine import Engine
    from imgembed.types import ImageBytes

RequestT = TypeVar("RequestT", bound="BaseModel")
ResultT = TypeVar("ResultT")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        action="append",
        help="SAM 2 model: sam2[.1]-hiera-{tiny,small,base-plus,large}, or a hub id; repeat to "
        "serve several (IMGEMBED_MODEL; default sam2.1-hiera-tiny)",
    )
    group.add_argument(
        "--weights",
        action="append",
        help="hub id, Hugging Face folder, Meta .pt checkpoint, or 'dummy' for random untrained "
        "weights; once for all models or once per --model (IMGEMBED_WEIGHTS or SAM2_CHECKPOINT; "
        "default: the model's hub repository)",
    )
    group.add_argument(
        "--meta-config",
        help="Meta config name for a .pt checkpoint, e.g. sam2.1_hiera_t.yaml "
        "(IMGEMBED_META_CONFIG or SAM2_MODEL_CFG)",
    )
    group.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="IMGEMBED_DEVICE; default auto"
    )
    group.add_argument(
        "--compute-dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="precision of the forward passes (IMGEMBED_COMPUTE_DTYPE; default auto: float32 on "
        "CPU, bfloat16 on a GPU with native bfloat16, else float16); float16 needs CUDA",
    )
    group.add_argument(
        "--backend",
        choices=("torch", "onnxruntime"),
        help="what runs the SAM 2 encoder (IMGEMBED_BACKEND; default torch); onnxruntime needs "
        "--onnx-dir",
    )
    group.add_argument("--onnx-dir", help="an 'imgembed export onnx' folder (IMGEMBED_ONNX_DIR)")
    group.add_argument(
        "--onnx-provider",
        choices=("auto", "cpu", "cuda", "tensorrt"),
        help="ONNX Runtime's execution provider for the onnxruntime backend "
        "(IMGEMBED_ONNX_PROVIDER; default auto); cuda and tensorrt fail unless they really run",
    )


def config_from_args(args: argparse.Namespace, **extra: Any) -> ServerConfig:
    from imgembed.settings import server_config_from_env

    overrides = {
        "model": args.model,
        "weights": args.weights,
        "meta_config": args.meta_config,
        "device": args.device,
        "compute_dtype": getattr(args, "compute_dtype", None),
        "backend": getattr(args, "backend", None),
        "onnx_dir": getattr(args, "onnx_dir", None),
        "onnx.provider": getattr(args, "onnx_provider", None),
        **extra,
    }
    config_file = Path(args.config) if getattr(args, "config", None) else None
    return server_config_from_env(os.environ, overrides, config_file)


def read_image_file(path_text: str) -> bytes:
    """The bytes of an image file named on the command line.

    Raises:
        ImgembedError: The file does not exist or cannot be read.
    """
    path = Path(path_text)
    if not path.is_file():
        raise ImgembedError(f"image file {path} does not exist", field="image")
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImgembedError(f"image file {path} cannot be read: {error}", field="image") from error


def call_operation(
    config: ServerConfig,
    operation: Any,
    payload: dict[str, Any],
    uploads: Sequence[Any] = (),
) -> tuple[Any, Any]:
    """Runs an :class:`~imgembed.api.operation.Operation` on a local engine, for a command that
    writes its own files from the result instead of the operation's JSON response.

    The request is parsed before any model loads, so a bad flag fails at once.

    Args:
        config: The engine's configuration.
        operation: The api operation.
        payload: Its request, as the JSON object an HTTP client would send.
        uploads: Image files, as ``ImageBytes`` named by the flag or argument they came from.

    Returns:
        The parsed request and the engine call's result.

    Raises:
        ImgembedError: The request is refused or the call fails.
    """
    import asyncio

    from imgembed.engine import Engine

    request = operation.parse(payload)

    async def run() -> Any:
        async with Engine(config) as engine:
            return await call_parsed(engine, operation, request, uploads)

    return request, asyncio.run(run())


async def call_parsed(
    engine: Engine,
    operation: Operation[RequestT, ResultT],
    request: RequestT,
    uploads: Sequence[ImageBytes] = (),
) -> ResultT:
    """Runs a parsed request's engine call on a started engine, for a command that makes several
    calls on one engine (``index``: one per batch of files).

    Args:
        engine: The started :class:`~imgembed.engine.Engine`.
        operation: The api operation.
        request: Its request, from ``operation.parse``.
        uploads: Image files, as ``ImageBytes`` named by the file they came from.

    Returns:
        The engine call's result.

    Raises:
        ImgembedError: The request is refused or the call fails.
    """
    from imgembed.api.operation import Context

    context = Context(engine, "cli", uploads)
    return await operation.call(request, operation.resolve(request, context), context)
