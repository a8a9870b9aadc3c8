"""The guard that fails skips of dependencies the project installs (tests/support/skip_policy.py):
its decision on the reasons the suite's own skips give, and the guard in a real pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from skip_policy import REQUIRED_DEPENDENCIES, required_dependency, skip_reason

SUPPORT = Path(__file__).resolve().parent / "support"


@pytest.mark.parametrize(
    ("reason", "dependency"),
    [
        ("Meta's sam2 package is test-only", "Meta's sam2 reference"),
        ("Skipped: Meta's sam2 is test-only", "Meta's sam2 reference"),
        ("could not import 'sam2.build_sam': No module named 'sam2'", "Meta's sam2 reference"),
        ("samexporter is not installed: `scripts/bootstrap.sh test` installs samexporter==0.5.0", "samexporter"),
        ("samexporter's client needs cv2 (opencv, a test extra)", "samexporter"),
        ("Debian's chromium is not installed (apt-get install -y chromium)", "chromium and playwright (the browser tests)"),
        ("pip install playwright (test-only)", "chromium and playwright (the browser tests)"),
        ("collections need the search extra", "lancedb (the search extra)"),
        ("could not import 'lancedb': No module named 'lancedb'", "lancedb (the search extra)"),
        ("could not import 'imgembed.search.lancedb_store': No module named 'lancedb'", "imgembed itself or its own dependencies"),
        ("the onnx extra exports the decoder", "onnx and onnxruntime (the onnx extra)"),
        ("ONNX Runtime is in the 'onnx' extra", "onnx and onnxruntime (the onnx extra)"),
        ("could not import 'onnxruntime': No module named 'onnxruntime'", "onnx and onnxruntime (the onnx extra)"),
        ("node is not on PATH; the project's set-up installs Node.js and onnxruntime-web", "Node.js and onnxruntime-web"),
        ("onnxruntime-web is missing from ui/node_modules", "Node.js and onnxruntime-web"),
        ("could not import 'runpod': No module named 'runpod'", "the runpod SDK"),
        ("tritonclient is a test extra", "tritonclient"),
        ("could not import 'tritonclient.utils': No module named 'tritonclient'", "tritonclient"),
        ("tritonserver (nvidia-pytriton) is not installed: run scripts/triton_server.sh install", "tritonserver (nvidia-pytriton, scripts/triton_server.sh)"),
        ("openai is a test extra", "the openai client"),
        ("schemathesis is a test extra", "schemathesis"),
        ("could not import 'pycocotools.mask': No module named 'pycocotools'", "pycocotools"),
        ("opencv-python-headless is a test-only dependency", "opencv"),
        ("needs a CUDA GPU", None),
        ("this onnxruntime has CUDA", None),
        ("runs only on GPUs with bfloat16", None),
        ("could not import 'cryptography': No module named 'cryptography'", None),
        ("the clock resolution is too coarse here", None),
    ],
)  # fmt: skip
def test_required_dependency_names_what_the_project_installs(
    reason: str, dependency: str | None
) -> None:
    assert required_dependency(reason) == dependency


def test_every_dependency_of_the_brief_is_registered() -> None:
    reasons = {
        "sam2": "could not import 'sam2'",
        "chromium": "no chromium",
        "lancedb": "could not import 'lancedb'",
        "onnx": "could not import 'onnx'",
        "onnxruntime": "could not import 'onnxruntime'",
        "samexporter": "could not import 'samexporter'",
        "node": "no node",
        "onnxruntime-web": "no onnxruntime-web",
        "runpod": "could not import 'runpod'",
        "tritonclient": "could not import 'tritonclient'",
        "openai": "could not import 'openai'",
    }
    for name, reason in reasons.items():
        assert required_dependency(reason) in REQUIRED_DEPENDENCIES, name


def test_skip_reason_reads_pytests_skip_tuple() -> None:
    assert skip_reason(("t.py", 3, "Skipped: tritonclient is a test extra")) == (
        "Skipped: tritonclient is a test extra"
    )
    assert skip_reason("plain") == "plain"


GUARDED_CONFTEST = """
from skip_policy import RequiredSkipGuard

def pytest_configure(config):
    config.pluginmanager.register(RequiredSkipGuard(), "guard")
"""


def run_pytest(folder: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (folder / "conftest.py").write_text(GUARDED_CONFTEST)
    for name, text in files.items():
        (folder / name).write_text(text)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(folder)])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(folder)],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_run_with_only_legitimate_skips_passes(tmp_path: Path) -> None:
    completed = run_pytest(
        tmp_path,
        {
            "test_ok.py": (
                "import pytest\n"
                "def test_passes():\n    pass\n"
                "@pytest.mark.skipif(True, reason='needs a CUDA GPU')\n"
                "def test_gpu():\n    pass\n"
            )
        },
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 passed, 1 skipped" in completed.stdout


def test_skips_of_installed_dependencies_fail_the_run(tmp_path: Path) -> None:
    completed = run_pytest(
        tmp_path,
        {
            "test_inside.py": (
                "import pytest\n"
                "def test_passes():\n    pass\n"
                "def test_needs_triton():\n    pytest.skip('tritonclient is a test extra')\n"
                '@pytest.mark.skipif(True, reason="Debian\'s chromium is not installed")\n'
                "def test_browser():\n    pass\n"
            ),
            "test_module_level.py": (
                "import pytest\n"
                "pytest.importorskip('lancedb_is_not_here_either', reason='collections need the "
                "search extra')\n"
                "def test_never_collected():\n    pass\n"
            ),
        },
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output
    assert "skipped for tritonclient, which the project installs" in output
    assert "chromium and playwright" in output
    assert "skips of installed dependencies (these fail the run)" in output
    assert "test_module_level.py: lancedb (the search extra)" in output
    assert "1 passed" in output
