"""Flushing a local table's new files to stable storage after each committed write.

Lance commits a write by writing its data files, then a new manifest whose appearance is the commit
(atomic create or rename). That ordering is what makes a write survive the writing *process* being
killed at any point: a manifest is either there, referring to complete files, or not, and an
interrupted write leaves only unreferenced files. Lance's local file system writer does not call
``fsync``, though, so after an operating-system crash or a power cut the page cache may not have
reached the disk. :class:`TreeSyncer` closes that gap for acknowledgements: after a write returns,
it fsyncs every file under the table directory that is new or changed since its last pass, then the
directories that gained entries, before the store reports success.

What it does not give: ordering *within* Lance's commit. Should the machine lose power in the short
window while Lance writes (before the store acknowledges), a file system may keep the new manifest
but not all of the data it names; that unacknowledged write can then leave the newest version
unreadable, and the previous version (still on disk) is the one to restore.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class TreeSyncer:
    """Fsyncs what changed under one directory tree since the previous pass.

    Lance writes each file once, so a file is flushed when it first appears (or, should one ever be
    rewritten, when its size or modification time changes). Not thread-safe: callers hold the
    table's write lock.

    Args:
        root: The tree (a table directory, ``<store>/<name>.lance``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: dict[str, tuple[int, int]] = {}

    def sync(self) -> int:
        """Fsyncs new or changed files, then each directory with new entries, then the root.

        Returns:
            How many files were flushed.
        """
        flushed = 0
        dirty_dirs: set[str] = set()
        current: dict[str, tuple[int, int]] = {}
        for directory, subdirs, files in os.walk(self.root):
            for name in subdirs:
                path = os.path.join(directory, name)
                current[path] = (0, 0)
                if path not in self._seen:
                    dirty_dirs.add(directory)
            for name in files:
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                signature = (stat.st_mtime_ns, stat.st_size)
                current[path] = signature
                if self._seen.get(path) != signature:
                    with contextlib.suppress(FileNotFoundError):
                        fsync_path(path)
                        flushed += 1
                    dirty_dirs.add(directory)
        for directory in dirty_dirs:
            with contextlib.suppress(FileNotFoundError):
                fsync_path(directory, directory=True)
        self._seen = current
        logger.debug("flushed %d files under %s", flushed, self.root)
        return flushed


def fsync_path(path: str | Path, *, directory: bool = False) -> None:
    """Opens a file or directory and fsyncs it (for a directory: its entries)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
