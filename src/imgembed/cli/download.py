"""``imgembed download``: pre-fetch models' hub weights for a later offline start.

A thin shell over :func:`imgembed.models.hub_download.download_model`. The hub variables are read
here, not left to ``huggingface_hub``'s import-time constants, so the command honours them however
it is started: ``HF_ENDPOINT`` (a mirror), ``HF_HUB_CACHE`` or ``HF_HOME`` (the cache),
``HF_HUB_ETAG_TIMEOUT`` (the wait for the hub's answers) and ``HF_HUB_OFFLINE`` (refused: a
download needs the hub). The summary is JSON on stdout; what an offline start needs goes to
stderr as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from imgembed.errors import InvalidInputError

_TRUE = ("1", "true", "yes", "on")


def _cache_dir(args: argparse.Namespace) -> str | None:
    """``--cache-dir``, else ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default cache."""
    if args.cache_dir:
        return str(args.cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _timeout(args: argparse.Namespace) -> float:
    """``--timeout``, else ``HF_HUB_ETAG_TIMEOUT``, else 10 seconds."""
    from imgembed.models.hub_download import DEFAULT_TIMEOUT_S

    if args.timeout is not None:
        return float(args.timeout)
    raw = os.environ.get("HF_HUB_ETAG_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError as error:
        raise InvalidInputError(
            f"HF_HUB_ETAG_TIMEOUT={raw!r} is not a number of seconds; set it to e.g. 30",
            field="timeout",
        ) from error


def _serve_command(models: list[Any], local_dir: Path | None, cache_dir: Path | None) -> str:
    """The command line that starts the service on what was downloaded, without the hub."""
    words = []
    if local_dir is None:
        words += ["HF_HUB_OFFLINE=1", f"HF_HUB_CACHE={shlex.quote(str(cache_dir))}"]
    words += ["imgembed", "serve"]
    for model in models:
        words += ["--model", model.name]
        if local_dir is not None:
            words += ["--weights", shlex.quote(str(model.folder))]
    return " ".join(words)


def _download(args: argparse.Namespace) -> int:
    from imgembed.models.hub import HubAccess
    from imgembed.models.hub_download import download_model, resolve_download_name

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise InvalidInputError(
            "imgembed download needs the hub but HF_HUB_OFFLINE is set; unset it (or set "
            "HF_HUB_OFFLINE=0) for this command",
            field="HF_HUB_OFFLINE",
        )
    if args.cache_dir and args.local_dir:
        raise InvalidInputError(
            "give --cache-dir (a Hugging Face cache) or --local-dir (plain folders), not both",
            field="local_dir",
        )
    for name in args.models:
        resolve_download_name(name)  # every name checked before anything is fetched
    hub = HubAccess(
        cache_dir=_cache_dir(args),
        endpoint=os.environ.get("HF_ENDPOINT") or None,
        timeout_s=_timeout(args),
    )
    local_dir = Path(args.local_dir).expanduser().resolve() if args.local_dir else None
    downloaded = []
    for name in args.models:
        _, canonical, _ = resolve_download_name(name)
        target = local_dir / canonical if local_dir is not None else None
        model = download_model(name, hub, local_dir=target)
        size = sum(file.size for file in model.files)
        print(
            f"downloaded {model.name} ({model.repo_id} at {model.commit[:12]}): "
            f"{len(model.files)} files, {size / 1e6:.1f} MB, checked -> {model.folder}",
            file=sys.stderr,
        )
        downloaded.append(model)
    cache_dir = downloaded[0].cache_dir if downloaded else None
    serve = _serve_command(downloaded, local_dir, cache_dir)
    summary: dict[str, Any] = {
        "models": [
            {
                "name": model.name,
                "family": model.family,
                "repo_id": model.repo_id,
                "commit": model.commit,
                "folder": str(model.folder),
                "files": [
                    {"path": f.path, "size": f.size, "check": f.algorithm, "digest": f.digest}
                    for f in model.files
                ],
            }
            for model in downloaded
        ],
        "offline_env": (
            {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir)} if local_dir is None else {}
        ),
        "serve": serve,
    }
    print(json.dumps(summary, indent=2))
    print(f"start without the hub: {serve}", file=sys.stderr)
    return 0


def add_commands(commands: Any) -> None:
    """Registers ``download``."""
    download = commands.add_parser(
        "download",
        help="fetch models' hub weights (the files the loaders read) for an offline start",
        description="Fetches exactly the files each model's loader reads into the Hugging Face "
        "cache (or plain folders), checks their sizes and hashes against the hub, and prints "
        "what a later offline start needs (HF_HUB_OFFLINE=1 and the cache). Reads HF_ENDPOINT, "
        "HF_HUB_CACHE, HF_HOME, HF_HUB_ETAG_TIMEOUT and HF_TOKEN.",
    )
    download.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="SAM 2 or SigLIP 2 model name or hub id (sam2.1-hiera-large, "
        "google/siglip2-large-patch16-512)",
    )
    download.add_argument(
        "--cache-dir",
        help="Hugging Face cache to fill (default HF_HUB_CACHE, else $HF_HOME/hub, else "
        "~/.cache/huggingface/hub)",
    )
    download.add_argument(
        "--local-dir",
        help="write plain folders DIR/<model> instead of the cache; serve them with --weights",
    )
    download.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for each hub answer (HF_HUB_ETAG_TIMEOUT; default 10)",
    )
    download.set_defaults(handler=_download)
