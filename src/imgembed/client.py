"""A Python client for the imgembed HTTP API that returns NumPy arrays.

    from imgembed.client import ImgembedClient

    with ImgembedClient("http://127.0.0.1:8000") as client:
        features = client.sam2_embed("cat.jpg", dtype="float16")
        features.image_embed.shape       # (256, 64, 64)
        features.to_input_frame([[10, 20]])  # original pixels -> 1024-frame pixels

Files and bytes are uploaded as multipart (no base64 overhead); ``http(s)`` strings are sent as
``input_image_url``; arrays and Pillow images are sent as PNG. Responses use the ``binary``
encoding by default (no base64), and ``bfloat16`` features come back as float32 values.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from imgembed.codecs import BINARY_HEADER_LENGTH, decode_binary, decode_npz, restore_dtype

ClientEncoding = Literal["binary", "npz_base64", "npz_base64_uncompressed"]
_NPZ_TO_FEATURE = {"embedding": "image_embed"}


class ImgembedClientError(Exception):
    """The server refused or failed a request.

    Attributes:
        status_code: HTTP status.
        code: The server's error code (``invalid_image``, ``model_not_found``, ...).
        field: Request field at fault, if any.
        request_id: Id to quote when reporting a server error.
    """

    def __init__(
        self, status_code: int, code: str, message: str, field: str | None, request_id: str | None
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id


@dataclass(frozen=True)
class Sam2Embedding:
    """SAM 2 features of one image, as the server computed them.

    Attributes:
        image_embed: ``[256,64,64]`` float array (float32 for bfloat16 responses).
        high_res_feats_0: ``[32,256,256]``, or ``None`` when not requested.
        high_res_feats_1: ``[64,128,128]``, or ``None`` when not requested.
        meta: The server's metadata (``orig_size``, ``pad``, ``scale``, ``resize_mode``, ...).
        model: Model id that computed the features.
        device: ``cpu`` or ``cuda``.
        dtype: Dtype the server sent.
        untrained: Whether the server ran untrained (``dummy``) weights.
        compute_dtype: The precision the server computed in (``float32``, ``bfloat16`` or
            ``float16``): float32 features computed in bfloat16 carry bfloat16's precision;
            ``None`` from a server that does not report it.
    """

    image_embed: np.ndarray
    high_res_feats_0: np.ndarray | None
    high_res_feats_1: np.ndarray | None
    meta: dict[str, Any]
    model: str
    device: str
    dtype: str
    untrained: bool
    compute_dtype: str | None = None

    def to_input_frame(self, points_xy: Any) -> np.ndarray:
        """Maps ``[N,2]`` XY points from original-image pixels into the 1024 frame (same shape)."""
        points = np.asarray(points_xy, dtype=np.float64)
        scale = np.array([self.meta["scale"]["w"], self.meta["scale"]["h"]])
        offset = np.array([self.meta["pad"][1], self.meta["pad"][0]])
        return points * scale + offset


@dataclass(frozen=True)
class Sam2Segmentation:
    """Masks for each object of a segment request (O objects, K masks each).

    Attributes:
        masks: ``[O,K,H,W]`` bool at the original image size.
        scores: ``[O,K]`` float32 predicted IoU.
        boxes: ``[O,K,4]`` float32 XYXY in continuous original-image pixel coordinates.
        areas: ``[O,K]`` int64 pixel counts.
        low_res_logits: ``[O,K,256,256]`` float32, to pass back as ``mask_input``; ``None`` when
            not requested.
        image_id: Names the image's cached features for the next request.
        cache_hit: The server skipped the encoder.
        model: Model id that decoded the masks.
        untrained: Whether the server ran untrained (``dummy``) weights.
        compute_dtype: The precision the server computed in; ``None`` from a server that does not
            report it.
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    low_res_logits: np.ndarray | None
    image_id: str
    cache_hit: bool
    model: str
    untrained: bool
    compute_dtype: str | None = None

    def best_masks(self) -> np.ndarray:
        """``[O,H,W]`` bool: each object's mask with the highest predicted IoU."""
        best = self.scores.argmax(axis=1)  # [O]
        return self.masks[np.arange(len(best)), best]


