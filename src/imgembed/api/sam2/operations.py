"""The SAM 2 operations every adapter runs: embed, segment, segment everything."""

from __future__ import annotations

from imgembed.api.operation import BinaryReply, Context, Operation, Reply
from imgembed.api.parsing import image_source
from imgembed.api.sam2.embed import (
    Sam2EmbedRequest,
    sam2_embed_binary,
    sam2_embed_inputs,
    sam2_embed_json,
)
from imgembed.api.sam2.everything import Sam2EverythingRequest, sam2_everything_json
from imgembed.api.sam2.segment import Sam2SegmentRequest, segment_objects
from imgembed.api.sam2.segment_response import sam2_segment_json
from imgembed.codecs import BINARY_HEADER_LENGTH, BINARY_MEDIA_TYPE
from imgembed.engine import (
    Sam2EmbedResult,
    Sam2EverythingResult,
    Sam2SegmentResult,
    Sam2Service,
    ServedModel,
)
from imgembed.errors import InvalidInputError
from imgembed.types import ImageBytes, ImageInput

FAMILY = "sam2"


def _upload(context: Context) -> tuple[ImageBytes | None, str]:
    """The uploaded image, if any, and its form field."""
    if not context.uploads:
        return None, "file"
    return context.uploads[0], context.uploads[0].field or "file"


def _image(
    request: Sam2SegmentRequest | Sam2EverythingRequest, context: Context
) -> ImageInput | None:
    """The one image a request names (``None`` for an ``image_id``), from its fields or upload."""
    upload, upload_field = _upload(context)
    return image_source(
        request,
        upload=upload.data if upload is not None else None,
        upload_field=upload_field,
        prefix=context.field_prefix,
    )


async def _embed(
    request: Sam2EmbedRequest, served: ServedModel | None, context: Context
) -> Sam2EmbedResult:
    assert served is not None
    if request.encoding == "binary" and context.adapter != "http":
        raise InvalidInputError(
            f"{context.field('encoding')} 'binary' is only available over HTTP; "
            f"{context.adapter} returns JSON, so use npz_base64 or npz_base64_uncompressed",
            field=context.field("encoding"),
        )
    upload, upload_field = _upload(context)
    image, options = sam2_embed_inputs(
        request,
        default_resize_mode=context.engine.config.default_resize_mode,
        upload=upload.data if upload is not None else None,
        upload_field=upload_field,
        prefix=context.field_prefix,
    )
    return await context.engine.service(Sam2Service).embed(
        image,
        image_id=request.image_id,
        model=served.name,
        options=options,
        field_prefix=context.field_prefix,
    )


def _embed_reply(request: Sam2EmbedRequest, result: Sam2EmbedResult) -> Reply:
    if request.encoding == "binary":
        content, header_length = sam2_embed_binary(result)
        return BinaryReply(content, BINARY_MEDIA_TYPE, {BINARY_HEADER_LENGTH: str(header_length)})
    return sam2_embed_json(result, request.encoding)


EMBED: Operation[Sam2EmbedRequest, Sam2EmbedResult] = Operation(
    "sam2.embed", FAMILY, Sam2EmbedRequest, _embed, _embed_reply
)
"""Image features (the seed RunPod worker's ``embed_image``)."""


async def _segment(
    request: Sam2SegmentRequest, served: ServedModel | None, context: Context
) -> Sam2SegmentResult:
    assert served is not None
    image = _image(request, context)
    objects = segment_objects(request, context.engine.config.limits, prefix=context.field_prefix)
    return await context.engine.service(Sam2Service).segment(
        image,
        objects,
        image_id=request.image_id,
        model=served.name,
        resize_mode=request.resize_mode,
        options=request.options(),
        field_prefix=context.field_prefix,
    )


SEGMENT: Operation[Sam2SegmentRequest, Sam2SegmentResult] = Operation(
    "sam2.segment",
    FAMILY,
    Sam2SegmentRequest,
    _segment,
    lambda request, result: sam2_segment_json(
        result, request.mask_format, with_logits=request.return_low_res_logits
    ),
)
"""Masks from points, boxes and earlier masks."""


async def _segment_everything(
    request: Sam2EverythingRequest, served: ServedModel | None, context: Context
) -> Sam2EverythingResult:
    assert served is not None
    image = _image(request, context)
    assert image is not None  # the request has no image_id field
    params = request.params(prefix=context.field_prefix)
    return await context.engine.service(Sam2Service).segment_everything(
        image, model=served.name, params=params
    )


SEGMENT_EVERYTHING: Operation[Sam2EverythingRequest, Sam2EverythingResult] = Operation(
    "sam2.segment_everything",
    FAMILY,
    Sam2EverythingRequest,
    _segment_everything,
    lambda request, result: sam2_everything_json(result, request.output_mode),
)
"""Every object in the image: Meta's automatic mask generator."""
