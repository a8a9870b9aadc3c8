"""Pre-fetching a model's hub weights for a later offline start (``imgembed download``).

:func:`download_model` resolves a SAM 2 or SigLIP 2 name (or a released hub id), lists the
repository's files with their sizes and hashes in one bounded request, fetches exactly the files
that model's loader reads (through the loaders' own ``fetch_*_hub``, so the two cannot drift) into
the Hugging Face cache or a plain folder, and checks every fetched file against the listing:
its size, then its SHA-256 (files kept in Git LFS, the weights) or its git blob SHA-1 (small files).

``huggingface_hub`` does the transfer: files already complete are skipped, a connection that drops
mid-file is resumed with an HTTP range request (up to five times), and a body shorter than the
announced size fails its consistency check. A file whose download process was killed is fetched
again from its start: ``huggingface_hub`` (2.x) writes each transfer to a file unique to its
process and deletes it on failure, so only whole files carry over from one run to the next.

Like the rest of :mod:`imgembed.models`, this module reads no environment; the caller passes a
:class:`~imgembed.models.hub.HubAccess`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HTTPError as HubHTTPError
from huggingface_hub.errors import (
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from imgembed.errors import ModelLoadError, UnknownModelError
from imgembed.models.hub import HubAccess
from imgembed.models.sam2_loading import fetch_sam2_hub
from imgembed.models.sam2_registry import resolve_variant, variant_names
from imgembed.models.siglip_loading import fetch_siglip_hub
from imgembed.models.siglip_registry import resolve_siglip_variant, siglip_variant_names

logger = logging.getLogger(__name__)

Family = Literal["sam2", "siglip"]
Algorithm = Literal["sha256", "git-sha1", "size"]
"""How a fetched file was checked: the LFS SHA-256, the git blob SHA-1, or its size alone (when the
hub gave no hash)."""
DEFAULT_TIMEOUT_S = 10.0
"""Seconds to wait for the hub to answer a listing or metadata request (``huggingface_hub``'s own
default)."""
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HubFile:
    """A file of a repository as the hub lists it.

    Attributes:
        path: Its path in the repository.
        size: Its size in bytes (the LFS object's, for LFS files); ``None`` when not listed.
        sha256: The LFS object's SHA-256, for files kept in Git LFS.
        git_sha1: Its git blob id (SHA-1 of ``"blob {size}\\0"`` and the content).
    """

    path: str
    size: int | None
    sha256: str | None
    git_sha1: str | None


@dataclass(frozen=True)
class RepoListing:
    """A repository at one commit: the files the hub lists for it."""

    repo_id: str
    commit: str
    files: Mapping[str, HubFile]


@dataclass(frozen=True)
class VerifiedFile:
    """A fetched file that matched the hub's listing.

    Attributes:
        path: Its path in the repository.
        size: Its size in bytes.
        algorithm: What was compared beyond the size.
        digest: The digest compared (empty for ``"size"``).
    """

    path: str
    size: int
    algorithm: Algorithm
    digest: str


@dataclass(frozen=True)
class DownloadedModel:
    """One model's weights, fetched and checked.

    Attributes:
        name: The model's canonical name (``sam2.1-hiera-tiny``).
        family: Its family.
        repo_id: The hub repository fetched.
        commit: The commit fetched.
        folder: The snapshot folder in the cache, or the plain folder written.
        cache_dir: The Hugging Face cache the snapshot is in; ``None`` for a plain folder.
        files: Every file fetched, as checked.
    """

    name: str
    family: Family
    repo_id: str
    commit: str
    folder: Path
    cache_dir: Path | None
    files: tuple[VerifiedFile, ...]


def resolve_download_name(name: str) -> tuple[Family, str, str]:
    """The family, canonical name and hub repository of a model name or released hub id.

    Raises:
        UnknownModelError: Neither family knows the name; the message lists both families' names.
    """
    try:
        sam2 = resolve_variant(name)
        return "sam2", sam2.name, sam2.hub_id
    except UnknownModelError:
        pass
    try:
        siglip = resolve_siglip_variant(name)
        return "siglip", siglip.name, siglip.hub_id
    except UnknownModelError:
        pass
    raise UnknownModelError(
        f"Unknown model {name!r}: expected a SAM 2 name ({', '.join(variant_names())}) or a "
        f"SigLIP 2 name ({', '.join(siglip_variant_names())}), or one of their hub ids such as "
        "facebook/sam2.1-hiera-tiny or google/siglip2-base-patch16-224."
    )


def _one_line(error: BaseException) -> str:
    """An exception's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].rstrip('. ') if lines else 'no message'}"


def list_repo(repo_id: str, hub: HubAccess) -> RepoListing:
    """The repository's current commit and its files with sizes and hashes, in one request.

    Args:
        repo_id: The repository, ``org/name``.
        hub: How to reach the hub; ``hub.timeout_s`` bounds the wait (default
            :data:`DEFAULT_TIMEOUT_S`).

    Returns:
        The listing.

    Raises:
        ModelLoadError: The repository is absent, offline mode is on, or the hub did not answer in
            time; one line that says what to set.
    """
    endpoint = hub.endpoint or hub_constants.ENDPOINT
    timeout = hub.timeout_s if hub.timeout_s is not None else DEFAULT_TIMEOUT_S
    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo_id,
            revision=hub_constants.DEFAULT_REVISION,
            files_metadata=True,
            timeout=timeout,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ModelLoadError(
            f"The hub {endpoint} has no repository {repo_id!r} (or it is private or gated): "
            f"{_one_line(error)}. Check the model name, or set HF_TOKEN for a private repository."
        ) from error
    except OfflineModeIsEnabled as error:
        raise ModelLoadError(
            f"Cannot download {repo_id!r}: HF_HUB_OFFLINE is set, so the hub is not contacted. "
            "Unset HF_HUB_OFFLINE to download."
        ) from error
    except (HubHTTPError, OSError) as error:
        raise ModelLoadError(
            f"Cannot reach the hub {endpoint} for {repo_id!r} ({_one_line(error)}; waited at "
            f"most {timeout:g} s). Set HF_ENDPOINT to a reachable hub or mirror, or "
            "HF_HUB_ETAG_TIMEOUT/--timeout for a slow one; or download on a networked machine and "
            "copy the cache (HF_HUB_CACHE)."
        ) from error
    if not info.sha:
        raise ModelLoadError(f"The hub {endpoint} listed {repo_id!r} without a commit.")
    files = {
        sibling.rfilename: HubFile(
            path=sibling.rfilename,
            size=sibling.lfs.size if sibling.lfs else sibling.size,
            sha256=sibling.lfs.sha256 if sibling.lfs else None,
            git_sha1=sibling.blob_id,
        )
        for sibling in info.siblings or []
    }
    return RepoListing(repo_id=repo_id, commit=info.sha, files=files)


def _digest(path: Path, algorithm: Literal["sha256", "git-sha1"], size: int) -> str:
    """The file's SHA-256, or its git blob SHA-1."""
    digest = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(usedforsecurity=False)
    if algorithm == "git-sha1":
        digest.update(f"blob {size}\0".encode())
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: HubFile) -> VerifiedFile:
    """Checks one fetched file against the hub's listing: size first, then the strongest hash.

    Raises:
        ModelLoadError: The size or hash differs; the message gives both and how to fix it.
    """
    size = path.stat().st_size
    fix = (
        f"Delete {path.resolve()} and run imgembed download again; if it persists, the hub or a "
        "proxy serves a different file than it lists."
    )
    if expected.size is not None and size != expected.size:
        raise ModelLoadError(
            f"{expected.path} is {size} bytes but the hub lists {expected.size}. {fix}"
        )
    if expected.sha256:
        algorithm: Literal["sha256", "git-sha1"] = "sha256"
        wanted = expected.sha256.lower()
    elif expected.git_sha1:
        algorithm, wanted = "git-sha1", expected.git_sha1.lower()
    else:
        return VerifiedFile(path=expected.path, size=size, algorithm="size", digest="")
    actual = _digest(path, algorithm, size)
    if actual != wanted:
        raise ModelLoadError(
            f"{expected.path} has {algorithm} {actual} but the hub lists {wanted}. {fix}"
        )
    return VerifiedFile(path=expected.path, size=size, algorithm=algorithm, digest=actual)


