"""Request validation shared by HTTP and RunPod: each problem names its field."""

from __future__ import annotations

import pytest

from imgembed.api.parsing import parse_request
from imgembed.api.sam2.embed import Sam2EmbedRequest, sam2_embed_inputs
from imgembed.errors import InvalidInputError
from imgembed.server.errors import http_status
from imgembed.types import ImageBase64, ImageBytes, ImageURL


def inputs(payload: dict, **kwargs: object) -> tuple:
    request = parse_request(Sam2EmbedRequest, payload)
    assert isinstance(request, Sam2EmbedRequest)
    return sam2_embed_inputs(request, default_resize_mode="stretch", **kwargs)  # type: ignore[arg-type]


def test_seed_event_input_is_accepted() -> None:
    image, options = inputs(
        {
            "action": "embed_image",
            "image_b64": "aGk=",
            "dtype": "float16",
            "resize_longer_side": 1024,
        }
    )
    assert image == ImageBase64("aGk=", field="image_b64")
    assert options.dtype == "float16"
    assert options.include_high_res
    assert options.resize_mode == "stretch"


def test_url_and_upload_sources() -> None:
    assert inputs({"input_image_url": "http://x/y.jpg"})[0] == ImageURL("http://x/y.jpg")
    assert inputs({}, upload=b"abc")[0] == ImageBytes(b"abc", field="file")


@pytest.mark.parametrize(
    ("payload", "field", "phrase"),
    [
        ({}, "image_b64", "no image given"),
        ({"image_b64": "a", "input_image_url": "http://x"}, "image_b64", "both given"),
        ({"image_b64": "a", "resize_longer_side": 512}, "resize_longer_side", "must be 1024"),
        ({"image_b64": "a", "dtype": "float64"}, "dtype", "float32"),
        ({"image_b64": "a", "encoding": "zip"}, "encoding", "npz_base64"),
        ({"image_b64": "a", "resize_mode": "crop"}, "resize_mode", "stretch"),
        ({"image_b64": "a", "action": "segment_all"}, "action", "embed_image"),
        ({"image_b64": 12}, "image_b64", "valid string"),
        ({"image_b64": "a", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_problems_name_their_field(payload: dict, field: str, phrase: str) -> None:
    with pytest.raises(InvalidInputError, match=phrase) as caught:
        inputs(payload)
    assert caught.value.field == field
    assert http_status(caught.value) == 400


def test_upload_and_json_image_together_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="both given"):
        inputs({"image_b64": "a"}, upload=b"x")


def test_non_object_body_is_refused_with_prefix() -> None:
    with pytest.raises(InvalidInputError, match="input must be a JSON object") as caught:
        parse_request(Sam2EmbedRequest, ["a"], prefix="input.")
    assert caught.value.field == "input"
