"""Reading LegolasFlux.jl model rows: the ``legolas-flux.model@1`` schema.

LegolasFlux.jl (https://github.com/beacon-biosignals/LegolasFlux.jl) writes a Flux model's
arrays as a ``weights`` struct column holding a list of ``FlatArray`` structs: ``vec`` (the
array's elements in Julia's column-major order) and ``size`` (its dimensions, as Julia reports
them). modelrows reads that column as :class:`~modelrows.Weights` whose tensors are named by
position (``"0"``, ``"1"`` ...) and keep Julia's shapes, with element ``[i, j, ...]`` equal to
Julia's ``A[i+1, j+1, ...]``: zero-copy column-major views of the mapped file. The Arrow
extension names in the fields' metadata (``JuliaLang.LegolasFlux.Weights``,
``JuliaLang.LegolasFlux.FlatArray``) are left as metadata: no extension type is registered, the
columns are read by their storage types.

Mapping those arrays onto PyTorch layers (Conv kernels, Dense weights, the flatten order) is the
user's code, as the model is; docs/interop.md shows how. modelrows reads these rows but does not
write them: store the weights as a modelrows row instead (``ModelV1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import torch

from ._arrowtypes import BlobPlan, DecodeContext, WeightsType, is_null
from ._errors import CorruptRowError, WeightsError
from ._format import MAX_NDIM
from ._schema import Row
from ._weights import DTYPE_NAMES, Weights

__all__ = ["FlatArrayWeights", "FlatArrayWeightsType", "LegolasFluxModelV1"]


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t))


def element_dtype(t: pa.DataType) -> torch.dtype | None:
    """The torch dtype of FlatArray elements of Arrow type ``t`` (None if not a numeric type
    stored one element per fixed-width slot, e.g. Arrow's bit-packed booleans)."""
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return None
    return DTYPE_NAMES.get(np.dtype(t.to_pandas_dtype()).name)


def flat_array_problem(t: pa.DataType) -> str | None:
    """Why ``t`` is not LegolasFlux.jl's weights struct, or None."""
    expected = "struct<weights: list<struct<vec: list<number>, size: list<int>>>>"
    if not pa.types.is_struct(t) or t.get_field_index("weights") < 0:
        return f"expected LegolasFlux.jl's {expected}, found {t}"
    items = t.field("weights").type
    if not _is_list(items) or not pa.types.is_struct(items.value_type):
        return f"LegolasFlux.jl weights must be a list of FlatArray structs, found {items}"
    flat = items.value_type
    if flat.get_field_index("vec") < 0 or flat.get_field_index("size") < 0:
        return f"a FlatArray struct has fields vec and size, found {flat}"
    vec, size = flat.field("vec").type, flat.field("size").type
    if not _is_list(vec) or element_dtype(vec.value_type) is None:
        return f"FlatArray.vec must be a list of numbers (integers or floats), found {vec}"
    if not _is_list(size) or not pa.types.is_integer(size.value_type):
        return f"FlatArray.size must be a list of integers, found {size}"
    return None


def _flat_array_arrow_type(element: pa.DataType) -> pa.DataType:
    flat = pa.struct(
        [
            pa.field("vec", pa.list_(pa.field("", element, nullable=False)), nullable=False),
            pa.field("size", pa.list_(pa.field("", pa.int64(), nullable=False)), nullable=False),
        ]
    )
    return pa.struct(
        [pa.field("weights", pa.list_(pa.field("", flat, nullable=False)), nullable=False)]
    )


class FlatArrayWeightsType(WeightsType):
    """A weights column in LegolasFlux.jl's layout: read as Weights of column-major views."""

    name = "FlatArrayWeights"
    arrow_type = _flat_array_arrow_type(pa.float32())

    def accepts(self, t: pa.DataType) -> bool:
        return flat_array_problem(t) is None

    def to_arrow(self, values: Sequence[Any], plan: BlobPlan | None = None) -> pa.Array:
        raise WeightsError(
            "modelrows reads LegolasFlux.jl weights (legolas-flux.model@1) but does not write "
            "them; store the weights as a modelrows row instead, e.g. "
            "ModelV1(weights=row.weights, architecture_version=row.architecture_version)"
        )

    def decode(self, array: pa.StructArray, index: int, ctx: DecodeContext) -> Weights | None:
        """Weights of row ``index``: tensor ``"k"`` is the k-th FlatArray, shaped as in Julia."""
        if is_null(array, index):
            return None
        where = ctx.where

        def bad(msg: str) -> CorruptRowError:
            return CorruptRowError(
                f"{where}: LegolasFlux.jl weights: {msg}; the file is corrupt", path=where
            )

        flats = array.field("weights")[index].values
        if flats is None or flats.null_count:
            raise bad("the list of FlatArrays or one of its items is null")
        vecs, sizes = flats.field("vec"), flats.field("size").to_pylist()
        elements = vecs.values
        if vecs.null_count or elements.null_count:
            raise bad("a FlatArray's vec is null or holds nulls")
        dtype = element_dtype(elements.type)
        assert dtype is not None  # accepts() checked the element type
        offsets = vecs.offsets.to_numpy()
        first, last = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
        flat = _elements(ctx, elements, first, last, dtype)
        tensors: dict[str, torch.Tensor] = {}
        for k, size in enumerate(sizes):
            name = str(k)
            if size is None or len(size) > MAX_NDIM or any(d is None or d < 0 for d in size):
                raise bad(f"tensor {name!r} has an invalid size {size!r}")
            start, stop = int(offsets[k]) - first, int(offsets[k + 1]) - first
            if stop - start != math.prod(size):
                raise bad(
                    f"tensor {name!r} has size {tuple(size)} = {math.prod(size)} elements, "
                    f"but its vec holds {stop - start}"
                )
            tensors[name] = column_major(flat[start:stop], size)
        return Weights._from_tensors(tensors)


def column_major(flat: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A view of the 1-d ``flat`` as a column-major array of shape ``size`` (no copy).

    >>> column_major(torch.arange(6), [2, 3])
    tensor([[0, 2, 4],
            [1, 3, 5]])
    """
    if len(size) < 2:
        return flat.view(tuple(size))
    return flat.view(tuple(reversed(size))).permute(*reversed(range(len(size))))


def _elements(
    ctx: DecodeContext, elements: pa.Array, first: int, last: int, dtype: torch.dtype
) -> torch.Tensor:
    """Elements ``[first, last)`` of a primitive Arrow array as a 1-d tensor: a view of the
    mapped file when the bytes lie there aligned for ``dtype``, a copy otherwise."""
    itemsize = dtype.itemsize
    buf = elements.buffers()[1]
    start = (elements.offset + first) * itemsize
    nbytes = (last - first) * itemsize
    address = (buf.address if buf is not None else 0) + start
    storage, base = ctx.storage_for(address, nbytes, buf, start)
    raw = storage[base : base + nbytes]
    if raw.data_ptr() % itemsize:  # not aligned for the dtype: copy into fresh memory
        raw = raw.clone()
    return raw.view(dtype)


FlatArrayWeights = Annotated[Weights, FlatArrayWeightsType()]
"""The annotation of a weights field in LegolasFlux.jl's layout (typed as Weights)."""


class LegolasFluxModelV1(Row, schema="legolas-flux.model", version=1):
    """``legolas-flux.model@1``: LegolasFlux.jl's model row, read-only in modelrows.

    ``weights`` are the Flux model's arrays in the order LegolasFlux.jl's ``fetch_weights``
    collected them, named ``"0"``, ``"1"`` ...; each keeps Julia's shape and indexing (a
    zero-copy column-major view). Extend it to read your own Julia schema::

        class DigitsRowV1(LegolasFluxModelV1, schema="digits.model", version=1):
            epoch: int | None = None
            accuracy: float | None = None

    >>> LegolasFluxModelV1.__qualified__
    'legolas-flux.model@1'
    """

    weights: FlatArrayWeights | None = None
    architecture_version: int | None = None
