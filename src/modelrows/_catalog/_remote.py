"""Reading a row object of a remote store for the index: every byte but the tensors'.

Rebuilding the index (``Catalog.reindex``) needs a row's non-weight columns and the stored
checksums of its weights, not its tensor bytes. From a remote store, :func:`read_for_index`
fetches the object's head (magic, schema, the record batch's header), its footer and every
buffer of the record batch's body but the large ones, in three or four ranged requests, and
lays them out in a buffer the size of the object, the bytes not fetched left zero. The row is
then checked as every read is (``read_row_file``). A skipped buffer that turns out to be
anything but a weights column's tensor bytes (a huge tensor table, a long string) makes it read
the whole object instead, so what the index gets is always what the object holds.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from .._format import is_weights_type
from .._ipcguard import FlatTable, message_table
from .._rowfile import read_row_file
from ._store import Store

__all__ = ["read_for_index"]

_EDGE = 64 << 10  # bytes read at each end of the object first
_SKIP_FROM = 1 << 20  # body buffers this large are skipped (if they hold tensor bytes)
_WHOLE_BELOW = 4 << 20  # objects smaller than this are read whole (one request)

# Flatbuffer slots and structs of Arrow's File.fbs and Message.fbs (as in _ipcguard)
_FOOTER_BATCHES = 3
_MESSAGE_HEADER = 2
_BATCH_BUFFERS = 2
_BLOCK = struct.Struct("<qi4xq")  # offset, metaDataLength, (padding), bodyLength
_BUFFER = struct.Struct("<qq")  # offset, length
_I32 = struct.Struct("<i")


def _layout(data: memoryview, size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(ranges still to fetch, ranges skipped) once the footer and the batch header are in
    ``data``; raises on anything malformed (the caller then reads the object whole)."""
    footer_len = _I32.unpack_from(data, size - 10)[0]
    footer = FlatTable.root(data[size - 10 - footer_len : size - 10])
    start, count = footer.vector(_FOOTER_BATCHES, _BLOCK.size)
    if count != 1:
        raise ValueError("not one record batch")
    offset, meta_len, body_len = _BLOCK.unpack_from(footer.buf, start)
    batch = message_table(data[offset : offset + meta_len]).table(_MESSAGE_HEADER)
    if batch is None:
        raise ValueError("no record batch header")
    body = offset + meta_len
    first, n = batch.vector(_BATCH_BUFFERS, _BUFFER.size)
    fetch: list[tuple[int, int]] = []
    skip: list[tuple[int, int]] = []
    for i in range(n):
        at, length = _BUFFER.unpack_from(batch.buf, first + i * _BUFFER.size)
        if not 0 <= at <= at + length <= body_len:
            raise ValueError("a buffer outside the body")
        (skip if length >= _SKIP_FROM else fetch).append((body + at, body + at + length))
    return fetch, skip


def _blob_ranges(batch: pa.RecordBatch, base: int) -> list[tuple[int, int]]:
    """Where each weights column's tensor bytes lie, as offsets in the buffer at ``base``."""
    out = []
    for i, f in enumerate(batch.schema):
        if is_weights_type(f.type):
            data = batch.column(i).field("data").buffers()[2]
            if data is not None:
                out.append((data.address - base, data.address - base + data.size))
    return out


def _fill(store: Store, key: str, view: memoryview, ranges: list[tuple[int, int]]) -> None:
    """Fetches ``ranges`` of ``key`` into the same places of ``view``."""
    for (start, _end), got in zip(ranges, store.get_ranges(key, ranges), strict=True):
        view[start : start + len(got)] = got


def read_for_index(store: Store, key: str, *, where: str) -> tuple[pa.RecordBatch, int]:
    """The checked record batch of the row object ``key`` without its tensor bytes (which read
    as zeros: never decode its weights), and the object's size. FileNotFoundError if absent."""
    size = store.size(key)
    if size is None:
        raise FileNotFoundError(2, "no such object", where)
    if size < _WHOLE_BELOW:
        return read_row_file(store.read_all(key), where=where)[0], size
    buffer = bytearray(size)
    view = memoryview(buffer)
    _fill(store, key, view, [(0, _EDGE), (size - _EDGE, size)])
    try:
        footer_len = _I32.unpack_from(view, size - 10)[0]
        if footer_len + 10 > _EDGE:
            _fill(store, key, view, [(size - 10 - footer_len, size - _EDGE)])
        footer = FlatTable.root(view[size - 10 - footer_len : size - 10])
        start, count = footer.vector(_FOOTER_BATCHES, _BLOCK.size)
        offset, meta_len, _ = _BLOCK.unpack_from(footer.buf, start) if count else (0, 0, 0)
        if offset + meta_len > _EDGE:
            _fill(store, key, view, [(offset, offset + meta_len)])
        fetch, skip = _layout(view, size)
    except Exception:  # malformed: the whole object, and its checks say what is wrong
        return read_row_file(store.read_all(key), where=where)[0], size
    fetch = [(s, e) for s, e in fetch if e > s and not (e <= _EDGE or s >= size - _EDGE)]
    _fill(store, key, view, fetch)
    batch, _ctx = read_row_file(buffer, where=where)
    blobs = _blob_ranges(batch, pa.py_buffer(buffer).address)
    if all(any(bs <= s and e <= be for bs, be in blobs) for s, e in skip):
        return batch, size
    return read_row_file(store.read_all(key), where=where)[0], size
