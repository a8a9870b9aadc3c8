"""imgembed on Modal, in seed 001's shape: a GPU class that loads the models once
(``@modal.enter``), a ``modal.Volume`` holding the Hugging Face cache, and an ``@modal.asgi_app``
serving the whole imgembed HTTP API (:func:`imgembed.server.app.create_app`: every route, not a
subset).

    pip install 'imgembed[modal]'
    IMGEMBED_MODEL=sam2.1-hiera-large modal deploy -m imgembed.modal_app
    modal run -m imgembed.modal_app::download --models sam2.1-hiera-large   # fill the volume first

Deploy-time settings are ``IMGEMBED_MODAL_*`` variables (:class:`ModalSettings`), read when Modal
imports this module: GPU type, concurrent requests per container, scale-down window, and so on.
The service's own settings (``IMGEMBED_*`` but the Modal ones, ``SAM2_CHECKPOINT``,
``SAM2_MODEL_CFG``) are copied from the deploying shell into the containers' environment, where
``@modal.enter`` reads them as ``imgembed serve`` would; ``IMGEMBED_API_KEY`` is not copied (put it
in the Modal secret named by ``IMGEMBED_MODAL_SECRET``). docs/deploy/modal.md has the details.

Building the app (importing this module) contacts nothing: Modal resolves images, volumes and
secrets only when the app is run or deployed (tests/deploy/test_modal_app.py).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import modal

from imgembed.errors import InvalidInputError

logger = logging.getLogger(__name__)

TORCH_VERSION = "2.13.0"
"""The torch the containers install (the project's pin), from the CUDA 12.8 index."""
TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
CACHE_PATH = "/cache"
"""Where the volume is mounted; the Hugging Face cache is ``/cache/hub``."""
_NOT_COPIED = re.compile(r"^IMGEMBED_(MODAL_\w+|API_KEY)$")
_COPIED = re.compile(r"^(IMGEMBED_\w+|SAM2_CHECKPOINT|SAM2_MODEL_CFG|HF_ENDPOINT)$")


@dataclass(frozen=True)
class ModalSettings:
    """How the Modal app is deployed.

    Attributes:
        app_name: The Modal app's name (``IMGEMBED_MODAL_APP``).
        gpu: GPU type, as Modal spells it (``L4``, ``A10G``, ``A100-80GB``, ``H100``, ``H200``), or
            ``None`` for CPU containers (``IMGEMBED_MODAL_GPU``, ``none`` for CPU).
        max_inputs: Requests one container serves at once (``@modal.concurrent``); imgembed batches
            them on the GPU (``IMGEMBED_MODAL_MAX_INPUTS``).
        scaledown_window_s: Idle seconds before a container stops (``IMGEMBED_MODAL_SCALEDOWN_S``).
        min_containers: Containers kept warm, no cold start for them (``IMGEMBED_MODAL_MIN_CONTAINERS``).
        max_containers: Most containers at once; ``None`` for Modal's limit
            (``IMGEMBED_MODAL_MAX_CONTAINERS``).
        timeout_s: Longest request, and longest start-up (``IMGEMBED_MODAL_TIMEOUT_S``).
        volume: The volume holding the Hugging Face cache (``IMGEMBED_MODAL_VOLUME``).
        secret: A Modal secret whose variables the containers get (``IMGEMBED_API_KEY``,
            ``HF_TOKEN``); ``None`` for none (``IMGEMBED_MODAL_SECRET``).
    """

    app_name: str = "imgembed"
    gpu: str | None = "L4"
    max_inputs: int = 16
    scaledown_window_s: int = 300
    min_containers: int = 0
    max_containers: int | None = None
    timeout_s: int = 600
    volume: str = "imgembed-hf-cache"
    secret: str | None = None


def _int_setting(
    env: Mapping[str, str], name: str, default: int | None, minimum: int
) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise InvalidInputError(
            f"{name}={raw!r} is invalid: expected a whole number of at least {minimum}",
            field=name,
        )
    return value


def modal_settings_from_env(env: Mapping[str, str]) -> ModalSettings:
    """Reads :class:`ModalSettings` from ``IMGEMBED_MODAL_*`` variables (a pure function of ``env``).

    Raises:
        InvalidInputError: A number is malformed or out of range; the message names the variable.
    """
    defaults = ModalSettings()
    gpu = env.get("IMGEMBED_MODAL_GPU", "").strip() or defaults.gpu
    if gpu is not None and gpu.lower() in ("none", "cpu"):
        gpu = None
    return ModalSettings(
        app_name=env.get("IMGEMBED_MODAL_APP", "").strip() or defaults.app_name,
        gpu=gpu,
        max_inputs=_int_setting(env, "IMGEMBED_MODAL_MAX_INPUTS", defaults.max_inputs, 1)
        or defaults.max_inputs,
        scaledown_window_s=_int_setting(
            env, "IMGEMBED_MODAL_SCALEDOWN_S", defaults.scaledown_window_s, 2
        )
        or defaults.scaledown_window_s,
        min_containers=_int_setting(env, "IMGEMBED_MODAL_MIN_CONTAINERS", 0, 0) or 0,
        max_containers=_int_setting(env, "IMGEMBED_MODAL_MAX_CONTAINERS", None, 1),
        timeout_s=_int_setting(env, "IMGEMBED_MODAL_TIMEOUT_S", defaults.timeout_s, 10)
        or defaults.timeout_s,
        volume=env.get("IMGEMBED_MODAL_VOLUME", "").strip() or defaults.volume,
        secret=env.get("IMGEMBED_MODAL_SECRET", "").strip() or None,
    )


def container_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the containers get: the service's settings from the deploying shell (not the
    Modal ones, not the API key), the cache on the volume, and the address to listen on."""
    copied = {
        name: value
        for name, value in env.items()
        if _COPIED.match(name) and not _NOT_COPIED.match(name)
    }
    return {**copied, "HF_HUB_CACHE": f"{CACHE_PATH}/hub", "IMGEMBED_HOST": "0.0.0.0"}


def pinned_requirements(extras: tuple[str, ...] = ("runpod",)) -> list[str]:
    """imgembed's requirements (but torch) at the versions installed here, the ones tested."""
    pins = []
    for line in metadata.requires("imgembed") or []:
        name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]
        marker = line.split(";", 1)[1] if ";" in line else ""
        wanted = not marker or any(f'extra == "{extra}"' in marker for extra in extras)
        if wanted and name != "torch":
            pins.append(f"{name}=={metadata.version(name)}")
    return sorted(set(pins))


