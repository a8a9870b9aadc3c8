"""Similarity-search subcommands: ``index`` a folder of images, ``search`` a collection.

Both run the collections' api operations (:mod:`imgembed.api.collections_operations`, as the HTTP
routes and the RunPod handler do) on a local engine with a SigLIP model
(``siglip2-base-patch16-224`` unless ``--model`` or ``IMGEMBED_MODEL`` names another) over the
collections in ``--collections-dir`` (or ``IMGEMBED_COLLECTIONS_DIR``): the same store a server
using that folder reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from imgembed.cli.common import add_model_flags, call_operation, call_parsed, config_from_args
from imgembed.errors import ImgembedError, InvalidInputError
from imgembed.models.siglip_variants import DEFAULT_SIGLIP_MODEL

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def _config(args: argparse.Namespace) -> Any:
    if not args.model and not os.environ.get("IMGEMBED_MODEL"):
        args.model = [DEFAULT_SIGLIP_MODEL]
    extra = {"collections_dir": args.collections_dir} if args.collections_dir else {}
    return config_from_args(args, **extra)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImgembedError(f"{folder} is not a folder of images", field="folder")
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )


def _progress(done: int, total: int, failed: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    print(f"\r[{bar}] {done}/{total} images, {failed} failed", end="", file=sys.stderr, flush=True)


def _index(args: argparse.Namespace) -> int:
    from imgembed.api.collections_operations import ADD_ITEMS
    from imgembed.engine import Engine
    from imgembed.types import ImageBytes

    folder = Path(args.folder)
    files = _image_files(folder)
    if not files:
        raise ImgembedError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    config = _config(args)
    batch = config.limits.max_batch_images

    async def run() -> dict[str, Any]:
        inserted = updated = 0
        failures: list[dict[str, str]] = []
        async with Engine(config) as engine:
            for start in range(0, len(files), batch):
                chunk = files[start : start + batch]
                relatives = [path.relative_to(folder).as_posix() for path in chunk]
                # Each item takes its file as the next upload, named by its path in errors.
                items = [
                    {"id": relative, "metadata": {"path": relative, "bytes": path.stat().st_size}}
                    for path, relative in zip(chunk, relatives, strict=True)
                ]
                uploads = [
                    ImageBytes(path.read_bytes(), field=relative)
                    for path, relative in zip(chunk, relatives, strict=True)
                ]
                request = ADD_ITEMS.parse(
                    {"name": args.collection, "items": items, "on_conflict": "upsert"}
                )
                try:
                    outcome = await call_parsed(engine, ADD_ITEMS, request, uploads)
                except ImgembedError as error:
                    if error.field not in relatives:
                        raise  # not an image of this chunk: the collection or store is at fault
                    # Every image of the chunk failed; the add raised the first failure.
                    failures += [
                        {"path": relative, "error": "could not be embedded"}
                        for relative in relatives
                    ]
                    _progress(start + len(chunk), len(files), len(failures))
                    continue
                inserted += outcome.result.inserted
                updated += outcome.result.updated
                failures += [{"path": item.id, "error": e.message} for _, item, e in outcome.failed]
                _progress(start + len(chunk), len(files), len(failures))
        print(file=sys.stderr)
        return {
            "collection": args.collection,
            "images": len(files),
            "inserted": inserted,
            "updated": updated,
            "failed": failures,
        }

    print(json.dumps(asyncio.run(run()), indent=2))
    return 0


def _search(args: argparse.Namespace) -> int:
    from imgembed.api.collections_operations import SEARCH
    from imgembed.types import ImageBytes

    if (args.text is None) == (args.image is None):
        raise InvalidInputError("give exactly one of --text and --image", field="text")
    uploads = []
    if args.image is not None:
        path = Path(args.image)
        if not path.is_file():
            raise ImgembedError(f"image file {path} does not exist", field="image")
        uploads.append(ImageBytes(path.read_bytes(), field="image"))
    try:
        filter_spec = json.loads(args.filter) if args.filter else None
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"--filter is not JSON: {error}", field="filter") from error
    payload = {"name": args.collection, "top_k": args.top_k, "filter": filter_spec}
    if args.text is not None:
        payload["text"] = args.text
    _, (hits, model) = call_operation(_config(args), SEARCH, payload, uploads)
    body = {
        "collection": args.collection,
        "model": model,
        "hits": [
            {"id": hit.id, "score": round(hit.score, 6), "metadata": hit.metadata} for hit in hits
        ],
    }
    print(json.dumps(body, indent=2))
    return 0


def add_commands(commands: Any) -> None:
    """Registers ``index`` and ``search``."""
    index = commands.add_parser("index", help="embed a folder of images into a collection")
    index.add_argument("folder", help="folder searched recursively for images")
    index.add_argument("--collection", required=True, help="collection name (created if new)")
    index.add_argument("--collections-dir", help="IMGEMBED_COLLECTIONS_DIR")
    add_model_flags(index)
    index.set_defaults(handler=_index)

    search = commands.add_parser("search", help="search a collection by text or by image")
    search.add_argument("--collection", required=True)
    search.add_argument("--text", help="query text")
    search.add_argument("--image", help="query image file")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"path": "cats/a.jpg"}\'')
    search.add_argument("--collections-dir", help="IMGEMBED_COLLECTIONS_DIR")
    add_model_flags(search)
    search.set_defaults(handler=_search)
