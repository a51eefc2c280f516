"""Weights to and from safetensors files (https://github.com/huggingface/safetensors).

``export_safetensors`` writes a row's weights (or any :class:`Weights`) as a safetensors file:
the format is a little-endian 8-byte header length, a JSON header naming each tensor's dtype,
shape and byte range, then the bytes. It is written here tensor by tensor from the row's mapped
file (memory stays bounded by one tensor, never a packed copy of the model), under a temporary
name, then moved into place. ``import_safetensors`` reads one back (with the ``safetensors``
package), restoring what the format cannot keep: state_dict order and tied tensors.

The metadata (string to string, as safetensors requires) records where the weights came from:

=========================  ====================================================================
``format``                 ``pt``, as the Hugging Face tools expect
``modelrows.schema``       the row's qualified schema identifier (rows only)
``modelrows.row_id``       its row id (rows of a catalog)
``modelrows.column``       the weights column (rows only)
``modelrows.fingerprint``  the architecture fingerprint
``modelrows.checksum``     the checksum of the tensor bytes as stored with the row
``modelrows.names``        the tensor names in state_dict order (a JSON list)
``modelrows.ties``         tied tensors, ``{"decoder.weight": "encoder.weight"}`` (JSON, if any)
=========================  ====================================================================
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, overload

from ._errors import CorruptRowError, RowValidationError, StorageError, WeightsError

if TYPE_CHECKING:
    import torch

    from ._schema import Row
    from ._weights import Weights

__all__ = ["export_safetensors", "import_safetensors"]

PathLike = str | os.PathLike[str]
R = TypeVar("R", bound="Row")

DEFAULT_COLUMN = "weights"
"""The weights column of ``ModelV1``: chosen when a row has several and none is named."""

# modelrows dtype names (docs/format.md) -> safetensors dtype codes
_DTYPE_CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}
_COPY_CHUNK = 16 << 20  # bytes of one tensor moved to the file at a time


def _weights_columns(row: Row) -> dict[str, Weights]:
    from ._weights import Weights

    return {n: v for n, v in row.to_dict().items() if isinstance(v, Weights)}


def _where(row: Row) -> str:
    row_id = row.extras.get("row_id")
    return f"row {row_id}" if isinstance(row_id, str) else f"the {type(row).__name__} row"


def weights_of(row: Row, column: str | None = None) -> Weights:
    """A row's weights: ``column``, else its ``weights`` column, else its only weights column."""
    columns = _weights_columns(row)
    return columns[_choose(list(columns), column, where=_where(row))]


def _weights_fields(row_class: type[Row]) -> list[str]:
    from ._schema import ModelV1

    marker = ModelV1.arrow_schema().field(DEFAULT_COLUMN).type
    return [f.name for f in row_class.arrow_schema() if f.type == marker]