def build_image(env: Mapping[str, str]) -> modal.Image:
    """The containers' image: Debian slim, torch from the CUDA index, imgembed's pinned
    requirements, this imgembed package's source, and :func:`container_env`."""
    return (
        modal.Image.debian_slim(python_version="3.11")
        .pip_install(f"torch=={TORCH_VERSION}", index_url=TORCH_INDEX)
        .pip_install(*pinned_requirements())
        .env(container_env(env))
        .add_local_python_source("imgembed", ignore=["**/__pycache__/**", "**/*.pyc"])
    )


SETTINGS = modal_settings_from_env(os.environ)
app = modal.App(SETTINGS.app_name)
volume = modal.Volume.from_name(SETTINGS.volume, create_if_missing=True)
image = build_image(os.environ)
secrets = [modal.Secret.from_name(SETTINGS.secret)] if SETTINGS.secret else []


@app.cls(
    image=image,
    gpu=SETTINGS.gpu,
    volumes={CACHE_PATH: volume},
    secrets=secrets,
    scaledown_window=SETTINGS.scaledown_window_s,
    min_containers=SETTINGS.min_containers,
    max_containers=SETTINGS.max_containers,
    timeout=SETTINGS.timeout_s,
    startup_timeout=SETTINGS.timeout_s,
)
@modal.concurrent(max_inputs=SETTINGS.max_inputs)
class Imgembed:
    """One container: the engine with its models loaded once, serving the HTTP API."""

    @modal.enter()
    def load(self) -> None:
        """Loads every configured model (weights from the volume's cache, or the hub into it)."""
        from imgembed.engine import Engine
        from imgembed.server.app import create_app
        from imgembed.settings import server_config_from_env

        config = server_config_from_env(os.environ)
        self.engine = Engine(config)
        self.engine.load()
        self.api = create_app(config, engine=self.engine)
        if not modal.is_local():
            volume.commit()  # weights fetched on this start stay for the next containers
        logger.info("Modal container ready: %s", [spec.name for spec in config.models])

    @modal.method()
    def models(self) -> list[dict[str, Any]]:
        """The served models, as ``GET /v1/models`` lists them."""
        return [model.describe() for model in self.engine.models]

    @modal.asgi_app()
    def web(self) -> Any:
        """The whole imgembed HTTP API (the engine starts in its lifespan)."""
        return self.api


@app.function(image=image, volumes={CACHE_PATH: volume}, secrets=secrets, timeout=3600)
def download(models: str) -> list[dict[str, Any]]:
    """``imgembed download`` into the volume: ``modal run -m imgembed.modal_app::download --models
    "sam2.1-hiera-large siglip2-large-patch16-512"``, so no container fetches weights on start.

    Args:
        models: Model names or hub ids, separated by spaces or commas.

    Returns:
        For each model: name, repository, commit and files.
    """
    from imgembed.models.hub import HubAccess
    from imgembed.models.hub_download import download_model

    hub = HubAccess(
        cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )
    names = [name for name in re.split(r"[\s,]+", models) if name]
    if not names:
        raise InvalidInputError(
            "download needs at least one model, e.g. --models sam2.1-hiera-large", field="models"
        )
    done = []
    for name in names:
        model = download_model(name, hub)
        done.append(
            {
                "name": model.name,
                "repo_id": model.repo_id,
                "commit": model.commit,
                "files": [file.path for file in model.files],
            }
        )
    if not modal.is_local():
        volume.commit()
    return done
