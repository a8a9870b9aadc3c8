"""The ``imgembed`` command: ``serve`` and ``embed``.

A thin shell: flags and ``IMGEMBED_*`` variables become a :class:`~imgembed.config.ServerConfig`
(see :mod:`imgembed.settings`), and user-facing errors are printed as one line, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from imgembed.config import ServerConfig
from imgembed.errors import ImgembedError

logger = logging.getLogger(__name__)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
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


def _config(args: argparse.Namespace, **extra: Any) -> ServerConfig:
    from imgembed.settings import server_config_from_env

    overrides = {
        "model": args.model,
        "weights": args.weights,
        "meta_config": args.meta_config,
        "device": args.device,
        **extra,
    }
    config_file = Path(args.config) if getattr(args, "config", None) else None
    return server_config_from_env(os.environ, overrides, config_file)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imgembed.engine import Engine
    from imgembed.server.app import create_app

    config = _config(args, host=args.host, port=args.port)
    engine = Engine(config)
    engine.load()
    app = create_app(config, engine=engine)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=config.shutdown_timeout_s,
    )
    return 0


def _embed(args: argparse.Namespace) -> int:
    from imgembed.engine import Engine
    from imgembed.pipelines.sam2_embed import Sam2EmbedOptions
    from imgembed.types import ImageBytes
    from imgembed.wire import NPZ_KEYS, sam2_embed_meta

    image_path = Path(args.image)
    if not image_path.is_file():
        raise ImgembedError(f"image file {image_path} does not exist", field="image")
    output = Path(args.output) if args.output else image_path.with_suffix(".npz")
    config = _config(args)
    options = Sam2EmbedOptions(
        dtype=args.dtype,
        include_high_res=not args.no_high_res,
        resize_mode=args.resize_mode or config.default_resize_mode,
    )

    async def run() -> Any:
        async with Engine(config) as engine:
            return await engine.sam2_embed(
                ImageBytes(image_path.read_bytes(), field="image"), options=options
            )

    result = asyncio.run(run())
    meta = {
        **sam2_embed_meta(result),
        "dtype": result.embedding.dtype,
        "device": result.model.placement.device_name,
        "untrained": result.model.loaded.untrained,
    }
    arrays = {NPZ_KEYS[name]: array for name, array in result.embedding.arrays.items()}
    with output.open("wb") as file:
        np.savez(file, **arrays, meta_json=np.array(json.dumps(meta)))
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in arrays.items())
    print(f"wrote {output}: {shapes} {result.embedding.dtype}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="imgembed", description="Image embeddings as a service (SAM 2 features)."
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("IMGEMBED_LOG_LEVEL", "INFO"),
        help="IMGEMBED_LOG_LEVEL; default INFO",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    _add_model_flags(serve)
    serve.add_argument("--config", help="TOML config file (IMGEMBED_CONFIG); see the README")
    serve.add_argument("--host", help="IMGEMBED_HOST; default 127.0.0.1")
    serve.add_argument("--port", type=int, help="IMGEMBED_PORT; default 8000")
    serve.set_defaults(handler=_serve)

    embed = commands.add_parser("embed", help="compute SAM 2 features of one image into an .npz")
    embed.add_argument("image", help="image file")
    embed.add_argument("-o", "--output", help="output .npz (default: IMAGE with .npz suffix)")
    _add_model_flags(embed)
    embed.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    embed.add_argument("--resize-mode", choices=("stretch", "letterbox"))
    embed.add_argument(
        "--no-high-res", action="store_true", help="only image_embed (SAM 1 style decoders)"
    )
    embed.set_defaults(handler=_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imgembed`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except ImgembedError as error:
        print(f"imgembed: error: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
