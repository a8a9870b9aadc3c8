"""Hugging Face hub ids, local folders and hub snapshots, shared by every model family's loader.

A loader's ``weights`` setting names a local path or a hub repository ``org/name``; this module
tells the two apart (:func:`local_path_or_hub_id`), fetches a repository's files into (or reads
them from) the standard Hugging Face cache (:func:`download_snapshot`), loads a Hugging Face format
folder with ``from_pretrained`` (:func:`load_pretrained`), and turns what ``huggingface_hub`` and
``transformers`` raise into one :class:`~imgembed.errors.ModelLoadError` that says what was
expected, what came and how to fix it (:func:`explained_load_errors`).

This module reads no environment: ``huggingface_hub`` reads ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``
and ``HF_HUB_CACHE`` once, at its import, so callers pass a :class:`HubAccess` explicitly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HTTPError as HubHTTPError
from safetensors import SafetensorError
from transformers import PreTrainedModel

from imgembed.errors import ModelLoadError

logger = logging.getLogger(__name__)

_HUB_ERRORS = (OSError, ValueError, HubHTTPError)
"""What ``snapshot_download`` raises for an absent, unreachable or offline-missing repository."""
_FROM_PRETRAINED_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)
"""What ``from_pretrained`` raises for a folder whose files are missing, corrupt or mismatched."""

_Model = TypeVar("_Model", bound=PreTrainedModel)


@dataclass(frozen=True)
class HubAccess:
    """How to reach the Hugging Face hub.

    Attributes:
        cache_dir: Hugging Face cache folder; ``None`` for the default one.
        offline: Read the cache only and never contact the hub (what ``HF_HUB_OFFLINE=1`` means).
        endpoint: Hub address, for mirrors; ``None`` for the default one.
        timeout_s: Seconds to wait for the hub's answer to a file's metadata request (and, in
            :mod:`imgembed.models.hub_download`, to the repository listing); ``None`` for
            ``huggingface_hub``'s default (``HF_HUB_ETAG_TIMEOUT``, 10 s).
    """

    cache_dir: str | None = None
    offline: bool = False
    endpoint: str | None = None
    timeout_s: float | None = None


def describe_error(error: BaseException) -> str:
    """An exception as the end of a load error message, on one line: ``"OSError: what it said."``."""
    return f"{type(error).__name__}: {' '.join(str(error).split()).rstrip('. ')}."


@contextmanager
def explained_load_errors(model_name: str, weights: str | None, how_to_fix: str) -> Iterator[None]:
    """Re-raises a :class:`ModelLoadError` with the model, the ``weights`` asked for and a fix.

    Args:
        model_name: The model being loaded, as the message names it.
        weights: The ``weights`` setting as given.
        how_to_fix: The settings that would give a working load, appended to the message.

    Raises:
        ModelLoadError: ``"Cannot load {model_name} from weights={weights!r}: {what went wrong}
            {how_to_fix}"``, chained to the original error.
    """
    try:
        yield
    except ModelLoadError as error:
        raise ModelLoadError(
            f"Cannot load {model_name} from weights={weights!r}: {error.message} {how_to_fix}"
        ) from error


def is_hub_id(weights: str) -> bool:
    """Whether ``weights`` has the shape ``org/name`` rather than that of a file path."""
    parts = weights.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not weights.startswith((".", "~"))
        and "\\" not in weights
    )


def local_path_or_hub_id(weights: str, *, looked_for: str) -> Path | str:
    """What a ``weights`` setting names: an existing local path, else a hub repository.

    Args:
        weights: The setting; ``~`` is expanded.
        looked_for: What a local path would have been, for the error message (``"folder"``,
            ``"file or folder"``).

    Returns:
        The expanded path when something exists there (a folder, a file or anything else), else
        ``weights`` itself when it has the shape of a hub id ``org/name``.

    Raises:
        ModelLoadError: Nothing exists at the path and ``weights`` is not a hub id.
    """
    path = Path(weights).expanduser()
    if path.exists():
        return path
    if is_hub_id(weights):
        return weights
    raise ModelLoadError(
        f"No {looked_for} {path} exists, and {weights!r} is not a hub id (org/name)."
    )


def download_snapshot(
    repo_id: str,
    patterns: list[str],
    hub: HubAccess,
    *,
    weights_of: str,
    local_dir: Path | None = None,
) -> Path:
    """Fetches the files of a hub repository that match ``patterns`` into the Hugging Face cache.

    With ``hub.offline`` nothing is fetched: the cached snapshot is returned when there is one.
    Files already complete in the cache (or ``local_dir``) are not fetched again.

    Args:
        repo_id: The repository, ``org/name``.
        patterns: Glob patterns of the files to fetch.
        hub: How to reach the hub.
        weights_of: The model family, as the error message names it (``"SAM 2"``).
        local_dir: A plain folder to write the files into instead of the cache.

    Returns:
        The snapshot folder in the cache, or ``local_dir``.

    Raises:
        ModelLoadError: The repository (or the cache entry, offline) is absent or the hub is
            unreachable; the message names the repository, the hub or offline mode, the cache
            looked in, and what ``huggingface_hub`` said.
    """
    logger.debug(
        "Getting %s of hub repository %s (cache %s, folder %s, offline %s, endpoint %s).",
        patterns,
        repo_id,
        hub.cache_dir,
        local_dir,
        hub.offline,
        hub.endpoint,
    )
    timeout = {} if hub.timeout_s is None else {"etag_timeout": hub.timeout_s}
    try:
        snapshot = snapshot_download(
            repo_id,
            allow_patterns=patterns,
            cache_dir=hub.cache_dir,
            local_dir=local_dir,
            local_files_only=hub.offline,
            endpoint=hub.endpoint,
            **timeout,
        )
    except _HUB_ERRORS as error:
        where = f"the cache {hub.cache_dir}" if hub.cache_dir else "the default Hugging Face cache"
        if hub.offline or hub_constants.HF_HUB_OFFLINE:
            mode = "offline, the hub was not contacted"
            remedy = (
                " To download it, allow hub access (unset HF_HUB_OFFLINE) on a networked machine."
            )
        else:
            mode = f"hub {hub.endpoint or hub_constants.ENDPOINT}"
            remedy = ""
        raise ModelLoadError(
            f"Cannot get {weights_of} weights from hub repository {repo_id!r} ({mode}; looked in "
            f"{where}): {describe_error(error)}{remedy}"
        ) from error
    return Path(snapshot)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or ``None`` when it is absent, unreadable or not a JSON object."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def load_pretrained(model_class: type[_Model], folder: Path, *, what: str, where: str) -> _Model:
    """Loads a Hugging Face format folder and checks that it filled every weight.

    Args:
        model_class: The ``transformers`` model class to load.
        folder: The folder (local, or a hub snapshot).
        what: What the weights are, for error messages (``"SigLIP weights"``).
        where: Where they are, for error messages (the folder, or a longer description).

    Returns:
        The model with float32 parameters on the CPU.

    Raises:
        ModelLoadError: ``from_pretrained`` failed, or the checkpoint left weights of the model
            unfilled (missing or of the wrong shape).
    """
    try:
        model, loading_info = model_class.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
    except _FROM_PRETRAINED_ERRORS as error:
        raise ModelLoadError(
            f"Cannot load the {what} in {where}: {describe_error(error)}"
        ) from error
    unfilled = sorted(loading_info["missing_keys"]) + sorted(loading_info["mismatched_keys"])
    if unfilled:
        raise ModelLoadError(
            f"The weights in {where} leave {len(unfilled)} {model_class.__name__} "
            f"weight(s) unfilled ({', '.join(map(str, unfilled[:10]))}): the checkpoint does not "
            "match its config."
        )
    return model
