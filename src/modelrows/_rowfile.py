"""One row, one Arrow IPC file: ``write_model_row`` and ``read_model_row``.

Writes are atomic (temporary file, flush, fsync, rename, directory fsync) and zero-copy: the
weights' packed storage goes to the file as it is, placed so that every tensor starts at a
64-byte-aligned file offset. Reads map the file privately and hand out tensors that are views of
the mapping, after checking the file's structure with bounded work.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from ._arrowtypes import BlobPlan, BlobStream, DecodeContext, WeightsType
from ._atomic import PendingFile
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
    WRITE_ALIGN,
    is_weights_type,
)
from ._ipcguard import check_row_file
from ._linux import FALLOCATE
from ._schema import Row, nearest_declared
from ._weights import Weights

__all__ = [
    "RowCountError",
    "decode_row",
    "prepare_row_file",
    "read_model_row",
    "read_row_file",
    "row_batch",
    "write_model_row",
]

_MIN_FILE = 8 + 8 + 4 + 6  # magic+pad, a schema message at least, footer length, magic
_WEIGHTS = WeightsType()


PathLike = str | os.PathLike[str]


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


class _Sink:
    """A file-like sink for pyarrow that records where each buffer lands (and may write nothing).

    A weights blob that is a :class:`BlobStream`'s placeholder is replaced by the stream's bytes
    (hashed as they pass), and the checksum's placeholder, which comes after it, by the checksum.
    """

    def __init__(self, f: IO[bytes] | None = None, streams: Sequence[BlobStream] = ()) -> None:
        self.out = _AlignedWriter(f) if f is not None else None
        self.pos = 0
        self.positions: dict[tuple[int, int], int] = {}
        self.closed = False
        self.blobs = {(s.blob.address, s.blob.size): s for s in streams}
        self.checksums = {(s.checksum_value.address, s.checksum_value.size): s for s in streams}

    def write(self, data: Any) -> int:
        n: int
        if isinstance(data, pa.Buffer):
            n = int(data.size)
            key = (data.address, n)
            self.positions.setdefault(key, self.pos)
            if self.out is not None and n:
                if key in self.blobs:
                    self.blobs.pop(key).write(self.out.write)
                elif key in self.checksums:
                    self.out.write(self.checksums.pop(key).checksum_bytes())
                else:
                    self.out.write(data)
        else:
            n = len(memoryview(data))
            if self.out is not None:
                self.out.write(data)
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        """Nothing: :meth:`close` writes what is queued (a flush mid-file would break the runs)."""

    def close(self) -> None:
        if self.out is not None and not self.closed:
            self.out.finish()
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def row_batch(
    row: Row,
    *,
    managed: Mapping[str, tuple[pa.DataType, Any]] | None = None,
    plans: dict[str, BlobPlan] | None = None,
) -> pa.RecordBatch:
    """The one-row record batch of ``row``; ``managed`` adds columns (row_id ...) at the front.

    With ``plans``, each weights column gets one (position 0 unless given) and its blob is left to
    the plan's stream; without, weights blobs are built in memory."""
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
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def _blobs(batch: pa.RecordBatch) -> dict[str, tuple[int, int]]:
    """Weights columns -> (address, size) of their data buffer."""
    out = {}
    for i, f in enumerate(batch.schema):
        if is_weights_type(f.type):
            data = batch.column(i).field("data")
            buf = data.buffers()[2]
            if buf is not None and buf.size:
                out[f.name] = (buf.address, buf.size)
    return out


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
) -> None:
    """Write the batch ``build`` makes so every weights blob is where its plan says (mod 64),
    streaming each blob from its tensors (see :class:`BlobStream`). ``layout``: a key under which
    to remember where the blobs landed, for the next batch of the same layout."""
    guess = _LANDED.get(layout, {}) if layout is not None else {}
    plans = {name: BlobPlan(position) for name, position in guess.items()}
    for _ in range(8):
        batch = build(plans)
        dry = _Sink()
        with ipc.new_file(dry, batch.schema) as w:
            w.write_batch(batch)
        landed = {name: dry.positions[key] for name, key in _blobs(batch).items()}
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
    sink = _Sink(f, streams)
    with ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    sink.close()
    if sink.pos != dry.pos:  # pragma: no cover - the same batch serializes to the same bytes
        raise AssertionError(f"wrote {sink.pos} bytes, planned {dry.pos}")
    if sink.blobs or sink.checksums:  # pragma: no cover - pyarrow writes every buffer it has
        raise AssertionError("a weights blob or its checksum was not written")
    for name, key in _blobs(batch).items():
        if (sink.positions.get(key, -1) - plans[name].position) % ALIGNMENT:
            raise AssertionError(f"weights column {name!r} landed misaligned")  # pragma: no cover


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
    row: Row, *, managed: Mapping[str, tuple[pa.DataType, Any]] | None = None
) -> Callable[[IO[bytes]], None]:
    """What writes one row (plus ``managed`` columns) to a file object, sequentially."""
    if not isinstance(row, Row) or not type(row).__identifier__:
        raise RowValidationError(
            f"expected a row (an instance of a declared Row class), got {type(row).__name__}"
        )

    def write(f: IO[bytes]) -> None:
        layout = (type(row), tuple(managed or ()))
        _serialize(lambda plans: row_batch(row, managed=managed, plans=plans), f, layout=layout)

    return write


