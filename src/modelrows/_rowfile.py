"""One row, one Arrow IPC file: ``write_model_row``, ``read_model_row``, ``read_row_metadata``.

Writes are atomic (``_atomic``) and zero-copy: each weights column's tensors stream to the file
from where they lie (``_blob``), placed so that every tensor starts at a 64-byte-aligned file
offset. Reads map the file privately (or take a row file already in memory), check its structure
with bounded work, and hand out weights that view the mapping. Reading imports no torch: the
weights build their tensors when first asked for.
"""

from __future__ import annotations

import contextlib
import mmap as _mmap
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ._arrowtypes import WeightsType
from ._atomic import PendingFile
from ._blob import BlobPlan, BlobSink, DecodeContext, blob_buffers, is_null
from ._errors import (
    CorruptRowError,
    ModelRowsError,
    NotArrowFileError,
    RowCountError,
    RowFileError,
    RowValidationError,
    UnknownSchemaError,
)
from ._format import (
    ALIGNMENT,
    FORMAT_VERSION,
    MAGIC,
    MANAGED_COLUMNS,
    METADATA_FORMAT_KEY,
    METADATA_SCHEMA_KEY,
    METADATA_VALUES_KEY,
    VALUES_CHECKSUM_SINCE,
    WRITE_ALIGN,
    is_weights_type,
)
from ._ipcguard import check_row_file
from ._linux import FALLOCATE
from ._location import read_url, resolve, write_url
from ._schema import Row, nearest_declared
from ._values import batch_columns
from ._values import values_checksum as _values_checksum
from ._weights import Weights

__all__ = [
    "RowCountError",
    "decode_row",
    "format_version",
    "prepare_row_file",
    "read_model_row",
    "read_row_file",
    "read_row_metadata",
    "row_batch",
    "verify_row",
    "verify_values",
    "write_model_row",
]

_MIN_FILE = 8 + 8 + 4 + 6  # magic+pad, a schema message at least, footer length, magic
_WEIGHTS = WeightsType()


PathLike = str | os.PathLike[str]
RowSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | pa.Buffer"
"""A row file: its path, or its bytes already in memory."""


# -- writing -----------------------------------------------------------------------------------------


_COPY_BELOW = 64 << 10
"""Pieces smaller than this are copied into a staging buffer; larger ones are written from where
they lie. This bounds the pieces of one ``writev`` (a few dozen per 2 MiB) far below IOV_MAX."""


