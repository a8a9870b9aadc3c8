"""Fake served models for the fast test tier: only the model math is faked.

``Engine(config, families=fake_families())`` serves every configured SAM 2 and SigLIP 2 model with
a fake whose forward passes return at once (infinity's dummy transformer is the idea). Everything
around them is real: the dynamic batchers and device threads, the feature store (image ids, cache,
in-flight de-duplication), the pipelines' CPU steps (decode, resize, normalise, mask
post-processing, tokenising), the api operations, the HTTP server, the v2 protocol, the RunPod
handler and the CLI.

The fake outputs have the real shapes and dtypes and are deterministic functions of the input, so
tests can tell which answer belongs to which request:

- SAM 2 encoder (:meth:`FakeServedSam2.encode_batch`): each feature level is the normalised input
  image average-pooled to the level's grid; feature channel ``c`` of a level with ``C`` channels is
  pooled input channel ``c % 3`` times ``1 + c / C`` (:func:`fake_sam2_features`). The same image
  gives the same features, different images different ones.
- SAM 2 decoder (:meth:`FakeServedSam2.decode_batch`): each prompt's mask ``k`` is the union of
  discs of radius :data:`FAKE_MASK_RADII` ``[k]`` (in the 1024 frame) around its foreground points
  and the rectangle of its box, less discs of half that radius around its background points;
  logits ``+10`` inside, ``-10`` outside, plus ``mask_input`` where ``has_mask_input`` is 1, plus
  a hundredth of the image's first feature channel (so the same prompt on two images gives the
  same masks but different logits) (:func:`fake_decode`). IoU predictions fall with ``k`` and move
  with the image's features.
- SigLIP 2 towers: unit vectors from a fixed seeded projection of the prepared pixels (images) or
  of the token ids (texts); see :func:`fake_image_vector` and :func:`fake_text_vector`.

The loaded-weights objects are the real :class:`~imgembed.models.sam2_loading.LoadedSam2` and
:class:`~imgembed.models.siglip_loading.LoadedSiglip` of the real variant, with no network: their
``model`` is a stand-in that fails loudly if any code path reaches for real weights, and SigLIP's
tokenizer is the real stand-in tokenizer of ``dummy`` weights (no download).

Every fake records the batches it ran (``encode_batches``, ``decode_batches``, ``image_batches``,
``text_batches``) and can be slowed (``*_delay_s``), held (``hold``, a :class:`threading.Event`
that each forward pass waits for) or made to fail (``fail_when``), for back-pressure, deadline,
disconnect and fault tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from servers import in_process_server

from imgembed.engine import Engine
from imgembed.engine.families import FAMILIES
from imgembed.engine.registry import ModelFamily, ServeModel
from imgembed.engine.sam2_served import ServedSam2
from imgembed.engine.served import ServedModel
from imgembed.engine.siglip_served import ServedSiglip
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, Sam2MaskPrediction
from imgembed.models.sam2_loading import LoadedSam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.models.siglip_dummy import build_stand_in_tokenizer
from imgembed.models.siglip_loading import LoadedSiglip
from imgembed.models.siglip_registry import resolve_siglip_variant
from imgembed.pipelines import sam2_embed, siglip_embed
from imgembed.pipelines.sam2_decode import DecodeJob
from imgembed.pipelines.siglip_embed import PreparedSiglipImage
from imgembed.preprocess.image import decode_image
from imgembed.server.app import create_app
from imgembed.settings import BatchingSettings, InputLimits, ModelSpec, ServerConfig

FAKE_WEIGHTS = "fake"
"""``weights_location`` of every fake model (its ``source`` is ``dummy``: it is untrained)."""
SAM2_MODEL = "sam2.1-hiera-tiny"
SIGLIP_MODEL = "siglip2-base-patch16-224"
FAKE_MASK_RADII = (32.0, 64.0, 128.0)
"""Radius, in the 1024 frame, of the disc around a foreground point in fake mask 0, 1 and 2; a
single-mask answer (``multimask_output`` false) is mask 1's."""
SINGLE_MASK_INDEX = 1
FAKE_IOU = (0.9, 0.8, 0.7)
"""Fake IoU predictions of masks 0, 1 and 2 before the image's small share is taken off."""
INSIDE_LOGIT = 10.0
TEXTURE_SCALE = 0.01
"""Share of the image's first feature channel (upsampled to the mask grid) added to the logits."""
_LOW_RES_STRIDE = SAM2_INPUT_SIZE // LOW_RES_MASK_SIZE  # 4
_FINGERPRINT = 64
"""Numbers a SigLIP input is summarised by before the fixed projection."""
_TEXT_ROWS = 1024
"""Rows of the fake token embedding table (ids are taken modulo this)."""
_COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

