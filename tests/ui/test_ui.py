"""The browser page (/ui) in headless Chromium, driven by Playwright, against a real imgembed server.

The page fetches the image's features from the server once, then decodes every click in the
browser with onnxruntime-web (the decoder graph exported from the served model). Each check
compares what the browser computed with the server's own ``POST /v1/sam2/segment`` for the same
prompt, with the ``mask_input`` the page fed (a second prompt on an object refines the mask shown):
the chosen mask, its score, the low-resolution logits and the mask's pixels.

Needs Debian's ``chromium`` (``/usr/bin/chromium``; the module is skipped without it), the
``playwright`` Python package (no downloaded browsers: ``executable_path`` points at Debian's), and
onnxruntime-web installed by ``scripts/fetch_ui_assets.sh``. Every request the page makes must go to
the imgembed server: nothing else is reachable, and the test checks it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from imagefactory import encode
from PIL import Image
from servers import imgembed_server

from imgembed.ui.assets import FETCH_COMMAND, STATIC_FILES, read_vendor_manifest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL = "sam2.1-hiera-tiny"
IMAGE_SIZE = (150, 200)  # H, W
EXPORT_TIMEOUT_MS = 600_000
"""The first image of a session waits for the decoder export (tens of seconds on a small CPU)."""
DECODE_TIMEOUT_MS = 60_000
MIN_PIXEL_AGREEMENT = 0.995
MIN_REFINED_PIXEL_AGREEMENT = 0.999
ZERO_MASK_INPUT = base64.b64encode(bytes(4 * 256 * 256)).decode("ascii")
"""What the page feeds as ``mask_input`` with ``has_mask_input`` 0: 256x256 float32 zeros."""
SERVER_ARGS = ["--weights", "dummy", "--model", MODEL]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui-screenshot.png"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install -y chromium)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (test-only)")


def shapes_image() -> np.ndarray:
    """``[H,W,3]`` uint8: a red disc and a green rectangle on a dark textured background."""
    height, width = IMAGE_SIZE
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = 30 + (columns * 7 % 23)
    pixels[..., 1] = 40 + (rows * 5 % 17)
    pixels[..., 2] = 60
    pixels[(rows - 75) ** 2 + (columns - 60) ** 2 < 40**2] = [220, 60, 60]
    pixels[25:125, 125:185] = [60, 200, 90]
    return pixels


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    path.write_bytes(encode(Image.fromarray(shapes_image()), "PNG"))
    return path


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A home folder of the module's own, so the decoder graphs are exported into (and shared
    through) a fresh cache folder, ~/.cache/imgembed/ui-decoders."""
    if read_vendor_manifest() is None:
        pytest.fail(f"onnxruntime-web is not installed for the page: run {FETCH_COMMAND}")
    home = tmp_path_factory.mktemp("home")
    return {"HOME": str(home), "IMGEMBED_LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_env: dict[str, str]) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with imgembed_server(SERVER_ARGS, server_env, log_path=log) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class PageWatch:
    """Every request a page makes and every console error, for the checks after a test."""

    def __init__(self, page: Any) -> None:
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )

    def assert_only(self, *origins: str) -> None:
        """Every request went to one of ``origins`` (or stayed inside the page: data:, blob:)."""
        outside = [
            url
            for url in self.requests
            if not url.startswith((*(origin + "/" for origin in origins), "data:", "blob:"))
        ]
        assert not outside, f"the page reached beyond the imgembed server: {outside}"
        violations = [text for text in self.console_errors if "Content Security Policy" in text]
        assert not violations, violations


@contextlib.contextmanager
def open_page(browser: Any, init_script: str | None = None) -> Iterator[tuple[Any, PageWatch]]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()
        if init_script:
            page.add_init_script(init_script)
        yield page, PageWatch(page)
    finally:
        context.close()


def wait_state(page: Any, *states: str, timeout: float = DECODE_TIMEOUT_MS) -> str:
    """Waits until ``<body data-state>`` is one of ``states``; returns it. (Selectors, not
    script predicates: the page's Content-Security-Policy forbids eval.)"""
    selector = ", ".join(f"body[data-state={state}]" for state in states)
    page.wait_for_selector(selector, state="attached", timeout=timeout)
    return page.evaluate("document.body.dataset.state")


