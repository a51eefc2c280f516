"""Versioned, extensible row schemas, after Legolas.jl.

A class statement declares a schema version::

    class DigitsRowV1(ModelV1, schema="digits.model", version=1):
        run: str
        epoch: int | None = None

Every row class has a schema name (``[a-z0-9.-]+``), a version (int >= 0), at most one parent,
and a qualified identifier such as ``digits.model@1>modelrows.model@1``. A registry maps
identifiers to classes. Rows are immutable values.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from ._arrowtypes import FieldType, resolve
from ._errors import RowValidationError, SchemaError, SchemaMismatchError, UnknownSchemaError
from ._format import FORMAT_VERSION, MANAGED_COLUMNS, METADATA_FORMAT_KEY, METADATA_SCHEMA_KEY
from ._weights import Weights

__all__ = [
    "Field",
    "ModelV1",
    "Row",
    "lookup",
    "nearest_declared",
    "parse_qualified",
]

_NAME_RE = re.compile(r"^[a-z0-9.-]+$")
_IDENT_RE = re.compile(r"^([a-z0-9.-]+)@(0|[1-9][0-9]{0,17})$")
_MISSING: Any = object()

_registry: dict[str, type[Row]] = {}


@dataclass(frozen=True)
class Field:
    """One declared field: its name, resolved type, default, and the schema that declared it."""

    name: str
    type: FieldType
    default: Any
    declared_in: str

    @property
    def required(self) -> bool:
        """No default: the constructor needs a value (None allowed only if nullable)."""
        return self.default is _MISSING

    def __repr__(self) -> str:
        default = "" if self.required else f" = {self.default!r}"
        return f"{self.name}: {self.type.signature()}{default}"


def parse_qualified(qualified: object, *, where: str = "schema identifier") -> list[str]:
    """``'a@1>b@2'`` -> ``['a@1', 'b@2']``; UnknownSchemaError if malformed."""
    if not isinstance(qualified, str) or not qualified:
        raise UnknownSchemaError(f"{where}: missing schema identifier (got {qualified!r})")
    parts = qualified.split(">")
    for part in parts:
        if not _IDENT_RE.match(part):
            raise UnknownSchemaError(
                f"{where}: malformed schema identifier {qualified!r}: {part!r} is not 'name@version' "
                "with name in [a-z0-9.-] and version a whole number"
            )
    if len(set(parts)) != len(parts) or len({p.split("@")[0] for p in parts}) != len(parts):
        raise UnknownSchemaError(f"{where}: schema identifier {qualified!r} repeats a schema")
    return parts


def lookup(identifier: str) -> type[Row] | None:
    """The row class declared as ``name@version`` in this process, or None."""
    return _registry.get(identifier)


def nearest_declared(qualified: str, *, where: str = "schema identifier") -> type[Row]:
    """The first class of the qualified chain declared here with the same parents.

    A class declared under one of the chain's identifiers but with other parents is another
    schema that happens to share the name; it is passed over for the next ancestor.
    UnknownSchemaError if no schema of the chain is declared.
    """
    chain = parse_qualified(qualified, where=where)
    for i, ident in enumerate(chain):
        cls = _registry.get(ident)
        if cls is not None and cls.__qualified__ == ">".join(chain[i:]):
            return cls
    raise UnknownSchemaError(
        f"{where}: declares schema {qualified!r}, and none of its schemas is declared in this "
        "process (with the same parents); import or declare the row class first"
    )


class Row:
    """The root of all row classes: a row without weights.

    Subclass it with ``schema=`` and ``version=`` to declare a schema version; annotate fields.

    >>> class RunConfigV1(Row, schema="doc.config", version=1):
    ...     seed: int = 5
    ...     dropout_rate: float = 0.0
    >>> RunConfigV1(seed=3)
    RunConfigV1(seed=3, dropout_rate=0.0)
    """

    __row_fields__: ClassVar[dict[str, Field]] = {}
    __schema_name__: ClassVar[str] = ""
    __schema_version__: ClassVar[int] = -1
    __identifier__: ClassVar[str] = ""
    __qualified__: ClassVar[str] = ""
    __row_parent__: ClassVar[type[Row] | None] = None

    _extras: dict[str, Any]
    _declared: str | None

    def __init_subclass__(
        cls, *, schema: str | None = None, version: int | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        # the frame running the class statement: string annotations may name its locals
        scope = sys._getframe(1)
        _declare(cls, schema, version, {**scope.f_globals, **scope.f_locals})

    # -- construction ----------------------------------------------------------------------------
    def __init__(self, **values: Any) -> None:
        cls = type(self)
        if not cls.__identifier__:
            raise SchemaError("Row is abstract; declare a subclass with schema= and version=")
        unknown = [k for k in values if k not in cls.__row_fields__]
        if unknown:
            raise RowValidationError(
                f"{cls.__name__} ({cls.__identifier__}) has no field "
                f"{', '.join(map(repr, unknown))}; its fields are: "
                f"{', '.join(cls.__row_fields__) or '(none)'}"
            )
        converted: dict[str, Any] = {}
        for name, f in cls.__row_fields__.items():
            if name in values:
                value = values[name]
            elif f.required:
                raise RowValidationError(
                    f"{cls.__name__}.{name} is required ({f.type.signature()}) but was not given"
                )
            else:
                value = f.default
            converted[name] = _convert(cls, f, value)
        object.__setattr__(self, "__dict__", converted)
        object.__setattr__(self, "_extras", {})
        object.__setattr__(self, "_declared", None)
        for klass in reversed(cls.__mro__):
            check = klass.__dict__.get("check")
            if check is not None and klass is not Row:
                try:
                    check(self)
                except (ValueError, TypeError, AssertionError) as exc:
                    raise RowValidationError(
                        f"{cls.__name__}: check of {getattr(klass, '__identifier__', '') or klass.__name__} "
                        f"failed: {exc}"
                    ) from exc

    def check(self) -> None:
        """Override to validate a whole row (raise ValueError); parents' checks run first."""

    @classmethod
    def _from_stored(
        cls,
        values: Mapping[str, Any],
        *,
        extras: Mapping[str, Any] | None = None,
        declared: str | None = None,
    ) -> Row:
        """A row from stored values: known fields are validated, the rest kept as extras."""
        known = {k: v for k, v in values.items() if k in cls.__row_fields__}
        for name, f in cls.__row_fields__.items():
            if name not in known and f.type.nullable:
                known[name] = None if f.required else f.default
        row = cls(**known)
        rest = {k: v for k, v in values.items() if k not in cls.__row_fields__}
        rest.update(extras or {})
        object.__setattr__(row, "_extras", rest)
        object.__setattr__(row, "_declared", declared)
        return row

    # -- immutability and value semantics -----------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__} rows are immutable; use row.replace({name}=...) for a changed copy"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} rows are immutable")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            extras = object.__getattribute__(self, "_extras")
        except AttributeError:
            extras = None
        if extras and name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Row)
        return self._values() == other._values() and self._extras == other._extras

    def __hash__(self) -> int:
        return hash((type(self), tuple(self._values().values())))

    def _values(self) -> dict[str, Any]:
        return {n: self.__dict__[n] for n in type(self).__row_fields__}

    def __iter__(self) -> Iterator[str]:
        return iter(type(self).__row_fields__)

    def to_dict(self) -> dict[str, Any]:
        """Fields (then any undeclared columns read from a file) as plain Python values."""
        out: dict[str, Any] = {n: _plain(v) for n, v in self._values().items()}
        out.update({k: _plain(v) for k, v in self._extras.items()})
        return out

    def replace(self, **changes: Any) -> Row:
        """A copy with some fields changed; validated like a new row."""
        values = self._values()
        values.update(changes)
        row = type(self)(**values)
        object.__setattr__(row, "_extras", dict(self._extras))
        object.__setattr__(row, "_declared", self._declared)
        return row

    @property
    def extras(self) -> dict[str, Any]:
        """Columns of the file this row came from that its class does not declare."""
        return dict(self._extras)

    @property
    def declared_schema(self) -> str:
        """The qualified identifier the row was stored under (its own class's if not read)."""
        return self._declared or type(self).__qualified__

    def __repr__(self) -> str:
        parts = [f"{n}={_short(v)}" for n, v in self._values().items()]
        parts += [f"{k}={_short(v)}" for k, v in self._extras.items()]
        tail = ""
        if self._declared and self._declared != type(self).__qualified__:
            tail = f"  # read as {type(self).__qualified__}; file declares {self._declared}"
        return f"{type(self).__name__}({', '.join(parts)}){tail}"

    def __reduce__(self) -> Any:
        raise TypeError("rows are never pickled; store them with write_model_row or a Catalog")

    # -- Arrow -------------------------------------------------------------------------------------
    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        """The Arrow schema of this row class, with the qualified identifier in its metadata."""
        if not cls.__identifier__:
            raise SchemaError("Row is abstract; declare a subclass with schema= and version=")
        return pa.schema(
            [
                pa.field(n, f.type.arrow_type, nullable=f.type.nullable)
                for n, f in cls.__row_fields__.items()
            ],
            metadata={
                METADATA_SCHEMA_KEY: cls.__qualified__,
                METADATA_FORMAT_KEY: str(FORMAT_VERSION),
            },
        )

    @classmethod
    def schema_problems(cls, schema: pa.Schema) -> list[str]:
        """Every way ``schema`` fails to hold this row class (empty when it holds it).

        Compatible Arrow types are accepted (large_string for str, int32 for int ...), and
        extra columns are allowed.
        """
        problems = []
        for name, f in cls.__row_fields__.items():
            idx = schema.get_field_index(name)
            if idx < 0:
                if not f.type.nullable:
                    problems.append(f"missing required column {name!r} ({f.type.signature()})")
                continue
            if schema.get_all_field_indices(name) != [idx]:
                problems.append(f"column {name!r} appears more than once")
                continue
            actual = schema.field(idx).type
            if not f.type.accepts(actual):
                problems.append(f"column {name!r} is {actual}, expected {f.type.signature()}")
        return problems

    @classmethod
    def validate_schema(cls, schema: pa.Schema, *, where: str = "Arrow schema") -> None:
        """Raise SchemaMismatchError listing every problem ``schema_problems`` finds."""
        problems = cls.schema_problems(schema)
        if problems:
            raise SchemaMismatchError(
                f"{where} does not hold {cls.__name__} ({cls.__qualified__}): "
                + "; ".join(problems),
                problems,
            )


