"""A corpus of crafted, hostile and broken row files, each with the exact error it must raise
(safetensors and SQLite keep such corpora), and the worker that reads them in a subprocess.

``build(directory)`` writes every case and returns them. ``python hostile.py DIR`` reads each
file of DIR with ``read_model_row(path, verify=True)`` and prints one JSON line per file: the
error raised, the peak bytes allocated by Arrow and by Python while reading, and the seconds it
took. The test runs it under a timeout, so a crash or a hang is caught and the file named.

Messages are templates: ``{path}`` is the file, ``<n>`` a number, ``<hex>`` hex digits and
``<any>`` text that comes from pyarrow.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch
import torch.nn as nn

from modelrows import ModelV1, fetch_weights, write_model_row
from modelrows._ipcguard import FlatTable, message_table

MARKER_NAME = "unpickled.marker"  # created by anything that deserializes a hostile type
RECORDING_TYPE = "modelrows.test.recording"
RELATIVE_PEAK = 4  # reading may allocate this many times the file's size ...
ABSOLUTE_PEAK = 1 << 20  # ... plus this much


@dataclass
class Case:
    name: str
    error: str  # the class name of the ModelRowsError it must raise
    message: str  # template of its exact message
    make: Callable[[Corpus, Path], None]  # writes the file at the given path

    def pattern(self, path: Path) -> re.Pattern[str]:
        parts = re.split(r"(<n>|<hex>|<any>|\{path\})", self.message)
        regex = {
            "<n>": r"-?\d+",
            "<hex>": "[0-9a-f]+",
            "<any>": ".*",
            "{path}": re.escape(str(path)),
        }
        return re.compile("".join(regex.get(p, re.escape(p)) for p in parts), re.DOTALL)


class Corpus:
    """A valid row file and what the cases need to know of its bytes."""

    def __init__(self, directory: Path) -> None:
        torch.manual_seed(0)
        path = directory / "valid.model.arrow"
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        write_model_row(path, ModelV1(weights=fetch_weights(model), architecture_version=1))
        self.valid = path.read_bytes()
        self.table = ipc.open_file(pa.py_buffer(self.valid)).read_all()
        data = memoryview(self.valid)
        size = len(data)
        self.footer_start = size - 10 - struct.unpack_from("<i", data, size - 10)[0]
        footer = FlatTable.root(data[self.footer_start : size - 10])
        start, _count = footer.vector(3, 24)
        self.block_pos = (
            self.footer_start + start
        )  # Block {offset, metaDataLength, pad, bodyLength}
        self.batch_offset, self.meta_len, self.body_len = struct.unpack_from(
            "<qi4xq", data, self.block_pos
        )
        self.body_start = self.batch_offset + self.meta_len
        meta = data[self.batch_offset : self.body_start]
        message = message_table(meta)
        base = self.batch_offset + 8  # past the continuation marker and the metadata length
        batch = message.table(2)
        assert batch is not None
        self.header_type_pos = base + (message.field_pos(1) or 0)
        self.body_length_pos = base + (message.field_pos(3) or 0)
        self.rows_pos = base + (batch.field_pos(0) or 0)
        first, count = batch.vector(2, 16)
        self.buffers = [
            (base + first + 16 * i, *struct.unpack_from("<qq", batch.buf, first + 16 * i))
            for i in range(count)
        ]

    # -- building bytes -----------------------------------------------------------------------
    def patched(self, pos: int, fmt: str, value: Any) -> bytes:
        data = bytearray(self.valid)
        struct.pack_into(fmt, data, pos, value)
        return bytes(data)

    def flipped(self, pos: int, bit: int) -> bytes:
        data = bytearray(self.valid)
        data[pos] ^= 1 << bit
        return bytes(data)

    def in_footer(self, text: bytes) -> int:
        pos = self.valid.find(text, self.footer_start)
        assert pos > 0, text
        return pos

    @staticmethod
    def ipc_bytes(table: pa.Table, **options: Any) -> bytes:
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(**options)) as w:
            w.write_table(table)
        return bytes(sink.getvalue().to_pybytes())

    def with_weights(self, change: Callable[[dict[str, Any]], None]) -> bytes:
        weights = self.table.column("weights").to_pylist()[0]
        change(weights)
        column = pa.array([weights], type=self.table.schema.field("weights").type)
        return self.ipc_bytes(self.table.set_column(0, self.table.schema.field("weights"), column))

    def with_metadata(self, **changes: bytes | None) -> bytes:
        meta = dict(self.table.schema.metadata)
        for key, value in changes.items():
            if value is None:
                meta.pop(key.encode())
            else:
                meta[key.encode()] = value
        return self.ipc_bytes(self.table.replace_schema_metadata(meta))

    def with_column(self, field: pa.Field, array: pa.Array) -> bytes:
        return self.ipc_bytes(self.table.append_column(field, array))

    def data_offsets_pos(self) -> int:
        """Where the end offset of the weights blob (large_binary offsets [0, n]) lies."""
        for (_, off, length), (_, _next_off, next_length) in zip(
            self.buffers, self.buffers[1:], strict=False
        ):
            pos = self.body_start + off
            if length == 16 and struct.unpack_from("<qq", self.valid, pos) == (0, next_length):
                return pos + 8
        raise AssertionError("no large_binary offsets buffer found")

    def zstd_declaring(self, uncompressed: int) -> bytes:
        """The row, ZSTD-compressed, with the blob's buffer declaring ``uncompressed`` bytes."""
        data = bytearray(self.ipc_bytes(self.table, compression="zstd"))
        blob = self.table.column("weights")[0]["data"].as_py()
        pos = max(m.start() for m in re.finditer(re.escape(struct.pack("<q", len(blob))), data))
        struct.pack_into("<q", data, pos, uncompressed)  # the last such prefix: the blob's
        return bytes(data)


