"""The released SigLIP 2 checkpoints, as data.

Each :class:`SiglipVariant` names one checkpoint Google released on the Hugging Face Hub in February
2025 and the numbers needed to build its architecture without downloading anything (``dummy``
weights build exactly this architecture).

Two families:

- **FixRes** (``model_type: siglip``, loaded as ``transformers.SiglipModel``): a square input of a
  fixed side, ``google/siglip2-{size}-patch{14,16,32}-{224,256,384,512}``. Only the combinations
  Google released exist: base /16 at 224, 256, 384 and 512 and base /32 at 256; large /16 at 256,
  384 and 512; so400m /14 at 224 and 384 and so400m /16 at 256, 384 and 512; giant-opt /16 at 256
  and 384. (There is no ``large-patch16-224`` nor a giant at 224 or 512.)
- **NaFlex** (``model_type: siglip2``, loaded as ``transformers.Siglip2Model``): any aspect ratio,
  resized to fit at most ``max_num_patches`` patches of 16 pixels; ``google/siglip2-base-patch16-naflex``
  and ``google/siglip2-so400m-patch16-naflex``.

Where the numbers come from (no machine here reaches the hub, so the released ``config.json`` files
themselves were not read):

- Tower shapes (hidden size, MLP size, layers, heads) per size: ``MODEL_CONFIGS`` of
  ``transformers``' ``models/siglip/convert_siglip_to_hf.py``, the script that produced the FixRes
  repositories, and ``COMMON_CONFIG_PARAMS`` of ``models/siglip2/convert_siglip2_to_hf.py`` for
  NaFlex; they agree with the SigLIP 2 paper's B/L/So400m/g sizes.
- giant-opt is not symmetric: its text tower is the so400m one (1152 wide, 27 layers) with a
  projection to the vision width, 1536 (``get_text_and_vision_vit_variants`` and
  ``projection_size`` in the same script). Every other variant has equal towers and no projection.
- Vocabulary 256000 (Gemma tokenizer) for every SigLIP 2 model; 64 text positions (the
  ``SiglipTextConfig`` default the scripts keep); NaFlex position grid 16x16 (``num_patches=256``)
  and ``max_num_patches=256`` by default.
- Preprocessing: mean and std 0.5, rescale 1/255, and **bilinear** resampling. The conversion
  scripts build SigLIP 2 processors with ``resample=2`` (bilinear) for FixRes and
  ``Image.Resampling.BILINEAR`` for NaFlex, whereas SigLIP 1 used bicubic. When a checkpoint
  brings its own ``preprocessor_config.json``, :func:`imgembed.models.siglip_loading.load_siglip`
  reads the filter from it instead; these defaults serve ``dummy`` weights and folders without one.

Not verified against the released files: the exact ``config.json`` of each hub repository (for
example that giant-opt's stores ``projection_size: 1536``, which the conversion script sets). A
checkpoint whose architecture differs from this table is refused with a message naming what it
does look like, so a wrong number here shows up as a clear load error, never as wrong embeddings.

The logic over this table lives in :mod:`imgembed.models.siglip_registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SiglipFamily = Literal["fixres", "naflex"]
SiglipSize = Literal["base", "large", "so400m", "giant-opt"]
Resample = Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]
"""Pillow resampling filters, by name; ``transformers`` configs store them as Pillow's numbers."""

SIGLIP2_VOCAB_SIZE = 256_000
TEXT_MAX_LENGTH = 64
"""Tokens per text: SigLIP 2 was trained on texts padded (or cut) to exactly 64 tokens."""
NAFLEX_POSITION_GRID_PATCHES = 256
"""Learned NaFlex position embeddings form a 16x16 grid, interpolated to each image's patch grid."""
DEFAULT_NAFLEX_MAX_PATCHES = 256
DEFAULT_SIGLIP_MODEL = "siglip2-base-patch16-224"
"""The smallest, fastest FixRes model; the seed worker's ``siglip2-large-patch16-512`` is one flag
away."""