ServedT = TypeVar("ServedT", bound=ServedModel)


class NoModel:
    """Stands in for a fake model's weights: any use says the path is not faked."""

    def __init__(self, family: str) -> None:
        self._family = family

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(
            f"the fake {self._family} model has no weights ({name!r} was asked for): this code "
            "path runs real model math, which tests/support/fakes.py does not fake"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("__call__")


@dataclass(kw_only=True)
class FakeControls:
    """What a test can do to a fake's forward passes, and what it can read back.

    Attributes:
        delay_s: Seconds each forward pass sleeps (on the model's thread, as a slow model would).
        hold: When set, each forward pass first waits until the event is set (at most 60 s).
        fail_when: Called with each batch's inputs; a true result raises ``RuntimeError`` as a bug
            in a model would.
        batches: Items per forward pass run so far, in order (prompts for the SAM 2 decoder).
    """

    delay_s: float = 0.0
    hold: threading.Event | None = None
    fail_when: Callable[[list[Any]], bool] | None = None
    batches: list[int] = field(default_factory=list)

    def run(self, items: list[Any], size: int) -> None:
        """Applies the controls to one forward pass of ``items`` (``size`` items)."""
        if self.hold is not None and not self.hold.wait(timeout=60):
            raise RuntimeError("a fake model's hold was never released")
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_when is not None and self.fail_when(items):
            raise RuntimeError("simulated model failure")
        self.batches.append(size)


def _rebuild(kind: type[ServedT], served: ServedModel) -> ServedT:
    """``served`` (built by the family's real ``serve``) as the fake subclass ``kind``."""
    values = {f.name: getattr(served, f.name) for f in dataclasses.fields(served) if f.init}
    return kind(**values)


# --- SAM 2 -----------------------------------------------------------------------------------


def _expand_channels(pooled: torch.Tensor, channels: int) -> torch.Tensor:
    """``[B,3,h,w]`` -> ``[B,C,h,w]``: channel ``c`` is input channel ``c % 3`` times ``1 + c/C``."""
    index = torch.arange(channels) % 3
    scale = 1.0 + torch.arange(channels, dtype=torch.float32) / channels
    return pooled.index_select(1, index) * scale.view(1, channels, 1, 1)


def fake_sam2_features(pixel_values: torch.Tensor) -> Sam2Features:
    """The fake encoder's float32 features of ``[B,3,1024,1024]`` inputs.

    Returns:
        ``[B,256,64,64]``, ``[B,32,256,256]`` and ``[B,64,128,128]``: the input pooled to each
        level's grid, channels expanded by :func:`_expand_channels`.
    """
    batch = pixel_values.float()
    return Sam2Features(
        image_embed=_expand_channels(F.avg_pool2d(batch, 16), 256),
        high_res_feats_0=_expand_channels(F.avg_pool2d(batch, 4), 32),
        high_res_feats_1=_expand_channels(F.avg_pool2d(batch, 8), 64),
    )


def _first_point(coords: torch.Tensor, labels: torch.Tensor, label: int) -> torch.Tensor:
    """``[B,2]``: each prompt's first point with ``label`` (NaN where it has none)."""
    matches = labels == label  # [B,N]
    index = matches.int().argmax(dim=1)  # [B], 0 where none
    points = coords[torch.arange(coords.shape[0]), index]  # [B,2]
    return torch.where(matches.any(dim=1, keepdim=True), points, torch.nan)


def fake_decode(
    features: Sam2Features,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    mask_input: torch.Tensor,
    has_mask_input: torch.Tensor,
    *,
    multimask_output: bool = True,
    clamp: bool = True,
) -> Sam2MaskPrediction:
    """The fake decoder: masks drawn from the prompts (see the module's description).

    Args:
        features: Batch 1 or B, any float dtype.
        point_coords: ``[B,N,2]`` ``(x, y)`` in the 1024 frame.
        point_labels: ``[B,N]``: 1 foreground, 0 background, 2 and 3 box corners, -1 padding.
        mask_input: ``[1|B,1,256,256]`` logits added where ``has_mask_input`` is 1.
        has_mask_input: ``[1|B]``.
        multimask_output: Three masks per prompt, or one (mask :data:`SINGLE_MASK_INDEX`).
        clamp: Clamp the logits to ±32, as the real decoder does.

    Returns:
        ``[B,K,256,256]`` float32 logits and ``[B,K]`` float32 IoU predictions, on the CPU.
    """
    coords = point_coords.detach().float().cpu()  # [B,N,2]
    labels = point_labels.detach().cpu()  # [B,N]
    prompts = coords.shape[0]
    centres = (torch.arange(LOW_RES_MASK_SIZE, dtype=torch.float32) + 0.5) * _LOW_RES_STRIDE
    dx = centres.view(1, 1, 1, -1) - coords[..., 0].view(prompts, -1, 1, 1)  # [B,N,1,256]
    dy = centres.view(1, 1, -1, 1) - coords[..., 1].view(prompts, -1, 1, 1)  # [B,N,256,1]
    distance2 = dx * dx + dy * dy  # [B,N,256,256]
    foreground = (labels == 1).view(prompts, -1, 1, 1)
    background = (labels == 0).view(prompts, -1, 1, 1)
    top_left = _first_point(coords, labels, 2)  # [B,2]
    bottom_right = _first_point(coords, labels, 3)
    in_x = (centres.view(1, 1, -1) >= top_left[:, 0].view(-1, 1, 1)) & (
        centres.view(1, 1, -1) <= bottom_right[:, 0].view(-1, 1, 1)
    )  # [B,1,256]; NaN corners compare false
    in_y = (centres.view(1, -1, 1) >= top_left[:, 1].view(-1, 1, 1)) & (
        centres.view(1, -1, 1) <= bottom_right[:, 1].view(-1, 1, 1)
    )  # [B,256,1]
    box = in_x & in_y  # [B,256,256]
    chosen = range(3) if multimask_output else (SINGLE_MASK_INDEX,)
    masks = []
    for k in chosen:
        radius2 = FAKE_MASK_RADII[k] ** 2
        inside = ((distance2 <= radius2) & foreground).any(dim=1) | box
        carved = ((distance2 <= radius2 / 4) & background).any(dim=1)
        masks.append(inside & ~carved)
    inside_masks = torch.stack(masks, dim=1)  # [B,K,256,256]
    logits = torch.where(inside_masks, INSIDE_LOGIT, -INSIDE_LOGIT)
    extra = mask_input.detach().float().cpu() * has_mask_input.detach().float().cpu().view(
        -1, 1, 1, 1
    )
    logits = logits + extra  # [1|B,1,256,256] broadcasts over prompts and masks
    # A trace of the image: equal prompts on different images give different logits (same masks).
    texture = features.image_embed.detach().float().cpu()[:, :1]  # [1|B,1,64,64]
    logits = logits + TEXTURE_SCALE * F.interpolate(texture, scale_factor=4.0, mode="nearest")
    if clamp:
        logits = logits.clamp(-32.0, 32.0)
    level = torch.sigmoid(features.image_embed.detach().float().cpu().mean(dim=(1, 2, 3)))  # [1|B]
    iou = torch.tensor([FAKE_IOU[k] for k in chosen]).view(1, -1) - 0.05 * level.view(-1, 1)
    return Sam2MaskPrediction(masks=logits, iou_predictions=iou.expand(prompts, -1).contiguous())


@dataclass(kw_only=True)
class FakeServedSam2(ServedSam2):
    """A SAM 2 model whose encoder and decoder are :func:`fake_sam2_features` and
    :func:`fake_decode`; batchers, threads and the feature store are the real ones.

    Attributes:
        encoder: Controls and record of the encoder's forward passes (images per batch).
        prompt_decoder: Controls and record of the decoder's passes (prompts per batch).
    """

    encoder: FakeControls = field(default_factory=FakeControls, repr=False)
    prompt_decoder: FakeControls = field(default_factory=FakeControls, repr=False)

    def encode_batch(self, pixel_values: list[torch.Tensor]) -> list[Sam2Features]:
        self.encoder.run(pixel_values, len(pixel_values))
        dtype = _COMPUTE_DTYPES[self.placement.compute_dtype]
        features = fake_sam2_features(torch.stack(pixel_values)).to(dtype, self.placement.device)
        return [features[index] for index in range(len(pixel_values))]

    def decode_batch(self, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        self.prompt_decoder.run(jobs, sum(job.prompts for job in jobs))
        return [
            fake_decode(
                job.features,
                job.point_coords,
                job.point_labels,
                job.mask_input,
                job.has_mask_input,
                multimask_output=job.multimask_output,
                clamp=job.clamp,
            )
            for job in jobs
        ]


def load_fake_sam2(spec: ModelSpec, device: torch.device) -> LoadedSam2:
    """The loaded-weights object of a fake SAM 2 model: the real variant, no weights."""
    return LoadedSam2(
        model=NoModel("SAM 2"),  # type: ignore[arg-type]
        variant=resolve_variant(spec.name),
        source="dummy",
        weights_location=FAKE_WEIGHTS,
        untrained=True,
    )


# --- SigLIP 2 --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _projection(rows: int, dimension: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded ``[rows,D]`` matrix and ``[D]`` bias."""
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, dimension, generator=generator),
        torch.randn(dimension, generator=generator),
    )