def verify_folder(folder: Path, listing: RepoListing) -> tuple[VerifiedFile, ...]:
    """Checks every file of ``folder`` that the listing names (the files fetched)."""
    verified = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith(".cache/") or not path.is_file():
            continue
        expected = listing.files.get(relative)
        if expected is None:
            raise ModelLoadError(
                f"{path} is not a file of {listing.repo_id} at commit {listing.commit}: the "
                "folder holds files of another repository or commit. Use an empty folder."
            )
        verified.append(verify_file(path, expected))
    return tuple(verified)


def download_model(name: str, hub: HubAccess, *, local_dir: Path | None = None) -> DownloadedModel:
    """Fetches the files a model's loader reads, then checks them against the hub's listing.

    Args:
        name: A SAM 2 or SigLIP 2 name, alias or released hub id (``sam2.1-hiera-large``,
            ``google/siglip2-large-patch16-512``, ``sam2_hiera_l.yaml``).
        hub: How to reach the hub (``offline`` must be off).
        local_dir: A plain folder to write the files into instead of the Hugging Face cache.

    Returns:
        Where the files are and how each was checked.

    Raises:
        UnknownModelError: The name is neither family's.
        ModelLoadError: The hub is unreachable, the repository absent, a transfer failed or a file
            does not match the listing; one line that says what to set.
    """
    family, canonical, repo_id = resolve_download_name(name)
    listing = list_repo(repo_id, hub)
    logger.info(
        "Downloading %s from %s at %s (%d files listed).",
        canonical,
        repo_id,
        listing.commit,
        len(listing.files),
    )
    fetch = fetch_sam2_hub if family == "sam2" else fetch_siglip_hub
    folder = fetch(repo_id, hub, local_dir=local_dir)
    files = verify_folder(folder, listing)
    if local_dir is None and folder.name != listing.commit:
        raise ModelLoadError(
            f"The hub moved {repo_id!r} from commit {listing.commit} to {folder.name} during the "
            "download; run imgembed download again."
        )
    cache_dir = None
    if local_dir is None:
        cache_dir = Path(hub.cache_dir or hub_constants.HF_HUB_CACHE).expanduser().resolve()
    return DownloadedModel(
        name=canonical,
        family=family,
        repo_id=repo_id,
        commit=listing.commit,
        folder=folder,
        cache_dir=cache_dir,
        files=files,
    )
