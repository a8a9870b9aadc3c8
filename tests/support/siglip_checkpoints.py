"""SigLIP 2 checkpoints for tests: small models of the real designs, saved in the real formats.

Released SigLIP 2 models are 375M to 1.9B parameters, most of them a 256000-token embedding; the
tests use small models of the same two designs (``SiglipModel`` FixRes, ``Siglip2Model`` NaFlex)
described by :class:`~imgembed.models.siglip_variants.SiglipVariant` objects outside the released
table, with seeded random weights, a Gemma-class tokenizer with a small vocabulary, and the
processor config, written by ``save_pretrained`` exactly as on the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from checkpoints import randomise_
from PIL import Image, ImageDraw
from transformers import (
    GemmaTokenizer,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2Processor,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

from imgembed.models.siglip_registry import build_siglip_config
from imgembed.models.siglip_variants import SiglipVariant, TowerArchitecture

SIGLIP_SEED = 20250220
"""SigLIP 2's release date; any fixed seed does."""
TEST_VOCAB_SIZE = 400

TINY_VISION = TowerArchitecture(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)
TINY_TEXT = TowerArchitecture(
    hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4
)

TINY_FIXRES = SiglipVariant(
    name="test-siglip2-tiny-patch16-224",
    hub_id="test-org/siglip2-tiny-patch16-224",
    family="fixres",
    size="base",
    patch_size=16,
    image_size=224,
    vision=TINY_VISION,
    text=TINY_TEXT,
    embedding_dim=32,
    vocab_size=TEST_VOCAB_SIZE,
)
"""A FixRes model at a released input size (224, patch 16). Its text tower is narrower than its
vision tower and projects to it, as giant-opt's does, so the projection path is covered."""

TINY_NAFLEX = SiglipVariant(
    name="test-siglip2-tiny-patch16-naflex",
    hub_id="test-org/siglip2-tiny-patch16-naflex",
    family="naflex",
    size="base",
    patch_size=16,
    image_size=None,
    vision=TINY_VISION,
    text=TINY_VISION,
    embedding_dim=32,
    vocab_size=TEST_VOCAB_SIZE,
    num_position_patches=16,
    default_max_num_patches=24,
)
"""A NaFlex model with a 4x4 position grid and a budget of 24 patches."""

ProcessorLayout = Literal["hub", "transformers5"]
"""``hub``: ``preprocessor_config.json`` and tokenizer files side by side, as the released
repositories hold them; ``transformers5``: ``processor_config.json``, what
``Processor.save_pretrained`` writes today."""


def gemma_tokenizer(vocab_size: int = TEST_VOCAB_SIZE) -> GemmaTokenizer:
    """``transformers``' Gemma tokenizer class, configured as the released SigLIP 2 ones (no
    ``<bos>``, ``<eos>`` appended, right padding, ``input_ids`` only), over a small vocabulary:
    Gemma's five special tokens, the 256 byte tokens, letters, digits, ``\u2581`` and a few merges."""
    vocab = {
        token: index for index, token in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    }
    vocab.update({f"<0x{byte:02X}>": len(vocab) + byte for byte in range(256)})
    for character in "abcdefghijklmnopqrstuvwxyz0123456789\u2581.,":
        vocab[character] = len(vocab)
    merges = [("\u2581", "a"), ("o", "n"), ("e", "r"), ("t", "h"), ("\u2581", "th")]
    for first, second in merges:
        vocab[first + second] = len(vocab)
    assert len(vocab) <= vocab_size
    return GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
        model_input_names=["input_ids"],
    )


def build_siglip_model(
    variant: SiglipVariant, seed: int = SIGLIP_SEED
) -> SiglipModel | Siglip2Model:
    """The variant's architecture with every weight seeded noise (see ``randomise_``), eval mode."""
    config = build_siglip_config(variant)
    model_class = SiglipModel if variant.family == "fixres" else Siglip2Model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    randomise_(model.state_dict(), seed)
    return model


def image_processor_of(
    variant: SiglipVariant, resample: int = 2
) -> SiglipImageProcessorPil | Siglip2ImageProcessorPil:
    """``transformers``' Pillow image processor as a released checkpoint configures it."""
    if variant.family == "fixres":
        return SiglipImageProcessorPil(
            size={"height": variant.image_size, "width": variant.image_size},
            resample=resample,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
    return Siglip2ImageProcessorPil(
        patch_size=variant.patch_size,
        max_num_patches=variant.default_max_num_patches,
        resample=resample,
    )


def save_siglip_folder(
    model: SiglipModel | Siglip2Model,
    variant: SiglipVariant,
    folder: Path,
    *,
    layout: ProcessorLayout = "hub",
    resample: int = 2,
) -> Path:
    """Writes model, tokenizer and image processor config as ``save_pretrained`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer = gemma_tokenizer(variant.vocab_size)
    image_processor = image_processor_of(variant, resample)
    if layout == "hub":
        tokenizer.save_pretrained(folder)
        image_processor.save_pretrained(folder)
    else:
        processor_class = SiglipProcessor if variant.family == "fixres" else Siglip2Processor
        processor_class(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
            folder
        )
    return folder


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """``[H,W,3]`` uint8 with what photos have: smooth shading, shapes with hard edges, and a
    fine striped pattern (period about 1/250 of the width, the swimsuit prints of the seed)."""
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x0, x1 = sorted(generator.integers(0, width, 2).tolist())
        y0, y1 = sorted(generator.integers(0, height, 2).tolist())
        colour = tuple(generator.integers(0, 256, 3).tolist())
        if generator.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    pixels = np.array(image)  # [H,W,3] uint8, writable
    period = max(2, width // 250)
    top, bottom, left, right = height // 4, height // 2, width // 3, 2 * width // 3
    stripes = ((np.arange(right - left) // period) % 2 * 70).astype(np.uint8)  # [w]
    region = pixels[top:bottom, left:right]  # [h,w,3] view
    region[:] = np.minimum(region.astype(np.uint16) + stripes[None, :, None], 255).astype(np.uint8)
    return pixels
