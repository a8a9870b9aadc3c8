"""The page's HTTP routes and files, without a browser: what is served, with which headers, and
what is refused; the vendored onnxruntime-web against its manifest; the browser decoder graph.

The app is the real one (``create_app``), driven in process without its lifespan (no model is
loaded): these routes do not touch the engine.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from imgembed.server.app import create_app
from imgembed.settings import ModelSpec, ServerConfig
from imgembed.ui import assets
from imgembed.ui.assets import FETCH_COMMAND, STATIC_DIR, STATIC_FILES, read_vendor_manifest
from imgembed.ui.routes import PAGE_SECURITY_POLICY


def get_all(requests: list[tuple[str, str, dict[str, str]]]) -> list[httpx.Response]:
    """Answers of the app to ``(method, path, headers)`` requests, in order."""
    config = ServerConfig(models=(ModelSpec("sam2.1-hiera-tiny", weights="dummy", device="cpu"),))
    app = create_app(config)

    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [
                await client.request(method, path, headers=headers)
                for method, path, headers in requests
            ]

    return asyncio.run(fetch())


def get(path: str, method: str = "GET", **headers: str) -> httpx.Response:
    return get_all([(method, path, headers)])[0]


def test_ui_redirects_to_the_page_relatively() -> None:
    response = get("/ui")
    assert response.status_code == 307
    assert response.headers["location"] == "ui/"


def test_page_is_isolated_and_allows_only_its_own_origin() -> None:
    response = get("/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == PAGE_SECURITY_POLICY
    assert "connect-src 'self'" in PAGE_SECURITY_POLICY
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    assert '<script type="module" src="static/app.js">' in response.text


@pytest.mark.parametrize("name", sorted(STATIC_FILES))
def test_every_static_file_is_served_with_its_type(name: str) -> None:
    response = get(f"/ui/static/{name}")
    assert response.status_code == 200
    assert response.content == (STATIC_DIR / name).read_bytes()
    expected = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    assert response.headers["content-type"].startswith(expected[Path(name).suffix])
    assert response.headers["x-content-type-options"] == "nosniff"


def test_static_files_on_disk_are_exactly_the_served_list() -> None:
    on_disk = {path.name for path in STATIC_DIR.iterdir() if path.is_file()}
    assert on_disk == STATIC_FILES


def test_unchanged_files_answer_304_and_head_has_no_body() -> None:
    first = get("/ui/static/app.js")
    etag = first.headers["etag"]
    again, head, other = get_all(
        [
            ("GET", "/ui/static/app.js", {"If-None-Match": etag}),
            ("HEAD", "/ui/static/app.js", {}),
            ("GET", "/ui/static/app.js", {"If-None-Match": '"something-else"'}),
        ]
    )
    assert again.status_code == 304
    assert again.content == b""
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == etag
    assert other.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/routes.py",
        "/ui/static/..%2Froutes.py",
        "/ui/static/../routes.py",
        "/ui/vendor/..%2F..%2F__init__.py",
        "/ui/vendor/package.json",
        "/ui/models/sam2.1-hiera-tiny/encoder.onnx",
    ],
)
def test_nothing_outside_the_lists_is_served(path: str) -> None:
    response = get(path)
    assert response.status_code == 404
    assert "import" not in response.text


def test_unknown_static_file_says_what_it_is() -> None:
    response = get("/ui/static/missing.js")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"] == "/ui/static/missing.js is not a file of the browser page"
    assert error["field"] == "path"


def test_unknown_model_is_refused_like_the_api() -> None:
    response = get("/ui/models/no-such-model/decoder.onnx")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_vendored_runtime_matches_its_manifest() -> None:
    manifest = read_vendor_manifest()
    if manifest is None:
        pytest.fail(f"onnxruntime-web is not installed for the page: run {FETCH_COMMAND}")
    assert manifest.package == "onnxruntime-web"
    lock = (Path(__file__).parents[2] / "ui" / "package-lock.json").read_text()
    assert f'"onnxruntime-web": "{manifest.version}"' in lock
    for name, digest in manifest.files.items():
        assert hashlib.sha256((assets.VENDOR_DIR / name).read_bytes()).hexdigest() == digest, name
    wasm = get("/ui/vendor/ort-wasm-simd-threaded.wasm", "HEAD")
    assert wasm.status_code == 200
    assert wasm.headers["content-type"] == "application/wasm"
    module = get("/ui/vendor/ort.wasm.min.mjs")
    assert module.headers["content-type"].startswith("text/javascript")
    config = get("/ui/config.json").json()
    assert config["runtime"] == {"package": "onnxruntime-web", "version": manifest.version}
    assert config["runtime_missing_message"] is None


def test_without_the_runtime_the_page_and_vendor_routes_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assets, "VENDOR_DIR", tmp_path / "vendor")
    config, module = get_all(
        [("GET", "/ui/config.json", {}), ("GET", "/ui/vendor/ort.wasm.min.mjs", {})]
    )
    assert config.json()["runtime"] is None
    assert FETCH_COMMAND in config.json()["runtime_missing_message"]
    assert module.status_code == 404
    assert FETCH_COMMAND in module.json()["error"]["message"]


def test_unreadable_manifest_counts_as_not_installed(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    assert read_vendor_manifest(tmp_path) is None
    assert assets.vendor_asset("ort.wasm.min.mjs", tmp_path) is None
