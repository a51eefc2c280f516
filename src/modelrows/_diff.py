"""How two sets of weights differ, tensor by tensor: which layers moved, and how far.

``diff_weights`` walks both sets in a bounded amount of memory: each pair of tensors is read a
chunk of elements at a time (weights read from row files are views of the mapped files, so only
the pages of the chunk in hand are touched) and the sums that the facts need are accumulated in
float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    import torch

    from ._schema import Row

__all__ = ["TensorDiff", "diff_weights"]

CHUNK_ELEMENTS = 1 << 20
"""Elements of each tensor in memory at a time (8 MiB as float64)."""

Status = Literal["same", "changed", "shape", "only_a", "only_b"]


class TensorDiff(NamedTuple):
    """How one tensor differs between two sets of weights, ``a`` (before) and ``b`` (after).

    ``status`` is ``"same"`` (equal values and dtype), ``"changed"``, ``"shape"`` (the shapes
    differ: nothing is compared), ``"only_a"`` or ``"only_b"``. Values of different dtypes are
    compared as float64 (complex128 for complex tensors). The numbers are None where they do not
    apply: ``relative`` when ``a`` is all zeros, ``cosine`` when either is.
    """

    name: str
    status: Status
    dtype_a: str | None
    dtype_b: str | None
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    l2: float | None
    """``||b - a||``, the Euclidean distance."""
    relative: float | None
    """``||b - a|| / ||a||``: how far the tensor moved, relative to its size."""
    max_abs: float | None
    """The largest absolute difference of one element."""
    cosine: float | None
    """``<a, b> / (||a|| ||b||)``: 1 when only the scale changed (or nothing)."""
    norm_a: float | None
    norm_b: float | None


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _compare(name: str, a: torch.Tensor, b: torch.Tensor) -> TensorDiff:
    import torch

    da, db = _dtype_name(a), _dtype_name(b)
    sa, sb = tuple(a.shape), tuple(b.shape)
    if sa != sb:
        return TensorDiff(name, "shape", da, db, sa, sb, None, None, None, None, None, None)
    complex_ = a.dtype.is_complex or b.dtype.is_complex
    wide = torch.complex128 if complex_ else torch.float64
    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    d2 = a2 = b2 = dot = 0.0
    max_abs = 0.0
    for start in range(0, fa.numel(), CHUNK_ELEMENTS):
        ca = fa[start : start + CHUNK_ELEMENTS].to("cpu", wide)
        cb = fb[start : start + CHUNK_ELEMENTS].to("cpu", wide)
        delta = (cb - ca).abs()
        d2 += float(delta.square().sum())
        biggest = float(delta.max())  # NaN if any element is NaN
        max_abs = math.nan if math.isnan(biggest) else max(max_abs, biggest)
        a2 += float(ca.abs().square().sum())
        b2 += float(cb.abs().square().sum())
        dot += float((ca.conj() * cb).real.sum() if complex_ else (ca * cb).sum())
    l2, na, nb = math.sqrt(d2), math.sqrt(a2), math.sqrt(b2)
    same = d2 == 0.0 and da == db and not math.isnan(max_abs)
    return TensorDiff(
        name,
        "same" if same else "changed",
        da,
        db,
        sa,
        sb,
        l2,
        l2 / na if na > 0 else (0.0 if l2 == 0 else None),
        max_abs if fa.numel() else 0.0,
        max(-1.0, min(1.0, dot / (na * nb))) if na > 0 and nb > 0 else None,
        na,
        nb,
    )


def _weights(
    value: Row | Mapping[str, torch.Tensor], column: str | None
) -> Mapping[str, torch.Tensor]:
    from ._safetensors import weights_of
    from ._schema import Row

    return weights_of(value, column) if isinstance(value, Row) else value


def diff_weights(
    a: Row | Mapping[str, torch.Tensor],
    b: Row | Mapping[str, torch.Tensor],
    *,
    column: str | None = None,
) -> list[TensorDiff]:
    """Compare two sets of weights tensor by tensor: ``a`` before, ``b`` after.

    ``a`` and ``b`` are rows (their ``weights`` column, or ``column``), :class:`Weights` or any
    state dict. Returns one :class:`TensorDiff` per tensor name: those of ``a`` in order, then
    those only in ``b``. Memory stays bounded however large the tensors: each pair is compared a
    chunk at a time.

    >>> import torch
    >>> before = {"w": torch.tensor([3.0, 4.0]), "b": torch.zeros(2)}
    >>> after = {"w": torch.tensor([3.0, 5.0]), "scale": torch.ones(1)}
    >>> [(d.name, d.status, d.l2, d.relative) for d in diff_weights(before, after)]
    [('w', 'changed', 1.0, 0.2), ('b', 'only_a', None, None), ('scale', 'only_b', None, None)]
    """
    wa, wb = _weights(a, column), _weights(b, column)
    out = [_compare(n, t, wb[n]) if n in wb else _alone(n, t, "only_a") for n, t in wa.items()]
    out += [_alone(n, t, "only_b") for n, t in wb.items() if n not in wa]
    return out


def _alone(name: str, t: torch.Tensor, status: Status) -> TensorDiff:
    """A tensor in one set only: its dtype and shape on that side, nothing compared."""
    kind, shape = _dtype_name(t), tuple(t.shape)
    a, b = ((kind, shape), (None, None)) if status == "only_a" else ((None, None), (kind, shape))
    return TensorDiff(name, status, a[0], b[0], a[1], b[1], *[None] * 6)