def wait_decodes(page: Any, count: int) -> None:
    page.wait_for_selector(
        f"body[data-decodes='{count}']", state="attached", timeout=DECODE_TIMEOUT_MS
    )


def message(page: Any) -> tuple[str, str]:
    """The page's message: its kind (info, progress, warning, error) and its text."""
    element = page.locator("#message")
    return element.get_attribute("data-kind"), element.inner_text()


def open_image(page: Any, base_url: str, path: Path, *, timeout: float = EXPORT_TIMEOUT_MS) -> str:
    page.goto(base_url + "/ui")
    wait_state(page, "idle", "error", "unsupported")
    page.set_input_files("#file", str(path))
    return wait_state(page, "ready", "error", timeout=timeout)


def click_pixel(page: Any, x: float, y: float, *, modifiers: list[str] | None = None) -> None:
    """Clicks the point ``(x, y)`` of the original image (continuous pixel coordinates)."""
    height, width = IMAGE_SIZE
    box = page.locator("#image-canvas").bounding_box()
    page.mouse.move(box["x"] + x / width * box["width"], box["y"] + y / height * box["height"])
    if modifiers:
        for key in modifiers:
            page.keyboard.down(key)
    page.mouse.down()
    page.mouse.up()
    if modifiers:
        for key in modifiers:
            page.keyboard.up(key)


def drag_box(page: Any, x0: float, y0: float, x1: float, y1: float) -> None:
    height, width = IMAGE_SIZE
    box = page.locator("#image-canvas").bounding_box()

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x / width * box["width"], box["y"] + y / height * box["height"]

    page.mouse.move(*at(x0, y0))
    page.mouse.down()
    page.mouse.move(*at((x0 + x1) / 2, (y0 + y1) / 2), steps=3)
    page.mouse.move(*at(x1, y1), steps=3)
    page.mouse.up()


def browser_result(page: Any) -> dict[str, Any]:
    """The page's last mask: metadata, the ``[H,W]`` bool mask and the ``[K,256,256]`` logits."""
    last = page.evaluate("window.__imgembed.lastMask")
    mask_bytes = base64.b64decode(page.evaluate("window.__imgembed.maskBase64()"))
    last["mask"] = np.frombuffer(mask_bytes, np.uint8).reshape(last["height"], last["width"]) > 0
    logits = [
        np.frombuffer(
            base64.b64decode(page.evaluate(f"window.__imgembed.lowResBase64({k})")), "<f4"
        )
        for k in range(len(last["scores"]))
    ]
    last["low_res"] = np.stack(logits).reshape(-1, 256, 256)  # K x [65536] -> [K,256,256]
    return last


def server_segment(
    base_url: str,
    image_id: str,
    prompt: dict[str, Any],
    *,
    multimask: bool,
    mask_input: str | None = None,
) -> dict[str, Any]:
    """The server's masks for the page's prompt: ``masks [K,H,W]``, scores, logits, best index.

    ``mask_input``: base64 float32 256x256 logits of an earlier mask to refine, or ``None``.
    """
    body: dict[str, Any] = {
        "image_id": image_id,
        "multimask_output": multimask,
        "mask_format": "npz",
    }
    if mask_input is not None:
        body["mask_input"] = mask_input
    if prompt["points"]:
        body["points"] = prompt["points"]
        body["point_labels"] = prompt["labels"]
    if prompt["box"]:
        body["box"] = prompt["box"]
    response = httpx.post(base_url + "/v1/sam2/segment", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    with np.load(io.BytesIO(base64.b64decode(answer["masks_npz"]))) as arrays:
        return {
            "masks": arrays["masks"][0],  # [O=1,K,H,W] -> [K,H,W]
            "scores": arrays["scores"][0],
            "low_res": arrays["low_res_logits"][0],
            "best": answer["objects"][0]["best_mask"],
        }


def fed_mask_input(page: Any) -> str | None:
    """The ``mask_input`` the page's last decode was fed (base64 float32 256x256), or ``None`` when
    it had none (``has_mask_input`` 0, and then the page fed zeros)."""
    fed = page.evaluate("window.__imgembed.maskInputBase64()")
    if page.evaluate("window.__imgembed.lastMask.hasMaskInput") == 1:
        return fed
    assert fed == ZERO_MASK_INPUT, "has_mask_input 0 must come with a zero mask_input"
    return None


def assert_matches_server(
    page: Any, base_url: str, *, multimask: bool, min_agreement: float = MIN_PIXEL_AGREEMENT
) -> dict[str, Any]:
    """The browser's mask for its last prompt equals the server's segment for the same prompt and
    the same ``mask_input`` (the page's previous mask when it refined one)."""
    ours = browser_result(page)
    image_id = page.evaluate("window.__imgembed.imageId")
    ours["mask_input"] = fed_mask_input(page)
    theirs = server_segment(
        base_url, image_id, ours["prompt"], multimask=multimask, mask_input=ours["mask_input"]
    )
    expected_index = theirs["best"] if multimask else 0
    assert ours["index"] == expected_index, (ours["scores"], theirs["scores"])
    np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=1e-5)
    # Random weights give small logits: compare on their own scale.
    scale = float(np.abs(theirs["low_res"]).max())
    np.testing.assert_allclose(ours["low_res"], theirs["low_res"], rtol=0, atol=1e-3 * scale)
    server_mask = theirs["masks"][expected_index]
    assert ours["mask"].shape == server_mask.shape == IMAGE_SIZE
    agreement = float(np.mean(ours["mask"] == server_mask))
    assert agreement > min_agreement, f"pixel agreement {agreement:.5f}"
    assert 0 < server_mask.sum() < server_mask.size, "a trivial mask would make agreement vacuous"
    return {**ours, "agreement": agreement, "server": theirs}


