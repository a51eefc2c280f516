"""Checks an Arrow IPC file's structure before pyarrow reads it, with bounded work.

pyarrow trusts what a file declares: a compressed body declares the size pyarrow allocates before
it decompresses anything, and a field's ``ARROW:extension:name`` metadata names a type that
pyarrow deserializes with whatever code registered it (for a pickle-based type, by unpickling).
Row files never use compression, dictionaries or extension types, so this module reads the
footer and the header of the one record batch itself (a few hundred bytes of flatbuffers, every
offset checked against the bytes present) and refuses anything else before pyarrow sees the file.

Flatbuffer layouts follow the Arrow format's ``File.fbs``, ``Message.fbs`` and ``Schema.fbs``.
"""

from __future__ import annotations

import struct

from ._errors import CorruptRowError, NotArrowFileError, RowCountError, UnsupportedFeatureError

__all__ = [
    "MAX_SCHEMA_ITEMS",
    "FlatTable",
    "check_row_file",
    "check_schema_message",
    "check_stream_batch",
    "message_table",
]

# Field slots of the tables read here (their order in the .fbs files).
_FOOTER_SCHEMA, _FOOTER_DICTIONARIES, _FOOTER_BATCHES = 1, 2, 3
_SCHEMA_FIELDS = 1
_FIELD_NAME, _FIELD_DICTIONARY, _FIELD_CHILDREN, _FIELD_METADATA = 0, 4, 5, 6
_KV_KEY, _KV_VALUE = 0, 1
_MESSAGE_HEADER_TYPE, _MESSAGE_HEADER, _MESSAGE_BODY_LENGTH = 1, 2, 3
_BATCH_LENGTH, _BATCH_BUFFERS, _BATCH_COMPRESSION = 0, 2, 3
_COMPRESSION_CODEC = 0

_U8, _I8, _U16, _I32, _U32, _I64 = (struct.Struct(f) for f in ("<B", "<b", "<H", "<i", "<I", "<q"))
_BLOCK = struct.Struct("<qi4xq")  # offset, metaDataLength, (padding), bodyLength
_BUFFER = struct.Struct("<qq")  # offset, length
_HEADERS = {0: "empty", 1: "schema", 2: "dictionary batch", 3: "record batch", 4: "tensor",
            5: "sparse tensor"}  # fmt: skip
_SCHEMA_HEADER, _RECORD_BATCH_HEADER = 1, 3
_CODECS = {0: "LZ4_FRAME", 1: "ZSTD"}
_EXTENSION_KEY = b"ARROW:extension:name"
MAX_SCHEMA_ITEMS = 10_000
"""The most fields and metadata entries a schema may hold. Flatbuffers may share tables and
vectors, so without a budget a small footer could make the walk repeat work without end."""
_CONTINUATION = b"\xff\xff\xff\xff"


class _Malformed(Exception):
    """An offset or length in a flatbuffer points outside its bytes."""


def _unpack(fmt: struct.Struct, buf: memoryview, pos: int) -> int:
    if pos < 0 or pos + fmt.size > len(buf):
        raise _Malformed(f"a {fmt.size}-byte value at byte {pos} lies outside its {len(buf)} bytes")
    value: int = fmt.unpack_from(buf, pos)[0]
    return value


class FlatTable:
    """One table of a flatbuffer; every read is checked against the buffer's bounds."""

    __slots__ = ("_vtable", "_vtable_len", "buf", "pos")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - _unpack(_I32, buf, pos)
        length = _unpack(_U16, buf, vtable)
        if length < 4 or length % 2 or vtable + length > len(buf):
            raise _Malformed(f"the table at byte {pos} has an invalid vtable")
        self._vtable, self._vtable_len = vtable, length

    @classmethod
    def root(cls, buf: memoryview) -> FlatTable:
        return cls(buf, _unpack(_U32, buf, 0))

    def field_pos(self, slot: int) -> int | None:
        """The byte position of field ``slot``, or None when the field is absent (default)."""
        entry = 4 + 2 * slot
        if entry + 2 > self._vtable_len:
            return None
        offset: int = _U16.unpack_from(self.buf, self._vtable + entry)[0]  # inside the vtable
        return self.pos + offset if offset else None

    def scalar(self, slot: int, fmt: struct.Struct, default: int = 0) -> int:
        pos = self.field_pos(slot)
        return default if pos is None else _unpack(fmt, self.buf, pos)

    def _target(self, slot: int) -> int | None:
        pos = self.field_pos(slot)
        return None if pos is None else pos + _unpack(_U32, self.buf, pos)

    def table(self, slot: int) -> FlatTable | None:
        target = self._target(slot)
        return None if target is None else FlatTable(self.buf, target)

    def vector(self, slot: int, item_size: int) -> tuple[int, int]:
        """(position of the first item, number of items) of a vector; (0, 0) when absent."""
        target = self._target(slot)
        if target is None:
            return 0, 0
        count = _unpack(_U32, self.buf, target)
        if target + 4 + count * item_size > len(self.buf):
            raise _Malformed(f"a vector of {count} items at byte {target} overruns its bytes")
        return target + 4, count

    def tables(self, slot: int) -> list[FlatTable]:
        start, count = self.vector(slot, 4)
        return [
            FlatTable(self.buf, p + _unpack(_U32, self.buf, p))
            for p in range(start, start + 4 * count, 4)
        ]

    def string(self, slot: int) -> bytes | None:
        target = self._target(slot)
        if target is None:
            return None
        length = _unpack(_U32, self.buf, target)
        if target + 4 + length > len(self.buf):
            raise _Malformed(f"a string of {length} bytes at byte {target} overruns its bytes")
        return bytes(self.buf[target + 4 : target + 4 + length])


