"""Python annotations <-> Arrow types.

``resolve(annotation)`` turns a field annotation (``int``, ``float | None``, ``list[str]``,
``np.float32``, a nested row class, ``Weights`` ...) into a :class:`FieldType` that converts and
checks Python values, names its Arrow type, tells which Arrow types it can read, and moves values
to and from Arrow arrays. Nothing here knows about files.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import mmap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import torch

from ._errors import CorruptRowError, SchemaError
from ._format import ALIGNMENT, CHECKSUM_PREFIX, FORMAT_DTYPES, MAX_NDIM, WEIGHTS_FIELDS
from ._weights import (
    DTYPE_NAMES,
    TensorEntry,
    Weights,
    fetch_weights,
    stream_packed,
)

__all__ = ["WEIGHTS_ARROW_TYPE", "FieldType", "RowLike", "resolve"]

_INT64 = (-(2**63), 2**63 - 1)
MAX_VALUE_BYTES = 2**31 - 2
"""The most bytes one str or bytes value may hold: Arrow's string and binary use 32-bit offsets."""


class RowLike(Protocol):
    """What this module needs of a row class (schema.Row) for nested struct columns."""

    __row_fields__: ClassVar[dict[str, Any]]
    __qualified__: ClassVar[str]


class FieldType:
    """A resolved annotation. Subclasses fill in the behaviour of one kind of value."""

    name: str = "?"
    arrow_type: pa.DataType
    nullable: bool = False

    def convert(self, value: Any) -> Any:
        """Check ``value`` and return it normalized; raise TypeError/ValueError with a reason."""
        raise NotImplementedError

    def accepts(self, t: pa.DataType) -> bool:
        """Whether a column of Arrow type ``t`` can be read as this field."""
        return bool(t == self.arrow_type)

    def to_py(self, value: Any) -> Any:
        """A normalized value as a plain Python object pyarrow can convert."""
        return value

    def from_py(self, value: Any) -> Any:
        """A value read from Arrow (``as_py()``), before ``convert``."""
        return value

    def decode(self, array: pa.Array, index: int, ctx: DecodeContext) -> Any:
        """The value of row ``index`` of ``array`` (a column of a file ``ctx`` describes).

        By default ``as_py()`` then ``from_py``; types that can hand out views of the file's
        bytes (weights) override it.
        """
        value = array[index].as_py()
        return None if value is None else self.from_py(value)

    def to_arrow(self, values: Sequence[Any]) -> pa.Array:
        return pa.array(
            [None if v is None else self.to_py(v) for v in values], type=self.arrow_type
        )

    def narrows(self, parent: FieldType) -> bool:
        """Whether a child may redeclare a ``parent`` field with this type."""
        if self.nullable and not parent.nullable:
            return False
        return self.signature(nullable=False) == parent.signature(nullable=False)

    def signature(self, *, nullable: bool | None = None) -> str:
        null = self.nullable if nullable is None else nullable
        return f"{self.name}{' | None' if null else ''}"

    def __repr__(self) -> str:
        return self.signature()

    def optional(self) -> FieldType:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.nullable = True
        return clone


# -- scalars ---------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


class IntType(FieldType):
    def __init__(self, name: str, arrow_type: pa.DataType, lo: int, hi: int) -> None:
        self.name, self.arrow_type, self.lo, self.hi = name, arrow_type, lo, hi

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise TypeError(f"expected {self.name}, got {_describe(value)}")
        v = int(value)
        if not self.lo <= v <= self.hi:
            raise ValueError(f"{v} is out of range for {self.name} [{self.lo}, {self.hi}]")
        return v

    def accepts(self, t: pa.DataType) -> bool:
        if not pa.types.is_integer(t):
            return False
        info = np.iinfo(np.dtype(t.to_pandas_dtype()))
        return bool(self.lo <= info.min and info.max <= self.hi)

    def narrows(self, parent: FieldType) -> bool:
        if self.nullable and not parent.nullable:
            return False
        return isinstance(parent, IntType) and parent.lo <= self.lo and self.hi <= parent.hi