def _unit(vector: torch.Tensor) -> np.ndarray:
    return (vector / vector.norm()).to(torch.float32).numpy()


def fake_image_vector(prepared: PreparedSiglipImage, dimension: int) -> np.ndarray:
    """``[D]`` float32 unit vector of one prepared image: the means of 64 runs of its (valid)
    pixel values, projected by a fixed seeded matrix."""
    values = prepared.pixel_values.float()
    if prepared.attention_mask is not None:
        values = values[prepared.attention_mask.bool()]  # NaFlex: the image's patches only
    fingerprint = torch.stack(
        [chunk.mean() for chunk in values.flatten().tensor_split(_FINGERPRINT)]
    )
    matrix, bias = _projection(_FINGERPRINT, dimension, 1)
    return _unit(fingerprint @ matrix + 0.1 * bias)


def fake_text_vector(input_ids: torch.Tensor, dimension: int, pad_id: int = 0) -> np.ndarray:
    """``[D]`` float32 unit vector of one text's ``[L]`` token ids: rows of a fixed seeded table,
    weighted by position, summed over the tokens that are not padding."""
    table, bias = _projection(_TEXT_ROWS, dimension, 2)
    ids = input_ids.detach().cpu().long()
    positions = torch.arange(ids.shape[0], dtype=torch.float32)
    weights = (1.0 + 0.1 * positions) * (ids != pad_id).float()  # [L]
    return _unit(weights @ table[ids % _TEXT_ROWS] + 0.1 * bias)


