"""Output folders for exports: checked before the slow work, filled atomically after it.

An export first proves it can write where it was asked to (creating the folder, writing and
removing a probe file), so a bad path fails in a second with a clear message instead of after a
minute of tracing. Files are built in a staging folder inside the output folder and moved into
place with :func:`os.replace` only when every one of them is complete, so an interrupted export
never leaves a half-written graph under a final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from imgembed.errors import ConflictError, InvalidInputError

STAGING_PREFIX = ".imgembed-export-"
"""Name prefix of the staging folder an export builds its files in."""


def prepare_output_dir(
    out_dir: str | os.PathLike[str],
    file_names: Iterable[str],
    *,
    overwrite: bool,
    field: str = "out_dir",
) -> Path:
    """Creates ``out_dir`` if needed and checks that the export can write there.

    Args:
        out_dir: The folder the export writes into.
        file_names: Paths, relative to ``out_dir``, the export will write.
        overwrite: Replace files of those names that already exist.
        field: The argument name reported in errors.

    Returns:
        The absolute folder path.

    Raises:
        InvalidInputError: The path is a file, lies under a file, or cannot be created or written.
        ConflictError: A file the export would write exists and ``overwrite`` is off.
    """
    folder = Path(out_dir).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(
            f"Cannot export to {folder}: it is a file, not a folder. Give a folder path (it is "
            "created if missing).",
            field=field,
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=STAGING_PREFIX + "probe-"):
            pass
    except OSError as error:
        raise InvalidInputError(
            f"Cannot export to {folder}: the folder cannot be created or written "
            f"({error.strerror or type(error).__name__}). Choose a folder you can write to.",
            field=field,
        ) from error
    existing = sorted(name for name in file_names if (folder / name).exists())
    if existing and not overwrite:
        raise ConflictError(
            f"{folder} already holds {', '.join(existing)}. Choose an empty folder, or allow "
            "overwriting (overwrite=True, --force on the command line).",
            field=field,
        )
    return folder


@contextlib.contextmanager
def staging_dir(folder: Path) -> Iterator[Path]:
    """A fresh folder inside ``folder`` for building files, removed when the block ends."""
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=STAGING_PREFIX))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: Path, folder: Path, relative_paths: Iterable[str]) -> None:
    """Moves each built file from ``staging`` to the same relative path under ``folder``."""
    for relative in relative_paths:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)