class FloatType(FieldType):
    def __init__(self, name: str, arrow_type: pa.DataType, np_type: type[np.floating[Any]]) -> None:
        self.name, self.arrow_type, self.np_type = name, arrow_type, np_type

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, float | int | np.floating | np.integer
        ):
            raise TypeError(f"expected {self.name}, got {_describe(value)}")
        if isinstance(value, int | np.integer) and abs(int(value)) > 2**53:
            raise ValueError(f"integer {value} cannot be represented exactly as {self.name}")
        v = float(value)
        with np.errstate(over="ignore"):
            narrowed = float(self.np_type(v)) if self.np_type is not np.float64 else v
        if math.isinf(narrowed) and not math.isinf(v):
            raise ValueError(f"{v!r} overflows {self.name}")
        return narrowed

    def accepts(self, t: pa.DataType) -> bool:
        return bool(pa.types.is_floating(t) and t.bit_width <= self.arrow_type.bit_width)

    def narrows(self, parent: FieldType) -> bool:
        if self.nullable and not parent.nullable:
            return False
        return (
            isinstance(parent, FloatType)
            and self.arrow_type.bit_width <= parent.arrow_type.bit_width
        )


class _Simple(FieldType):
    def __init__(
        self,
        name: str,
        arrow_type: pa.DataType,
        check: Callable[[Any], Any],
        accepts: Callable[[pa.DataType], bool],
    ) -> None:
        self.name, self.arrow_type, self._check, self._accepts = name, arrow_type, check, accepts

    def convert(self, value: Any) -> Any:
        return self._check(value)

    def accepts(self, t: pa.DataType) -> bool:
        return self._accepts(t)


def _check_size(n: int, what: str) -> None:
    if n > MAX_VALUE_BYTES:
        raise ValueError(
            f"{what} of {n} bytes is longer than Arrow's limit of {MAX_VALUE_BYTES} bytes per value; "
            "store it elsewhere and keep a reference"
        )


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {_describe(value)}")
    if value.isascii():
        _check_size(len(value), "str")
        return value
    try:
        _check_size(len(value.encode("utf-8")), "str")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"str holds {value[exc.start]!r} at index {exc.start}, a lone surrogate that is not "
            "Unicode text; Arrow stores UTF-8 only"
        ) from None
    return value


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"expected bool, got {_describe(value)}")
    return bool(value)


