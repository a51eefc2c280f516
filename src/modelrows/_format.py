"""The on-disk format's facts, in one place: docs/format.md as constants and small functions.

Sections follow docs/format.md. Every other module takes these from here instead of spelling
them again. Nothing here imports pyarrow, numpy or torch at import time (the Arrow types of the
managed columns are built on first use), so a command that only needs a name or a rule stays
light.
"""

from __future__ import annotations

import os
import re
import secrets
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "ALIGNMENT",
    "CATALOG_FILE",
    "CATALOG_FORMAT",
    "CATALOG_FORMAT_VERSION",
    "CHECKSUM_PREFIX",
    "DTYPE_ITEMSIZE",
    "FORMAT_DTYPES",
    "FORMAT_VERSION",
    "HIVE_NULL",
    "MAGIC",
    "MANAGED_COLUMNS",
    "MAX_NDIM",
    "METADATA_FORMAT_KEY",
    "METADATA_SCHEMA_KEY",
    "METADATA_VALUES_KEY",
    "ROW_FILE_SUFFIX",
    "ROW_ID",
    "ROW_ID_TYPE",
    "VALUES_CHECKSUM_SINCE",
    "WEIGHTS_FIELDS",
    "WRITE_ALIGN",
    "WRITTEN_AT",
    "WRITTEN_AT_TYPE",
    "host_tag",
    "is_reserved_column",
    "is_row_file_name",
    "is_temp_name",
    "is_weights_type",
    "managed_fields",
    "parse_row_file_name",
    "parse_temp_name",
    "row_file_name",
    "temp_name",
]

# -- 1. row files ----------------------------------------------------------------------------------

MAGIC = b"ARROW1"
"""The Arrow IPC file magic, at both ends of a row file."""

ROW_FILE_SUFFIX = ".arrow"

# -- 2. schema metadata ----------------------------------------------------------------------------

METADATA_SCHEMA_KEY = "legolas_schema_qualified"
"""Schema metadata key holding the qualified schema identifier (as in Legolas.jl)."""

METADATA_FORMAT_KEY = "modelrows_format_version"
"""Schema metadata key holding the format version, a decimal integer."""

FORMAT_VERSION = 2
"""The version of the on-disk format this library writes (docs/format.md): 2 adds the values
checksum (:data:`METADATA_VALUES_KEY`) to version 1."""

METADATA_VALUES_KEY = "modelrows_values_checksum"
"""Schema metadata key holding the values checksum (section 2.3): ``xxh3-64:<hex>`` of the
canonical encoding of the row's schema identifier, column names and values other than tensors."""

VALUES_CHECKSUM_SINCE = 2
"""The first format version whose files carry :data:`METADATA_VALUES_KEY` (and must)."""

# -- 3. columns ------------------------------------------------------------------------------------


def is_reserved_column(name: str) -> bool:
    """Whether no row class may declare a column of this name: the managed columns and names
    starting with ``_``."""
    return name in MANAGED_COLUMNS or name.startswith("_")


# -- 4. the weights column -------------------------------------------------------------------------

WEIGHTS_FIELDS = ("tensors", "data", "fingerprint", "checksum")
"""The fields of the weights struct, in order (their Arrow types: ``_blob.WEIGHTS_ARROW_TYPE``)."""


def is_weights_type(t: pa.DataType) -> bool:
    """Whether a column of Arrow type ``t`` holds weights: a struct with the weights struct's
    fields, by name. Names, not exact types: a query engine may hand the column back with other
    binary or string types (DuckDB: ``binary`` for ``large_binary``). Whether such a column can
    be decoded is the codec's question (``_blob.weights_type_problem``)."""
    import pyarrow as pa  # loaded already: the caller holds an Arrow type

    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name for i in range(t.num_fields)}
    return all(name in names for name in WEIGHTS_FIELDS)


MAX_NDIM = 64
"""The most dimensions a tensor may have."""

FORMAT_DTYPES = (
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
)  # fmt: skip
"""Every dtype name of the format (section 4.3), whether or not this torch has it."""

DTYPE_ITEMSIZE: dict[str, int] = {
    "bool": 1, "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint16": 2, "uint32": 4, "uint64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "complex64": 8, "complex128": 16,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}  # fmt: skip
"""Bytes per element of each dtype name (section 4.3): what structural checks need, no torch."""

ALIGNMENT = 64
"""Every tensor's bytes start at a multiple of this many bytes (in memory and in files)."""

CHECKSUM_PREFIX = "xxh3-64:"
"""The checksum is this prefix and 16 lowercase hexadecimal digits."""

# -- writing (a convention of this writer, not a promise of the format) ---------------------------

WRITE_ALIGN = 2 << 20
"""The file is handed to the kernel in writes that start and end at multiples of this (2 MiB, a
huge page) in the file. A kernel that caches files in large folios (Linux 6.16+ on ext4, XFS ...)
then keeps a freshly written row in 2 MiB folios, which a reader maps one page-table entry per
2 MiB: mapping a 200 MB row costs ~0.2 ms instead of ~4 ms (51,200 page faults), unmapping it
~0.1 ms instead of ~0.6 ms, and copying out of it is faster (fewer TLB misses)."""

_TEMP_RE = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)-(?:(?P<host>[0-9a-f]{8})-)?(?P<hex>[0-9a-f]+)\.tmp$"
)