@dataclass(kw_only=True)
class FakeServedSiglip(ServedSiglip):
    """A SigLIP 2 model whose towers are :func:`fake_image_vector` and :func:`fake_text_vector`;
    batchers, image preparation and tokenising are the real ones.

    Attributes:
        image_tower: Controls and record of the image batches (images per batch).
        text_tower: Controls and record of the text batches (texts per batch).
    """

    image_tower: FakeControls = field(default_factory=FakeControls, repr=False)
    text_tower: FakeControls = field(default_factory=FakeControls, repr=False)

    def embed_image_batch(self, prepared: list[PreparedSiglipImage]) -> list[np.ndarray]:
        self.image_tower.run(prepared, len(prepared))
        return [fake_image_vector(item, self.loaded.embedding_dim) for item in prepared]

    def embed_text_batch(self, input_ids: list[torch.Tensor]) -> list[np.ndarray]:
        self.text_tower.run(input_ids, len(input_ids))
        pad_id = self.loaded.tokenizer.pad_token_id
        return [fake_text_vector(ids, self.loaded.embedding_dim, pad_id) for ids in input_ids]


def load_fake_siglip(spec: ModelSpec, device: torch.device) -> LoadedSiglip:
    """The loaded-weights object of a fake SigLIP 2 model: the real variant, its image settings
    and the real stand-in tokenizer of ``dummy`` weights; no weights."""
    variant = resolve_siglip_variant(spec.name)
    return LoadedSiglip(
        model=NoModel("SigLIP 2"),  # type: ignore[arg-type]
        tokenizer=build_stand_in_tokenizer(variant.vocab_size),
        variant=variant,
        image_processing=variant.image_processing(),
        source="dummy",
        weights_location=FAKE_WEIGHTS,
        untrained=True,
    )


# --- Families, engines and configs ---------------------------------------------------------------


def _fake_serve(real: ServeModel | None, kind: type[ServedModel]) -> ServeModel:
    """The family's own ``serve`` (names, feature store, threads), its result rebuilt as ``kind``."""
    assert real is not None

    def serve(loaded: Any, spec: ModelSpec, placement: Any, seconds: float, core: Any) -> Any:
        return _rebuild(kind, real(loaded, spec, placement, seconds, core))

    return serve


_FAKES: dict[str, tuple[Callable[[ModelSpec, torch.device], Any], type[ServedModel]]] = {
    "sam2": (load_fake_sam2, FakeServedSam2),
    "siglip": (load_fake_siglip, FakeServedSiglip),
}


