"""Export subcommands: ``imgembed export onnx`` and ``imgembed export triton``.

A thin shell over :mod:`imgembed.export`: the model is named and its weights found as for
``serve`` (``--model``, ``--weights``, ``--meta-config``), and the files are written under ``--out``.
``export triton --siglip MODEL`` (with ``--siglip-weights``) adds a SigLIP 2 model's image and text
embeddings to the repository under imgembed's v2 names.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from imgembed.errors import ImgembedError
from imgembed.settings import DEFAULT_MODEL


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"SAM 2 model (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--weights",
        help="hub id, Hugging Face folder, Meta .pt checkpoint, or 'dummy' (default: the hub)",
    )
    parser.add_argument("--meta-config", help="Meta config name for a .pt checkpoint")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--overwrite", "--force", action="store_true", help="replace files already in --out"
    )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "meta_config": args.meta_config,
        "precision": args.precision,
        "overwrite": args.overwrite,
    }
    if args.opset is not None:
        options["opset"] = args.opset
    return options


def _export_onnx(args: argparse.Namespace) -> int:
    try:
        from imgembed.export.onnx_export import export_onnx
    except ImportError as error:
        raise ImgembedError(
            f"ONNX export needs the onnx extra: pip install 'imgembed[onnx]' ({error})"
        ) from error
    result = export_onnx(args.model, args.weights, args.out, **_options(args))
    print(
        json.dumps(
            {
                "out_dir": str(result.out_dir),
                "precision": result.precision,
                "files": {role: str(path) for role, path in result.files.items()},
                "metadata": str(result.metadata_path),
            },
            indent=2,
        )
    )
    return 0


def _export_triton(args: argparse.Namespace) -> int:
    try:
        from imgembed.export.triton_config import TritonRepositorySettings
        from imgembed.export.triton_repository import export_triton
    except ImportError as error:
        raise ImgembedError(
            f"Triton export needs the onnx extra: pip install 'imgembed[onnx]' ({error})"
        ) from error
    settings = TritonRepositorySettings()
    encoder = replace(
        settings.encoder,
        max_batch_size=args.max_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_us,
        instance_count=args.instances,
        instance_kind=args.instance_kind,
        tensorrt_fp16=args.tensorrt_fp16,
        preferred_batch_sizes=tuple(
            size for size in settings.encoder.preferred_batch_sizes if size <= args.max_batch_size
        ),
    )
    decoder = replace(
        settings.decoder,
        instance_count=args.instances,
        instance_kind=args.instance_kind,
        tensorrt_fp16=args.tensorrt_fp16,
    )
    siglip = replace(
        settings.siglip,
        max_batch_size=args.siglip_max_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_us,
        instance_count=args.instances,
        instance_kind=args.instance_kind,
        tensorrt_fp16=args.tensorrt_fp16,
        preferred_batch_sizes=tuple(
            size
            for size in settings.siglip.preferred_batch_sizes
            if size <= args.siglip_max_batch_size
        ),
    )
    settings = replace(
        settings, encoder=encoder, decoder=decoder, siglip=siglip, backend=args.backend
    )
    if args.siglip_weights is not None and args.siglip is None:
        raise ImgembedError("--siglip-weights needs --siglip MODEL (the SigLIP 2 model to add)")
    result = export_triton(
        args.model,
        args.weights,
        args.out,
        settings=settings,
        siglip_model=args.siglip,
        siglip_weights=args.siglip_weights,
        **_options(args),
    )
    print(
        json.dumps(
            {
                "repository": str(result.out_dir),
                "configs": {name: str(path) for name, path in result.config_paths.items()},
                "serve_with": f"tritonserver --model-repository {result.out_dir}",
            },
            indent=2,
        )
    )
    return 0


def add_commands(commands: Any) -> None:
    """Registers ``export onnx`` and ``export triton``."""
    export = commands.add_parser("export", help="export SAM 2 to ONNX or a Triton repository")
    kinds = export.add_subparsers(dest="export_kind", required=True)

    onnx = kinds.add_parser("onnx", help="encoder.onnx, decoder.onnx and imgembed-export.json")
    _add_common(onnx)
    onnx.set_defaults(handler=_export_onnx)

    triton = kinds.add_parser("triton", help="a Triton model repository (ONNX + config.pbtxt)")
    _add_common(triton)
    triton.add_argument("--max-batch-size", type=int, default=8, help="encoder batches (default 8)")
    triton.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="encoder batching delay (default 2000)"
    )
    triton.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    triton.add_argument("--instance-kind", choices=("auto", "gpu", "cpu"), default="auto")
    triton.add_argument(
        "--tensorrt-fp16", action="store_true", help="add the TensorRT FP16 accelerator block"
    )
    triton.add_argument(
        "--backend",
        choices=("onnxruntime", "python"),
        default="onnxruntime",
        help="Triton backend: onnxruntime (default; GPUs, TensorRT) or python (model.py runs the "
        "graph with ONNX Runtime; see docs/triton.md)",
    )
    triton.add_argument(
        "--siglip",
        metavar="MODEL",
        help="also export this FixRes SigLIP 2 model (siglip2-base-patch16-224, ...) as the "
        "models siglip, siglip_text, MODEL and MODEL_text (imgembed's v2 SigLIP names)",
    )
    triton.add_argument(
        "--siglip-weights",
        help="the SigLIP model's weights: hub id, Hugging Face folder, or 'dummy' (default: the "
        "hub)",
    )
    triton.add_argument(
        "--siglip-max-batch-size",
        type=int,
        default=32,
        help="SigLIP encoders' batches, also the most items one request may carry (default 32)",
    )
    triton.set_defaults(handler=_export_triton)