def _choose(names: list[str], column: str | None, *, where: str) -> str:
    """The weights column to use: ``column``, else ``weights``, else the only one."""
    if column is not None:
        if column not in names:
            close = difflib.get_close_matches(column, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RowValidationError(
                f"{where} has no weights column {column!r}{hint} (weights columns: "
                f"{', '.join(names) or 'none'})"
            )
        return column
    if DEFAULT_COLUMN in names or len(names) == 1:
        return DEFAULT_COLUMN if DEFAULT_COLUMN in names else names[0]
    raise RowValidationError(
        f"{where} has {len(names)} weights columns ({', '.join(names) or 'none'}) and none is "
        "called 'weights'; choose one with column= (--column on the command line)"
    )


def _check_target(path: Path) -> None:
    """Refuse a target that exists and is not a regular file, or whose directory is missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = path.parent
        if not parent.is_dir():
            raise StorageError(
                f"cannot write {path}: the directory {parent} does not exist; create it first"
            ) from None
        return
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        kind = "a symbolic link"
    elif stat.S_ISDIR(st.st_mode):
        kind = "a directory"
    elif stat.S_ISFIFO(st.st_mode):
        kind = "a FIFO"
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        kind = "a device"
    elif stat.S_ISSOCK(st.st_mode):
        kind = "a socket"
    else:
        return
    raise StorageError(
        f"cannot write {path}: it is {kind}, and export replaces only regular files; "
        "remove it or choose another path"
    )


def _header(
    entries: list[tuple[str, str, tuple[int, ...], int]], metadata: Mapping[str, str]
) -> bytes:
    """The header: its length, then JSON padded with spaces so the data starts 8-aligned."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, code, shape, nbytes in entries:
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_tensor(f: IO[bytes], t: torch.Tensor) -> None:
    """A tensor's bytes, little-endian in row-major order, a bounded chunk at a time."""
    import torch

    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return
    step = max(1, _COPY_CHUNK // flat.element_size())
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step]
        if part.device.type != "cpu" or not part.is_contiguous():
            part = part.to("cpu").contiguous()
        f.write(part.view(torch.uint8).numpy().data)


def export_safetensors(
    source: Row | Weights | PathLike, to: PathLike, *, column: str | None = None
) -> dict[str, str]:
    """Write weights to the safetensors file ``to``; return the metadata stored with them.

    ``source`` is a row (its ``weights`` column, or ``column``; a row with a single weights
    column needs neither), a row file's path (read with its checksum verified), or a
    :class:`Weights`. Weights read from a file are checked against their stored checksum first.
    safetensors cannot share storage, so a tensor tied to another is written as a copy and the
    tie recorded in the metadata (``modelrows.ties``), which :func:`import_safetensors` restores.

    ``to`` is written under a temporary name and moved into place, so it is never seen
    half-written. It must be absent or a regular file: a symbolic link, directory, FIFO or device
    there is refused (StorageError), never replaced or written through.

    >>> import tempfile, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights, import_safetensors
    >>> path = tempfile.mkdtemp() + "/linear.safetensors"
    >>> meta = export_safetensors(ModelV1(weights=fetch_weights(nn.Linear(2, 3))), path)
    >>> meta["modelrows.column"], list(import_safetensors(path))
    ('weights', ['weight', 'bias'])
    """
    from ._atomic import write_atomic
    from ._rowfile import read_model_row
    from ._schema import Row
    from ._weights import Weights

    if isinstance(source, str | os.PathLike):
        source = read_model_row(source, verify=True)
    metadata = {"format": "pt"}
    if isinstance(source, Row):
        where = _where(source)
        columns = _weights_columns(source)
        name = _choose(list(columns), column, where=where)
        weights = columns[name]
        metadata["modelrows.schema"] = source.declared_schema
        metadata["modelrows.column"] = name
        row_id = source.extras.get("row_id")
        if isinstance(row_id, str):
            metadata["modelrows.row_id"] = row_id
    elif isinstance(source, Weights):
        if column is not None:
            raise RowValidationError("column= chooses among a row's weights columns; got Weights")
        weights, where = source, "the weights"
    else:
        raise TypeError(f"expected a Row, Weights or a path, got {type(source).__name__}")
    if not weights.verify():
        raise CorruptRowError(
            f"{where}: the weights' bytes do not match their stored checksum "
            f"({weights.stored_checksum}); nothing was exported"
        )
    metadata["modelrows.fingerprint"] = weights.fingerprint
    metadata["modelrows.checksum"] = weights.stored_checksum or weights.checksum
    metadata["modelrows.names"] = json.dumps(list(weights))
    if weights.ties:
        metadata["modelrows.ties"] = json.dumps(weights.ties)

    entries = []
    for e in weights.entries:
        code = _DTYPE_CODES.get(e.dtype)
        if code is None:
            raise WeightsError(
                f"tensor {e.name!r} is {e.dtype}, which safetensors cannot store; "
                f"cast it first (safetensors dtypes: {', '.join(_DTYPE_CODES)})"
            )
        t = weights[e.name]  # a tied tensor is stored once in the row, twice in safetensors
        entries.append((e.name, code, tuple(e.shape), t.numel() * t.element_size()))
    header = _header(entries, metadata)

    def write(f: IO[bytes]) -> None:
        f.write(header)
        for name in weights:
            _write_tensor(f, weights[name])

    target = Path(to)
    _check_target(target)
    write_atomic(target, write)
    return metadata


def _metadata_json(path: Path, metadata: Mapping[str, str], key: str, kind: type) -> Any:
    """A JSON list or object of strings from the metadata, None when absent; WeightsError when
    malformed (not JSON, nested too deep to parse, or holding anything but strings)."""
    text = metadata.get(key)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    items = list(value.items()) if isinstance(value, dict) else value
    ok = isinstance(value, kind) and all(
        isinstance(v, str) or (isinstance(v, tuple) and all(isinstance(p, str) for p in v))
        for v in items
    )
    if not ok:
        shape = "a list of tensor names" if kind is list else "an object of tensor names"
        raise WeightsError(
            f"{path}: metadata {key!r} is not {shape} in JSON; remove the key "
            "(the tensors import without it) or export the file again"
        )
    return value


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise WeightsError(f"{path}: not a regular file")
    try:
        from safetensors import safe_open
    except ImportError:
        raise WeightsError(
            "reading safetensors files needs the safetensors package, which is not installed; "
            "install it with: pip install 'modelrows[cli]'"
        ) from None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # the reader's errors have no common base class
        raise WeightsError(f"{path}: not a readable safetensors file: {exc}") from exc
    return tensors, metadata


@overload
def import_safetensors(path: PathLike) -> Weights: ...
@overload
def import_safetensors(
    path: PathLike,
    row_class: type[R],
    *,
    values: Mapping[str, Any] | None = None,
    column: str | None = None,
) -> R: ...
def import_safetensors(
    path: PathLike,
    row_class: type[Row] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    column: str | None = None,
) -> Weights | Row:
    """Read a safetensors file's tensors as :class:`Weights`, or as a new row of ``row_class``.

    Files written by :func:`export_safetensors` come back exactly: state_dict order and tied
    tensors are restored from the metadata, so the weights equal the exported ones, checksum
    included. Other safetensors files keep their stored order. With ``row_class``, the weights
    fill its ``weights`` column (or ``column``) and ``values`` its other fields.

    Raises WeightsError for a file that is missing, not a safetensors file, or whose
    ``modelrows.*`` metadata is malformed, and RowValidationError for values that do not fit.
    """
    import torch

    from ._weights import fetch_weights

    file = Path(path)
    tensors, metadata = _read(file)
    names = _metadata_json(file, metadata, "modelrows.names", list)
    if names is not None and sorted(names) == sorted(tensors):
        tensors = {name: tensors[name] for name in names}
    ties = _metadata_json(file, metadata, "modelrows.ties", dict) or {}
    for name, owner in ties.items():
        a, b = tensors.get(name), tensors.get(owner)
        if a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b):
            tensors[name] = b
    weights = fetch_weights(tensors)
    if row_class is None:
        if values or column is not None:
            raise RowValidationError("values= and column= need a row_class to build a row")
        return weights
    name = _choose(_weights_fields(row_class), column, where=row_class.__name__)
    given = dict(values or {})
    if name in given:
        raise RowValidationError(f"values sets {name!r}, the column the file's weights fill")
    given[name] = weights
    return row_class(**given)