def _show(raw: bytes | None) -> str:
    text = (raw or b"").decode("utf-8", "replace")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def message_table(meta: memoryview) -> FlatTable:
    """The Message table of an encapsulated IPC message (``0xFFFFFFFF``, length, flatbuffer)."""
    start = 8 if bytes(meta[:4]) == _CONTINUATION else 4  # pre-1.0 messages have no marker
    length = _unpack(_I32, meta, start - 4)
    if length <= 0 or start + length > len(meta):
        raise _Malformed(
            f"the message declares {length} bytes of metadata, {len(meta)} are present"
        )
    return FlatTable.root(meta[start : start + length])


def _check_schema(schema: FlatTable, where: str) -> None:
    """Refuse extension types, dictionary encoding and names that are not UTF-8 anywhere in the
    schema's field tree: :func:`_schema_is_plain` says so for a sound schema, at a third of the
    cost; anything it doubts is walked again here, to find and name the problem."""
    if _schema_is_plain(schema.buf, schema.pos):
        return
    budget = [MAX_SCHEMA_ITEMS]

    def items(table: FlatTable, slot: int) -> list[FlatTable]:
        budget[0] -= table.vector(slot, 4)[1]
        if budget[0] < 0:
            raise _Malformed(
                f"its schema holds more than {MAX_SCHEMA_ITEMS} fields and metadata entries"
            )
        return table.tables(slot)

    pending: list[tuple[FlatTable, tuple[FlatTable, ...]]] = [
        (field, ()) for field in items(schema, _SCHEMA_FIELDS)
    ]
    seen: set[int] = set()  # tables may be shared; each is checked once

    def column(path: tuple[FlatTable, ...]) -> str:
        return _show(b".".join(f.string(_FIELD_NAME) or b"" for f in path))

    while pending:
        field, parents = pending.pop()
        if field.pos in seen:
            continue
        seen.add(field.pos)
        path = (*parents, field)
        try:
            (field.string(_FIELD_NAME) or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptRowError(
                f"{where}: column {column(path)} has a name that is not UTF-8 text; the file is "
                "damaged",
                path=where,
            ) from None
        for kv in items(field, _FIELD_METADATA):
            if kv.string(_KV_KEY) == _EXTENSION_KEY and not _is_foreign_annotation(
                kv.string(_KV_VALUE)
            ):
                raise UnsupportedFeatureError(
                    f"{where}: column {column(path)} declares the Arrow extension type "
                    f"{_show(kv.string(_KV_VALUE))}; row files never use extension types, and "
                    "reading one can run code (a pickled type), so the file is refused unread",
                    path=where,
                )
        if field.field_pos(_FIELD_DICTIONARY) is not None:
            raise UnsupportedFeatureError(
                f"{where}: column {column(path)} is dictionary-encoded; row files never use "
                "dictionaries, so the file is refused unread",
                path=where,
            )
        pending.extend((child, path) for child in items(field, _FIELD_CHILDREN))


def _schema_is_plain(buf: memoryview, schema_pos: int) -> bool:
    """Whether :func:`_check_schema` finds nothing to refuse in the schema table at
    ``schema_pos``: the same walk and the same checks (every offset in bounds, the same budget,
    each field once), inlined without objects or messages, answering False at the first doubt.
    A schema read on every row file's open and every catalog's: 190 -> 60 us for 22 fields."""
    n = len(buf)
    i32, u32, u16 = _I32.unpack_from, _U32.unpack_from, _U16.unpack_from

    def table(pos: int) -> tuple[int, int]:  # (vtable, its length) of the table at pos
        if pos < 0 or pos + 4 > n:
            raise _Malformed
        vtable = pos - i32(buf, pos)[0]
        if vtable < 0 or vtable + 2 > n:
            raise _Malformed
        length = u16(buf, vtable)[0]
        if length < 4 or length % 2 or vtable + length > n:
            raise _Malformed
        return vtable, length

    def target(pos: int, vtable: int, length: int, slot: int) -> int:  # 0: field absent
        entry = 4 + 2 * slot
        if entry + 2 > length:
            return 0
        offset = u16(buf, vtable + entry)[0]
        if not offset:
            return 0
        at: int = pos + offset
        if at + 4 > n:
            raise _Malformed
        return at + int(u32(buf, at)[0])

    def vector(pos: int, vtable: int, length: int, slot: int) -> tuple[int, int]:
        start = target(pos, vtable, length, slot)
        if not start:
            return 0, 0
        if start + 4 > n:
            raise _Malformed
        count = u32(buf, start)[0]
        if start + 4 + 4 * count > n:
            raise _Malformed
        return start + 4, count

    def string(pos: int, vtable: int, length: int, slot: int) -> bytes:
        start = target(pos, vtable, length, slot)
        if not start:
            return b""
        if start + 4 > n:
            raise _Malformed
        size = u32(buf, start)[0]
        if start + 4 + size > n:
            raise _Malformed
        return bytes(buf[start + 4 : start + 4 + size])

    try:
        budget = MAX_SCHEMA_ITEMS
        vt, vl = table(schema_pos)
        start, count = vector(schema_pos, vt, vl, _SCHEMA_FIELDS)
        budget -= count
        if budget < 0:
            return False
        pending = [p + u32(buf, p)[0] for p in range(start, start + 4 * count, 4)]
        seen: set[int] = set()
        while pending:
            pos = pending.pop()
            if pos in seen:
                continue
            seen.add(pos)
            vt, vl = table(pos)
            string(pos, vt, vl, _FIELD_NAME).decode("utf-8")
            start, count = vector(pos, vt, vl, _FIELD_METADATA)
            budget -= count
            if budget < 0:
                return False
            for p in range(start, start + 4 * count, 4):
                kv = p + u32(buf, p)[0]
                kvt, kvl = table(kv)
                if string(kv, kvt, kvl, _KV_KEY) == _EXTENSION_KEY:
                    return False
            entry = 4 + 2 * _FIELD_DICTIONARY
            if entry + 2 <= vl and u16(buf, vt + entry)[0]:
                return False
            start, count = vector(pos, vt, vl, _FIELD_CHILDREN)
            budget -= count
            if budget < 0:
                return False
            pending.extend(p + u32(buf, p)[0] for p in range(start, start + 4 * count, 4))
    except (_Malformed, UnicodeDecodeError, struct.error):
        return False
    return True


_FOREIGN_EXTENSION_PREFIXES = (b"JuliaLang.",)
"""Extension names other Arrow libraries write as annotations on plain storage types (Arrow.jl's
``JuliaLang.*``, e.g. LegolasFlux.jl's ``JuliaLang.LegolasFlux.Weights``). pyarrow has no type
registered under them, so it reads the storage type and runs nothing."""


def _is_foreign_annotation(name: bytes | None) -> bool:
    return name is not None and name.startswith(_FOREIGN_EXTENSION_PREFIXES)


def check_schema_message(data: bytes, *, where: str) -> None:
    """Refuse a serialized schema (an IPC schema message) that pyarrow should not deserialize."""
    try:
        message = message_table(memoryview(data))
        schema = message.table(_MESSAGE_HEADER)
        if message.scalar(_MESSAGE_HEADER_TYPE, _U8) != _SCHEMA_HEADER or schema is None:
            raise _Malformed("it is not a schema message")
        _check_schema(schema, where)
    except _Malformed as exc:
        raise NotArrowFileError(
            f"{where}: the Arrow schema is corrupt ({exc})", path=where
        ) from None


def check_row_file(data: memoryview, *, where: str, one_row: bool = True) -> None:
    """Check the framing of a row file whose ``ARROW1`` magic is present at both ends.

    Reads only the footer and the record batch's message header; raises NotArrowFileError,
    RowCountError, UnsupportedFeatureError or CorruptRowError, each naming ``where``.
    ``one_row=False`` checks an index log entry: one record batch of any number of rows.
    """
    size = len(data)
    footer_len = _unpack(_I32, data, size - 10)
    footer_start = size - 10 - footer_len
    if footer_len <= 0 or footer_start < 8:
        raise NotArrowFileError(
            f"{where}: the footer length ({footer_len} bytes) does not fit in a file of {size} "
            "bytes; is it truncated or damaged?",
            path=where,
        )
    try:
        footer = FlatTable.root(data[footer_start : size - 10])
        schema = footer.table(_FOOTER_SCHEMA)
        if schema is None:
            raise _Malformed("it holds no schema")
        _check_schema(schema, where)
        if footer.vector(_FOOTER_DICTIONARIES, _BLOCK.size)[1]:
            raise UnsupportedFeatureError(
                f"{where}: holds dictionary batches; row files never use dictionaries, so the "
                "file is refused unread",
                path=where,
            )
        start, count = footer.vector(_FOOTER_BATCHES, _BLOCK.size)
        if count == 0:
            raise RowCountError(f"{where}: holds 0 rows; a row file holds exactly one", path=where)
        if count != 1:
            raise RowCountError(
                f"{where}: holds {count} record batches; a row file holds exactly one row in one "
                "batch",
                path=where,
            )
        offset, meta_len, body_len = _BLOCK.unpack_from(footer.buf, start)
    except _Malformed as exc:
        raise NotArrowFileError(
            f"{where}: the Arrow footer is corrupt ({exc}); is the file truncated or damaged?",
            path=where,
        ) from None
    if offset < 8 or meta_len <= 8 or body_len < 0 or offset + meta_len + body_len > footer_start:
        raise NotArrowFileError(
            f"{where}: the footer places the record batch at byte {offset} ({meta_len} bytes of "
            f"header, {body_len} of body), outside the data (bytes 8 to {footer_start}); is the "
            "file truncated or damaged?",
            path=where,
        )
    _check_batch(data[offset : offset + meta_len], body_len, where, one_row)


def check_stream_batch(data: memoryview, at: int, *, where: str) -> int:
    """Check the record batch message at byte ``at`` of an Arrow IPC stream (framing, no
    compression, every buffer inside its body, the body inside ``data``); return the byte after
    its body. Raises CorruptRowError or UnsupportedFeatureError naming ``where``."""
    try:
        if bytes(data[at : at + 4]) != _CONTINUATION:
            raise _Malformed(f"no message at byte {at}")
        meta_len = _unpack(_I32, data, at + 4)
        if meta_len <= 8 or at + 8 + meta_len > len(data):
            raise _Malformed(f"a {meta_len}-byte message header at byte {at}")
        meta = data[at : at + 8 + meta_len]
        body_len = message_table(meta).scalar(_MESSAGE_BODY_LENGTH, _I64)
    except _Malformed as exc:
        raise CorruptRowError(f"{where}: the record batch is corrupt ({exc})", path=where) from None
    end = at + 8 + meta_len + body_len
    if body_len < 0 or end > len(data):
        raise CorruptRowError(
            f"{where}: the record batch's {body_len}-byte body does not fit in the file",
            path=where,
        )
    _check_batch(meta, body_len, where, one_row=False)
    return end


def _check_batch(meta: memoryview, body_len: int, where: str, one_row: bool = True) -> None:
    def corrupt(problem: str) -> CorruptRowError:
        return CorruptRowError(
            f"{where}: the record batch header is corrupt ({problem}); the file is damaged",
            path=where,
        )

    try:
        message = message_table(meta)
        kind = message.scalar(_MESSAGE_HEADER_TYPE, _U8)
        batch = message.table(_MESSAGE_HEADER)
        if kind != _RECORD_BATCH_HEADER or batch is None:
            raise corrupt(f"the footer points at a {_HEADERS.get(kind, 'unknown')} message")
        declared = message.scalar(_MESSAGE_BODY_LENGTH, _I64)
        if declared != body_len:
            raise corrupt(f"the message declares a {declared}-byte body, the footer {body_len}")
        compression = batch.table(_BATCH_COMPRESSION)
        if compression is not None:
            codec = compression.scalar(_COMPRESSION_CODEC, _I8)
            raise UnsupportedFeatureError(
                f"{where}: the record batch is compressed ({_CODECS.get(codec, codec)}); row files "
                "are never compressed, and a compressed body declares sizes that would be "
                "allocated before they can be checked, so the file is refused unread",
                path=where,
            )
        rows = batch.scalar(_BATCH_LENGTH, _I64)
        if rows != 1 and (one_row or rows < 0):
            raise RowCountError(
                f"{where}: holds {rows} rows; a row file holds exactly one", path=where
            )
        start, count = batch.vector(_BATCH_BUFFERS, _BUFFER.size)
        for i in range(count):
            offset, length = _BUFFER.unpack_from(batch.buf, start + i * _BUFFER.size)
            if offset < 0 or length < 0 or offset + length > body_len:
                raise corrupt(
                    f"buffer {i} spans bytes [{offset}, {offset + length}) of a {body_len}-byte body"
                )
    except _Malformed as exc:
        raise corrupt(str(exc)) from None