def _check_bytes(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {_describe(value)}")
    _check_size(memoryview(value).nbytes, "bytes")
    return bytes(value)


def _check_datetime(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected datetime, got {_describe(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"datetime {value.isoformat()} has no time zone; pass an aware datetime, "
            "e.g. datetime.now(timezone.utc)"
        )
    try:
        return value.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError(f"datetime {value.isoformat()} is out of range in UTC") from None


def _check_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise TypeError(f"expected date, got {_describe(value)}")
    return value


class DatetimeType(_Simple):
    def __init__(self) -> None:
        super().__init__(
            "datetime", pa.timestamp("us", tz="UTC"), _check_datetime, pa.types.is_timestamp
        )

    def from_py(self, value: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)  # naive Arrow timestamps are UTC
        return value


class ListType(FieldType):
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner
        self.name = f"list[{inner.signature()}]"
        self.arrow_type = pa.list_(pa.field("item", inner.arrow_type, nullable=inner.nullable))

    def convert(self, value: Any) -> Any:
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, list | tuple):
            raise TypeError(f"expected {self.name} (a list or tuple), got {_describe(value)}")
        out: list[Any] = []
        for i, item in enumerate(value):
            if item is None:
                if not self.inner.nullable:
                    raise ValueError(f"item {i} is None but items are {self.inner.signature()}")
                out.append(None)
                continue
            try:
                out.append(self.inner.convert(item))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"item {i}: {exc}") from None
        return tuple(out)

    def to_py(self, value: Any) -> Any:
        return [None if v is None else self.inner.to_py(v) for v in value]

    def from_py(self, value: Any) -> Any:
        return [None if v is None else self.inner.from_py(v) for v in value]

    def accepts(self, t: pa.DataType) -> bool:
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            return False
        return self.inner.accepts(t.value_type)

    def narrows(self, parent: FieldType) -> bool:
        if self.nullable and not parent.nullable:
            return False
        return isinstance(parent, ListType) and self.inner.narrows(parent.inner)


class StructType(FieldType):
    """A nested row class stored as a struct column."""

    def __init__(self, row_cls: type[RowLike]) -> None:
        self.row_cls = row_cls
        self.name = row_cls.__qualified__
        self.fields: dict[str, FieldType] = {n: f.type for n, f in row_cls.__row_fields__.items()}
        self.arrow_type = pa.struct(
            [pa.field(n, ft.arrow_type, nullable=ft.nullable) for n, ft in self.fields.items()]
        )

    def convert(self, value: Any) -> Any:
        if type(value) is self.row_cls:
            return value
        if isinstance(value, Mapping):
            return self.row_cls(**value)
        raise TypeError(
            f"expected a {self.row_cls.__name__} ({self.name}) or a dict of its fields, "
            f"got {_describe(value)}"
        )

    def to_py(self, value: Any) -> Any:
        return {
            n: None if (v := getattr(value, n)) is None else ft.to_py(v)
            for n, ft in self.fields.items()
        }

    def from_py(self, value: Any) -> Any:
        if value is None:
            return None
        out = {}
        for n, v in value.items():
            ft = self.fields.get(n)
            out[n] = ft.from_py(v) if ft is not None and v is not None else v
        return self.row_cls._from_stored(out)  # type: ignore[attr-defined]

    def accepts(self, t: pa.DataType) -> bool:
        return not struct_problems(self.fields, t)

    def narrows(self, parent: FieldType) -> bool:
        if self.nullable and not parent.nullable:
            return False
        return isinstance(parent, StructType) and parent.row_cls in getattr(
            self.row_cls, "__mro__", ()
        )


def struct_problems(fields: Mapping[str, FieldType], t: pa.DataType) -> list[str]:
    """Why a struct type cannot hold these fields (empty when it can)."""
    if not pa.types.is_struct(t):
        return [f"expected a struct, found {t}"]
    present = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    problems = []
    for n, ft in fields.items():
        if n not in present:
            if not ft.nullable:
                problems.append(f"missing required field {n!r}")
        elif not ft.accepts(present[n]):
            problems.append(f"field {n!r} is {present[n]}, expected {ft.signature()}")
    return problems


# -- weights ---------------------------------------------------------------------------------------

_TENSOR_STRUCT = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.field("item", pa.int64(), nullable=False)), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("nbytes", pa.int64(), nullable=False),
    ]
)
WEIGHTS_ARROW_TYPE = pa.struct(
    [
        pa.field(
            "tensors", pa.list_(pa.field("item", _TENSOR_STRUCT, nullable=False)), nullable=False
        ),
        pa.field("data", pa.large_binary(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("checksum", pa.string(), nullable=False),
    ]
)
"""The Arrow type of a weights column (docs/format.md, "The weights column")."""
assert tuple(f.name for f in WEIGHTS_ARROW_TYPE) == WEIGHTS_FIELDS

CHECKSUM_PLACEHOLDER = CHECKSUM_PREFIX + "?" * 16
"""Stands in for a checksum a :class:`BlobStream` computes while the blob is written."""


class BlobStream:
    """A weights blob that is not in memory: ``to_arrow`` puts its placeholders in the batch (the
    blob's, ``blob``, an untouched anonymous mapping of the right size, and the checksum's,
    ``checksum_value``), and whoever serializes the batch calls :meth:`write` when the blob's turn
    comes, then :meth:`checksum_bytes` for the checksum (which comes after the blob)."""

    def __init__(
        self, weights: Weights, sources: list[tuple[int, torch.Tensor]], start: int, end: int
    ) -> None:
        self.weights, self.sources, self.start, self.end = weights, sources, start, end
        self.checksum: str | None = None
        self.blob = placeholder(end - start)
        self.checksum_value = pa.py_buffer(CHECKSUM_PLACEHOLDER.encode())

    def write(self, write: Callable[[Any], object]) -> None:
        self.checksum = stream_packed(self.sources, self.start, self.end, write)
        self.weights._wrote(self.checksum)

    def checksum_bytes(self) -> bytes:
        if self.checksum is None:
            raise AssertionError("the checksum is written after the blob it covers")
        out = self.checksum.encode()
        if len(out) != len(CHECKSUM_PLACEHOLDER):
            raise AssertionError(f"checksum {self.checksum!r} has an unexpected length")
        return out


def placeholder(size: int) -> pa.Buffer:
    """``size`` bytes of zeros that cost nothing: a private read-only anonymous mapping, which
    the kernel neither backs with memory until read nor charges against its commit limit (so a
    blob larger than RAM still gets one; a shared or writable mapping of 100 GB fails here)."""
    if hasattr(mmap, "MAP_PRIVATE"):  # POSIX
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        return pa.py_buffer(mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ))
    return pa.py_buffer(mmap.mmap(-1, size, access=mmap.ACCESS_READ))  # pragma: no cover


@dataclass
class BlobPlan:
    """Where a weights blob will land in its file (chosen by the writer) and, once ``to_arrow``
    has built the column, the stream that writes the blob in place of its placeholder."""

    position: int = 0
    stream: BlobStream | None = None


class WeightsType(FieldType):
    name = "Weights"
    arrow_type = WEIGHTS_ARROW_TYPE

    def convert(self, value: Any) -> Any:
        if isinstance(value, Weights):
            return value
        if isinstance(value, Mapping):
            return fetch_weights(value)
        raise TypeError(f"expected Weights (from fetch_weights(model)), got {_describe(value)}")

    def accepts(self, t: pa.DataType) -> bool:
        return weights_type_problem(t) is None

    def to_arrow(self, values: Sequence[Any], plan: BlobPlan | None = None) -> pa.Array:
        """One Arrow struct per Weights. With one value and a ``plan``, the blob is a placeholder
        and ``plan.stream`` writes the tensors in its place, straight from the weights' own
        tensors, placed so every tensor lands 64-byte aligned in the file; without a plan the
        blob is built in memory."""
        if len(values) != 1:
            return (
                pa.concat_arrays([self.to_arrow([v]) for v in values])
                if values
                else pa.array([], type=self.arrow_type)
            )
        w = values[0]
        if w is None:
            return pa.array([None], type=self.arrow_type)
        assert isinstance(w, Weights)
        entries, sources, _size = w._layout()
        first = min((e.offset for e in entries if e.nbytes), default=None)
        end = max((e.offset + e.nbytes for e in entries if e.nbytes), default=0)
        lead = plan.position % ALIGNMENT if plan is not None and first is not None else 0
        if first is not None and lead > first:
            raise AssertionError("packed weights keep 64 bytes of slack before the first tensor")
        end = max(end, lead)  # the blob is bytes [lead, end) of the layout
        if plan is not None and end > lead:  # the writer streams it in place of a placeholder
            plan.stream = BlobStream(w, sources, lead, end)
            blob, checksum_value = plan.stream.blob, plan.stream.checksum_value
        else:  # built in memory
            raw = bytearray()
            checksum = stream_packed(sources, lead, end, raw.extend)
            w._wrote(checksum)
            blob, checksum_value = pa.py_buffer(raw), pa.py_buffer(checksum.encode())
        tensors = pa.array(
            [
                {
                    "name": e.name,
                    "dtype": e.dtype,
                    "shape": list(e.shape),
                    "offset": e.offset - lead if e.nbytes else 0,
                    "nbytes": e.nbytes,
                }
                for e in entries
            ],
            type=_TENSOR_STRUCT,
        )
        tensor_list = pa.ListArray.from_arrays(
            pa.array([0, len(entries)], type=pa.int32()), tensors,
            type=WEIGHTS_ARROW_TYPE.field("tensors").type,
        )  # fmt: skip
        data = pa.Array.from_buffers(
            pa.large_binary(),
            1,
            [None, pa.py_buffer(np.array([0, blob.size], dtype=np.int64)), blob],
        )
        checksum = pa.Array.from_buffers(
            pa.string(),
            1,
            [None, pa.py_buffer(np.array([0, checksum_value.size], dtype=np.int32)),
             checksum_value],
        )  # fmt: skip
        return pa.StructArray.from_arrays(
            [tensor_list, data, pa.array([w.fingerprint]), checksum],
            fields=list(WEIGHTS_ARROW_TYPE),
        )

    def decode(self, array: pa.StructArray, index: int, ctx: DecodeContext) -> Weights | None:
        """Weights of row ``index``: zero-copy views of ``ctx.storage`` when the bytes lie there."""
        if is_null(array, index):
            return None
        where = ctx.where
        tensors = array.field("tensors")[index].values
        data_arr = array.field("data")
        count = data_arr.offset + len(data_arr) + 1  # the buffer may be longer: read no more
        offs = np.frombuffer(data_arr.buffers()[1], dtype=np.int64, count=count)
        start, stop = int(offs[data_arr.offset + index]), int(offs[data_arr.offset + index + 1])
        values_buf = data_arr.buffers()[2]
        blob_len = stop - start
        blob_addr = (values_buf.address if values_buf is not None else 0) + start
        stored_checksum = array.field("checksum")[index].as_py()
        stored_fingerprint = array.field("fingerprint")[index].as_py()
        storage, base = ctx.storage_for(blob_addr, blob_len, values_buf, start)
        entries = tuple(decode_entries(tensors, blob_len, where, base=base))
        if _misaligned(storage.data_ptr(), entries):
            # a foreign writer left a tensor misaligned for its dtype: copy into aligned memory
            storage = storage[base : base + blob_len].clone()
            entries = tuple(
                TensorEntry(e.name, e.dtype, e.shape, e.offset - base if e.nbytes else 0, e.nbytes)
                for e in entries
            )
        w = Weights._from_storage(storage, entries)
        if w.fingerprint != stored_fingerprint:
            raise CorruptRowError(
                f"{where}: the weights' fingerprint {stored_fingerprint!r} does not match their "
                f"names, dtypes and shapes ({w.fingerprint!r}); the file is corrupt",
                path=where,
            )
        object.__setattr__(w, "_stored_checksum", stored_checksum)
        return w


def _misaligned(address: int, entries: tuple[TensorEntry, ...]) -> bool:
    """Whether a tensor at ``address + offset`` does not start at a multiple of its item size."""
    n = len(entries)
    offsets = np.fromiter((e.offset for e in entries), np.int64, n)
    sizes = np.fromiter((DTYPE_NAMES[e.dtype].itemsize for e in entries), np.int64, n)
    return bool(((address % 64 + offsets) % sizes).any())  # 64: a multiple of every item size


def is_null(array: pa.Array, index: int) -> bool:
    """Whether row ``index`` of ``array`` is null, without building a scalar (a struct scalar
    would read every byte of its children, e.g. a whole weights blob)."""
    return bool(array.null_count) and not array.is_valid()[index].as_py()


class DecodeContext:
    """What decoding needs of the file being read: its name and the mapped bytes, if any."""

    def __init__(self, where: str, storage: torch.Tensor | None = None, base_address: int = 0):
        self.where = where
        self.storage = storage
        self.base_address = base_address

    def storage_for(
        self, blob_addr: int, blob_len: int, values_buf: pa.Buffer | None, start: int
    ) -> tuple[torch.Tensor, int]:
        """(uint8 storage, offset of the blob in it): the mapped file when the blob lies in it."""
        if self.storage is not None:
            rel = blob_addr - self.base_address
            if rel >= 0 and rel + blob_len <= self.storage.numel():
                return self.storage, rel
        if blob_len == 0 or values_buf is None:
            return torch.empty(0, dtype=torch.uint8), 0
        raw = np.frombuffer(values_buf, dtype=np.uint8, count=blob_len, offset=start)
        return torch.from_numpy(raw.copy()), 0


def decode_entries(
    tensors: pa.StructArray, blob_len: int, where: str, *, base: int = 0
) -> list[TensorEntry]:
    """Validate the tensor table of one weights value against its blob; raise CorruptRowError.

    The entries' offsets are shifted by ``base`` (where the blob starts in its storage)."""

    def bad(msg: str) -> CorruptRowError:
        return CorruptRowError(
            f"{where}: {msg}; the file is corrupt or was not written by modelrows", path=where
        )

    entries = _well_formed_entries(tensors, blob_len, base)
    if entries is None:  # something is off: the careful pass finds it and names it
        entries = _checked_entries(tensors, blob_len, base, where, bad)
    overlap = _first_overlap(entries)
    if overlap is not None:
        raise bad(
            f"tensors overlap at byte {overlap - base}; tensors share bytes only when tied "
            "(identical)"
        )
    return entries


def _first_overlap(entries: list[TensorEntry]) -> int | None:
    """The offset where a tensor starts inside another, or None. Tied tensors (same offset, size,
    dtype and shape) share their bytes; no others may. Offsets and sizes are checked already,
    so their sums do not overflow."""
    live = [e for e in entries if e.nbytes]
    if len(live) < 2:
        return None
    offsets = np.fromiter((e.offset for e in live), np.int64, len(live))
    sizes = np.fromiter((e.nbytes for e in live), np.int64, len(live))
    order = np.lexsort((sizes, offsets))
    starts, lengths = offsets[order], sizes[order]
    # in start order, a tensor overlapping any later one overlaps the next (or is tied to it)
    for i in np.flatnonzero(starts[:-1] + lengths[:-1] > starts[1:]).tolist():
        a, b = live[order[i]], live[order[i + 1]]
        if (a.offset, a.nbytes, a.dtype, a.shape) != (b.offset, b.nbytes, b.dtype, b.shape):
            return int(starts[i + 1])
    return None


def _well_formed_entries(
    tensors: pa.StructArray, blob_len: int, base: int
) -> list[TensorEntry] | None:
    """The entries of a well-formed tensor table, checked with whole-column operations; None at
    the first doubt (a null, a bad value), for the careful pass to name."""
    cols = [tensors.field(k) for k in ("name", "dtype", "shape", "offset", "nbytes")]
    name_col, dtype_col, shape_col, offset_col, nbytes_col = cols
    if tensors.null_count or any(c.null_count for c in cols) or shape_col.values.null_count:
        return None
    names, dtypes = name_col.to_pylist(), dtype_col.to_pylist()
    if len(set(names)) != len(names) or "" in names:
        return None
    try:
        itemsizes = np.array([DTYPE_NAMES[d].itemsize for d in dtypes], dtype=np.int64)
    except KeyError:
        return None
    bounds = shape_col.offsets.to_numpy()
    first = int(bounds[0]) if len(bounds) else 0
    dims = shape_col.values.to_numpy()[first : int(bounds[-1]) if len(bounds) else 0]
    rel = bounds - first
    if (len(dims) and dims.min() < 0) or (len(rel) > 1 and np.diff(rel).max() > MAX_NDIM):
        return None
    flat, cuts = dims.tolist(), rel.tolist()
    shapes = [tuple(flat[a:b]) for a, b in itertools.pairwise(cuts)]
    numels = [math.prod(shape) for shape in shapes]
    if numels and max(numels) > _MAX_NUMEL:  # int64 arithmetic below must not overflow
        return None
    offsets = offset_col.to_numpy(zero_copy_only=False)
    sizes = nbytes_col.to_numpy(zero_copy_only=False)
    used = sizes > 0
    if (
        (offsets < 0).any()
        or (sizes != np.array(numels, dtype=np.int64) * itemsizes).any()
        or (offsets > blob_len - sizes).any()
        or (offsets[used] % itemsizes[used]).any()
    ):
        return None
    # an empty tensor has no bytes, so where it says they are does not matter: the start
    starts = np.where(used, offsets + base, 0).tolist()
    return list(map(TensorEntry, names, dtypes, shapes, starts, sizes.tolist()))


_MAX_NUMEL = 1 << 58  # times an itemsize of at most 16: below 2**63


def _checked_entries(
    tensors: pa.StructArray,
    blob_len: int,
    base: int,
    where: str,
    bad: Callable[[str], CorruptRowError],
) -> list[TensorEntry]:
    """The tensor table checked entry by entry, raising at the first problem with its name."""
    names = tensors.field("name").to_pylist()
    dtypes = tensors.field("dtype").to_pylist()
    shapes = tensors.field("shape").to_pylist()
    offsets = tensors.field("offset").to_pylist()
    sizes = tensors.field("nbytes").to_pylist()
    entries: list[TensorEntry] = []
    seen: set[str] = set()
    for name, dtype, shape, offset, nbytes in zip(
        names, dtypes, shapes, offsets, sizes, strict=True
    ):
        if not isinstance(name, str) or not name:
            raise bad(f"a tensor has an empty or missing name ({name!r})")
        if name in seen:
            raise bad(f"tensor {name!r} appears twice")
        seen.add(name)
        if dtype in FORMAT_DTYPES and dtype not in DTYPE_NAMES:
            raise CorruptRowError(
                f"{where}: tensor {name!r} has dtype {dtype!r}, which this torch "
                f"({torch.__version__}) lacks; upgrade torch to read it",
                path=where,
            )
        if dtype not in DTYPE_NAMES:
            raise bad(
                f"tensor {name!r} has unknown dtype {dtype!r} (known: {', '.join(FORMAT_DTYPES)})"
            )
        if shape is None or len(shape) > MAX_NDIM or any(d is None or d < 0 for d in shape):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if offset is None or nbytes is None or offset < 0 or nbytes < 0:
            raise bad(f"tensor {name!r} has an invalid offset {offset!r} or size {nbytes!r}")
        itemsize = DTYPE_NAMES[dtype].itemsize
        expected = math.prod(shape) * itemsize
        if expected != nbytes:
            raise bad(
                f"tensor {name!r} is {dtype} {tuple(shape)} = {expected} bytes but declares {nbytes}"
            )
        if nbytes and offset % itemsize:
            raise bad(
                f"tensor {name!r} starts at byte {offset} of the data, not at a multiple of its "
                f"{itemsize}-byte elements"
            )
        if offset + nbytes > blob_len:
            raise bad(
                f"tensor {name!r} needs bytes [{offset}, {offset + nbytes}) but the data holds "
                f"only {blob_len}"
            )
        # an empty tensor has no bytes, so where it says they are does not matter: put it at the
        # (aligned) start of the storage
        entries.append(
            TensorEntry(name, dtype, tuple(shape), offset + base if nbytes else 0, nbytes)
        )
    return entries


def weights_type_problem(t: pa.DataType) -> str | None:
    """Why ``t`` is not a weights column type, or None."""
    if not pa.types.is_struct(t):
        return f"expected the weights struct, found {t}"
    expected = {f.name: f.type for f in WEIGHTS_ARROW_TYPE}
    present = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    for name, typ in expected.items():
        if name not in present:
            return f"the weights struct lacks field {name!r}"
        if present[name] != typ:
            return f"weights field {name!r} is {present[name]}, expected {typ}"
    return None


# -- resolution --------------------------------------------------------------------------------------


def _scalar_types() -> dict[Any, FieldType]:
    ints: dict[Any, pa.DataType] = {
        np.int8: pa.int8(), np.int16: pa.int16(), np.int32: pa.int32(), np.int64: pa.int64(),
        np.uint8: pa.uint8(), np.uint16: pa.uint16(), np.uint32: pa.uint32(), np.uint64: pa.uint64(),
    }  # fmt: skip
    table: dict[Any, FieldType] = {
        int: IntType("int", pa.int64(), *_INT64),
        float: FloatType("float", pa.float64(), np.float64),
        str: _Simple(
            "str", pa.string(), _check_str,
            lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
        ),
        bool: _Simple("bool", pa.bool_(), _check_bool, pa.types.is_boolean),
        bytes: _Simple(
            "bytes", pa.binary(), _check_bytes,
            lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t),
        ),
        dt.datetime: DatetimeType(),
        dt.date: _Simple("date", pa.date32(), _check_date, pa.types.is_date),
        np.float16: FloatType("np.float16", pa.float16(), np.float16),
        np.float32: FloatType("np.float32", pa.float32(), np.float32),
        np.float64: FloatType("np.float64", pa.float64(), np.float64),
        np.bool_: _Simple("bool", pa.bool_(), _check_bool, pa.types.is_boolean),
        Weights: WeightsType(),
    }  # fmt: skip
    for np_type, arrow in ints.items():
        info = np.iinfo(np_type)
        table[np_type] = IntType(f"np.{np_type.__name__}", arrow, int(info.min), int(info.max))
    return table