def fake_families(families: Sequence[ModelFamily] = FAMILIES) -> tuple[ModelFamily, ...]:
    """The registered families with SAM 2's and SigLIP 2's model math faked.

    Pass the result as ``Engine(config, families=fake_families())``.
    """
    return tuple(
        dataclasses.replace(
            family,
            load_weights=_FAKES[family.name][0],
            serve=_fake_serve(family.serve, _FAKES[family.name][1]),
        )
        if family.name in _FAKES
        else family
        for family in families
    )


def fake_engine(config: ServerConfig) -> Engine:
    """An engine serving ``config`` with fake models."""
    return Engine(config, families=fake_families())


class FakeEngine(Engine):
    """:class:`~imgembed.engine.Engine` with fake models, for code that builds its own engine
    (the CLI, the RunPod handler): ``monkeypatch.setattr(module, "Engine", FakeEngine)``."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        kwargs.setdefault("families", fake_families())
        super().__init__(config, **kwargs)


def fake_spec(name: str = SAM2_MODEL, **changes: Any) -> ModelSpec:
    """A model spec for a fake: ``dummy`` weights, no warm-up, CPU, unless ``changes`` say."""
    return ModelSpec(name, **{"weights": "dummy", "warmup": False, "device": "cpu", **changes})


def fake_config(
    *specs: ModelSpec,
    batching: BatchingSettings | None = None,
    **changes: Any,
) -> ServerConfig:
    """A server config of fake models: SAM 2.1 tiny and SigLIP 2 base unless ``specs`` name others.

    Args:
        specs: The models; by default :data:`SAM2_MODEL` then :data:`SIGLIP_MODEL`.
        batching: Batching of every model's (encoder's) batcher, when given.
        changes: Other :class:`~imgembed.settings.ServerConfig` fields.
    """
    models = specs or (fake_spec(SAM2_MODEL), fake_spec(SIGLIP_MODEL))
    if batching is not None:
        models = tuple(dataclasses.replace(spec, batching=batching) for spec in models)
    return ServerConfig(models=models, **changes)


def served_fake(engine: Engine, name: str | None = None) -> Any:
    """The engine's fake model called ``name`` (the default model when ``None``)."""
    served = engine.resolve_model(name)
    assert isinstance(served, FakeServedSam2 | FakeServedSiglip), type(served)
    return served


@dataclass(frozen=True)
class FakeServer:
    """An in-process HTTP server over a fake engine.

    Attributes:
        url: Its base URL on loopback.
        engine: The engine it serves (its fakes' controls and records are reachable here).
    """

    url: str
    engine: Engine

    def model(self, name: str | None = None) -> Any:
        """The fake model called ``name`` (the default model when ``None``)."""
        return served_fake(self.engine, name)


@contextlib.contextmanager
def fake_server(config: ServerConfig) -> Iterator[FakeServer]:
    """Serves ``config`` with fake models over real HTTP (uvicorn on a thread) until the block
    ends."""
    engine = fake_engine(config)
    with in_process_server(create_app(config, engine=engine)) as url:
        yield FakeServer(url, engine)


# --- What the fakes answer, computed the way the service computes its input --------------------


def expected_sam2_arrays(
    image: bytes,
    *,
    resize_mode: str = "stretch",
    dtype: str = "float32",
    include_high_res: bool = True,
) -> dict[str, np.ndarray]:
    """The ``[C,H,W]`` arrays a fake SAM 2 model's embed answers for an encoded image."""
    decoded = decode_image(image, InputLimits())
    options = sam2_embed.Sam2EmbedOptions(
        dtype=dtype,  # type: ignore[arg-type]
        include_high_res=include_high_res,
        resize_mode=resize_mode,  # type: ignore[arg-type]
    )
    prepared = sam2_embed.prepare(decoded, options)
    features = fake_sam2_features(prepared.pixel_values[None])
    return sam2_embed.finish(features, prepared.mapping, options).arrays


def expected_siglip_image_vector(image: bytes, served: FakeServedSiglip) -> np.ndarray:
    """The vector a fake SigLIP 2 model answers for an encoded image (default options)."""
    decoded = decode_image(image, InputLimits())
    prepared = siglip_embed.prepare_image(
        decoded, served.loaded.image_processing, siglip_embed.SiglipEmbedOptions()
    )
    return fake_image_vector(prepared, served.loaded.embedding_dim)


def expected_siglip_text_vector(text: str, served: FakeServedSiglip) -> np.ndarray:
    """The vector a fake SigLIP 2 model answers for a text."""
    loaded = served.loaded
    (ids,) = siglip_embed.prepare_texts(loaded.tokenizer, [text], max_length=loaded.text_max_length)
    return fake_text_vector(ids, loaded.embedding_dim, loaded.tokenizer.pad_token_id)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Polls ``condition`` until it holds; fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)
