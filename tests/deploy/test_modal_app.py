"""The Modal app (``imgembed.modal_app``) built and run locally: Modal's ``.local()`` runs the class's
``@modal.enter`` and methods in this process, and the ASGI app it serves is driven with Starlette's
``TestClient`` (which runs its lifespan). Fake models (tests/support/fakes.py) stand in for the real
ones; no Modal account, image build or network is involved (importing the module contacts nothing,
checked with strace when it was written, and by the loopback guard of tests/conftest.py here).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngine
from hub_standin import HubStandIn, running_hub
from starlette.testclient import TestClient

import imgembed.modal_app
from imgembed.errors import InvalidInputError
from imgembed.modal_app import (
    ModalSettings,
    container_env,
    modal_settings_from_env,
    pinned_requirements,
)
from imgembed.server.app import create_app
from imgembed.settings import server_config_from_env

SERVED = {
    "IMGEMBED_MODEL": "sam2.1-hiera-tiny",
    "IMGEMBED_WEIGHTS": "dummy",
    "IMGEMBED_WARMUP": "false",
    "IMGEMBED_DEVICE": "cpu",
}


@pytest.fixture
def built_engines(monkeypatch: pytest.MonkeyPatch) -> list[FakeEngine]:
    """Fake models for the module's engine, configured by ``IMGEMBED_*`` variables; the engines
    built, in order."""
    for name, value in SERVED.items():
        monkeypatch.setenv(name, value)
    built: list[FakeEngine] = []

    class CountedEngine(FakeEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr("imgembed.engine.Engine", CountedEngine)
    return built


@pytest.mark.filterwarnings("ignore:The Imgembed:UserWarning")
def test_the_class_loads_once_and_serves_the_whole_api(built_engines: list[FakeEngine]) -> None:
    container = imgembed.modal_app.Imgembed()
    models = container.models.local()
    assert [model["id"] for model in models] == ["sam2.1-hiera-tiny"]
    web = container.web.local()
    assert len(built_engines) == 1  # @modal.enter ran once for both methods
    reference = create_app(server_config_from_env(SERVED))
    assert web.openapi()["paths"].keys() == reference.openapi()["paths"].keys()
    with TestClient(web) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.get("/v1/models").json()["data"][0]["id"] == "sam2.1-hiera-tiny"
        assert client.get("/v2/health/ready").status_code == 200
        assert "imgembed_requests_total" in client.get("/metrics").text
        assert client.get("/ui").status_code == 200


@pytest.mark.filterwarnings("ignore:The Imgembed:UserWarning")
def test_the_served_api_embeds_an_image(built_engines: list[FakeEngine], png_bytes: bytes) -> None:
    web = imgembed.modal_app.Imgembed().web.local()
    with TestClient(web) as client:
        response = client.post("/v1/sam2/embed", files={"file": ("a.png", png_bytes, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] == [256, 64, 64]
    assert body["weights"]["untrained"] is True


def test_download_function_fills_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repos = {
        "facebook/sam2.1-hiera-tiny": {
            "config.json": b'{"model_type": "sam2_video"}',
            "model.safetensors": b"w" * 2048,
            "README.md": b"card",
        }
    }
    with running_hub(HubStandIn(repos=repos)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
        with pytest.warns(UserWarning, match="executing locally"):
            done = imgembed.modal_app.download.local("sam2.1-hiera-tiny")
    assert done == [
        {
            "name": "sam2.1-hiera-tiny",
            "repo_id": "facebook/sam2.1-hiera-tiny",
            "commit": hub.commit("facebook/sam2.1-hiera-tiny"),
            "files": ["config.json", "model.safetensors"],
        }
    ]


def test_download_function_needs_a_model() -> None:
    with (
        pytest.warns(UserWarning, match="executing locally"),
        pytest.raises(InvalidInputError, match="at least one model"),
    ):
        imgembed.modal_app.download.local(" , ")


def test_settings_defaults() -> None:
    assert modal_settings_from_env({}) == ModalSettings()
    assert ModalSettings().gpu == "L4"


def test_settings_from_variables() -> None:
    env = {
        "IMGEMBED_MODAL_APP": "seg",
        "IMGEMBED_MODAL_GPU": "H200",
        "IMGEMBED_MODAL_MAX_INPUTS": "4",
        "IMGEMBED_MODAL_SCALEDOWN_S": "60",
        "IMGEMBED_MODAL_MIN_CONTAINERS": "1",
        "IMGEMBED_MODAL_MAX_CONTAINERS": "3",
        "IMGEMBED_MODAL_TIMEOUT_S": "900",
        "IMGEMBED_MODAL_VOLUME": "sam2-hf-cache",
        "IMGEMBED_MODAL_SECRET": "imgembed",
    }
    assert modal_settings_from_env(env) == ModalSettings(
        app_name="seg",
        gpu="H200",
        max_inputs=4,
        scaledown_window_s=60,
        min_containers=1,
        max_containers=3,
        timeout_s=900,
        volume="sam2-hf-cache",
        secret="imgembed",
    )
    assert modal_settings_from_env({"IMGEMBED_MODAL_GPU": "none"}).gpu is None


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("IMGEMBED_MODAL_MAX_INPUTS", "0"),
        ("IMGEMBED_MODAL_MAX_INPUTS", "many"),
        ("IMGEMBED_MODAL_SCALEDOWN_S", "1"),
        ("IMGEMBED_MODAL_MIN_CONTAINERS", "-1"),
    ],
)
def test_bad_settings_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        modal_settings_from_env({name: raw})
    assert caught.value.message.startswith(f"{name}={raw!r} is invalid: expected a whole number")


def test_settings_reach_the_deployed_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGEMBED_MODAL_GPU", "A100-80GB")
    monkeypatch.setenv("IMGEMBED_MODAL_APP", "imgembed-test")
    try:
        module = importlib.reload(imgembed.modal_app)
        assert module.app.name == "imgembed-test"
        # Modal keeps the GPU in the class's function spec (a private attribute of modal 1.x).
        assert module.Imgembed._get_class_service_function()._spec_.gpus == "A100-80GB"
    finally:
        monkeypatch.undo()
        importlib.reload(imgembed.modal_app)


def test_container_env_copies_service_settings_but_not_secrets_or_modal_ones() -> None:
    env = {
        "IMGEMBED_MODEL": "sam2.1-hiera-large",
        "SAM2_MODEL_CFG": "sam2_hiera_l.yaml",
        "IMGEMBED_API_KEY": "secret",
        "IMGEMBED_MODAL_GPU": "H100",
        "HOME": "/root",
    }
    assert container_env(env) == {
        "IMGEMBED_MODEL": "sam2.1-hiera-large",
        "SAM2_MODEL_CFG": "sam2_hiera_l.yaml",
        "HF_HUB_CACHE": "/cache/hub",
        "IMGEMBED_HOST": "0.0.0.0",
    }


def test_image_requirements_are_pinned_and_leave_torch_to_its_index() -> None:
    pins = pinned_requirements()
    assert all("==" in pin for pin in pins)
    names = {pin.split("==")[0] for pin in pins}
    assert "torch" not in names
    assert {"transformers", "huggingface-hub", "fastapi", "runpod"} <= names
