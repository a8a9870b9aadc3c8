"""Fixtures shared by every test level, including a guard that keeps every test on loopback; the
fast tier's marking; and the guard that fails skips of dependencies the project installs."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from skip_policy import RequiredSkipGuard

TESTS = Path(__file__).parent
# ONNX Runtime 1.32 looks up a Microsoft telemetry host unless told not to; tests stay on loopback.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
FAST_FILES = (
    "api/test_json_body.py",
    "api/test_parsing.py",
    "benchmarks/test_bench_util.py",
    "cli/test_commands.py",
    "cli/test_download.py",
    "deploy/test_deploy_docs.py",
    "deploy/test_dockerfile.py",
    "deploy/test_entrypoint.py",
    "deploy/test_modal_app.py",
    "engine/test_compute_dtype_reporting.py",
    "engine/test_decoder_stream.py",
    "engine/test_fake_served_models.py",
    "engine/test_feature_cache.py",
    "engine/test_host_copies.py",
    "engine/test_metrics.py",
    "engine/test_preprocess_placement.py",
    "engine/test_request_admission.py",
    "engine/test_serving.py",
    "engine/test_warm_up.py",
    "export/test_decoder_cache.py",
    "export/test_onnx_binding.py",
    "export/test_onnx_providers.py",
    "export/test_triton_siglip_model.py",
    "masks/test_boxes.py",
    "masks/test_everything_params.py",
    "masks/test_png.py",
    "masks/test_polygons.py",
    "masks/test_regions.py",
    "masks/test_rle.py",
    "models/test_hub.py",
    "models/test_hub_download.py",
    "models/test_sam2_registry.py",
    "models/test_siglip_registry.py",
    "pipelines/test_device_preprocess.py",
    "pipelines/test_sam2_everything_devices.py",
    "pipelines/test_sam2_everything_memory.py",
    "preprocess/test_fetch.py",
    "preprocess/test_image_decode.py",
    "preprocess/test_pillow_resample.py",
    "preprocess/test_sam2_frame.py",
    "preprocess/test_siglip_pixels.py",
    "preprocess/test_siglip_text.py",
    "runpod/test_handler.py",
    "runtime/test_batcher.py",
    "runtime/test_batcher_admission.py",
    "runtime/test_batcher_memory.py",
    "runtime/test_batch_size.py",
    "runtime/test_compute_dtype.py",
    "runtime/test_cuda_readiness.py",
    "runtime/test_loop_bridge.py",
    "runtime/test_staging.py",
    "runtime/test_streams.py",
    "runtime/test_workers.py",
    "search/test_filter_language.py",
    "server/test_collection_routes.py",
    "server/test_openapi_document.py",
    "server/test_sam2_routes.py",
    "server/test_siglip_routes.py",
    "server/test_slow_clients.py",
    "server/test_v2_not_ready.py",
    "server/test_v2_routes.py",
    "server/test_v2_tensors.py",
    "settings/test_onnx_settings.py",
    "settings/test_settings.py",
    "settings/test_warmup_setting.py",
    "test_codecs.py",
    "test_docs.py",
    "test_logs.py",
    "test_skip_policy.py",
)
"""The fast tier (``pytest -m fast``, ``scripts/test.sh --fast``): test files of pure functions, and of
plumbing over fake models (tests/support/fakes.py); no real model's forward pass, no server subprocess.
Test folders mirror ``src/imgembed/``, so the tier is listed by file, not by folder."""


def is_fast(path: Path) -> bool:
    """Whether a test file belongs to the fast tier."""
    try:
        relative = path.relative_to(TESTS).as_posix()
    except ValueError:
        return False
    return relative in FAST_FILES


def pytest_configure(config: pytest.Config) -> None:
    missing = [name for name in FAST_FILES if not (TESTS / name).is_file()]
    if missing:
        raise pytest.UsageError(
            f"tests/conftest.py FAST_FILES names files that do not exist: {missing}; "
            "update the list after moving or renaming a test file"
        )
    config.pluginmanager.register(RequiredSkipGuard(), "imgembed-required-skip-guard")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the fast tier before ``-m`` selects (tryfirst: the mark plugin deselects later)."""
    for item in items:
        if is_fast(item.path):
            item.add_marker(pytest.mark.fast)


@pytest.fixture
def rgb_pixels() -> np.ndarray:
    return gradient_rgb()


@pytest.fixture
def png_bytes(rgb_pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(rgb_pixels), "PNG")


@pytest.fixture
def jpeg_bytes(rgb_pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(rgb_pixels), "JPEG", quality=95)


def _is_loopback(host: object) -> bool:
    """Whether a socket address host is this machine."""
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails any test that connects to anything but 127.0.0.1 / ::1; only numeric names resolve."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if not _is_loopback(host):
                raise AssertionError(f"test tried to connect to {address!r}; only loopback allowed")
        real_connect(self, address)

    def guarded_getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        if _is_loopback(host):
            return real_getaddrinfo(host, port, *args, **kwargs)
        # Numeric forms only: resolving "2130706433" sends nothing; a name would need DNS.
        family, kind, protocol, flags = [*args, 0, 0, 0, 0][:4]
        flags = int(kwargs.get("flags", flags)) | socket.AI_NUMERICHOST
        return real_getaddrinfo(
            host,
            port,
            kwargs.get("family", family),
            kwargs.get("type", kind),
            kwargs.get("proto", protocol),
            flags,
        )

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