_SCALARS = _scalar_types()


def resolve(annotation: Any, *, where: str) -> FieldType:
    """The FieldType of an annotation; SchemaError naming ``where`` if it cannot be mapped.

    ``Annotated[T, field_type]`` uses the given FieldType instance (a column layout other than
    the default for ``T``, such as LegolasFlux.jl's weights); other metadata is ignored.
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        given = [m for m in metadata if isinstance(m, FieldType)]
        if len(given) > 1:
            raise SchemaError(f"{where}: {annotation!r} names {len(given)} field types; give one")
        return given[0] if given else resolve(base, where=where)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1 or len(members) == len(typing.get_args(annotation)):
            raise SchemaError(
                f"{where}: union {annotation!r} is not supported; use a single type or `X | None`"
            )
        return resolve(members[0], where=where).optional()
    if origin in (list, Sequence, tuple) or annotation is list:
        args: tuple[Any, ...] = typing.get_args(annotation)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise SchemaError(f"{where}: {annotation!r} is not supported; use list[T]")
        if not args:
            raise SchemaError(
                f"{where}: a bare list has no item type; write list[int], list[str] ..."
            )
        inner = resolve(args[0], where=where)
        if isinstance(inner, WeightsType):
            raise SchemaError(f"{where}: Weights can only be a top-level field, not in a list")
        return ListType(inner)
    if isinstance(annotation, type) and hasattr(annotation, "__row_fields__"):
        if not getattr(annotation, "__qualified__", None):
            raise SchemaError(f"{where}: a nested row class must declare schema= and version=")
        if any(isinstance(f.type, WeightsType) for f in annotation.__row_fields__.values()):
            raise SchemaError(f"{where}: a nested row cannot hold Weights; keep them top-level")
        return StructType(annotation)
    try:
        hit = _SCALARS.get(annotation)
    except TypeError:  # unhashable annotation
        hit = None
    if hit is None:
        raise SchemaError(
            f"{where}: cannot map annotation {annotation!r} to an Arrow type; use int, float, str, "
            "bool, bytes, datetime, date, list[T], a numpy scalar type (np.float32 ...), "
            "Weights, another Row class, or `X | None`"
        )
    return hit