def _flip_tensor_byte(c: Corpus) -> bytes:
    _, off, _length = max(c.buffers, key=lambda b: b[2])  # the blob: the largest buffer
    return c.flipped(c.body_start + off + 70, 0)


def _schema_bomb(m: int) -> bytes:
    """A file whose footer schema lists ``m`` fields that all share one vector of ``m`` children:
    under 100 KB, but a walk that expands each field's children does m * m steps."""
    out = bytearray(4)  # the root offset, set last
    out += struct.pack("<4H", 8, 8, 0, 4)  # 4: footer vtable: schema (slot 1) at +4
    out += struct.pack("<4H", 8, 8, 0, 4)  # 12: schema vtable: fields (slot 1) at +4
    out += struct.pack("<8H", 16, 8, 0, 0, 0, 0, 0, 4)  # 20: field vtable: children (slot 5) at +4
    out += struct.pack("<2H", 4, 4)  # 36: leaf field vtable: no fields
    footer, schema, fields = 40, 48, 56
    out += struct.pack("<iI", footer - 4, schema - (footer + 4))
    out += struct.pack("<iI", schema - 12, fields - (schema + 4))
    first = fields + 4 + 4 * m  # the m fields, 8 bytes each
    shared = first + 8 * m  # their one children vector
    leaves = shared + 4 + 4 * m  # the m leaves, 4 bytes each
    out += struct.pack("<I", m)
    out += b"".join(struct.pack("<I", first + 8 * i - (fields + 4 + 4 * i)) for i in range(m))
    out += b"".join(struct.pack("<iI", first + 8 * i - 20, shared - (first + 8 * i + 4))
                    for i in range(m))  # fmt: skip
    out += struct.pack("<I", m)
    out += b"".join(struct.pack("<I", leaves + 4 * j - (shared + 4 + 4 * j)) for j in range(m))
    out += b"".join(struct.pack("<i", leaves + 4 * j - 36) for j in range(m))
    struct.pack_into("<I", out, 0, footer)
    return b"ARROW1\0\0" + bytes(out) + struct.pack("<i", len(out)) + b"ARROW1"


def _extension(name: str, metadata: bytes) -> pa.Field:
    return pa.field("evil", pa.int64(), metadata={
        "ARROW:extension:name": name, "ARROW:extension:metadata": metadata})  # fmt: skip


def _fill(template: str, *parts: str) -> str:
    for part in parts:
        template = template.replace("{}", part, 1)
    return template


def _bytes(make: Callable[[Corpus], bytes]) -> Callable[[Corpus, Path], None]:
    def write(corpus: Corpus, path: Path) -> None:
        path.write_bytes(make(corpus))

    return write


def _stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _dictionary_column(c: Corpus) -> bytes:
    tags = pa.array(["x"]).dictionary_encode()
    return c.with_column(pa.field("tag", tags.type), tags)