def test_clicks_boxes_and_download_match_server_segment(
    browser: Any, server: str, image_file: Path, tmp_path: Path
) -> None:
    with open_page(browser) as (page, watch):
        assert open_image(page, server, image_file) == "ready", message(page)
        assert page.locator("#backend").inner_text().startswith("Decoding on the")

        click_pixel(page, 60.5, 75.5)
        wait_decodes(page, 1)
        first = assert_matches_server(page, server, multimask=True)
        assert first["prompt"]["labels"] == [1]
        np.testing.assert_allclose(first["prompt"]["points"][0], [60.5, 75.5], atol=0.5)
        assert first["graph"] == "decoder"

        click_pixel(page, 155, 75, modifiers=["Shift"])
        wait_decodes(page, 2)
        second = assert_matches_server(page, server, multimask=True)
        assert second["prompt"]["labels"] == [1, 0]

        drag_box(page, 20, 30, 110, 125)
        wait_decodes(page, 3)
        third = assert_matches_server(page, server, multimask=True)
        np.testing.assert_allclose(third["prompt"]["box"], [20, 30, 110, 125], atol=0.5)

        page.select_option("#output", "single")
        wait_decodes(page, 4)
        single = assert_matches_server(page, server, multimask=False)
        assert single["graph"] == "decoder_single_mask"
        assert len(single["scores"]) == 1

        with page.expect_download() as download_info:
            page.click("#download")
        png_path = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(png_path)
        assert png_path.name == "shapes-mask.png"
        with Image.open(png_path) as downloaded:
            pixels = np.asarray(downloaded.convert("L"))
        np.testing.assert_array_equal(pixels > 127, single["mask"])
        assert set(np.unique(pixels)) <= {0, 255}

        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        if os.environ.get("IMGEMBED_UPDATE_UI_SCREENSHOT"):  # the picture in docs/ui.md
            page.screenshot(path=str(DOCS_SCREENSHOT))
        watch.assert_only(server)


