"""diff_weights: per-tensor facts against torch's own arithmetic, chunked or not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import modelrows._diff as diff_module
from modelrows import (
    ModelV1,
    TensorDiff,
    Weights,
    diff_weights,
    fetch_weights,
    read_model_row,
    write_model_row,
)


class EmaRowV1(ModelV1, schema="difftest.ema", version=1):
    ema: Weights | None = None


def expected(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float, float]:
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    da, db = a.to(wide).reshape(-1), b.to(wide).reshape(-1)
    delta = (db - da).abs()
    l2 = float(delta.square().sum().sqrt())
    na, nb = float(da.abs().square().sum().sqrt()), float(db.abs().square().sum().sqrt())
    dot = float((da.conj() * db).real.sum()) if wide is torch.complex128 else float((da * db).sum())
    return l2, l2 / na, float(delta.max()), dot / (na * nb)


PAIRS = {
    "float32": (torch.randn(40, 30), torch.randn(40, 30)),
    "bf16 -> float32": (torch.randn(64).bfloat16(), torch.randn(64)),
    "int64": (torch.arange(1, 50), torch.arange(1, 50) * 3),
    "complex64": (torch.randn(9, dtype=torch.complex64), torch.randn(9, dtype=torch.complex64)),
    "0-d": (torch.tensor(2.0), torch.tensor(-1.5)),
}


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_facts_match_torch_chunked_or_not(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diff_module, "CHUNK_ELEMENTS", chunk)  # 7: many chunks per tensor
    a = {name: pair[0] for name, pair in PAIRS.items()}
    b = {name: pair[1] for name, pair in PAIRS.items()}
    for d in diff_weights(a, b):
        l2, relative, max_abs, cosine = expected(a[d.name], b[d.name])
        assert d.status == "changed"
        assert d.l2 == pytest.approx(l2, rel=1e-12)
        assert d.relative == pytest.approx(relative, rel=1e-12)
        assert d.max_abs == pytest.approx(max_abs, rel=1e-12)
        assert d.cosine == pytest.approx(cosine, rel=1e-9, abs=1e-12)
        assert (d.shape_a, d.shape_b) == (tuple(a[d.name].shape),) * 2
    by_name = {d.name: d for d in diff_weights(a, b)}
    assert (by_name["bf16 -> float32"].dtype_a, by_name["bf16 -> float32"].dtype_b) == (
        "bfloat16",
        "float32",
    )


def test_same_shape_only_in_one_and_zeros() -> None:
    a = {"same": torch.ones(3), "grown": torch.ones(2, 3), "gone": torch.ones(1),
         "zero": torch.zeros(4), "empty": torch.empty(0, 3), "nan": torch.tensor([1.0, math.nan])}  # fmt: skip
    b = {"same": torch.ones(3), "grown": torch.ones(2, 4), "zero": torch.zeros(4),
         "new": torch.ones(5, dtype=torch.int8), "empty": torch.empty(0, 3),
         "nan": torch.tensor([1.0, 2.0])}  # fmt: skip
    got = {d.name: d for d in diff_weights(a, b)}
    assert [d.name for d in diff_weights(a, b)] == [*a, "new"]  # a's order, then b's own
    assert got["same"] == TensorDiff("same", "same", "float32", "float32", (3,), (3,),
                                     0.0, 0.0, 0.0, 1.0, math.sqrt(3), math.sqrt(3))  # fmt: skip
    assert got["grown"].status == "shape" and got["grown"].l2 is None
    assert (got["grown"].shape_a, got["grown"].shape_b) == ((2, 3), (2, 4))
    assert (got["gone"].status, got["gone"].shape_a, got["gone"].dtype_b) == ("only_a", (1,), None)
    assert (got["new"].status, got["new"].dtype_b, got["new"].shape_b) == ("only_b", "int8", (5,))
    assert (got["zero"].status, got["zero"].relative, got["zero"].cosine) == ("same", 0.0, None)
    assert (got["empty"].status, got["empty"].l2, got["empty"].max_abs) == ("same", 0.0, 0.0)
    assert got["nan"].status == "changed" and math.isnan(got["nan"].max_abs or 0.0)


def test_rows_from_files_and_their_columns(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = torch.nn.Linear(4, 3)
    before = fetch_weights(net)
    with torch.no_grad():
        net.weight[0, 0] += 0.5
    path_a, path_b = tmp_path / "a.model.arrow", tmp_path / "b.model.arrow"
    write_model_row(path_a, EmaRowV1(weights=before, ema=fetch_weights({"w": torch.ones(2)})))
    write_model_row(
        path_b, EmaRowV1(weights=fetch_weights(net), ema=fetch_weights({"w": torch.zeros(2)}))
    )
    a, b = read_model_row(path_a), read_model_row(path_b)  # mapped views of the files
    weight, bias = diff_weights(a, b)  # `weights` by default
    assert (weight.name, weight.status, weight.l2, weight.max_abs) == (
        "weight",
        "changed",
        0.5,
        0.5,
    )
    assert (bias.name, bias.status) == ("bias", "same")
    (ema,) = diff_weights(a, b, column="ema")
    assert (ema.name, ema.l2, ema.relative, ema.cosine) == ("w", math.sqrt(2), 1.0, None)
