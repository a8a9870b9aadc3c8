"""The RunPod handler with fake models: the seed events' response fields, every action, and every
refusal naming its ``input.`` field.

The fast twin of tests/e2e/test_runpod.py (whose SDK ``--test_input`` runs are subprocesses with a
real untrained model, and stay there). The handler builds its engine itself, so the fixture swaps
in :class:`~fakes.FakeEngine` for the module's ``Engine``.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import SIGLIP_MODEL, FakeEngine, expected_sam2_arrays, expected_siglip_text_vector
from imagefactory import encode, gradient_rgb
from PIL import Image
from servers import ImageHost

import imgembed.runpod as runpod_adapter

PNG = encode(Image.fromarray(gradient_rgb()), "PNG")  # 64x48
PNG_B64 = base64.b64encode(PNG).decode()


@pytest.fixture
def fake_runpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The handler's engine is a fake one, built on its first job as RunPod's would be."""
    monkeypatch.setenv("IMGEMBED_WEIGHTS", "dummy")
    monkeypatch.setenv("IMGEMBED_WARMUP", "false")
    monkeypatch.setenv("IMGEMBED_FETCH_ALLOWED_HOSTS", "127.0.0.1/32")
    monkeypatch.setattr(runpod_adapter, "Engine", FakeEngine)
    monkeypatch.setattr(runpod_adapter, "_engine", None)
    yield
    assert runpod_adapter._engine is None, "run_jobs closes the engine it started"


