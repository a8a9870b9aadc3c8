"""The ``imgembed`` command: ``serve``, ``embed``, ``segment``, ``segment-everything``, ``index``,
``search``, ``export``, ``download``.

A thin shell: flags and ``IMGEMBED_*`` variables become a :class:`~imgembed.settings.ServerConfig`
(see :mod:`imgembed.settings`), and user-facing errors are printed as one line, not a traceback.
Subcommands live in the modules of this package; each registers its parser here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from imgembed.cli import download, export, sam2, search
from imgembed.cli.common import add_model_flags, config_from_args
from imgembed.errors import ImgembedError
from imgembed.logs import configure_logging

logger = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imgembed.engine import Engine
    from imgembed.server.app import create_app
    from imgembed.server.http_server import uvicorn_config

    config = config_from_args(args, host=args.host, port=args.port)
    engine = Engine(config)
    engine.load()
    app = create_app(config, engine=engine)
    uvicorn.Server(uvicorn_config(app, config)).run()
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
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("IMGEMBED_LOG_FORMAT", "text"),
        help="text, or json for one JSON object per line (IMGEMBED_LOG_FORMAT; default text)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    add_model_flags(serve)
    serve.add_argument(
        "--config", help="TOML config file (IMGEMBED_CONFIG); see docs/configuration.md"
    )
    serve.add_argument("--host", help="IMGEMBED_HOST; default 127.0.0.1")
    serve.add_argument("--port", type=int, help="IMGEMBED_PORT; default 8000")
    serve.set_defaults(handler=_serve)

    sam2.add_commands(commands)
    search.add_commands(commands)
    export.add_commands(commands)
    download.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imgembed`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return args.handler(args)
    except ImgembedError as error:
        print(f"imgembed: error: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
