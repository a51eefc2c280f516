"""The values checksum of a row (docs/format.md 2.3, format version 2).

The weights checksum (4.6) guards tensor bytes; this one guards everything else a reader takes
from a row file: its schema identifier, every column's name and the row's value in it, as
Arrow holds it. It is the XXH3-64 of a canonical byte encoding of those values, defined by type
(not by Arrow's buffers, whose layout is the writer's choice), so any Arrow implementation can
compute it: one tag byte per value, then a body.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import pyarrow as pa
import xxhash

from ._format import CHECKSUM_PREFIX, is_weights_type

__all__ = ["batch_columns", "values_checksum", "values_encoding"]

_U64 = struct.Struct("<Q").pack
_I64 = struct.Struct("<q").pack
_UNITS = {"s": b"s", "ms": b"m", "us": b"u", "ns": b"n"}
_NULL = b"n"

_Encoder = Callable[[pa.Array], list[bytes]]
"""The encodings of every element of an array, in order."""


def _str(data: bytes) -> bytes:
    return _U64(len(data)) + data


def _packed(tag: bytes, code: str, view: pa.DataType | None = None) -> _Encoder:
    """Fixed-size values packed little-endian (``view``: reinterpret the array first, for the
    bits of a float as stored, or the integer under a timestamp or date)."""
    pack = struct.Struct("<" + code).pack

    def encode(a: pa.Array) -> list[bytes]:
        values = (a.view(view) if view is not None else a).to_pylist()
        return [_NULL if v is None else tag + pack(v) for v in values]

    return encode


def _bool(a: pa.Array) -> list[bytes]:
    return [_NULL if v is None else (b"b\x01" if v else b"b\x00") for v in a.to_pylist()]


def _string(a: pa.Array) -> list[bytes]:
    # the values were validated as UTF-8 (pyarrow's full validation): encoding gives them back
    return [_NULL if v is None else b"s" + _str(v.encode("utf-8")) for v in a.to_pylist()]


def _binary(a: pa.Array) -> list[bytes]:
    return [_NULL if v is None else b"y" + _str(v) for v in a.to_pylist()]


def _timestamp(a: pa.Array) -> list[bytes]:
    t = a.type
    head = b"t" + _UNITS[t.unit] + _str((t.tz or "").encode("utf-8"))
    return [_NULL if v is None else head + _I64(v) for v in a.view(pa.int64()).to_pylist()]


def _valid(a: pa.Array) -> list[bool]:
    if not a.null_count:
        return [True] * len(a)
    return [a[i].is_valid for i in range(len(a))]


def _list(a: pa.Array) -> list[bytes]:
    t = a.type
    valid = _valid(a)
    if t.id == _FIXED_SIZE_LIST:
        size = t.list_size
        starts = [(a.offset + k) * size for k in range(len(a) + 1)]
    else:
        starts = a.offsets.to_pylist()  # the array's offset applied; into all of a.values
    first = starts[0]
    items = _encode(a.values.slice(first, starts[-1] - first))
    out = []
    for k, ok in enumerate(valid):
        if not ok:
            out.append(_NULL)
            continue
        begin, end = starts[k] - first, starts[k + 1] - first
        out.append(b"l" + _U64(end - begin) + b"".join(items[begin:end]))
    return out


def _struct(a: pa.Array) -> list[bytes]:
    t = a.type
    head = b"r" + _U64(t.num_fields)
    names = [_str(t.field(k).name.encode("utf-8")) for k in range(t.num_fields)]
    children = [_encode(a.field(k)) for k in range(t.num_fields)]  # sliced as the struct is
    return [
        head + b"".join(name + child[i] for name, child in zip(names, children, strict=True))
        if ok
        else _NULL
        for i, ok in enumerate(_valid(a))
    ]


_ENCODERS: dict[int, _Encoder] = {
    pa.bool_().id: _bool,
    **{t().id: _packed(b"i", "q") for t in (pa.int8, pa.int16, pa.int32, pa.int64)},
    **{t().id: _packed(b"u", "Q") for t in (pa.uint8, pa.uint16, pa.uint32, pa.uint64)},
    pa.float16().id: _packed(b"e", "H", pa.uint16()),  # the bits as stored, NaN payloads too
    pa.float32().id: _packed(b"f", "I", pa.uint32()),
    pa.float64().id: _packed(b"d", "d"),  # a Python float holds a double's bits exactly
    **{t().id: _string for t in (pa.string, pa.large_string, pa.string_view)},
    **{t().id: _binary for t in (pa.binary, pa.large_binary, pa.binary_view)},
    pa.binary(1).id: _binary,  # fixed_size_binary
    pa.timestamp("us").id: _timestamp,
    pa.date32().id: _packed(b"D", "q", pa.int32()),
    pa.date64().id: _packed(b"M", "q", pa.int64()),
    pa.list_(pa.int8()).id: _list,
    pa.large_list(pa.int8()).id: _list,
    pa.list_(pa.int8(), 1).id: _list,  # fixed_size_list
    pa.struct([]).id: _struct,
}
_STRUCT = pa.struct([]).id
_FIXED_SIZE_LIST = pa.list_(pa.int8(), 1).id


def _encode(a: pa.Array) -> list[bytes]:
    encode = _ENCODERS.get(a.type.id)
    if encode is None:
        raise TypeError(f"a column of Arrow type {a.type} has no values encoding")
    return encode(a)


def values_encoding(
    qualified: str, columns: Iterable[tuple[pa.Field, pa.Array]], index: int = 0
) -> bytes:
    """The values encoding (docs/format.md 2.3) of row ``index`` of ``columns`` (each a field
    and its array), whose schema identifier is ``qualified``. TypeError for a type the format
    does not map."""
    out = [_str(qualified.encode("utf-8"))]
    for f, column in columns:
        a = column.slice(index, 1) if index or len(column) != 1 else column
        out.append(_str(f.name.encode("utf-8")))
        if f.type.id == _STRUCT and is_weights_type(f.type):  # its fingerprint and checksum
            out.append(_NULL if a.null_count else b"w")
        else:
            out.append(_encode(a)[0])
    return b"".join(out)


def values_checksum(
    qualified: str, columns: Iterable[tuple[pa.Field, pa.Array]], index: int = 0
) -> str:
    """``xxh3-64:<hex>`` of :func:`values_encoding`: what ``modelrows_values_checksum`` holds."""
    digest = xxhash.xxh3_64_intdigest(values_encoding(qualified, columns, index))
    return f"{CHECKSUM_PREFIX}{digest:016x}"


def batch_columns(batch: pa.RecordBatch) -> Iterable[tuple[pa.Field, pa.Array]]:
    """The (field, array) pairs of a record batch, for :func:`values_checksum`."""
    return zip(batch.schema, batch.columns, strict=True)