def run_jobs(*jobs: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs jobs through the handler one after another on one event loop (the engine's batchers
    live on it), then closes the engine the first job started."""

    async def scenario() -> list[dict[str, Any]]:
        try:
            return [await runpod_adapter.handler(job) for job in jobs]
        finally:
            engine = runpod_adapter._engine
            runpod_adapter._engine = None
            if engine is not None:
                await engine.close()

    return asyncio.run(scenario())


def test_seed_event_gives_seed_response_fields(fake_runpod: None) -> None:
    event = {
        "id": "seed-1",
        "input": {
            "action": "embed_image",
            "image_b64": "data:image/png;base64," + PNG_B64,
            "dtype": "float16",
            "resize_longer_side": 1024,
            "include_high_res": False,
        },
    }
    (result,) = run_jobs(event)
    assert result["type"] == "map"
    assert result["encoding"] == "npz_base64"
    assert result["shape"] == [256, 64, 64]
    assert result["dtype"] == "float16"
    assert result["arrays"] == {"embedding": [256, 64, 64]}
    assert result["model"] == "sam2.1-hiera-tiny"
    assert result["device"] == "cpu"
    meta = result["meta"]
    assert meta["model"] == "sam2.1_hiera_t.yaml"
    assert meta["orig_size"] == [48, 64]
    assert meta["input_size"] == [1024, 1024]
    assert meta["resized_size"] == [1024, 1024]
    assert meta["pad"] == [0, 0, 0, 0]
    assert meta["scale"] == {"h": 1024 / 48, "w": 16.0}
    assert meta["stride"] == 16
    assert result["data"].startswith("UEsDB")  # base64 of a zip archive's signature
    with np.load(io.BytesIO(base64.b64decode(result["data"]))) as archive:
        assert set(archive.files) == {"embedding"}
        expected = expected_sam2_arrays(PNG, dtype="float16", include_high_res=False)
        np.testing.assert_array_equal(archive["embedding"], expected["image_embed"])


@pytest.mark.parametrize(
    ("job", "field", "phrase"),
    [
        ({"id": "1"}, "input", '"input" is missing'),
        ({"id": "2", "input": "embed"}, "input", "not an object"),
        ({"id": "3", "input": {"action": "embed_everything"}}, "input.action", "unknown action"),
        ({"id": "3b", "input": {"action": "paint", "image_b64": PNG_B64}}, "input.action", "unknown action 'paint'; expected one of embed_image"),
        ({"id": "11", "input": {"action": "segment", "image_b64": PNG_B64}}, "input.points", "no prompt"),
        ({"id": "12", "input": {"action": "segment", "image_b64": PNG_B64, "points": [[1, 1]], "point_labels": [4]}}, "input.point_labels[0]", "must be one of"),
        ({"id": "13", "input": {"action": "segment", "image_b64": PNG_B64, "box": [50, 0, 10, 9]}}, "input.box", "x0 <= x1"),
        ({"id": "14", "input": {"action": "segment", "image_b64": PNG_B64, "points": [[900, 1]]}}, "input.points", "outside"),
        ({"id": "15", "input": {"action": "segment", "image_id": "f" * 32, "points": [[1, 1]]}}, "input.image_id", "send the image again"),
        ({"id": "16", "input": {"action": "segment_everything", "image_b64": PNG_B64, "box_nms_thresh": 5}}, "input.box_nms_thresh", "box_nms_thresh"),
        ({"id": "17", "input": {"action": "segment_everything", "image_b64": PNG_B64, "points_per_side": 0}}, "input.points_per_side", "greater than or equal to 1"),
        ({"id": "4", "input": {"action": "embed_image"}}, "input.image_b64", "no image given"),
        ({"id": "5", "input": {"image_b64": "@@"}}, "input.image_b64", "not valid base64"),
        ({"id": "6", "input": {"image_b64": PNG_B64, "dtype": "int8"}}, "input.dtype", "float16"),
        ({"id": "7", "input": {"image_b64": PNG_B64, "encoding": "binary"}}, "input.encoding", "only available over HTTP"),
        ({"id": "8", "input": {"image_b64": PNG_B64, "model": "nope"}}, "input.model", "not served here"),
        ({"id": "9", "input": {"image_b64": PNG_B64, "resize_longer_side": 2048}}, "input.resize_longer_side", "must be 1024"),
        ({"id": "10", "input": {"input_image_url": "http://[::1]:9/x.png"}}, "input.input_image_url", "request forgery"),
        ({"id": "18", "input": {"action": "embed_texts", "texts": ["ok"]}}, "input.model", "serves no SigLIP 2 model"),
    ],
)  # fmt: skip
def test_handler_refusals_name_the_field(
    fake_runpod: None, job: dict[str, Any], field: str, phrase: str
) -> None:
    (result,) = run_jobs(job)
    assert set(result) == {"error", "code", "field"}
    assert result["field"] == field
    assert phrase in result["error"]


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("job_input", "field", "phrase"),
    [
        ({"image_b64": PNG_B64, "points": _nested(500)}, "input.points", "IMGEMBED_MAX_JSON_DEPTH"),
        ({"image_b64": PNG_B64, "points": [[10**200, 1]]}, "input.points[0][0]", "IMGEMBED_MAX_JSON_NUMBER_CHARS"),
        ({"action": "embed_texts", "texts": ["ok", "\ud800"]}, "input.texts[1]", "lone surrogate"),
    ],
)  # fmt: skip
def test_the_event_input_gets_the_json_body_checks(
    fake_runpod: None, job_input: dict[str, Any], field: str, phrase: str
) -> None:
    (result,) = run_jobs({"id": "hostile", "input": job_input})
    assert result["field"] == field
    assert phrase in result["error"]
    (again,) = run_jobs({"id": "after", "input": {"image_b64": PNG_B64}})
    assert "error" not in again


@pytest.mark.parametrize(
    ("job", "field", "phrase"),
    [
        ({"id": "1", "input": {"images": []}}, "input.images", "non-empty list"),
        ({"id": "2", "input": {"images": ["x"], "model": "sam2.1-hiera-tiny"}}, "input.model", "not served here"),
        ({"id": "3", "input": {"action": "embed_texts", "texts": ["ok", " "]}}, "input.texts[1]", "empty"),
        ({"id": "4", "input": {"action": "embed_texts", "texts": "ok"}}, "input.texts", "non-empty list"),
    ],
)  # fmt: skip
def test_siglip_refusals_name_the_field(
    fake_runpod: None,
    monkeypatch: pytest.MonkeyPatch,
    job: dict[str, Any],
    field: str,
    phrase: str,
) -> None:
    monkeypatch.setenv("IMGEMBED_MODEL", SIGLIP_MODEL)
    (result,) = run_jobs(job)
    assert set(result) == {"error", "code", "field"}
    assert result["field"] == field
    assert phrase in result["error"]


def test_segment_action(fake_runpod: None) -> None:
    (result,) = run_jobs(
        {
            "id": "s-1",
            "input": {
                "action": "segment",
                "image_b64": PNG_B64,
                "points": [[30, 20]],
                "multimask_output": False,
                "return_low_res_logits": False,
            },
        }
    )
    assert "error" not in result, result
    (item,) = result["objects"]
    (mask,) = item["masks"]
    assert set(mask["segmentation"]) == {"size", "counts"}
    assert mask["segmentation"]["size"] == [48, 64]
    assert isinstance(mask["score"], float)
    assert "low_res_logits" not in mask
    assert result["cache_hit"] is False
    assert result["image_id"]


def test_a_second_job_on_the_same_worker_reads_the_cache(fake_runpod: None) -> None:
    embedded, segmented = run_jobs(
        {"id": "e", "input": {"image_b64": PNG_B64, "include_high_res": False}},
        {"id": "s", "input": {"action": "segment", "image_b64": PNG_B64, "box": [5, 5, 40, 30]}},
    )
    assert segmented["image_id"] == embedded["image_id"]
    assert segmented["cache_hit"] is True


def test_segment_everything_action(fake_runpod: None) -> None:
    job = {
        "id": "everything-1",
        "input": {
            "action": "segment_everything",
            "image_b64": PNG_B64,
            "points_per_side": 2,
            "pred_iou_thresh": 0,
            "stability_score_thresh": 0,
        },
    }
    (result,) = run_jobs(job)
    assert "error" not in result, result
    assert result["count"] == len(result["masks"]) > 0
    assert result["masks"][0]["segmentation"]["size"] == [48, 64]


def test_siglip_seed_event_and_text_action(
    fake_runpod: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGEMBED_MODEL", SIGLIP_MODEL)
    with ImageHost(PNG) as host:
        images, texts = run_jobs(
            {"input": {"images": [f"{host.base_url}/image", f"{host.base_url}/missing"]}},
            {"input": {"action": "embed_texts", "texts": ["A red ball", "a cat"]}},
        )
    assert [entry["image_url"] for entry in images["embeddings"]] == [f"{host.base_url}/image"]
    assert len(images["embeddings"][0]["vector"]) == 768
    assert images["warnings"]["failed_urls"][0]["url"] == f"{host.base_url}/missing"
    assert images["warnings"]["message"] == "1 of 2 images could not be processed"
    assert [entry["index"] for entry in texts["embeddings"]] == [0, 1]
    assert texts["model"] == SIGLIP_MODEL
    vectors = np.array([entry["vector"] for entry in texts["embeddings"]], np.float32)
    assert vectors.shape == (2, 768)
    assert not np.allclose(vectors[0], vectors[1])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_text_vectors_are_the_fakes_of_each_text(
    fake_runpod: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGEMBED_MODEL", SIGLIP_MODEL)

    async def scenario() -> tuple[dict[str, Any], Any]:
        try:
            result = await runpod_adapter.handler(
                {"input": {"action": "embed_texts", "texts": ["A red ball", "a cat"]}}
            )
            assert runpod_adapter._engine is not None
            return result, runpod_adapter._engine.resolve_model(SIGLIP_MODEL)
        finally:
            engine, runpod_adapter._engine = runpod_adapter._engine, None
            if engine is not None:
                await engine.close()

    result, served = asyncio.run(scenario())
    for entry, text in zip(result["embeddings"], ["a red ball", "a cat"], strict=True):
        np.testing.assert_allclose(
            entry["vector"], expected_siglip_text_vector(text, served), atol=1e-6
        )


def test_collection_actions_run_the_collection_operations(
    fake_runpod: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every collection action, as its HTTP route (the collection named by ``name``)."""
    monkeypatch.setenv("IMGEMBED_MODEL", SIGLIP_MODEL)
    monkeypatch.setenv("IMGEMBED_COLLECTIONS_DIR", str(tmp_path / "collections"))
    vector = [1.0] + [0.0] * 767
    items = [
        {"id": "png", "image": PNG_B64, "metadata": {"label": "cat"}},
        {"id": "v", "vector": vector, "metadata": {}},
    ]
    jobs = [
        {"action": "add_items", "name": "pics", "items": items},
        {"action": "search_collection", "name": "pics", "image": PNG_B64, "top_k": 1},
        {"action": "search_collection", "name": "pics", "vector": vector, "top_k": 1},
        {"action": "list_items", "name": "pics", "limit": 1},
        {"action": "delete_items", "name": "pics", "ids": ["v", "nope"]},
        {"action": "get_collection", "name": "pics"},
        {"action": "list_collections"},
        {"action": "delete_collection", "name": "pics"},
        {"action": "get_collection", "name": "pics"},
    ]
    added, by_image, by_vector, page, deleted, info, listed, dropped, gone = run_jobs(
        *({"id": str(index), "input": job} for index, job in enumerate(jobs))
    )
    assert (added["inserted"], added["collection"]["dimension"]) == (2, 768), added
    assert [hit["id"] for hit in by_image["hits"]] == ["png"]
    assert by_image["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert by_image["model"] == SIGLIP_MODEL
    assert (by_vector["hits"][0]["id"], by_vector["model"]) == ("v", None)
    assert page == {"items": [{"id": "png", "metadata": {"label": "cat"}}], "next_after": "png"}
    assert deleted == {"deleted": 1}
    assert (info["name"], info["count"]) == ("pics", 1)
    assert [entry["name"] for entry in listed["collections"]] == ["pics"]
    assert dropped == {"deleted": "pics"}
    assert (gone["code"], gone["field"]) == ("not_found", "input.name")


@pytest.mark.parametrize(
    ("job", "field", "phrase"),
    [
        ({"action": "get_collection"}, "input.name", "Field required"),
        ({"action": "add_items", "name": "c", "items": [{"id": "x"}]}, "input.items[0].image", "input.items[0] needs exactly one of image and vector"),
        ({"action": "add_items", "name": "c", "items": []}, "input.items", "input.items is empty"),
        ({"action": "add_items", "name": "bad name!", "items": [{"id": "x", "vector": [1.0]}]}, "input.name", "name"),
        ({"action": "search_collection", "name": "c", "text": " "}, "input.text", "input.text is empty"),
        ({"action": "list_items", "name": "c", "limit": 0}, "input.limit", "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_collection_refusals_name_the_field(
    fake_runpod: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    job: dict[str, Any],
    field: str,
    phrase: str,
) -> None:
    monkeypatch.setenv("IMGEMBED_COLLECTIONS_DIR", str(tmp_path / "collections"))
    (result,) = run_jobs({"id": "c", "input": job})
    assert set(result) == {"error", "code", "field"}
    assert result["field"] == field
    assert phrase in result["error"]