def _plain(value: Any) -> Any:
    if isinstance(value, Row):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    if isinstance(value, Weights):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(cls: type[Row], f: Field, value: Any) -> Any:
    if value is None:
        if f.type.nullable:
            return None
        raise RowValidationError(
            f"{cls.__name__}.{f.name}: expected {f.type.signature()}, got None "
            f"(declare it as `{f.type.signature()} | None` to allow missing values)"
        )
    try:
        return f.type.convert(value)
    except RowValidationError as exc:
        raise RowValidationError(f"{cls.__name__}.{f.name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RowValidationError(f"{cls.__name__}.{f.name}: {exc}") from None


_RESERVED = {n for n in dir(Row) if not n.startswith("__")} | set(MANAGED_COLUMNS)


def _declare(
    cls: type[Row], schema: str | None, version: int | None, scope: dict[str, Any]
) -> None:
    where = cls.__qualname__
    if schema is None or version is None:
        raise SchemaError(
            f"class {where} must declare its schema: "
            f'class {cls.__name__}(..., schema="my.name", version=1)'
        )
    if not isinstance(schema, str) or not _NAME_RE.match(schema):
        raise SchemaError(f"{where}: schema name {schema!r} must match [a-z0-9.-]+")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise SchemaError(f"{where}: version {version!r} must be an int >= 0")
    parents = [b for b in cls.__bases__ if issubclass(b, Row)]
    if len(parents) != 1:
        raise SchemaError(
            f"{where}: a schema extends at most one parent; it names {len(parents)} row classes"
        )
    parent = parents[0]
    identifier = f"{schema}@{version}"
    if parent is not Row:
        chain_names = [q.split("@")[0] for q in parent.__qualified__.split(">")]
        if schema in chain_names:
            raise SchemaError(
                f"{where}: schema {identifier} cannot extend {parent.__qualified__}, "
                "which is another version of itself"
            )
    qualified = identifier if parent is Row else f"{identifier}>{parent.__qualified__}"

    own = _own_annotations(cls, scope)
    fields: dict[str, Field] = dict(parent.__row_fields__)
    for name, annotation in own.items():
        if typing.get_origin(annotation) is ClassVar or annotation is ClassVar:
            continue
        fwhere = f"{cls.__name__}.{name}"
        if name.startswith("_"):
            raise SchemaError(f"{fwhere}: field names cannot start with '_'")
        if name in _RESERVED:
            raise SchemaError(f"{fwhere}: {name!r} is reserved (a Row method or catalog column)")
        ftype = resolve(annotation, where=fwhere)
        default = cls.__dict__.get(name, _MISSING)
        if name in fields:
            inherited = fields[name]
            if not ftype.narrows(inherited.type):
                raise SchemaError(
                    f"{fwhere}: cannot change inherited field {name!r} from "
                    f"{inherited.type.signature()} ({inherited.declared_in}) to "
                    f"{ftype.signature()}; a child may only narrow a type (e.g. int | None -> int)"
                )
            # a redeclared field keeps the parent's default, if it still fits the narrowed type
            still_fits = not (inherited.default is None and not ftype.nullable)
            if default is _MISSING and name not in cls.__dict__ and still_fits:
                default = inherited.default
        if default is not _MISSING:
            if callable(default) and not isinstance(default, type):
                raise SchemaError(f"{fwhere}: a default must be a value, not a function")
            if default is None and not ftype.nullable:
                raise SchemaError(
                    f"{fwhere}: default None needs the type `{ftype.signature()} | None`"
                )
            try:
                default = None if default is None else ftype.convert(default)
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"{fwhere}: invalid default: {exc}") from None
        fields[name] = Field(name, ftype, default, identifier)
    for name in own:
        if name in cls.__dict__:
            delattr(cls, name)  # defaults live in Field, not on the class

    existing = _registry.get(identifier)
    if existing is not None and _signature(existing) != _signature_of(qualified, fields):
        raise SchemaError(
            f"{where}: {identifier} is already declared (by {existing.__module__}."
            f"{existing.__qualname__}) with different fields or parent:\n"
            f"  existing: {_signature(existing)}\n  new:      {_signature_of(qualified, fields)}\n"
            f"Bump the version (version={version + 1}) to change a schema."
        )
    cls.__row_fields__ = fields
    cls.__schema_name__ = schema
    cls.__schema_version__ = version
    cls.__identifier__ = identifier
    cls.__qualified__ = qualified
    cls.__row_parent__ = None if parent is Row else parent
    _registry[identifier] = cls  # an identical re-declaration (a notebook cell) takes over


def _own_annotations(cls: type, scope: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(inspect.get_annotations(cls, eval_str=True, globals=scope))
    except NameError as exc:
        raise SchemaError(
            f"{cls.__qualname__}: cannot resolve an annotation ({exc}); define the types it "
            "names at module level, or avoid string annotations for them"
        ) from None


def _signature_of(qualified: str, fields: Mapping[str, Field]) -> str:
    return (
        qualified + " {" + ", ".join(f"{n}: {f.type.signature()}" for n, f in fields.items()) + "}"
    )


def _signature(cls: type[Row]) -> str:
    return _signature_of(cls.__qualified__, cls.__row_fields__)


class ModelV1(Row, schema="modelrows.model", version=1):
    """``modelrows.model@1``: a model's weights and the version of the code that builds it.

    >>> import torch.nn as nn
    >>> from modelrows import fetch_weights
    >>> ModelV1(weights=fetch_weights(nn.Linear(2, 2)), architecture_version=1)
    ModelV1(weights=<Weights: 2 tensors, 24 B>, architecture_version=1)
    """

    weights: Weights
    architecture_version: int | None = None