MAGIC_END = "{path}: not an Arrow IPC file (the ARROW1 magic is missing at the end); is it truncated, or another format?"  # fmt: skip
MAGIC_START = MAGIC_END.replace("at the end", "at the start")
OUTSIDE = "{path}: the footer places the record batch at byte <n> (<n> bytes of header, <n> of body), outside the data (bytes 8 to <n>); is the file truncated or damaged?"  # fmt: skip
FOOTER_CORRUPT = "{path}: the Arrow footer is corrupt (<any>); is the file truncated or damaged?"
HEADER_CORRUPT = "{path}: the record batch header is corrupt ({}); the file is damaged"
REFUSED = "so the file is refused unread"
EXTENSION = "{path}: column {} declares the Arrow extension type {}; row files never use extension types, and reading one can run code (a pickled type), " + REFUSED  # fmt: skip
NOT_OURS = "; the file is corrupt or was not written by modelrows"
PICKLE = b"cbuiltins\nopen\n(V{marker}\nVw\ntR."  # protocol 0: builtins.open(marker, "w")


def cases(marker: Path) -> list[Case]:
    payload = PICKLE.replace(b"{marker}", str(marker).encode())
    nested = pa.struct([pa.field("ok", pa.int64()), _extension(RECORDING_TYPE, b"")])
    return [
        # -- framing: truncated at each section, wrong magic, other formats ----------------------
        Case("empty", "NotArrowFileError", "{path}: 0 bytes is too short to be an Arrow IPC file",
             _bytes(lambda c: b"")),
        Case("magic-only", "NotArrowFileError", "{path}: 8 bytes is too short to be an Arrow IPC file",
             _bytes(lambda c: c.valid[:8])),
        Case("truncated-in-schema", "NotArrowFileError", MAGIC_END, _bytes(lambda c: c.valid[:200])),
        Case("truncated-after-schema", "NotArrowFileError", MAGIC_END,
             _bytes(lambda c: c.valid[: c.batch_offset])),
        Case("truncated-in-batch-header", "NotArrowFileError", MAGIC_END,
             _bytes(lambda c: c.valid[: c.batch_offset + 100])),
        Case("truncated-in-body", "NotArrowFileError", MAGIC_END,
             _bytes(lambda c: c.valid[: c.body_start + c.body_len // 2])),
        Case("truncated-in-footer", "NotArrowFileError", MAGIC_END,
             _bytes(lambda c: c.valid[: c.footer_start + 100])),
        Case("truncated-by-one-byte", "NotArrowFileError", MAGIC_END, _bytes(lambda c: c.valid[:-1])),
        Case("truncated-body-footer-kept", "NotArrowFileError", OUTSIDE,
             _bytes(lambda c: c.valid[: c.body_start + 64] + c.valid[c.footer_start :])),
        Case("wrong-magic", "NotArrowFileError", MAGIC_START,
             _bytes(lambda c: b"ARROW2" + c.valid[6:])),
        Case("parquet-file", "NotArrowFileError", MAGIC_START, lambda c, p: pq.write_table(
            c.table.drop_columns(["weights"]), p)),
        Case("ipc-stream-not-file", "NotArrowFileError", MAGIC_START,
             _bytes(lambda c: _stream(c.table))),
        # -- footer: flipped bits and absurd declared lengths ------------------------------------
        Case("footer-length-absurd", "NotArrowFileError",
             "{path}: the footer length (2147483647 bytes) does not fit in a file of <n> bytes; "
             "is it truncated or damaged?", _bytes(lambda c: c.patched(len(c.valid) - 10, "<i", 2**31 - 1))),
        Case("footer-length-negative", "NotArrowFileError",
             "{path}: the footer length (-8 bytes) does not fit in a file of <n> bytes; is it "
             "truncated or damaged?", _bytes(lambda c: c.patched(len(c.valid) - 10, "<i", -8))),
        Case("footer-root-flipped", "NotArrowFileError", FOOTER_CORRUPT,
             _bytes(lambda c: c.flipped(c.footer_start + 3, 7))),
        Case("footer-block-offset-flipped", "NotArrowFileError", OUTSIDE,
             _bytes(lambda c: c.flipped(c.block_pos + 5, 0))),
        Case("footer-block-body-absurd", "NotArrowFileError", OUTSIDE,
             _bytes(lambda c: c.patched(c.block_pos + 16, "<q", 2**62))),
        Case("footer-block-header-absurd", "NotArrowFileError", OUTSIDE,
             _bytes(lambda c: c.patched(c.block_pos + 8, "<i", 2**31 - 1))),
        Case("footer-schema-shared-children", "NotArrowFileError",
             "{path}: the Arrow footer is corrupt (its schema holds more than 10000 fields and "
             "metadata entries); is the file truncated or damaged?", _bytes(lambda c: _schema_bomb(6000))),
        Case("footer-column-name-flipped", "SchemaMismatchError",
             "{path} does not hold ModelV1 (modelrows.model@1): missing required column 'weights' "
             "(Weights)", _bytes(lambda c: c.flipped(c.in_footer(b"weights") + 6, 0))),
        Case("footer-identifier-flipped", "UnknownSchemaError",
             "{path}: malformed schema identifier 'modelrows.modelA1': 'modelrows.modelA1' is not "
             "'name@version' with name in [a-z0-9.-] and version a whole number",
             _bytes(lambda c: c.flipped(c.in_footer(b"modelrows.model@1") + 15, 0))),
        # -- the record batch header: flipped bits and absurd lengths ----------------------------
        Case("batch-rows-flipped", "RowCountError", "{path}: holds 3 rows; a row file holds exactly one",
             _bytes(lambda c: c.flipped(c.rows_pos, 1))),
        Case("batch-buffer-absurd", "CorruptRowError", _fill(HEADER_CORRUPT,
            "buffer <n> spans bytes [<n>, <n>) of a <n>-byte body"),
            _bytes(lambda c: c.patched(c.buffers[-3][0] + 8, "<q", 2**40))),
        Case("batch-header-type-flipped", "CorruptRowError", _fill(HEADER_CORRUPT,
            "the footer points at a schema message"), _bytes(lambda c: c.patched(c.header_type_pos, "<B", 1))),
        Case("batch-body-length-lies", "CorruptRowError", _fill(HEADER_CORRUPT,
            "the message declares a <n>-byte body, the footer <n>"),
            _bytes(lambda c: c.patched(c.body_length_pos, "<q", 2**50))),
        Case("batch-binary-offsets-absurd", "CorruptRowError", "{path}: the record batch is corrupt: <any>",
             _bytes(lambda c: c.patched(c.data_offsets_pos(), "<q", 2**50))),
        # -- Arrow features row files never use ---------------------------------------------------
        Case("compressed-lz4", "UnsupportedFeatureError",
             "{path}: the record batch is compressed (LZ4_FRAME); row files are never compressed, "
             "and a compressed body declares sizes that would be allocated before they can be "
             "checked, " + REFUSED, _bytes(lambda c: c.ipc_bytes(c.table, compression="lz4"))),
        Case("compressed-zstd-declaring-1tib", "UnsupportedFeatureError",
             "{path}: the record batch is compressed (ZSTD); <any>", _bytes(lambda c: c.zstd_declaring(2**40))),
        Case("dictionary-column", "UnsupportedFeatureError",
             "{path}: column 'tag' is dictionary-encoded; row files never use dictionaries, " + REFUSED,
             _bytes(_dictionary_column)),
        Case("extension-pickled", "UnsupportedFeatureError",
             _fill(EXTENSION, "'evil'", "'arrow.py_extension_type'"),
             _bytes(lambda c: c.with_column(_extension("arrow.py_extension_type", payload), pa.array([1])))),
        Case("extension-registered", "UnsupportedFeatureError",
             _fill(EXTENSION, "'evil'", repr(RECORDING_TYPE)),
             _bytes(lambda c: c.with_column(_extension(RECORDING_TYPE, payload), pa.array([1])))),
        Case("extension-nested", "UnsupportedFeatureError",
             _fill(EXTENSION, "'cfg.evil'", repr(RECORDING_TYPE)),
             _bytes(lambda c: c.with_column(pa.field("cfg", nested), pa.array([{"ok": 1, "evil": 2}], nested)))),
        # -- row counts -------------------------------------------------------------------------------
        Case("zero-rows", "RowCountError", "{path}: holds 0 rows; a row file holds exactly one",
             _bytes(lambda c: c.ipc_bytes(c.table.slice(0, 0)))),
        Case("two-batches", "RowCountError",
             "{path}: holds 2 record batches; a row file holds exactly one row in one batch",
             _bytes(lambda c: c.ipc_bytes(pa.concat_tables([c.table, c.table])))),
        Case("two-rows", "RowCountError", "{path}: holds 2 rows; a row file holds exactly one",
             _bytes(lambda c: c.ipc_bytes(pa.concat_tables([c.table, c.table]).combine_chunks()))),
        # -- the weights: tensor bytes, shapes, lengths, names, dtypes ------------------------------
        Case("tensor-bytes-flipped", "CorruptRowError",
             "{path}: checksum mismatch in column 'weights': stored xxh3-64:<hex>, computed "
             "xxh3-64:<hex>; the tensor bytes are corrupt", _bytes(_flip_tensor_byte)),
        Case("shape-larger-than-bytes", "CorruptRowError",
             "{path}: tensor '0.weight' needs bytes [<n>, <n>) but the data holds only <n>" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][0].update(shape=[800, 4], nbytes=12800)))),
        Case("negative-shape", "CorruptRowError",
             "{path}: tensor '0.weight' has an invalid shape [-8, 4]" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][0].update(shape=[-8, 4])))),
        Case("overflowing-shape", "CorruptRowError",
             "{path}: tensor '0.weight' is float32 (4611686018427387904, 4611686018427387904) = "
             "<n> bytes but declares 128" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][0].update(shape=[2**62, 2**62])))),
        Case("absurd-nbytes", "CorruptRowError",
             "{path}: tensor '0.weight' needs bytes [<n>, <n>) but the data holds only <n>" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][0].update(shape=[2**59], nbytes=2**61)))),
        Case("absurd-offset", "CorruptRowError",
             "{path}: tensor '0.weight' needs bytes [4611686018427387904, <n>) but the data holds "
             "only <n>" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][0].update(offset=2**62)))),
        Case("overlapping-tensors", "CorruptRowError",
             "{path}: tensors overlap at byte <n>; tensors share bytes only when tied (identical)" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][1].update(offset=w["tensors"][0]["offset"] + 4)))),
        Case("misaligned-tensor", "CorruptRowError",
             "{path}: tensor '0.bias' starts at byte <n> of the data, not at a multiple of its "
             "4-byte elements" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][1].update(offset=w["tensors"][1]["offset"] + 1)))),
        Case("duplicate-tensor-names", "CorruptRowError",
             "{path}: tensor '0.weight' appears twice" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][1].update(name="0.weight")))),
        Case("unknown-dtype", "CorruptRowError",
             "{path}: tensor '0.weight' has unknown dtype 'float128' (known: <any>)" + NOT_OURS,
             _bytes(lambda c: c.with_weights(lambda w: w["tensors"][0].update(dtype="float128")))),
        Case("fingerprint-lies", "CorruptRowError",
             "{path}: the weights' fingerprint 'deadbeef' does not match their names, dtypes and "
             "shapes ('<hex>'); the file is corrupt",
             _bytes(lambda c: c.with_weights(lambda w: w.update(fingerprint="deadbeef")))),
        Case("checksum-lies", "CorruptRowError",
             "{path}: checksum mismatch in column 'weights': stored xxh3-64:0123456789abcdef, "
             "computed xxh3-64:<hex>; the tensor bytes are corrupt",
             _bytes(lambda c: c.with_weights(lambda w: w.update(checksum="xxh3-64:0123456789abcdef")))),
        # -- metadata that is missing, malformed, or not what it claims -----------------------------
        Case("malformed-identifier", "UnknownSchemaError",
             "{path}: malformed schema identifier 'Model V1': 'Model V1' is not 'name@version' "
             "with name in [a-z0-9.-] and version a whole number",
             _bytes(lambda c: c.with_metadata(legolas_schema_qualified=b"Model V1"))),
        Case("no-identifier", "UnknownSchemaError",
             "{path}: the Arrow schema has no 'legolas_schema_qualified' metadata, so its row "
             "schema is unknown; was it written by modelrows or Legolas?",
             _bytes(lambda c: c.with_metadata(legolas_schema_qualified=None))),
        Case("identifier-not-utf8", "UnknownSchemaError",
             "{path}: 'legolas_schema_qualified' metadata is not UTF-8 text",
             _bytes(lambda c: c.with_metadata(legolas_schema_qualified=b"model\xff@1"))),
        Case("format-version-not-a-number", "UnknownSchemaError",
             "{path}: 'modelrows_format_version' metadata b'one' is not a whole number",
             _bytes(lambda c: c.with_metadata(modelrows_format_version=b"one"))),
        Case("format-version-from-the-future", "UnknownSchemaError",
             "{path}: written in modelrows format version 99; this modelrows reads up to 2. "
             "Upgrade modelrows to read it.",
             _bytes(lambda c: c.with_metadata(modelrows_format_version=b"99"))),
        Case("claims-a-model-but-weights-is-text", "SchemaMismatchError",
             "{path} does not hold ModelV1 (modelrows.model@1): column 'weights' is string, "
             "expected Weights", _bytes(lambda c: c.ipc_bytes(c.table.set_column(
                 0, pa.field("weights", pa.string()), pa.array(["not weights"]))))),
        # -- not files --------------------------------------------------------------------------------
        Case("fifo", "RowFileError",
             "{path}: is not a regular file (a pipe, socket or device), so not a row file",
             lambda c, p: os.mkfifo(p)),
        Case("directory", "RowFileError", "{path}: is a directory, not a row file",
             lambda c, p: p.mkdir()),
    ]  # fmt: skip


