"""The page's files: its own static files, and the vendored onnxruntime-web build.

Only files listed here (static) or in the vendor manifest are served, by exact name: no path from a
request ever reaches the file system, so nothing outside these folders can be read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
VENDOR_DIR = PACKAGE_DIR / "vendor"
VENDOR_MANIFEST = "manifest.json"
FETCH_COMMAND = "scripts/fetch_ui_assets.sh"
"""What an operator runs to fill :data:`VENDOR_DIR` from the npm registry."""

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}
"""Media type by file suffix; ``application/wasm`` lets browsers compile while downloading."""

STATIC_FILES = frozenset(
    {"index.html", "app.js", "features.js", "decoder.js", "masks.js", "view.js", "style.css"}
)
"""The page's own files under :data:`STATIC_DIR`."""


@dataclass(frozen=True)
class StaticAsset:
    """A file the page loads.

    Attributes:
        path: Where it is on disk.
        media_type: Its ``Content-Type``.
        etag: A strong validator: a hash of its bytes (static) or its published SHA-256 (vendor).
    """

    path: Path
    media_type: str
    etag: str


@dataclass(frozen=True)
class VendorManifest:
    """What ``scripts/fetch_ui_assets.sh`` installed.

    Attributes:
        package: The npm package (``onnxruntime-web``).
        version: Its version.
        files: File name to SHA-256 hex digest.
    """

    package: str
    version: str
    files: dict[str, str]


def _media_type(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")


@cache
def _static_etag(path: Path, size: int, mtime_ns: int) -> str:
    """Hash of a static file's bytes, recomputed only when its size or time changes."""
    return hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()


def static_asset(name: str) -> StaticAsset | None:
    """One of the page's own files, or ``None`` when ``name`` is not one."""
    if name not in STATIC_FILES:
        return None
    path = STATIC_DIR / name
    stat = path.stat()
    return StaticAsset(path, _media_type(name), _static_etag(path, stat.st_size, stat.st_mtime_ns))


def read_vendor_manifest(vendor_dir: Path | None = None) -> VendorManifest | None:
    """The installed onnxruntime-web build in ``vendor_dir`` (default :data:`VENDOR_DIR`), or
    ``None`` when it is not installed (or unreadable, which is logged)."""
    path = (vendor_dir or VENDOR_DIR) / VENDOR_MANIFEST
    try:
        contents = json.loads(path.read_text(encoding="utf-8"))
        return VendorManifest(
            package=str(contents["package"]),
            version=str(contents["version"]),
            files={str(name): str(digest) for name, digest in contents["files"].items()},
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning("unreadable %s (%s); run %s again", path, error, FETCH_COMMAND)
        return None


def vendor_asset(name: str, vendor_dir: Path | None = None) -> StaticAsset | None:
    """A file of the onnxruntime-web build in ``vendor_dir`` (default :data:`VENDOR_DIR`), or
    ``None`` when it is not one of them or is not installed."""
    folder = vendor_dir or VENDOR_DIR
    manifest = read_vendor_manifest(folder)
    if manifest is None or name not in manifest.files:
        return None
    path = folder / name
    if not path.is_file():
        return None
    return StaticAsset(path, _media_type(name), manifest.files[name][:32])
