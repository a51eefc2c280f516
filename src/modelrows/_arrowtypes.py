"""Python annotations <-> Arrow types.

``resolve(annotation)`` turns a field annotation (``int``, ``float | None``, ``list[str]``,
``np.float32``, a nested row class, ``Weights`` ...) into a :class:`FieldType` that converts and
checks Python values, names its Arrow type, tells which Arrow types it can read, and moves values
to and from Arrow arrays. Nothing here knows about files.
"""

from __future__ import annotations

import datetime as dt
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from ._blob import (
    WEIGHTS_ARROW_TYPE,
    BlobPlan,
    DecodeContext,
    decode_weights,
    weights_array,
    weights_type_problem,
)
from ._errors import SchemaError
from ._weights import Weights, fetch_weights

__all__ = ["FieldType", "RowLike", "WeightsType", "resolve"]

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


def integer_range(t: pa.DataType) -> tuple[int, int]:
    """The values an Arrow integer type holds (computed, not through pandas, which pyarrow's
    ``to_pandas_dtype`` would import)."""
    bits = t.bit_width
    if pa.types.is_signed_integer(t):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


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
        lo, hi = integer_range(t)
        return self.lo <= lo and hi <= self.hi

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


class WeightsType(FieldType):
    """A weights column: :class:`~modelrows.Weights` <-> the codec's struct (``_blob``)."""

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
        and ``plan.stream`` writes the tensors in its place (see ``_blob.weights_array``);
        without a plan the blob is built in memory."""
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
        return weights_array(entries, sources, w.fingerprint, plan, on_checksum=w._wrote)

    def decode(self, array: pa.StructArray, index: int, ctx: DecodeContext) -> Weights | None:
        """Weights of row ``index``: views of ``ctx.storage`` when the bytes lie there, built
        when a tensor is first asked for."""
        decoded = decode_weights(array, index, ctx)
        if decoded is None:
            return None
        return Weights._from_file(
            decoded.storage,
            decoded.entries,
            fingerprint=decoded.fingerprint,
            stored_checksum=decoded.checksum,
            where=ctx.where,
        )


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