def test_second_click_refines_the_previous_mask_and_clear_starts_without_one(
    browser: Any, server: str, image_file: Path
) -> None:
    """Meta's predictor workflow in the page: the second click on an object is decoded with the
    first round's chosen low-resolution logits as ``mask_input`` (``has_mask_input`` 1) and both
    clicks; Clear starts a new object with no mask (zeros, 0)."""
    with open_page(browser) as (page, watch):
        assert open_image(page, server, image_file) == "ready", message(page)

        click_pixel(page, 60.5, 75.5)  # the red disc
        wait_decodes(page, 1)
        first = assert_matches_server(
            page, server, multimask=True, min_agreement=MIN_REFINED_PIXEL_AGREEMENT
        )
        assert first["hasMaskInput"] == 0
        assert first["mask_input"] is None
        assert page.evaluate("document.body.dataset.maskInput") == "none"
        assert "refined" not in message(page)[1]
        first_logits = page.evaluate(f"window.__imgembed.lowResBase64({first['index']})")

        click_pixel(page, 75.5, 60.5)  # the same disc
        wait_decodes(page, 2)
        second = assert_matches_server(
            page, server, multimask=True, min_agreement=MIN_REFINED_PIXEL_AGREEMENT
        )
        # (a) The decoder was fed has_mask_input 1 and, bit for bit, the first round's chosen logits.
        assert second["hasMaskInput"] == 1
        assert second["maskInputFrom"] == first["decode"] == 1
        assert second["mask_input"] == first_logits
        assert second["prompt"]["labels"] == [1, 1]
        np.testing.assert_allclose(
            second["prompt"]["points"], [[60.5, 75.5], [75.5, 60.5]], atol=0.5
        )
        assert page.evaluate("document.body.dataset.maskInput") == "previous"
        assert "refined with the previous mask" in message(page)[1]
        # (b) assert_matches_server compared it with the server's segment for both clicks and that
        # mask_input; without the mask the server answers otherwise, so the mask input mattered.
        image_id = page.evaluate("window.__imgembed.imageId")
        unrefined = server_segment(server, image_id, second["prompt"], multimask=True)
        refined_logits = second["server"]["low_res"]
        change = float(np.abs(unrefined["low_res"] - refined_logits).max())
        assert change > 1e-2 * float(np.abs(refined_logits).max()), change

        # Undo decodes the first click again as it was decoded: without a mask.
        page.click("#undo")
        wait_decodes(page, 3)
        undone = browser_result(page)
        assert undone["hasMaskInput"] == 0
        assert undone["prompt"] == first["prompt"]
        np.testing.assert_array_equal(undone["mask"], first["mask"])

        # Clear starts a new object: its first click is decoded with no mask (zeros, 0).
        page.click("#clear")
        page.wait_for_selector("body:not([data-mask-input])", state="attached")
        click_pixel(page, 155.5, 75.5)  # the green rectangle
        wait_decodes(page, 4)
        fresh = assert_matches_server(
            page, server, multimask=True, min_agreement=MIN_REFINED_PIXEL_AGREEMENT
        )
        assert fresh["hasMaskInput"] == 0
        assert fresh["mask_input"] is None
        assert fresh["maskInputFrom"] is None
        assert fresh["prompt"]["labels"] == [1]
        assert page.evaluate("document.body.dataset.maskInput") == "none"
        assert "refined" not in message(page)[1]

        # Its second prompt, a box, refines it in turn; single-mask output feeds its one mask.
        page.select_option("#output", "single")
        wait_decodes(page, 5)
        assert browser_result(page)["hasMaskInput"] == 0  # the same prompt, decoded again
        single_logits = page.evaluate("window.__imgembed.lowResBase64(0)")
        drag_box(page, 120, 20, 190, 130)
        wait_decodes(page, 6)
        boxed = assert_matches_server(
            page, server, multimask=False, min_agreement=MIN_REFINED_PIXEL_AGREEMENT
        )
        assert boxed["hasMaskInput"] == 1
        assert boxed["mask_input"] == single_logits
        watch.assert_only(server)


def test_a_decoder_graph_without_the_mask_inputs_is_refused_by_name(
    browser: Any, server: str, image_file: Path
) -> None:
    """A graph whose mask_input and has_mask_input are zero defaults (overridable initializers),
    which onnxruntime-web does not list as inputs, is refused with the missing inputs named."""
    onnx = pytest.importorskip("onnx", reason="the onnx extra exports the decoder")
    from onnx import numpy_helper

    served = httpx.get(f"{server}/ui/models/{MODEL}/decoder.onnx", timeout=EXPORT_TIMEOUT_MS / 1000)
    assert served.status_code == 200, served.text
    graph = onnx.load_from_string(served.content)
    assert {"mask_input", "has_mask_input"} <= {item.name for item in graph.graph.input}
    graph.graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((1, 1, 256, 256), np.float32), "mask_input"),
            numpy_helper.from_array(np.zeros(1, np.float32), "has_mask_input"),
        ]
    )
    defaulted = graph.SerializeToString()
    with open_page(browser) as (page, watch):
        page.route(
            "**/ui/models/*/decoder.onnx",
            lambda route: route.fulfill(body=defaulted, content_type="application/octet-stream"),
        )
        assert open_image(page, server, image_file) == "error"
        kind, text = message(page)
        assert kind == "error"
        assert "the decoder graph lacks the inputs mask_input, has_mask_input" in text, text
        watch.assert_only(server)