def host_tag() -> str:
    """This machine's tag in temporary names: the CRC-32 of its host name, 8 hex digits."""
    uname = getattr(os, "uname", None)  # not on Windows
    if uname is not None:
        node = uname().nodename
    else:  # pragma: no cover
        import socket

        node = socket.gethostname()
    return f"{zlib.crc32(node.encode('utf-8', 'replace')):08x}"


def temp_name(name: str) -> str:
    """The temporary name under which the file ``name`` is written:
    ``.<name>.<pid>-<host>-<hex>.tmp``.

    It starts with ``.`` and ends with ``.tmp``, so no reader takes it for a row, and it names
    the writing process and its machine (:func:`host_tag`), so ``vacuum`` can tell whether its
    writer may still be alive: a pid says something only on the machine that wrote the file."""
    return f".{name}.{os.getpid()}-{host_tag()}-{secrets.token_hex(6)}.tmp"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file's (section 6.1): it starts with ``.`` and ends with
    ``.tmp``. Readers skip such files; :func:`parse_temp_name` reads the ones modelrows names."""
    return name.startswith(".") and name.endswith(".tmp")


def parse_temp_name(name: str) -> tuple[str, int, str | None] | None:
    """``(final name, writer's pid, writer's host tag)`` of a :func:`temp_name` (the tag None in
    a name written before tags), or None if ``name`` is not one."""
    m = _TEMP_RE.match(name)
    return None if m is None else (m["name"], int(m["pid"]), m["host"])


# -- 6. catalogs -----------------------------------------------------------------------------------

CATALOG_FILE = "_modelrows_catalog.json"
"""The catalog's description, in its root (section 6.2)."""

CATALOG_FORMAT = "modelrows.catalog"
"""The ``format`` value of the catalog description."""

CATALOG_FORMAT_VERSION = 3
"""The ``format_version`` of the catalog description this library writes: 3, the catalog has an
index under ``_index/`` whose log entries are Arrow IPC files (section 6.4); 2, the same index with
Parquet log entries (this library keeps writing those into a catalog of format 2, so that the
readers it was written for see every row); 1, row files alone (indexed on first use)."""

INDEX_DIR = "_index"
"""The catalog index's directory (prefix) under the root (section 7)."""

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The partition value hive readers take for None; no partition value may be it."""

ROW_ID = "row_id"
WRITTEN_AT = "written_at"
MANAGED_COLUMNS = (ROW_ID, WRITTEN_AT)
"""Columns a catalog puts in front of every row file it writes; not fields of any row class."""

if TYPE_CHECKING:  # built on first use, by __getattr__ below
    ROW_ID_TYPE: pa.DataType
    """``utf8``: a 26-character ULID."""
    WRITTEN_AT_TYPE: pa.DataType
    """``timestamp[us, tz="UTC"]``: when the row was appended."""


def managed_fields() -> list[pa.Field]:
    """The managed columns as non-nullable Arrow fields, in file order."""
    import pyarrow as pa

    types = _arrow_types()
    return [
        pa.field(ROW_ID, types["ROW_ID_TYPE"], nullable=False),
        pa.field(WRITTEN_AT, types["WRITTEN_AT_TYPE"], nullable=False),
    ]


def row_file_name(row_id: str, schema_name: str) -> str:
    """A catalog row file's name: ``<row_id>.<schema name>.arrow``."""
    return f"{row_id}.{schema_name}{ROW_FILE_SUFFIX}"


def is_row_file_name(name: str) -> bool:
    """Whether a file of this name is a row: ends in ``.arrow``, starts with neither ``_`` nor
    ``.`` (the catalog description, temporary files and other files are not rows)."""
    return name.endswith(ROW_FILE_SUFFIX) and not name.startswith(("_", "."))


def parse_row_file_name(name: str) -> tuple[str, str] | None:
    """``(row_id, schema name)`` of a row file's name (the schema name empty for a name with
    one dot), or None if ``name`` is not a row (:func:`is_row_file_name`)."""
    if not is_row_file_name(name):
        return None
    row_id, _, schema_name = name[: -len(ROW_FILE_SUFFIX)].partition(".")
    return row_id, schema_name


def _arrow_types() -> dict[str, pa.DataType]:
    import pyarrow as pa

    types = {"ROW_ID_TYPE": pa.string(), "WRITTEN_AT_TYPE": pa.timestamp("us", tz="UTC")}
    globals().update(types)  # later lookups find them without __getattr__
    return types


def __getattr__(name: str) -> Any:
    if name in ("ROW_ID_TYPE", "WRITTEN_AT_TYPE"):
        return _arrow_types()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