@dataclass(frozen=True)
class TowerArchitecture:
    """Shape of one transformer tower (vision or text).

    Attributes:
        hidden_size: Width of the residual stream.
        intermediate_size: Width of the MLP.
        num_hidden_layers: Transformer blocks.
        num_attention_heads: Attention heads per block.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int


@dataclass(frozen=True)
class ImageProcessing:
    """How images become model input: what the checkpoint's own image processor does.

    Attributes:
        family: ``fixres`` (squash to ``image_size`` x ``image_size``) or ``naflex`` (keep the
            aspect ratio, fit ``max_num_patches`` patches of ``patch_size``).
        image_size: Side of the square FixRes input; ``None`` for NaFlex.
        patch_size: Side of a patch in pixels.
        max_num_patches: NaFlex patch budget per image; ``None`` for FixRes.
        resample: Pillow filter of the resize.
        rescale_factor: Factor taking 8-bit values to [0, 1].
        image_mean: Per-channel mean subtracted after rescaling.
        image_std: Per-channel divisor after subtracting the mean.
    """

    family: SiglipFamily
    image_size: int | None
    patch_size: int
    max_num_patches: int | None
    resample: Resample = "bilinear"
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SiglipVariant:
    """One released SigLIP 2 model (or, in tests, a small model of the same design).

    Attributes:
        name: Canonical name, the hub id without ``google/``: ``siglip2-base-patch16-224``.
        hub_id: Hugging Face Hub repository holding the released weights and tokenizer.
        family: ``fixres`` (``SiglipModel``) or ``naflex`` (``Siglip2Model``).
        size: Model size.
        patch_size: Side of a patch in pixels.
        image_size: Side of the square FixRes input; ``None`` for NaFlex.
        vision: Vision tower shape.
        text: Text tower shape.
        embedding_dim: Length of image and text embeddings (the vision width; the text tower
            projects to it).
        vocab_size: Rows of the token embedding.
        text_max_length: Text positions, the length every text is padded or cut to.
        num_position_patches: NaFlex only: patches in the learned position grid; ``None`` for
            FixRes, whose grid is ``(image_size / patch_size)**2``.
        default_max_num_patches: NaFlex only: patch budget per image unless asked otherwise.
        resample: Resize filter of the released processor.
    """

    name: str
    hub_id: str
    family: SiglipFamily
    size: SiglipSize
    patch_size: int
    image_size: int | None
    vision: TowerArchitecture
    text: TowerArchitecture
    embedding_dim: int
    vocab_size: int = SIGLIP2_VOCAB_SIZE
    text_max_length: int = TEXT_MAX_LENGTH
    num_position_patches: int | None = None
    default_max_num_patches: int | None = None
    resample: Resample = "bilinear"

    @property
    def architecture_class(self) -> Literal["SiglipModel", "Siglip2Model"]:
        """The ``transformers`` class the checkpoint loads as."""
        return "SiglipModel" if self.family == "fixres" else "Siglip2Model"

    @property
    def model_type(self) -> Literal["siglip", "siglip2"]:
        """The ``model_type`` its ``config.json`` states."""
        return "siglip" if self.family == "fixres" else "siglip2"

    def image_processing(self, max_num_patches: int | None = None) -> ImageProcessing:
        """The released processor's settings.

        Args:
            max_num_patches: NaFlex patch budget instead of :attr:`default_max_num_patches`;
                ignored for FixRes.
        """
        if self.family == "fixres":
            return ImageProcessing(
                family="fixres",
                image_size=self.image_size,
                patch_size=self.patch_size,
                max_num_patches=None,
                resample=self.resample,
            )
        return ImageProcessing(
            family="naflex",
            image_size=None,
            patch_size=self.patch_size,
            max_num_patches=max_num_patches or self.default_max_num_patches,
            resample=self.resample,
        )


BASE = TowerArchitecture(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
)
LARGE = TowerArchitecture(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16
)
SO400M = TowerArchitecture(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16
)
GIANT_OPT = TowerArchitecture(
    hidden_size=1536, intermediate_size=6144, num_hidden_layers=40, num_attention_heads=16
)

_TOWERS: dict[SiglipSize, tuple[TowerArchitecture, TowerArchitecture]] = {
    # size: (vision tower, text tower)
    "base": (BASE, BASE),
    "large": (LARGE, LARGE),
    "so400m": (SO400M, SO400M),
    "giant-opt": (GIANT_OPT, SO400M),
}

_FIXRES_RELEASES: tuple[tuple[SiglipSize, int, int], ...] = (
    # (size, patch size, image size), in the order of Google's release
    ("base", 16, 224),
    ("base", 16, 256),
    ("base", 16, 384),
    ("base", 16, 512),
    ("base", 32, 256),
    ("large", 16, 256),
    ("large", 16, 384),
    ("large", 16, 512),
    ("so400m", 14, 224),
    ("so400m", 14, 384),
    ("so400m", 16, 256),
    ("so400m", 16, 384),
    ("so400m", 16, 512),
    ("giant-opt", 16, 256),
    ("giant-opt", 16, 384),
)
_NAFLEX_RELEASES: tuple[SiglipSize, ...] = ("base", "so400m")


def _fixres(size: SiglipSize, patch_size: int, image_size: int) -> SiglipVariant:
    vision, text = _TOWERS[size]
    name = f"siglip2-{size}-patch{patch_size}-{image_size}"
    return SiglipVariant(
        name=name,
        hub_id=f"google/{name}",
        family="fixres",
        size=size,
        patch_size=patch_size,
        image_size=image_size,
        vision=vision,
        text=text,
        embedding_dim=vision.hidden_size,
    )


def _naflex(size: SiglipSize) -> SiglipVariant:
    vision, text = _TOWERS[size]
    name = f"siglip2-{size}-patch16-naflex"
    return SiglipVariant(
        name=name,
        hub_id=f"google/{name}",
        family="naflex",
        size=size,
        patch_size=16,
        image_size=None,
        vision=vision,
        text=text,
        embedding_dim=vision.hidden_size,
        num_position_patches=NAFLEX_POSITION_GRID_PATCHES,
        default_max_num_patches=DEFAULT_NAFLEX_MAX_PATCHES,
    )


SIGLIP_VARIANTS: tuple[SiglipVariant, ...] = tuple(
    _fixres(size, patch_size, image_size) for size, patch_size, image_size in _FIXRES_RELEASES
) + tuple(_naflex(size) for size in _NAFLEX_RELEASES)
"""All seventeen released SigLIP 2 models: fifteen FixRes, then the two NaFlex ones."""

RESAMPLE_BY_CODE: dict[int, Resample] = {
    0: "nearest",
    1: "lanczos",
    2: "bilinear",
    3: "bicubic",
    4: "box",
    5: "hamming",
}
"""Pillow's filter numbers, as ``preprocessor_config.json`` stores ``resample``."""