def test_letterboxed_features_match_server_segment(
    browser: Any, server_env: dict[str, str], image_file: Path, tmp_path: Path
) -> None:
    env = {**server_env, "IMGEMBED_RESIZE_MODE": "letterbox"}
    with (
        imgembed_server(SERVER_ARGS, env, log_path=tmp_path / "server.log") as letterboxed,
        open_page(browser) as (page, watch),
    ):
        assert open_image(page, letterboxed, image_file) == "ready", message(page)
        meta = page.evaluate("window.__imgembed.meta")
        assert meta["resize_mode"] == "letterbox"
        assert meta["resized_size"] == [768, 1024]
        click_pixel(page, 150.5, 40.5)
        wait_decodes(page, 1)
        result = assert_matches_server(page, letterboxed, multimask=True)
        np.testing.assert_allclose(result["prompt"]["points"][0], [150.5, 40.5], atol=0.5)
        drag_box(page, 10, 10, 190, 140)
        wait_decodes(page, 2)
        assert_matches_server(page, letterboxed, multimask=True)
        watch.assert_only(letterboxed)


def test_undo_restores_the_earlier_mask(browser: Any, server: str, image_file: Path) -> None:
    with open_page(browser) as (page, watch):
        assert open_image(page, server, image_file) == "ready", message(page)
        click_pixel(page, 150, 60)
        wait_decodes(page, 1)
        before = browser_result(page)
        click_pixel(page, 40, 40, modifiers=["Shift"])
        wait_decodes(page, 2)
        page.click("#undo")
        wait_decodes(page, 3)
        after = browser_result(page)
        assert after["prompt"] == before["prompt"]
        np.testing.assert_array_equal(after["mask"], before["mask"])
        watch.assert_only(server)


def test_float16_features_are_widened_exactly(browser: Any, server: str) -> None:
    with open_page(browser) as (page, _):
        page.goto(server + "/ui")
        wait_state(page, "idle")
        bits = np.arange(65536, dtype=np.uint16)
        widened = np.array(page.evaluate("window.__imgembed.float16ToFloat32", bits.tolist()))
        expected = bits.view(np.float16).astype(np.float32)
        np.testing.assert_array_equal(widened.astype(np.float32), expected)


def test_float16_features_decode_close_to_the_server(
    browser: Any, server: str, image_file: Path
) -> None:
    with open_page(browser) as (page, _):
        page.goto(server + "/ui")
        wait_state(page, "idle")
        page.select_option("#dtype", "float16")
        page.set_input_files("#file", str(image_file))
        assert wait_state(page, "ready", "error", timeout=EXPORT_TIMEOUT_MS) == "ready"
        assert "float16" in page.locator("#details").inner_text()
        click_pixel(page, 60.5, 75.5)
        wait_decodes(page, 1)
        ours = browser_result(page)
        image_id = page.evaluate("window.__imgembed.imageId")
        theirs = server_segment(server, image_id, ours["prompt"], multimask=True)
        # float16 features round the decoder's inputs: close to the float32 result, not equal.
        assert float(np.mean(ours["mask"] == theirs["masks"][ours["index"]])) > 0.98


def test_non_image_file_shows_a_message(browser: Any, server: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a picture\n")
    with open_page(browser) as (page, watch):
        assert open_image(page, server, notes) == "error"
        kind, text = message(page)
        assert kind == "error"
        assert "“notes.txt” is not an image" in text
        assert "PNG, JPEG" in text
        assert page.locator("#stage").is_hidden()
        watch.assert_only(server)


def test_image_the_server_refuses_shows_the_server_message(
    browser: Any, server: str, tmp_path: Path
) -> None:
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))
    refusal = httpx.post(
        server + "/v1/sam2/embed", files={"file": ("tiny.png", tiny.read_bytes(), "image/png")}
    )
    assert refusal.status_code == 400
    server_message = refusal.json()["error"]["message"]
    with open_page(browser) as (page, watch):
        assert open_image(page, server, tiny) == "error"
        kind, text = message(page)
        assert kind == "error"
        assert text.startswith("The server refused the image: ")
        assert server_message in text
        assert "HTTP 400" in text
        assert page.locator("#stage").is_hidden()
        watch.assert_only(server)


