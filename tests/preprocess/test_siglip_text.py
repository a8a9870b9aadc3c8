"""SigLIP 2 text tokenisation: lower-cased, cut and padded to 64 on the right, bad input refused."""

from __future__ import annotations

import pytest
import torch
from siglip_checkpoints import gemma_tokenizer

from imgembed.errors import InvalidInputError
from imgembed.preprocess.siglip_text import MAX_TEXT_CHARACTERS, tokenize_texts
from imgembed.server.errors import http_status

PAD, EOS = 0, 1


def test_lower_cases_and_pads_to_64_on_the_right() -> None:
    tokenizer = gemma_tokenizer()
    input_ids = tokenize_texts(tokenizer, ["A Photo Of THE Sea", "a photo of the sea"])

    assert input_ids.dtype == torch.int64
    assert input_ids.shape == (2, 64)
    assert torch.equal(input_ids[0], input_ids[1])
    length = int((input_ids[0] != PAD).sum())
    assert input_ids[0, length - 1] == EOS
    assert (input_ids[0, length:] == PAD).all()


def test_pads_on_the_right_even_when_the_tokenizer_pads_left() -> None:
    tokenizer = gemma_tokenizer()
    tokenizer.padding_side = "left"
    input_ids = tokenize_texts(tokenizer, ["sea"])
    assert input_ids[0, 0] != PAD
    assert input_ids[0, -1] == PAD


def test_long_texts_are_cut_to_64_tokens_ending_in_eos() -> None:
    input_ids = tokenize_texts(gemma_tokenizer(), ["stripes " * 100])
    assert input_ids.shape == (1, 64)
    assert (input_ids != PAD).all()
    assert input_ids[0, -1] == EOS


def test_other_lengths() -> None:
    assert tokenize_texts(gemma_tokenizer(), ["a", "b"], max_length=16).shape == (2, 16)


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ("a single string", "must be a non-empty list of strings, got str"),
        ([], "must be a non-empty list of strings, got list"),
        (None, "must be a non-empty list of strings, got NoneType"),
        (["fine", 3], r"texts\[1\] must be a string, got int"),
        (["fine", "  \n"], r"texts\[1\] is blank"),
        (["x" * (MAX_TEXT_CHARACTERS + 1)], "at most 10000 are accepted"),
    ],
)
def test_bad_texts_are_refused(texts: object, expected: str) -> None:
    with pytest.raises(InvalidInputError, match=expected) as raised:
        tokenize_texts(gemma_tokenizer(), texts)  # type: ignore[arg-type]
    assert raised.value.field == "texts"
    assert http_status(raised.value) == 400
