"""``dummy`` SigLIP 2 weights: the real architecture with seeded random weights, and a stand-in
tokenizer, so the whole service runs offline (like vLLM's ``--load-format dummy``).

The embeddings of such a model are meaningless; only shapes and speed are real. It is never a
silent fallback: :func:`imgembed.models.siglip_loading.load_siglip` builds it only for
``weights="dummy"`` and logs a warning that says so.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from tokenizers import Tokenizer, normalizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast, Siglip2Model, SiglipModel

from imgembed.models.siglip_registry import build_siglip_config
from imgembed.models.siglip_variants import SiglipVariant

try:
    from transformers.initialization import no_init_weights
except ImportError:  # an older or newer transformers: random init then runs, only slower
    no_init_weights = contextlib.nullcontext

logger = logging.getLogger(__name__)

DUMMY_WEIGHTS = "dummy"
"""The ``weights`` value that asks for random, untrained weights."""
_STAND_IN_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
"""Gemma's special tokens, with Gemma's ids 0 to 4."""
_STAND_IN_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789\u2581.,;:!?'\"-()/&%+"
"""Single-character tokens of the stand-in tokenizer; ``\u2581`` is the word separator (a space),
as in Gemma. Anything else falls back to its UTF-8 bytes."""


def build_stand_in_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A small deterministic tokenizer for untrained (``dummy``) models; NOT Gemma's tokenizer.

    It has Gemma's shape: the special tokens ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3,
    ``<mask>`` 4; BPE with byte fallback, spaces written as ``\u2581``; ``<eos>`` appended to every
    text, padding on the right, ``input_ids`` only (as the released SigLIP 2 tokenizers). Its
    vocabulary is the 256 byte tokens and a few dozen single characters, so every text tokenizes
    and every id fits ``vocab_size``. Ids mean nothing to any trained model: it exists so that the
    text path of a ``dummy`` model runs end to end without downloading Gemma's tokenizer.

    Args:
        vocab_size: Rows of the model's token embedding; at least 261 (specials and bytes).

    Returns:
        The tokenizer.

    Raises:
        ValueError: ``vocab_size`` below 261.
    """
    vocab = {token: index for index, token in enumerate(_STAND_IN_SPECIAL_TOKENS)}
    vocab.update({f"<0x{byte:02X}>": len(vocab) + byte for byte in range(256)})
    if vocab_size < len(vocab):
        raise ValueError(f"a stand-in tokenizer needs vocab_size >= {len(vocab)}, got {vocab_size}")
    for character in _STAND_IN_CHARACTERS[: vocab_size - len(vocab)]:
        vocab[character] = len(vocab)
    backend = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.post_processor = processors.TemplateProcessing(
        single="$A <eos>", special_tokens=[("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        mask_token="<mask>",
        padding_side="right",
        model_input_names=["input_ids"],
    )


def _randomise_(model: torch.nn.Module, seed: int) -> None:
    """Fills every parameter with seeded noise that keeps each layer's output alive.

    Matrices, kernels and embeddings: N(0, 1/fan_in); norm scales 1; biases N(0, 0.02); SigLIP's
    logit scale log(10) and bias -10 (its training initialisation). A private generator leaves the
    caller's random state alone.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if name == "logit_scale":
                parameter.fill_(math.log(10.0))
            elif name == "logit_bias":
                parameter.fill_(-10.0)
            elif parameter.ndim >= 2:
                fan_in = parameter[0].numel()
                parameter.normal_(0.0, fan_in**-0.5, generator=generator)
            elif name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)


def build_dummy_model(variant: SiglipVariant, seed: int) -> SiglipModel | Siglip2Model:
    """The variant's real architecture with random weights, the same for the same seed.

    Logs a warning that the model is untrained.

    Args:
        variant: The architecture to build.
        seed: Seed of the weights; the caller's random state is left as it was.

    Returns:
        ``SiglipModel`` (FixRes) or ``Siglip2Model`` (NaFlex) on the CPU, float32, train mode as
        ``transformers`` builds it.
    """
    config = build_siglip_config(variant)
    model_class = SiglipModel if variant.family == "fixres" else Siglip2Model
    # transformers' own initialisation of a 256000-token embedding takes seconds; every parameter
    # is overwritten next, so it is skipped. Construction still draws a few values (the pooling
    # probe, the logit scale) from the global generator: a private copy leaves the caller's alone.
    with torch.random.fork_rng(devices=[]), no_init_weights():
        model = model_class(config)
    _randomise_(model, seed)
    logger.warning(
        "UNTRAINED MODEL: %s is running with RANDOM weights (weights=%r, seed %d) and a stand-in "
        "tokenizer. Its embeddings are meaningless; use it only to exercise the service and "
        "measure speed. For real weights set --weights to a folder or a hub id such as %s.",
        variant.name,
        DUMMY_WEIGHTS,
        seed,
        variant.hub_id,
    )
    return model