class ImgembedClient:
    """Synchronous client for one imgembed server."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 300.0,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout_s, headers=headers, transport=transport
        )

    def __enter__(self) -> ImgembedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def health(self) -> dict[str, Any]:
        """``GET /health`` (raises when the server is not ready)."""
        return self._json(self._http.get("/health"))

    def models(self) -> list[dict[str, Any]]:
        """The served models, as ``GET /v1/models`` lists them."""
        return self._json(self._http.get("/v1/models"))["data"]

    def sam2_embed(
        self,
        image: str | Path | bytes | np.ndarray | Any,
        *,
        model: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        include_high_res: bool = True,
        resize_mode: Literal["stretch", "letterbox"] | None = None,
        encoding: ClientEncoding = "binary",
    ) -> Sam2Embedding:
        """Computes SAM 2 features of one image on the server.

        Args:
            image: A file path, encoded image bytes, an ``http(s)`` URL, a ``[H,W,3]`` uint8 RGB
                array, or a Pillow image.
            model: Model name or alias; the server's default when ``None``.
            dtype: Feature dtype to transfer.
            include_high_res: Also fetch the two high-resolution levels.
            resize_mode: ``stretch`` or ``letterbox``; the server's default when ``None``.
            encoding: Transfer encoding; ``binary`` is the most compact and fastest.

        Returns:
            The features and their metadata.

        Raises:
            ImgembedClientError: The server refused the request; carries its code and field.
        """
        options: dict[str, Any] = {
            "dtype": dtype,
            "include_high_res": include_high_res,
            "encoding": encoding,
        }
        if model is not None:
            options["model"] = model
        if resize_mode is not None:
            options["resize_mode"] = resize_mode
        if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
            response = self._http.post("/v1/sam2/embed", json={**options, "input_image_url": image})
        else:
            form = {
                name: str(value).lower() if isinstance(value, bool) else str(value)
                for name, value in options.items()
            }
            files = {"file": ("image", _image_bytes(image), "application/octet-stream")}
            response = self._http.post("/v1/sam2/embed", data=form, files=files)
        if response.status_code != 200:
            self._raise(response)
        if encoding == "binary":
            header, arrays = decode_binary(
                response.content, int(response.headers[BINARY_HEADER_LENGTH])
            )
        else:
            header = response.json()
            raw = decode_npz(base64.b64decode(header["data"]))
            arrays = {
                _NPZ_TO_FEATURE.get(name, name): restore_dtype(array, header["dtype"])
                for name, array in raw.items()
            }
        return Sam2Embedding(
            image_embed=arrays["image_embed"],
            high_res_feats_0=arrays.get("high_res_feats_0"),
            high_res_feats_1=arrays.get("high_res_feats_1"),
            meta=header["meta"],
            model=header["model"],
            device=header["device"],
            dtype=header["dtype"],
            untrained=bool(header.get("weights", {}).get("untrained", False)),
            compute_dtype=header.get("compute_dtype"),
        )

    def sam2_segment(
        self,
        image: str | Path | bytes | np.ndarray | Any | None = None,
        *,
        image_id: str | None = None,
        points: Any = None,
        point_labels: Any = None,
        box: Any = None,
        boxes: Any = None,
        mask_input: np.ndarray | None = None,
        objects: list[dict[str, Any]] | None = None,
        multimask_output: bool = True,
        return_low_res_logits: bool = True,
        model: str | None = None,
    ) -> Sam2Segmentation:
        """Segments objects from prompts on the server (masks travel as one compressed npz).

        Args:
            image: The image as for :meth:`sam2_embed`; ``None`` when ``image_id`` is given.
            image_id: ``image_id`` of an earlier response: the server skips the encoder.
            points: ``[N,2]`` XY in original-image pixels.
            point_labels: ``[N]`` labels, 1 foreground, 0 background (all 1 when ``None``).
            box: ``[4]`` XYXY, one object.
            boxes: ``[K,4]`` XYXY, one object each (each with ``points``).
            mask_input: ``[256,256]`` low-resolution logits of an earlier round.
            objects: Objects with their own prompts (``{"points": ..., "box": ...}``), instead of
                the arguments above.
            multimask_output: Three masks per object, or one.
            return_low_res_logits: Also fetch the logits for a refinement round.
            model: Model name or alias; the server's default when ``None``.

        Raises:
            ImgembedClientError: The server refused the request; carries its code and field.
        """
        prompts: dict[str, Any] = {
            "points": points,
            "point_labels": point_labels,
            "box": box,
            "boxes": boxes,
            "objects": objects,
            "model": model,
            "image_id": image_id,
        }
        body = {key: _jsonable(value) for key, value in prompts.items() if value is not None}
        if mask_input is not None:
            raw = np.asarray(mask_input, dtype="<f4").tobytes()
            body["mask_input"] = base64.b64encode(raw).decode("ascii")
        body.update(
            multimask_output=multimask_output,
            return_low_res_logits=return_low_res_logits,
            mask_format="npz",
        )
        if image is None:
            response = self._http.post("/v1/sam2/segment", json=body)
        elif isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
            response = self._http.post("/v1/sam2/segment", json={**body, "input_image_url": image})
        else:
            form = {name: json.dumps(value) for name, value in body.items()}
            files = {"file": ("image", _image_bytes(image), "application/octet-stream")}
            response = self._http.post("/v1/sam2/segment", data=form, files=files)
        result = self._json(response)
        arrays = decode_npz(base64.b64decode(result["masks_npz"]))
        return Sam2Segmentation(
            masks=arrays["masks"].astype(bool),
            scores=arrays["scores"],
            boxes=arrays["boxes"],
            areas=arrays["areas"],
            low_res_logits=arrays.get("low_res_logits"),
            image_id=result["image_id"],
            cache_hit=result["cache_hit"],
            model=result["model"],
            untrained=bool(result["weights"]["untrained"]),
            compute_dtype=result.get("compute_dtype"),
        )

    def sam2_segment_everything(
        self,
        image: str | Path | bytes | np.ndarray | Any,
        *,
        model: str | None = None,
        **settings: Any,
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Every object in an image (the automatic mask generator) on the server.

        Args:
            image: The image as for :meth:`sam2_embed`.
            model: Model name or alias; the server's default when ``None``.
            **settings: Generator settings with Meta's names (``points_per_side=32``,
                ``pred_iou_thresh=0.8``, ``crop_n_layers=0``, ...).

        Returns:
            ``[N,H,W]`` bool masks and the N records (``area``, ``bbox`` XYWH,
            ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``), in the same
            order.

        Raises:
            ImgembedClientError: The server refused the request; carries its code and field.
        """
        body: dict[str, Any] = {**settings, "output_mode": "binary_mask"}
        if model is not None:
            body["model"] = model
        route = "/v1/sam2/segment-everything"
        if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
            response = self._http.post(route, json={**body, "input_image_url": image})
        else:
            form = {name: json.dumps(value) for name, value in body.items()}
            files = {"file": ("image", _image_bytes(image), "application/octet-stream")}
            response = self._http.post(route, data=form, files=files)
        result = self._json(response)
        masks = decode_npz(base64.b64decode(result["masks_npz"]))["masks"].astype(bool)
        return masks, result["masks"]

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code != 200:
            self._raise(response)
        return response.json()

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        try:
            error = response.json()["error"]
        except (json.JSONDecodeError, KeyError, TypeError):
            error = {"code": "http_error", "message": response.text[:500]}
        raise ImgembedClientError(
            response.status_code,
            error.get("code", "http_error"),
            error.get("message", ""),
            error.get("field"),
            error.get("request_id") or response.headers.get("x-request-id"),
        )


def _image_bytes(image: str | Path | bytes | np.ndarray | Any) -> bytes:
    """Encoded image bytes for an upload: files are read, arrays and Pillow images become PNG."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    from PIL import Image

    pil_image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    pil_image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jsonable(value: Any) -> Any:
    """NumPy arrays and scalars as JSON lists and numbers."""
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value