def test_lost_connection_shows_a_message_and_open_images_keep_decoding(
    browser: Any, server: str, server_env: dict[str, str], image_file: Path, tmp_path: Path
) -> None:
    second_image = tmp_path / "second.png"
    second_image.write_bytes(encode(Image.fromarray(shapes_image()[::-1].copy()), "PNG"))
    with open_page(browser) as (page, watch):
        # A server of this test's own (the module's shares the decoder export through HOME).
        with imgembed_server(SERVER_ARGS, server_env, log_path=tmp_path / "server.log") as own:
            assert open_image(page, own, image_file) == "ready", message(page)
            click_pixel(page, 60.5, 75.5)
            wait_decodes(page, 1)
        # The server is stopped: the open image still decodes, in the browser alone.
        click_pixel(page, 150, 60)
        wait_decodes(page, 2)
        assert browser_result(page)["prompt"]["labels"] == [1, 1]
        page.set_input_files("#file", str(second_image))
        assert wait_state(page, "error") == "error"
        kind, text = message(page)
        assert kind == "error"
        assert text.startswith("Lost the connection to the imgembed server while sending the image")
        watch.assert_only(own)


def test_with_an_api_key_the_page_asks_for_it_and_then_works(
    browser: Any, server_env: dict[str, str], image_file: Path, tmp_path: Path
) -> None:
    manifest = read_vendor_manifest()
    assert manifest is not None
    page_files = [
        "/health",
        "/ui",
        "/ui/",
        "/ui/config.json",
        *(f"/ui/static/{name}" for name in sorted(STATIC_FILES)),
        *(f"/ui/vendor/{name}" for name in sorted(manifest.files)),
    ]
    env = {
        **server_env,
        "IMGEMBED_API_KEY": "browser-secret",
        "IMGEMBED_PUBLIC_PATHS": ",".join(page_files),
    }
    with (
        imgembed_server(SERVER_ARGS, env, log_path=tmp_path / "server.log") as keyed,
        open_page(browser) as (page, watch),
    ):
        page.goto(keyed + "/ui")
        assert wait_state(page, "error", "idle") == "error"
        kind, text = message(page)
        assert kind == "error"
        assert text.startswith("The server refused the page's settings request: missing or wrong")
        assert "HTTP 401" in text
        assert page.locator("#api-key-box").get_attribute("open") is not None
        page.fill("#api-key", "browser-secret")
        page.locator("#api-key").dispatch_event("change")
        assert wait_state(page, "idle", "error") == "idle", message(page)
        page.set_input_files("#file", str(image_file))
        assert wait_state(page, "ready", "error", timeout=EXPORT_TIMEOUT_MS) == "ready"
        click_pixel(page, 60.5, 75.5)
        wait_decodes(page, 1)
        watch.assert_only(keyed)


def test_without_webassembly_the_page_says_so(browser: Any, server: str) -> None:
    with open_page(browser, "delete globalThis.WebAssembly;") as (page, watch):
        page.goto(server + "/ui")
        assert wait_state(page, "unsupported", "idle", "error") == "unsupported"
        kind, text = message(page)
        assert kind == "error"
        assert "cannot run WebAssembly" in text
        assert page.locator("#file").is_disabled()
        assert "/v1/sam2/segment" in text
        watch.assert_only(server)


def test_without_webgpu_the_page_decodes_with_webassembly(
    browser: Any, server: str, image_file: Path
) -> None:
    script = "Object.defineProperty(Navigator.prototype, 'gpu', {get: () => undefined});"
    with open_page(browser, script) as (page, watch):
        assert open_image(page, server, image_file) == "ready", message(page)
        page.wait_for_selector("#backend:has-text('onnxruntime-web')", timeout=DECODE_TIMEOUT_MS)
        assert "WebAssembly" in page.locator("#backend").inner_text()
        assert "offers no WebGPU" in page.locator("#backend").inner_text()
        click_pixel(page, 60.5, 75.5)
        wait_decodes(page, 1)
        assert browser_result(page)["backend"] == "wasm"
        watch.assert_only(server)