def build(directory: Path, *, control_declares: int) -> list[tuple[Case, Path]]:
    """Write every case into ``directory/corpus``; return each case with its file.

    Also writes ``control-zstd.arrow``, the ZSTD case declaring ``control_declares`` bytes, which
    the worker reads with pyarrow directly to show that the meter sees such an allocation.
    """
    corpus = Corpus(directory)
    (directory / "control-zstd.arrow").write_bytes(corpus.zstd_declaring(control_declares))
    out = directory / "corpus"
    out.mkdir()
    built = []
    for case in cases(directory / MARKER_NAME):
        path = out / f"{case.name}.arrow"
        case.make(corpus, path)
        built.append((case, path))
    return built


# -- the worker ------------------------------------------------------------------------------------


class RecordingType(pa.ExtensionType):
    """Stands for a library's extension type that unpickles its metadata when deserialized."""

    marker: Path

    def __init__(self) -> None:
        super().__init__(pa.int64(), RECORDING_TYPE)

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> Any:
        cls.marker.touch()  # where a pickle-based type would run pickle.loads(serialized)
        return cls()


@dataclass
class Reading:
    """What ``measured(read)`` saw: the error raised (None if none), peak bytes allocated by Arrow
    and by Python (when tracemalloc runs), and seconds."""

    error: Exception | None
    arrow_peak: int
    python_peak: int
    seconds: float


