"""Reliability of the row-file layer (issue 17): loads that fail half-way, the integrity of a
whole row (values checksum, format version 2), reads of files truncated or damaged in place.

Figures these tests reach are in docs/reliability.md ("Rows: whole-row integrity, loads, reads").
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from modelrows import (
    ModelV1,
    Weights,
    WeightsError,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)

# -- 1. loads that fail half-way leave the model untouched ------------------------------------------


def _bits(model: nn.Module) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    """Every parameter and buffer (persistent or not) of ``model``: dtype, shape and bytes."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {
        name: (
            t.dtype,
            tuple(t.shape),
            t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
        for name, t in tensors
    }


class _Stack(nn.Module):
    """Ten layers and a last module whose tensor is the one that cannot be loaded."""

    def __init__(self, last: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(8, 8) for _ in range(10)])
        self.last = last


class _Expanded(nn.Module):
    """A buffer that is an expanded (stride-0) view: torch refuses to copy into it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.zeros(1).expand(16))


class _Plain(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("table", torch.zeros(16, dtype=dtype))


def _source(last: nn.Module, tmp_path: Path, *, from_file: bool) -> Weights:
    """Other values for every tensor of ``_Stack(last)``: in memory, or read from a row file
    (whose small tensors load by memmove, the others by copy_)."""
    torch.manual_seed(1)
    source = _Stack(last)
    with torch.no_grad():
        for t in [*source.parameters(), *source.buffers()]:
            t.copy_(torch.randn(t.shape, dtype=t.dtype))
    weights = fetch_weights(source)
    if not from_file:
        return weights
    path = tmp_path / "source.model.arrow"
    write_model_row(path, ModelV1(weights=weights), fsync=False)
    return read_model_row(path).weights  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def warn_always() -> Iterator[None]:
    """torch warns of a complex-to-real cast once per process; make it warn every time."""
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


@pytest.mark.parametrize("from_file", [False, True], ids=["in-memory", "from-file"])
def test_a_load_whose_last_tensor_is_an_expanded_buffer_changes_nothing(
    tmp_path: Path, from_file: bool
) -> None:
    weights = _source(_Plain(), tmp_path, from_file=from_file)
    model = _Stack(_Expanded())
    assert list(model.state_dict())[-1] == "last.table"
    before = _bits(model)
    with pytest.raises(WeightsError) as info:
        load_weights(model, weights)
    assert str(info.value) == (
        "cannot load weights into _Stack: last.table is an expanded view in the model (stride 0 "
        "in a dimension of size > 1: several of its elements share one memory location), which "
        "nothing can be copied into; the model was not changed. Give the model a tensor of its "
        "own there (e.g. register the buffer as .clone() of the expanded one)."
    )
    assert _bits(model) == before


@pytest.mark.parametrize("from_file", [False, True], ids=["in-memory", "from-file"])
def test_a_cast_whose_warning_is_an_error_fails_before_copying(
    tmp_path: Path, from_file: bool, warn_always: None
) -> None:
    weights = _source(_Plain(torch.complex64), tmp_path, from_file=from_file)
    model = _Stack(_Plain(torch.float32))
    before = _bits(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="Casting complex values to real"):
            load_weights(model, weights, cast=True)
    assert _bits(model) == before
    # without the error filter the same load goes through, warning once, and loads everything
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_weights(model, weights, cast=True)
    assert report.complete
    assert any("Casting complex values to real" in str(w.message) for w in caught)
    assert torch.equal(model.last.table, weights["last.table"].real)


@pytest.mark.parametrize("from_file", [False, True], ids=["in-memory", "from-file"])
def test_a_load_into_inference_tensors_outside_inference_mode_changes_nothing(
    tmp_path: Path, from_file: bool
) -> None:
    weights = _source(_Plain(), tmp_path, from_file=from_file)
    model = _Stack(_Plain())
    with torch.inference_mode():
        model.last.table = torch.zeros(16)  # an inference tensor, made by a model built there
    before = _bits(model)
    with pytest.raises(WeightsError) as info:
        load_weights(model, weights)
    assert str(info.value) == (
        "cannot load weights into _Stack: last.table is an inference tensor (made under "
        "torch.inference_mode()), which cannot be changed outside inference mode; the model was "
        "not changed. Load inside torch.inference_mode(), or build the model outside it."
    )
    assert _bits(model) == before
    with torch.inference_mode():
        assert load_weights(model, weights).complete
    assert torch.equal(model.last.table, weights["last.table"])
