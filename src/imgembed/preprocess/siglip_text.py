"""SigLIP 2 text preprocessing: strings to the fixed-length token ids the text tower takes.

As SigLIP 2 was trained: each text lower-cased, tokenized with the model's tokenizer (Gemma's,
which appends ``<eos>``), cut to ``max_length`` tokens and padded to exactly ``max_length``
(64) with the padding token, on the right whatever the tokenizer's own default
(Gemma's is the left; the released SigLIP 2 tokenizer configs say right). Released SigLIP 2
tokenizers do not lower-case by themselves (the model card asks users to), so it is done here for
every tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from imgembed.errors import InvalidInputError
from imgembed.models.siglip_variants import TEXT_MAX_LENGTH

MAX_TEXT_CHARACTERS = 10_000
"""Longest text accepted; far beyond 64 tokens, it only bounds the tokenizer's work."""


def check_texts(texts: object, *, field: str = "texts") -> list[str]:
    """The texts of a request, each a non-blank string of bounded length.

    Args:
        texts: What the request holds.
        field: Request field name used in error messages.

    Returns:
        The texts as a list.

    Raises:
        InvalidInputError: Not a non-empty list of strings, a blank text, or a text too long.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise InvalidInputError(
            f"{field} must be a non-empty list of strings, got {type(texts).__name__}",
            field=field,
        )
    checked: list[str] = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"{field}[{index}] must be a string, got {type(text).__name__}", field=field
            )
        if not text.strip():
            raise InvalidInputError(
                f"{field}[{index}] is blank; send the words to embed", field=field
            )
        if len(text) > MAX_TEXT_CHARACTERS:
            raise InvalidInputError(
                f"{field}[{index}] has {len(text)} characters; at most {MAX_TEXT_CHARACTERS} "
                f"are accepted (only the first {TEXT_MAX_LENGTH} tokens are used)",
                field=field,
            )
        checked.append(text)
    return checked


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int = TEXT_MAX_LENGTH,
    field: str = "texts",
) -> torch.Tensor:
    """Token ids of texts, lower-cased, cut and padded to ``max_length`` as SigLIP was trained.

    Args:
        tokenizer: The model's tokenizer.
        texts: Strings to embed.
        max_length: Tokens per text, the model's text length (64 for SigLIP 2).
        field: Request field name used in error messages.

    Returns:
        ``[B,max_length]`` int64 on the CPU, one row per text in order, padding on the right.

    Raises:
        InvalidInputError: See :func:`check_texts`.
    """
    lowered = [text.lower() for text in check_texts(texts, field=field)]
    encoded = tokenizer(
        lowered,
        padding="max_length",
        padding_side="right",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"].to(torch.int64)