class _AlignedWriter:
    """Buffers a file's bytes by reference and writes them with ``os.writev`` in runs that end on
    :data:`WRITE_ALIGN` boundaries of the file (the last run ends where the file does).

    A piece handed to :meth:`write` must keep its bytes until :meth:`finish`: bytes objects and
    pyarrow buffers are immutable; tensor bytes are a model's, which is not trained during a write
    (see fetch_weights' ``copy=False``). A file without a descriptor gets plain writes."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.fd: int | None = None
        self.offset = 0  # of the first byte not yet written
        if hasattr(os, "writev"):  # POSIX
            with contextlib.suppress(AttributeError, OSError, ValueError):  # BytesIO has none
                self.fd = f.fileno()
        if self.fd is not None:  # f is fresh: nothing buffered in it that would land after these
            self.offset = os.lseek(self.fd, 0, os.SEEK_CUR)
        self.pieces: list[bytearray | memoryview] = []
        self.queued = 0  # bytes in pieces
        self.failed = False  # a write raised: the file is abandoned, later bytes are dropped

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        n = len(view)
        if not n or self.failed:  # (pyarrow still writes its footer after a failed write)
            return
        if self.fd is None:
            self.f.write(view)
            return
        if n < _COPY_BELOW:
            if not self.pieces or not isinstance(self.pieces[-1], bytearray):
                self.pieces.append(bytearray())
            staging = self.pieces[-1]
            assert isinstance(staging, bytearray)
            staging += view
        else:
            self.pieces.append(view)
        self.queued += n
        end = self.offset + self.queued
        boundary = end - end % WRITE_ALIGN
        if boundary > self.offset:
            self._write_until(boundary)

    def finish(self) -> None:
        """Write everything queued."""
        if self.queued and not self.failed:
            self._write_until(self.offset + self.queued)

    def _write_until(self, stop: int) -> None:
        """Write the queued bytes up to file offset ``stop``; keep the rest queued."""
        assert self.fd is not None
        batch: list[memoryview] = []
        need = stop - self.offset
        while need:
            piece = memoryview(self.pieces[0])
            if len(piece) <= need:
                self.pieces.pop(0)
                batch.append(piece)
                need -= len(piece)
            else:  # split: the rest stays first in the queue
                batch.append(piece[:need])
                rest = piece[need:]
                self.pieces[0] = bytearray(rest) if len(rest) < _COPY_BELOW else rest
                need = 0
        while batch:  # a regular file writes all of it, short of an error; loop anyway
            try:
                n = os.writev(self.fd, batch)
            except BaseException:
                self.failed = True
                raise
            self.offset += n
            self.queued -= n
            while batch and n >= len(batch[0]):
                n -= len(batch.pop(0))
            if n:
                batch[0] = batch[0][n:]


def row_batch(
    row: Row,
    *,
    managed: Mapping[str, tuple[pa.DataType, Any]] | None = None,
    plans: dict[str, BlobPlan] | None = None,
    values_checksum: list[str] | None = None,
) -> pa.RecordBatch:
    """The one-row record batch of ``row``; ``managed`` adds columns (row_id ...) at the front.

    With ``plans``, each weights column gets one (position 0 unless given) and its blob is left to
    the plan's stream; without, weights blobs are built in memory. The schema metadata holds the
    row's values checksum; ``values_checksum``, a list, keeps it between calls (computed when
    empty, taken from it otherwise)."""
    cls = type(row)
    undeclared = [k for k in row._extras if k not in MANAGED_COLUMNS]
    if undeclared:
        raise RowValidationError(
            f"this {cls.__name__} was read from a file declaring {row.declared_schema} and carries "
            f"undeclared columns ({', '.join(undeclared)}); declare that schema to write it"
        )
    schema = cls.arrow_schema()
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for name, (typ, value) in (managed or {}).items():
        fields.append(pa.field(name, typ, nullable=False))
        arrays.append(pa.array([value], type=typ))
    for f in schema:
        ftype = cls.__row_fields__[f.name].type
        value = getattr(row, f.name)
        if isinstance(ftype, WeightsType):
            plan = plans.setdefault(f.name, BlobPlan()) if plans is not None else None
            arrays.append(ftype.to_arrow([value], plan))
        else:
            arrays.append(ftype.to_arrow([value]))
        fields.append(f)
    meta = dict(schema.metadata)
    if not values_checksum:
        qualified = meta[METADATA_SCHEMA_KEY.encode()].decode("utf-8")
        computed = _values_checksum(qualified, zip(fields, arrays, strict=True))
        if values_checksum is None:
            values_checksum = []
        values_checksum.append(computed)
    meta[METADATA_VALUES_KEY.encode()] = values_checksum[0].encode("ascii")
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


_PREALLOCATE_FROM = 1 << 20


def _preallocate(f: IO[bytes], size: int) -> None:
    """Reserve a large file's blocks before writing it: on ext4, writing 400 MB into reserved
    blocks is ~1.3x faster than letting each write allocate. Best effort: Linux's fallocate(2)
    (never glibc's posix_fallocate, which emulates it by writing where unsupported)."""
    if FALLOCATE is None or size < _PREALLOCATE_FROM:
        return
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        return
    FALLOCATE(fd, 0, 0, size)  # errors (EOPNOTSUPP, ENOSPC ...) surface on the writes instead


_LANDED: dict[Any, dict[str, int]] = {}
"""Where the weights blobs of the last row of each layout (row class and managed columns) landed
in its file: the first plan for the next row of that layout, which usually lands alike, saving a
build and a dry run. A guess only: the dry run checks it like any other plan."""


def _serialize(
    build: Callable[[dict[str, BlobPlan]], pa.RecordBatch], f: IO[bytes], *, layout: Any = None
) -> pa.RecordBatch:
    """Write the batch ``build`` makes so every weights blob is where its plan says (mod 64),
    streaming each blob from its tensors (see ``_blob.BlobStream``), and return it. ``layout``: a
    key under which to remember where the blobs landed, for the next batch of the same layout."""
    guess = _LANDED.get(layout, {}) if layout is not None else {}
    plans = {name: BlobPlan(position) for name, position in guess.items()}
    for _ in range(8):
        batch = build(plans)
        dry = BlobSink()
        with ipc.new_file(dry, batch.schema) as w:
            w.write_batch(batch)
        landed = {name: dry.positions[key] for name, key in blob_buffers(batch).items()}
        if all((pos - plans[name].position) % ALIGNMENT == 0 for name, pos in landed.items()):
            break
        plans = {name: BlobPlan(pos) for name, pos in landed.items()}
    else:  # pragma: no cover - the layout converges in len(weights columns) + 1 passes
        raise AssertionError("could not align the weights in the file")
    if layout is not None:
        if len(_LANDED) >= 64 and layout not in _LANDED:  # a bound; the guesses are cheap to redo
            _LANDED.clear()
        _LANDED[layout] = landed
    _preallocate(f, dry.pos)
    streams = [p.stream for p in plans.values() if p.stream is not None]
    sink = BlobSink(_AlignedWriter(f), streams)
    with ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    sink.close()
    if sink.pos != dry.pos:  # pragma: no cover - the same batch serializes to the same bytes
        raise AssertionError(f"wrote {sink.pos} bytes, planned {dry.pos}")
    if sink.blobs or sink.checksums:  # pragma: no cover - pyarrow writes every buffer it has
        raise AssertionError("a weights blob or its checksum was not written")
    for name, key in blob_buffers(batch).items():
        if (sink.positions.get(key, -1) - plans[name].position) % ALIGNMENT:
            raise AssertionError(f"weights column {name!r} landed misaligned")  # pragma: no cover
    return batch


def prepare_row_file(
    path: PathLike,
    row: Row,
    *,
    managed: Mapping[str, tuple[pa.DataType, Any]] | None = None,
    fsync: bool = True,
) -> PendingFile:
    """Write one row (plus ``managed`` columns) under a temporary name; commit() publishes it."""
    return PendingFile(Path(path), row_writer(row, managed=managed), fsync=fsync)


def row_writer(
    row: Row,
    *,
    managed: Mapping[str, tuple[pa.DataType, Any]] | None = None,
    written: list[pa.RecordBatch] | None = None,
) -> Callable[[IO[bytes]], None]:
    """What writes one row (plus ``managed`` columns) to a file object, sequentially; the record
    batch written is appended to ``written`` (the catalog's index takes its columns from it)."""
    if not isinstance(row, Row) or not type(row).__identifier__:
        raise RowValidationError(
            f"expected a row (an instance of a declared Row class), got {type(row).__name__}"
        )

    def write(f: IO[bytes]) -> None:
        layout = (type(row), tuple(managed or ()))
        checksum: list[str] = []  # the values checksum, computed once: plans don't change it

        def build(plans: dict[str, BlobPlan]) -> pa.RecordBatch:
            return row_batch(row, managed=managed, plans=plans, values_checksum=checksum)

        batch = _serialize(build, f, layout=layout)
        if written is not None:
            written.append(batch)

    return write


def write_model_row(path: PathLike, row: Row, *, fsync: bool = True) -> None:
    """Validate ``row`` and write it as a one-row Arrow IPC file at ``path``, atomically.

    A crash never leaves a partial file at ``path``; an existing file is replaced only once the
    new one is complete (and, with ``fsync=True``, durable). ``path`` may be a ``file://`` URL,
    or ``s3://bucket/key`` (S3 or an S3-compatible store, configured by the standard AWS
    variables): the object is created or replaced whole, never seen in part.

    >>> import tempfile, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights, read_model_row
    >>> path = tempfile.mkdtemp() + "/linear.model.arrow"
    >>> write_model_row(path, ModelV1(weights=fetch_weights(nn.Linear(2, 2)), architecture_version=1))
    >>> read_model_row(path).architecture_version
    1
    """
    target = resolve(path)
    if isinstance(target, str):  # s3://
        write_url(target, row_writer(row))
        return
    prepare_row_file(target, row, fsync=fsync).commit()


# -- reading -----------------------------------------------------------------------------------------


def _map(path: Path, *, copy: bool = False) -> _mmap.mmap:
    """The file at ``path`` mapped privately (copy-on-write), if it can be a row file; with
    ``copy``, its bytes read into anonymous memory instead (page-aligned like a mapping, so
    tensors stay aligned), which nothing done to the file afterwards can reach."""
    where = str(path)
    try:  # O_NONBLOCK: opening a FIFO named like a row file must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise RowFileError(f"{where}: no such file", path=where) from None
    except OSError as exc:
        raise RowFileError(f"{where}: cannot be read: {exc}", path=where) from exc
    try:
        mode = os.fstat(fd)
        if stat.S_ISDIR(mode.st_mode):
            raise RowFileError(f"{where}: is a directory, not a row file", path=where)
        if not stat.S_ISREG(mode.st_mode):
            raise RowFileError(
                f"{where}: is not a regular file (a pipe, socket or device), so not a row file",
                path=where,
            )
        if mode.st_size < _MIN_FILE:
            raise NotArrowFileError(
                f"{where}: {mode.st_size} bytes is too short to be an Arrow IPC file", path=where
            )
        if copy:
            return _read_copy(fd, mode.st_size, where)
        return _mmap.mmap(fd, 0, access=_mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise RowFileError(f"{where}: cannot be read: {exc}", path=where) from exc
    finally:
        os.close(fd)


def _read_copy(fd: int, size: int, where: str) -> _mmap.mmap:
    """``size`` bytes of the file ``fd`` read into a fresh anonymous mapping."""
    memory = _mmap.mmap(-1, size)
    view = memoryview(memory)
    try:
        done = 0
        while done < size:
            n = os.readv(fd, [view[done:]])
            if n == 0:
                raise RowFileError(
                    f"{where}: the file shrank from {size} to {done} bytes while it was read; is "
                    "another program rewriting it in place?",
                    path=where,
                )
            done += n
    finally:
        view.release()
    return memory


def _row_bytes(
    source: RowSource, where: str | None, *, mmap: bool = True
) -> tuple[np.ndarray, pa.Buffer, str]:
    """The bytes of a row file (mapped, or the caller's buffer, not copied) as a uint8 array and
    a pyarrow buffer, checked as far as ipcguard goes, and the name errors give it."""
    if isinstance(source, bytes | bytearray | memoryview | pa.Buffer):
        where = where or "in-memory row file"
        try:
            raw = np.frombuffer(source, dtype=np.uint8)
        except (TypeError, ValueError) as exc:  # a memoryview of another shape, not contiguous
            raise RowFileError(
                f"{where}: cannot be read as bytes ({exc}); pass a contiguous bytes-like buffer",
                path=where,
            ) from exc
        buf = source if isinstance(source, pa.Buffer) else pa.py_buffer(raw)
        if raw.size < _MIN_FILE:
            raise NotArrowFileError(
                f"{where}: {raw.size} bytes is too short to be an Arrow IPC file", path=where
            )
        owner: _mmap.mmap | None = None
    else:
        where = where or str(source)
        owner = _map(Path(source), copy=not mmap)
        raw = np.frombuffer(owner, dtype=np.uint8)
        buf = pa.py_buffer(owner)
    head, tail = bytes(raw[: len(MAGIC)]), bytes(raw[-len(MAGIC) :])
    if head != MAGIC or tail != MAGIC:
        missing = "start" if head != MAGIC else "end"
        del raw, buf
        if owner is not None:
            with contextlib.suppress(BufferError):
                owner.close()
        raise NotArrowFileError(
            f"{where}: not an Arrow IPC file (the {MAGIC.decode()} magic is missing at the "
            f"{missing}); is it truncated, or another format?",
            path=where,
        )
    check_row_file(raw.data, where=where)
    return raw, buf, where


def read_row_file(
    source: RowSource, *, where: str | None = None, mmap: bool = True
) -> tuple[pa.RecordBatch, DecodeContext]:
    """Open a one-row Arrow IPC file, check its structure, and return its batch (zero-copy).

    ``source`` is a path (mapped privately; with ``mmap=False``, read into memory) or the file's
    bytes in memory (viewed, not copied). The footer and the batch header are checked before
    pyarrow reads them (ipcguard), then pyarrow validates the whole batch; no tensor byte is
    read. ``where`` names the file in errors (default: the path).
    """
    raw, buf, where = _row_bytes(source, where, mmap=mmap)
    try:
        reader = ipc.open_file(pa.BufferReader(buf))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise NotArrowFileError(
            f"{where}: not a readable Arrow IPC file ({exc}); is it truncated?", path=where
        ) from exc
    try:
        batch = reader.get_batch(0)
        batch.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptRowError(f"{where}: the record batch is corrupt: {exc}", path=where) from exc
    return batch, DecodeContext(where, raw, buf.address)


def schema_identifier(schema: pa.Schema, *, where: str) -> str:
    """The qualified identifier in ``schema``'s metadata; errors name ``where``."""
    meta = schema.metadata or {}
    raw = meta.get(METADATA_SCHEMA_KEY.encode())
    if raw is None:
        raise UnknownSchemaError(
            f"{where}: the Arrow schema has no {METADATA_SCHEMA_KEY!r} metadata, so its row schema "
            "is unknown; was it written by modelrows or Legolas?"
        )
    try:
        qualified = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnknownSchemaError(
            f"{where}: {METADATA_SCHEMA_KEY!r} metadata is not UTF-8 text"
        ) from None
    format_version(schema, where=where)
    return str(qualified)


def format_version(schema: pa.Schema, *, where: str) -> int | None:
    """The format version in ``schema``'s metadata (None without one: another writer's file);
    refuses a malformed one and one newer than this modelrows reads."""
    fmt = (schema.metadata or {}).get(METADATA_FORMAT_KEY.encode())
    if fmt is None:
        return None
    try:
        version = int(fmt.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise UnknownSchemaError(
            f"{where}: {METADATA_FORMAT_KEY!r} metadata {fmt!r} is not a whole number"
        ) from None
    if version > FORMAT_VERSION:
        raise UnknownSchemaError(
            f"{where}: written in modelrows format version {version}; this modelrows reads "
            f"up to {FORMAT_VERSION}. Upgrade modelrows to read it."
        )
    return version


def verify_values(batch: pa.RecordBatch, *, where: str) -> None:
    """Raise CorruptRowError if the row's values (every column but its tensors, and its schema
    identifier) no longer match the values checksum stored with them (format version 2 on;
    files of version 1 and other writers' files have none, and pass)."""
    version = format_version(batch.schema, where=where)
    if version is None or version < VALUES_CHECKSUM_SINCE:
        return
    meta = batch.schema.metadata
    stored = meta.get(METADATA_VALUES_KEY.encode())
    if stored is None:
        raise CorruptRowError(
            f"{where}: written in format version {version}, which stores a values checksum, but "
            f"its {METADATA_VALUES_KEY!r} metadata is missing; the file is corrupt",
            path=where,
        )
    qualified = schema_identifier(batch.schema, where=where)
    try:
        computed = _values_checksum(qualified, batch_columns(batch))
    except (ArithmeticError, LookupError, TypeError, ValueError, pa.ArrowException) as exc:
        raise CorruptRowError(
            f"{where}: its values cannot be checksummed ({exc}); the file is corrupt", path=where
        ) from exc
    if stored != computed.encode("ascii"):
        raise CorruptRowError(
            f"{where}: values checksum mismatch: stored {stored.decode('ascii', 'replace')}, "
            f"computed {computed}; a value other than the tensors (a column, its name, or the "
            "schema identifier) is corrupt",
            path=where,
        )


def decode_row(
    batch: pa.RecordBatch | pa.Table,
    index: int,
    ctx: DecodeContext,
) -> Row:
    """Row ``index`` of ``batch`` as an instance of the nearest declared class of its schema."""
    where = ctx.where
    qualified = schema_identifier(batch.schema, where=where)
    cls = nearest_declared(qualified, where=where)
    cls.validate_schema(batch.schema, where=where)
    values: dict[str, Any] = {}
    try:
        for i, f in enumerate(batch.schema):
            try:
                values[f.name] = _decode_column(batch.column(i), cls, f, index, ctx)
            except ModelRowsError:
                raise
            except (ArithmeticError, LookupError, TypeError, ValueError, pa.ArrowException) as exc:
                raise CorruptRowError(
                    f"{where}: column {f.name!r} holds a value that cannot be decoded ({exc}); "
                    "the file is corrupt",
                    path=where,
                ) from exc
        return cls._from_stored(values, declared=qualified)
    except RowValidationError as exc:
        raise RowValidationError(f"{where}: {exc}") from exc


def _decode_column(
    column: pa.Array | pa.ChunkedArray, cls: type[Row], f: pa.Field, index: int, ctx: DecodeContext
) -> Any:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    field = cls.__row_fields__.get(f.name)
    if field is not None:
        return field.type.decode(column, index, ctx)
    if _WEIGHTS.accepts(f.type):  # an undeclared weights column still reads as Weights
        return _WEIGHTS.decode(column, index, ctx)
    return column[index].as_py()


def verify_row(row: Row, *, where: str, batch: pa.RecordBatch | None = None) -> None:
    """Raise CorruptRowError if any weights of ``row`` no longer match their stored checksum,
    or, given the ``batch`` it was decoded from, its values their values checksum."""
    if batch is not None:
        verify_values(batch, where=where)
    for name, value in [*row._values().items(), *row._extras.items()]:
        if isinstance(value, Weights) and not value.verify():
            raise CorruptRowError(
                f"{where}: checksum mismatch in column {name!r}: stored {value.stored_checksum}, "
                f"computed {value.checksum}; the tensor bytes are corrupt",
                path=where,
            )


def _fetched(source: RowSource, where: str | None) -> tuple[RowSource, str | None]:
    """A row source with URLs resolved: a ``file://`` URL as its path, an ``s3://`` one as the
    object's bytes (read whole into memory) named by its URL; anything else as it is."""
    if not isinstance(source, str | os.PathLike):
        return source, where
    target = resolve(source)
    if isinstance(target, str):  # s3://
        data, url = read_url(target)
        return data, where or url
    return target, where


def read_model_row(
    source: RowSource, *, verify: bool = False, where: str | None = None, mmap: bool = True
) -> Row:
    """Read the one row of a row file as an instance of its declared class.

    ``source`` is the file's path, or its bytes already in memory (``bytes``, ``bytearray``,
    ``memoryview`` or a ``pyarrow.Buffer``, e.g. fetched from object storage), checked alike.
    Weights are zero-copy views of the privately memory-mapped file (or of the buffer: keep it
    unchanged while they are in use, and do not modify their tensors in place). The tensors are
    built when first asked for, so reading a row and its other columns imports no torch. If the
    file's schema is not declared in this process, the nearest declared ancestor in its qualified
    chain is returned, with the other columns in ``row.extras`` and the file's identifier in
    ``row.declared_schema``. ``verify=True`` also recomputes the checksum of every tensor byte
    and (format version 2 on) the values checksum of every other value. ``where`` names the file
    in error messages (default: its path). A path may also be a ``file://`` URL, or
    ``s3://bucket/key`` (S3 or an S3-compatible store, configured by the standard AWS
    variables): the object is read whole into memory with parallel ranged requests (no
    temporary file) and checked alike.

    ``mmap=False`` reads a file into memory instead of mapping it (one copy, the file's size
    in RAM). Use it where another program may truncate or rewrite the file in place while the
    row is in use (shared or network file systems, files not written by modelrows): a mapped
    file's pages are read when first touched, and touching a page that a truncation removed
    kills the process with SIGBUS. A copy is never affected by what happens to the file.

    >>> import tempfile, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights, write_model_row
    >>> path = tempfile.mkdtemp() + "/m.model.arrow"
    >>> write_model_row(path, ModelV1(weights=fetch_weights(nn.Linear(2, 3))))
    >>> read_model_row(path).weights["weight"].shape
    torch.Size([3, 2])
    """
    source, where = _fetched(source, where)
    batch, ctx = read_row_file(source, where=where, mmap=mmap)
    row = decode_row(batch, 0, ctx)
    if verify:
        verify_row(row, where=ctx.where, batch=batch)
    return row


def read_row_metadata(
    source: RowSource, *, where: str | None = None, mmap: bool = True
) -> dict[str, Any]:
    """Every column of a row file but its tensors, as plain Python values, without torch.

    ``source`` (a path or URL, or bytes), ``mmap`` and the checks are as for
    :func:`read_model_row` (the file's structure, and that its format version is one this
    modelrows reads), but no row class need be declared: values
    come as pyarrow's ``as_py()`` gives them (a nested row as a dict, a timestamp as an aware
    datetime). A catalog's row file includes ``row_id`` and ``written_at``. A weights column
    gives its stored checksum (``"xxh3-64:..."``; None if null); no tensor byte is read.

    >>> import tempfile, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights, write_model_row
    >>> path = tempfile.mkdtemp() + "/m.model.arrow"
    >>> write_model_row(path, ModelV1(weights=fetch_weights(nn.Linear(2, 3)), architecture_version=4))
    >>> meta = read_row_metadata(path)
    >>> meta["architecture_version"], meta["weights"].startswith("xxh3-64:")
    (4, True)
    """
    source, where = _fetched(source, where)
    batch, ctx = read_row_file(source, where=where, mmap=mmap)
    where = ctx.where
    qualified = schema_identifier(batch.schema, where=where)
    try:
        declared: type[Row] | None = nearest_declared(qualified, where=where)
    except UnknownSchemaError:
        declared = None
    fields = declared.__row_fields__ if declared is not None else {}
    out: dict[str, Any] = {}
    for i, f in enumerate(batch.schema):
        if f.name in out:
            raise CorruptRowError(f"{where}: column {f.name!r} appears twice", path=where)
        column = batch.column(i)
        declared_field = fields.get(f.name)
        try:
            if is_weights_type(f.type):
                out[f.name] = None if is_null(column, 0) else column.field("checksum")[0].as_py()
            elif declared_field is not None and isinstance(declared_field.type, WeightsType):
                out[f.name] = None  # another layout of weights (LegolasFlux.jl's): no checksum
            else:
                out[f.name] = column[0].as_py()
        except (ArithmeticError, LookupError, TypeError, ValueError, pa.ArrowException) as exc:
            raise CorruptRowError(
                f"{where}: column {f.name!r} holds a value that cannot be decoded ({exc}); "
                "the file is corrupt",
                path=where,
            ) from exc
    return out