def write_model_row(path: PathLike, row: Row, *, fsync: bool = True) -> None:
    """Validate ``row`` and write it as a one-row Arrow IPC file at ``path``, atomically.

    A crash never leaves a partial file at ``path``; an existing file is replaced only once the
    new one is complete (and, with ``fsync=True``, durable).

    >>> import tempfile, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights, read_model_row
    >>> path = tempfile.mkdtemp() + "/linear.model.arrow"
    >>> write_model_row(path, ModelV1(weights=fetch_weights(nn.Linear(2, 2)), architecture_version=1))
    >>> read_model_row(path).architecture_version
    1
    """
    prepare_row_file(path, row, fsync=fsync).commit()


# -- reading -----------------------------------------------------------------------------------------


def _map(path: Path) -> tuple[mmap.mmap, torch.Tensor, pa.Buffer]:
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
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise RowFileError(f"{where}: cannot be read: {exc}", path=where) from exc
    finally:
        os.close(fd)
    if mm[:6] != MAGIC or mm[-6:] != MAGIC:
        missing = "start" if mm[:6] != MAGIC else "end"
        mm.close()
        raise NotArrowFileError(
            f"{where}: not an Arrow IPC file (the ARROW1 magic is missing at the {missing}); "
            "is it truncated, or another format?",
            path=where,
        )
    with memoryview(mm) as view:
        check_row_file(view, where=where)
    storage = torch.frombuffer(mm, dtype=torch.uint8)
    return mm, storage, pa.py_buffer(mm)


def read_row_file(path: PathLike) -> tuple[pa.RecordBatch, DecodeContext]:
    """Open a one-row Arrow IPC file, check its structure, and return its batch (zero-copy).

    The footer and the batch header are checked before pyarrow reads them (ipcguard), then
    pyarrow validates the whole batch; no tensor byte is read.
    """
    target = Path(path)
    where = str(target)
    _mm, storage, buf = _map(target)
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
    return batch, DecodeContext(where, storage, buf.address)


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
    fmt = meta.get(METADATA_FORMAT_KEY.encode())
    if fmt is not None:
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
    return str(qualified)


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


def verify_row(row: Row, *, where: str) -> None:
    """Raise CorruptRowError if any weights of ``row`` no longer match their stored checksum."""
    for name, value in [*row._values().items(), *row._extras.items()]:
        if isinstance(value, Weights) and not value.verify():
            raise CorruptRowError(
                f"{where}: checksum mismatch in column {name!r}: stored {value.stored_checksum}, "
                f"computed {value.checksum}; the tensor bytes are corrupt",
                path=where,
            )


def read_model_row(path: PathLike, *, verify: bool = False) -> Row:
    """Read the one row of ``path`` as an instance of its declared class.

    Weights are zero-copy views of the privately memory-mapped file. If the file's schema is not
    declared in this process, the nearest declared ancestor in its qualified chain is returned,
    with the other columns in ``row.extras`` and the file's identifier in ``row.declared_schema``.
    ``verify=True`` also recomputes the checksum of every tensor byte.

    >>> import tempfile, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights, write_model_row
    >>> path = tempfile.mkdtemp() + "/m.model.arrow"
    >>> write_model_row(path, ModelV1(weights=fetch_weights(nn.Linear(2, 3))))
    >>> read_model_row(path).weights["weight"].shape
    torch.Size([3, 2])
    """
    batch, ctx = read_row_file(path)
    row = decode_row(batch, 0, ctx)
    if verify:
        verify_row(row, where=ctx.where)
    return row