_POOLS: list[pa.MemoryPool] = []  # a buffer may outlive its read: its pool must outlive it


def measured(read: Callable[[], object]) -> Reading:
    """Run ``read()`` with a fresh Arrow memory pool as the default, metering its peak."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    _POOLS.append(pool)
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    error = None
    try:
        read()
    except Exception as exc:
        error = exc
    finally:
        pa.set_memory_pool(previous)
    seconds = time.perf_counter() - start
    python = tracemalloc.get_traced_memory()[1] - base if tracing else 0
    return Reading(error, pool.max_memory(), python, seconds)


def main(directory: Path) -> None:
    from modelrows import ModelRowsError, read_model_row

    RecordingType.marker = directory / MARKER_NAME
    pa.register_extension_type(RecordingType())
    # pyarrow imports pandas (when installed) on its first conversion of a Python or NumPy
    # value: do that first, so the meter sees what reading a file costs, not pandas' import
    pa.array([0]).to_numpy()
    tracemalloc.start()
    for path in sorted((directory / "corpus").iterdir()):
        print(json.dumps({"reading": path.name}), flush=True)
        got = measured(lambda p=path: read_model_row(p, verify=True))
        print(json.dumps({"file": path.name, "error": type(got.error).__name__ if got.error else None,
                          "ours": isinstance(got.error, ModelRowsError), "message": str(got.error),
                          "arrow_peak": got.arrow_peak, "python_peak": got.python_peak,
                          "seconds": got.seconds}), flush=True)  # fmt: skip
    untouched = not RecordingType.marker.exists()
    # controls: unguarded pyarrow does deserialize the type and allocate what a body declares
    measured(lambda: ipc.open_file(directory / "corpus" / "extension-registered.arrow"))
    zstd = directory / "control-zstd.arrow"
    control = measured(lambda: ipc.open_file(zstd).get_batch(0))
    print(json.dumps({"marker_untouched": untouched,
                      "control_marker": RecordingType.marker.exists(),
                      "control_zstd_peak": control.arrow_peak}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
