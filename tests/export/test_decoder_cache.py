"""The browser page's decoder export copies the served model to the host without a deep copy."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from imgembed.errors import ImgembedError
from imgembed.export.decoder_cache import host_copy
from imgembed.models.sam2_loading import load_sam2


class _Toy(torch.nn.Module):
    """A model built from a config, as transformers models are."""

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.config = config
        self.linear = torch.nn.Linear(config.width, config.width)
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
        if config.scratch:
            self.register_buffer("scratch", torch.ones(2), persistent=False)


def _toy(*, scratch: bool = False, dtype: torch.dtype = torch.float32) -> _Toy:
    model = _Toy(SimpleNamespace(width=4, scratch=scratch)).to(dtype)
    model.steps += 7
    return model


@pytest.fixture
def no_deep_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("host_copy must not deep-copy the served model")

    monkeypatch.setattr(copy, "deepcopy", refuse)


def test_host_copy_has_the_same_values_in_its_own_host_memory(no_deep_copy: None) -> None:
    served = _toy()
    copied = host_copy(served)
    assert not copied.training
    for name, tensor in served.state_dict().items():
        twin = copied.state_dict()[name]
        assert twin.device.type == "cpu"
        assert torch.equal(twin, tensor), name
        assert twin.data_ptr() != tensor.data_ptr(), f"{name} shares storage with the served model"
    with torch.no_grad():
        copied.linear.weight.add_(1.0)
    assert not torch.equal(copied.linear.weight, served.linear.weight)


def test_host_copy_is_float32_whatever_the_served_precision(no_deep_copy: None) -> None:
    served = _toy(dtype=torch.bfloat16)
    copied = host_copy(served)
    assert copied.linear.weight.dtype == torch.float32
    assert torch.equal(copied.linear.weight, served.linear.weight.float())
    assert copied.steps.dtype == torch.int64  # integer buffers keep their dtype
    assert copied.steps.tolist() == [7, 7, 7]


def test_host_copy_names_tensors_outside_the_state_dict() -> None:
    with pytest.raises(ImgembedError, match="scratch are not in its state dict"):
        host_copy(_toy(scratch=True))


def test_host_copy_of_a_sam2_model_keeps_every_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    served = load_sam2("sam2.1-hiera-tiny", "dummy", device=torch.device("cpu")).model
    copied_modules: list[object] = []
    real_deepcopy = copy.deepcopy

    def watched_deepcopy(value: object, *args: object) -> object:
        if isinstance(value, torch.nn.Module):
            copied_modules.append(value)
        return real_deepcopy(value, *args)

    monkeypatch.setattr(copy, "deepcopy", watched_deepcopy)
    copied = host_copy(served)
    assert copied_modules == []  # the config may be deep-copied; no module is
    assert type(copied) is type(served)
    served_state, copied_state = served.state_dict(), copied.state_dict()
    assert served_state.keys() == copied_state.keys()
    assert all(torch.equal(copied_state[name], served_state[name]) for name in served_state)
