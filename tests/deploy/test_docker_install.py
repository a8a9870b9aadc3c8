"""docker/install.sh, the Dockerfile's every RUN step, run here in a fresh virtual environment.

What this proves: ``venv`` creates an environment with ``python -m venv``, installs imgembed from a
copy of exactly what the Dockerfile copies (pyproject.toml, README.md, src/), keeps the pinned torch,
and checks that ``imgembed``, the HTTP app and the RunPod worker import in it; ``weights`` bakes
models with that environment's ``imgembed download`` (against the loopback stand-in hub) and writes
the config the entry point serves by default; ``user`` creates the non-root user (dry run here).

What it does not: to stay bounded (and off the network), the test runs ``venv`` with
``--reuse-site-packages``, which makes this checkout's .venv packages visible to the new environment
instead of downloading torch and the pinned dependencies, so dependency resolution against
docker/constraints.txt and the CUDA index is not exercised here; a ``docker build`` is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from hub_standin import HubStandIn, running_hub

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "docker" / "install.sh"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the Dockerfile copies to build imgembed (pyproject.toml, README.md, src/)."""
    source = tmp_path_factory.mktemp("docker") / "src-copy"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    return source


@pytest.fixture(scope="module")
def venv(build_context: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment made by ``install.sh venv`` from a copy of the build context."""
    source = build_context
    venv = tmp_path_factory.mktemp("docker") / "venv"
    site = sysconfig.get_paths()["purelib"]
    result = run(
        "venv", "--venv", str(venv), "--extras", "runpod", "--source", str(source),
        "--reuse-site-packages", site,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def test_venv_has_imgembed_from_the_copied_source_and_the_pinned_torch(venv: Path) -> None:
    probe = (
        "import imgembed, torch, json; print(json.dumps([imgembed.__file__, torch.__version__]))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    module, torch_version = json.loads(out.stdout)
    assert module.startswith(str(venv)), module  # installed into the new environment
    assert torch_version == "2.13.0+cpu"
    assert (venv / "bin" / "imgembed").is_file()


def test_seed_variables_select_the_model_in_the_installed_package(venv: Path) -> None:
    probe = (
        "import os; from imgembed.settings import server_config_from_env as c; "
        "m = c(os.environ).models[0]; print(m.name, m.weights, m.meta_config)"
    )
    env = {
        **os.environ,
        "SAM2_CHECKPOINT": "/models/sam2_hiera_large.pt",
        "SAM2_MODEL_CFG": "sam2_hiera_l.yaml",
    }
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "sam2_hiera_l.yaml",
        "/models/sam2_hiera_large.pt",
        "sam2_hiera_l.yaml",
    ]


def test_weights_step_bakes_the_models_and_their_config(venv: Path, tmp_path: Path) -> None:
    repos = {
        "facebook/sam2.1-hiera-large": {
            "config.json": b'{"model_type": "sam2_video"}',
            "model.safetensors": b"w" * 4096,
        },
        "google/siglip2-large-patch16-512": {
            "config.json": b'{"model_type": "siglip"}',
            "model.safetensors": b"s" * 4096,
            "tokenizer.json": b"{}",
        },
    }
    cache, config = tmp_path / "hf-cache", tmp_path / "imgembed" / "models.toml"
    with running_hub(HubStandIn(repos=repos)) as hub:
        result = run(
            "weights", "--venv", str(venv), "--cache", str(cache), "--config", str(config),
            "sam2.1-hiera-large", "siglip2-large-patch16-512",
            env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (cache / "models--facebook--sam2.1-hiera-large" / "refs" / "main").is_file()
    tables = tomllib.loads(config.read_text())["models"]
    assert [table["name"] for table in tables] == [
        "sam2.1-hiera-large",
        "siglip2-large-patch16-512",
    ]


def test_weights_step_without_models_leaves_an_empty_cache(venv: Path, tmp_path: Path) -> None:
    cache, config = tmp_path / "hf-cache", tmp_path / "models.toml"
    result = run("weights", "--venv", str(venv), "--cache", str(cache), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert cache.is_dir()
    assert list(cache.iterdir()) == []
    assert not config.exists()


def test_weights_step_with_an_unknown_model_fails_in_one_line(venv: Path, tmp_path: Path) -> None:
    result = run(
        "weights", "--venv", str(venv), "--cache", str(tmp_path / "c"),
        "--config", str(tmp_path / "m.toml"), "sam2.1-hiera-huge",
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("imgembed: error: Unknown model 'sam2.1-hiera-huge'")
    )


def test_user_step_creates_a_non_root_user_owning_its_folders() -> None:
    result = run(
        "user", "--name", "imgembed", "--uid", "10001", "--home", "/home/imgembed",
        "--owns", "/opt/hf-cache", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "groupadd --system --gid 10001 imgembed",
        "useradd --system --uid 10001 --gid 10001 --home-dir /home/imgembed --create-home "
        "--shell /usr/sbin/nologin imgembed",
        "mkdir -p /opt/hf-cache",
        "chown -R 10001:10001 /opt/hf-cache",
    ]


@pytest.mark.parametrize(
    ("args", "index", "pin"),
    [
        ([], "https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"),
        (["--variant", "cuda"], "https://download.pytorch.org/whl/cu128", "torch==2.13.0+cu128"),
        (
            ["--variant", "cuda", "--cuda", "cu126", "--torch-version", "2.12.1"],
            "https://download.pytorch.org/whl/cu126",
            "torch==2.12.1+cu126",
        ),
    ],
)
def test_venv_pins_torch_by_version_and_wheel_tag_from_its_index(
    args: list[str], index: str, pin: str, tmp_path: Path
) -> None:
    """What the image's build runs online (``--dry-run`` prints it): pip, then torch alone with
    its local version tag from that tag's index, then imgembed under docker/constraints.txt."""
    result = run("venv", "--venv", str(tmp_path / "v"), "--source", "/src", *args, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "pip install --upgrade pip==25.2",
        f"pip install --index-url {index} {pin}",
        f"pip install --constraint {ROOT / 'docker' / 'constraints.txt'} /src[runpod]",
    ]
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "cuda"], "pinned 2.13.0+cu128 (CUDA 12.8)"),
        (["--torch-version", "2.12.0"], "pinned 2.12.0+cpu (CUDA None)"),
    ],
)
def test_venv_refuses_a_torch_that_is_not_the_pinned_build(
    args: list[str], message: str, build_context: Path, tmp_path: Path
) -> None:
    """The reused packages hold this checkout's CPU torch 2.13.0: asked for a CUDA build or
    another version, the step fails naming both, as a build would after a wrong index."""
    site = sysconfig.get_paths()["purelib"]
    result = run(
        "venv", "--venv", str(tmp_path / "v"), "--extras", "", "--source", str(build_context),
        "--reuse-site-packages", site, *args,
    )  # fmt: skip
    assert result.returncode == 64, result.stdout + result.stderr
    assert "torch is 2.13.0+cpu (CUDA None)" in result.stderr
    assert message in result.stderr
    assert "torch is not the pinned build" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user", "--name", "x", "--uid", "0", "--home", "/h"], "not root"),
        (["venv", "--venv", "/tmp/x", "--variant", "rocm"], "expected cpu or cuda"),
        (
            ["venv", "--venv", "/tmp/x", "--variant", "cuda", "--cuda", "12.8"],
            "expected a PyTorch CUDA wheel tag such as cu128",
        ),
        (["build"], "expected a step: venv, weights or user"),
    ],
)
def test_bad_steps_say_what_is_expected(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 64
    assert message in result.stderr


def test_python_is_the_one_the_image_has() -> None:
    assert sys.version_info[:2] == (3, 11)
