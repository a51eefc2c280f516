"""The on-disk format (docs/format.md), frozen by the golden files of tests/golden/v<N>/.

Golden files are written once by tests/golden/make_golden.py and never replaced. Today's writer
must reproduce them (byte for byte under the pyarrow that wrote them, logically under any), and
today's reader must read every golden directory, old ones included.
"""

import datetime as dt
import hashlib
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
import xxhash

from modelrows import (
    FORMAT_VERSION,
    Catalog,
    CorruptRowError,
    ModelV1,
    UnknownSchemaError,
    read_model_row,
    write_model_row,
)
from modelrows._blob import DTYPE_NAMES

GOLDEN = Path(__file__).parent / "golden"
V1 = GOLDEN / "v1"
V2 = GOLDEN / "v2"
CURRENT = GOLDEN / f"v{FORMAT_VERSION}"  # what today's writer writes
VERSIONS = [V1, V2]  # every format version's golden files: today's reader reads them all


def _load_make_golden() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # row annotations resolve through the module
    spec.loader.exec_module(module)
    return module


make_golden = _load_make_golden()
MANIFESTS: dict[Path, dict[str, Any]] = {
    v: json.loads((v / "MANIFEST.json").read_text()) for v in VERSIONS
}
MANIFEST = MANIFESTS[CURRENT]
NAMES = list(make_golden.GOLDEN)
GOLDEN_FILES = [(v, name) for v in VERSIONS for name in NAMES]
GOLDEN_IDS = [f"{v.name}/{name}" for v, name in GOLDEN_FILES]

# The format as docs/format.md spells it, restated here without modelrows' code.
SPEC_ITEMSIZE = {
    "bool": 1, "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint16": 2, "uint32": 4, "uint64": 8, "float16": 2, "bfloat16": 2, "float32": 4,
    "float64": 8, "complex64": 8, "complex128": 16, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
}  # fmt: skip
SPEC_NUMPY = {
    "bool": "?", "uint8": "u1", "int8": "i1", "int16": "<i2", "int32": "<i4", "int64": "<i8",
    "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "float16": "<f2", "float32": "<f4",
    "float64": "<f8", "complex64": "<c8", "complex128": "<c16",
}  # fmt: skip
SPEC_TENSOR = pa.struct(
    [
        pa.field("name", pa.utf8(), nullable=False),
        pa.field("dtype", pa.utf8(), nullable=False),
        pa.field("shape", pa.list_(pa.field("item", pa.int64(), nullable=False)), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("nbytes", pa.int64(), nullable=False),
    ]
)
SPEC_WEIGHTS = pa.struct(
    [
        pa.field(
            "tensors", pa.list_(pa.field("item", SPEC_TENSOR, nullable=False)), nullable=False
        ),
        pa.field("data", pa.large_binary(), nullable=False),
        pa.field("fingerprint", pa.utf8(), nullable=False),
        pa.field("checksum", pa.utf8(), nullable=False),
    ]
)


def test_the_spec_names_every_dtype_the_library_stores() -> None:
    spec = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    for name, dtype in DTYPE_NAMES.items():
        assert f"`{name}`" in spec, f"docs/format.md does not specify dtype {name}"
        assert SPEC_ITEMSIZE[name] == dtype.itemsize, name


def open_golden(path: Path) -> tuple[bytes, pa.RecordBatch, pa.Buffer]:
    """The file's bytes, its one batch (zero-copy slices of them), and the buffer holding them."""
    raw = path.read_bytes()
    buf = pa.py_buffer(raw)
    reader = ipc.open_file(pa.BufferReader(buf))
    assert reader.num_record_batches == 1
    return raw, reader.get_batch(0), buf


def weights_layout(batch: pa.RecordBatch, buf: pa.Buffer) -> tuple[int, int, list[dict[str, Any]]]:
    """(file offset of the weights' data value, its length, the tensor table)."""
    weights = batch.column("weights")
    data = weights.field("data")
    value_offsets = np.frombuffer(data.buffers()[1], dtype="<i8")
    start, stop = int(value_offsets[data.offset]), int(value_offsets[data.offset + 1])
    position = data.buffers()[2].address - buf.address + start
    assert 0 <= position <= buf.size - (stop - start), "the data buffer must lie in the file"
    return position, stop - start, weights.field("tensors")[0].as_py()


def test_the_current_format_version_has_a_golden_directory() -> None:
    assert CURRENT.is_dir(), (
        f"format version {FORMAT_VERSION} has no golden files: run tests/golden/make_golden.py"
    )
    assert sorted(GOLDEN.glob("v*")) == VERSIONS, "every golden directory is tested"
    for version, manifest in MANIFESTS.items():
        assert manifest["format_version"] == int(version.name[1:])


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_golden_files_are_untouched(version: Path) -> None:
    manifest = MANIFESTS[version]
    assert sorted(p.name for p in version.glob("*.arrow")) == sorted(NAMES)
    assert sorted(manifest["sha256"]) == sorted(NAMES)
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((version / name).read_bytes()).hexdigest() == digest, (
            f"{version.name}/{name} changed; golden files are never rewritten "
            "(see tests/golden/make_golden.py)"
        )


# -- today's writer reproduces them ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_writer_reproduces_golden_bytes(tmp_path: Path, name: str) -> None:
    written_with = MANIFEST["written_with"]["pyarrow"]
    if pa.__version__.split(".")[0] != written_with.split(".")[0]:
        pytest.skip(
            f"golden bytes were written with pyarrow {written_with}, this is {pa.__version__}: "
            "Arrow's flatbuffer encoding may legitimately differ, so only the logical content "
            "is compared (test_writer_reproduces_golden_content)"
        )
    write_model_row(tmp_path / name, make_golden.GOLDEN[name](), fsync=False)
    assert (tmp_path / name).read_bytes() == (CURRENT / name).read_bytes(), (
        f"the writer no longer produces {name}: a format change must bump FORMAT_VERSION and add "
        "golden files for the new version, keeping the old ones"
    )


@pytest.mark.parametrize("name", NAMES)
def test_writer_reproduces_golden_content(tmp_path: Path, name: str) -> None:
    write_model_row(tmp_path / name, make_golden.GOLDEN[name](), fsync=False)
    _, golden, golden_buf = open_golden(CURRENT / name)
    _, today, today_buf = open_golden(tmp_path / name)
    assert today.schema.equals(golden.schema, check_metadata=True)
    assert today.equals(golden)
    assert weights_layout(today, today_buf) == weights_layout(golden, golden_buf)


# -- today's reader reads them -----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "name"), GOLDEN_FILES, ids=GOLDEN_IDS)
def test_reader_reads_golden_files_exactly(version: Path, name: str) -> None:
    expected = make_golden.GOLDEN[name]()
    row = read_model_row(version / name, verify=True)
    assert type(row) is type(expected)
    assert row.declared_schema == type(expected).__qualified__
    assert row.extras == {}
    assert row == expected
    for tensor_name, tensor in expected.weights.items():
        got = row.weights[tensor_name]
        assert got.dtype == tensor.dtype, tensor_name
        assert got.shape == tensor.shape, tensor_name
        assert torch.equal(got, tensor), tensor_name


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_golden_model_v1_values(version: Path) -> None:
    row = read_model_row(version / "model_v1.arrow", verify=True)
    assert type(row) is ModelV1
    assert row.architecture_version == 1
    assert row.weights["weight"].tolist() == [[-0.375, -0.25, -0.125], [0.0, 0.125, 0.25]]
    assert row.weights["bias"].tolist() == [0.5, -1.5]
    assert row.weights.fingerprint == "45c693a14007a9f6adf044866e755c17"
    assert row.weights.stored_checksum == "xxh3-64:0e056760d28402f7"
    if version == V2:  # the example of docs/format.md 2.3
        meta = ipc.open_file(str(version / "model_v1.arrow")).schema.metadata
        assert meta[b"modelrows_values_checksum"] == b"xxh3-64:192757b829077a78"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_golden_extended_values(version: Path) -> None:
    row = read_model_row(version / "extended.arrow", verify=True)
    assert row.declared_schema == "modelrows-golden.model@1>modelrows.model@1"
    assert row.to_dict() | {"weights": None} == {
        "weights": None,
        "architecture_version": 3,
        "run": "golden-run",
        "epoch": 7,
        "accuracy": 0.875,
        "commit_sha": None,
        "tags": ["baseline", "ünïcödé"],
        "config": {"seed": 5, "dropout_rate": 0.25, "layers": [32, 16]},
        "created": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc),
        "day": dt.date(2024, 5, 6),
        "blob": b"\x00\x01\xfe\xff",
        "finished": True,
        "lr": float(np.float32(0.001)),
        "steps": -42,
    }
    assert type(row.config) is make_golden.GoldenConfigV1
    assert row.weights["bn.num_batches_tracked"].shape == ()
    assert row.weights["bn.num_batches_tracked"].item() == 12
    assert row.weights["head.weight"].dtype == torch.float64
    assert row.weights.stored_checksum == "xxh3-64:08410d9b51a68c14"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_golden_bf16_values(version: Path) -> None:
    weights = read_model_row(version / "bf16.arrow", verify=True).weights
    assert weights["embed.weight"].dtype == torch.bfloat16
    assert weights["embed.weight"].float().flatten().tolist() == [k * 0.25 for k in range(-6, 6)]
    assert weights.ties == {"head.weight": "embed.weight"}
    assert weights["head.weight"] is weights["embed.weight"]
    assert weights["scale"].shape == ()
    assert weights["scale"].item() == 1.5
    assert weights["empty"].shape == (0, 4)
    assert weights["half"].dtype == torch.float16
    assert weights["mask"].tolist() == [True, False, True, True, False]
    assert weights["ids"].tolist() == [-3, 0, 2**40]
    assert weights["bytes"].tolist() == [0, 127, 255]
    assert weights.stored_checksum == "xxh3-64:2b83a979af4a39f3"


# -- the format's promises, checked on the files themselves ------------------------------------------


def assert_aligned_and_zero_padded(path: Path) -> None:
    """Every tensor starts at a 64-byte-aligned file offset; data bytes outside tensors are 0."""
    raw, batch, buf = open_golden(path)
    position, length, tensors = weights_layout(batch, buf)
    covered = np.zeros(length, dtype=bool)
    for t in tensors:
        if t["nbytes"]:
            assert (position + t["offset"]) % 64 == 0, f"{path.name}: {t['name']} is misaligned"
        covered[t["offset"] : t["offset"] + t["nbytes"]] = True
    data = np.frombuffer(raw, dtype=np.uint8, count=length, offset=position)
    assert not data[~covered].any(), f"{path.name}: padding bytes must be zero"
    assert length - int(covered.sum()) < 64 * (len(tensors) + 1), f"{path.name}: padding too long"


@pytest.mark.parametrize(("version", "name"), GOLDEN_FILES, ids=GOLDEN_IDS)
def test_every_tensor_is_64_byte_aligned_in_the_file_and_padding_is_zero(
    version: Path, name: str
) -> None:
    assert_aligned_and_zero_padded(version / name)


def test_rewriting_a_row_read_from_a_file_keeps_padding_zero(tmp_path: Path) -> None:
    row = read_model_row(V1 / "model_v1.arrow")  # an old file, written again in today's version
    write_model_row(tmp_path / "again.arrow", row, fsync=False)
    assert read_model_row(tmp_path / "again.arrow", verify=True) == row
    assert_aligned_and_zero_padded(tmp_path / "again.arrow")


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _spec_str(data: bytes) -> bytes:
    return _u64(len(data)) + data


SPEC_UNITS = {"s": b"s", "ms": b"m", "us": b"u", "ns": b"n"}


def spec_value(t: pa.DataType, v: pa.Scalar) -> bytes:
    """One value's encoding, docs/format.md 2.3, from pyarrow scalars (no modelrows code)."""
    if not v.is_valid:
        return b"n"
    if pa.types.is_boolean(t):
        return b"b" + bytes([v.as_py()])
    if pa.types.is_signed_integer(t):
        return b"i" + v.as_py().to_bytes(8, "little", signed=True)
    if pa.types.is_unsigned_integer(t):
        return b"u" + _u64(v.as_py())
    if pa.types.is_floating(t):  # the bits as stored
        unsigned = {16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}[t.bit_width]
        bits = pa.array([v], t).view(unsigned)[0].as_py()
        return {16: b"e", 32: b"f", 64: b"d"}[t.bit_width] + bits.to_bytes(
            t.bit_width // 8, "little"
        )
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return b"s" + _spec_str(v.as_py().encode("utf-8"))
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return b"y" + _spec_str(v.as_py())
    if pa.types.is_timestamp(t):
        tz = (t.tz or "").encode("utf-8")
        return (
            b"t" + SPEC_UNITS[t.unit] + _spec_str(tz) + v.value.to_bytes(8, "little", signed=True)
        )
    if pa.types.is_date32(t):
        return b"D" + v.value.to_bytes(8, "little", signed=True)
    if pa.types.is_list(t):
        items = list(v.values)
        return b"l" + _u64(len(items)) + b"".join(spec_value(t.value_type, x) for x in items)
    if pa.types.is_struct(t):
        fields = [t.field(k) for k in range(t.num_fields)]
        return (
            b"r"
            + _u64(len(fields))
            + b"".join(
                _spec_str(f.name.encode("utf-8")) + spec_value(f.type, v[f.name]) for f in fields
            )
        )
    raise AssertionError(f"the spec has no encoding for {t}")


def spec_values_checksum(batch: pa.RecordBatch) -> str:
    """The values checksum of docs/format.md 2.3, written from the document alone."""
    qualified = batch.schema.metadata[b"legolas_schema_qualified"]
    out = _spec_str(qualified)
    for f, column in zip(batch.schema, batch.columns, strict=True):
        out += _spec_str(f.name.encode("utf-8"))
        weights = pa.types.is_struct(f.type) and {"tensors", "data", "fingerprint", "checksum"} <= {
            f.type.field(k).name for k in range(f.type.num_fields)
        }
        if weights:
            out += b"w" if column[0].is_valid else b"n"
        else:
            out += spec_value(f.type, column[0])
    return f"xxh3-64:{xxhash.xxh3_64_intdigest(out):016x}"


@pytest.mark.parametrize(("version", "name"), GOLDEN_FILES, ids=GOLDEN_IDS)
def test_golden_files_follow_the_spec_without_modelrows(version: Path, name: str) -> None:
    """A reader written from docs/format.md alone (pyarrow, numpy, hashlib, xxhash)."""
    raw, batch, buf = open_golden(version / name)
    assert raw[:6] == b"ARROW1"
    assert raw[-6:] == b"ARROW1"
    assert batch.num_rows == 1
    meta = batch.schema.metadata
    assert meta[b"modelrows_format_version"] == version.name[1:].encode()
    assert meta[b"legolas_schema_qualified"].decode().endswith("modelrows.model@1")
    if version == V1:  # no values checksum before format version 2
        assert b"modelrows_values_checksum" not in meta
    else:
        assert meta[b"modelrows_values_checksum"].decode() == spec_values_checksum(batch)
    assert batch.schema.field("weights").type == SPEC_WEIGHTS
    position, _, tensors = weights_layout(batch, buf)
    weights = batch.column("weights")
    checksum, seen, lines = xxhash.xxh3_64(seed=0), set(), []
    expected = make_golden.GOLDEN[name]().weights
    for t in tensors:
        assert t["nbytes"] == math.prod(t["shape"]) * SPEC_ITEMSIZE[t["dtype"]]
        lines.append(f"{t['name']}\t{t['dtype']}\t{','.join(map(str, t['shape']))}\n")
        start = position + t["offset"]
        body = raw[start : start + t["nbytes"]] if t["nbytes"] else b""
        if t["nbytes"] and (t["offset"], t["nbytes"]) not in seen:
            seen.add((t["offset"], t["nbytes"]))
            checksum.update(body)
        if t["dtype"] in SPEC_NUMPY:  # little-endian, row-major
            array = np.frombuffer(body, dtype=SPEC_NUMPY[t["dtype"]]).reshape(t["shape"])
            assert np.array_equal(array, expected[t["name"]].numpy()), t["name"]
        else:  # bfloat16: the upper 16 bits of a float32
            bits = np.frombuffer(body, dtype="<u2").astype(np.uint32) << 16
            assert np.array_equal(
                bits.view("<f4").reshape(t["shape"]), expected[t["name"]].float().numpy()
            )
    fingerprint = hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()[:32]
    assert weights.field("fingerprint")[0].as_py() == fingerprint
    assert weights.field("checksum")[0].as_py() == f"xxh3-64:{checksum.intdigest():016x}"


# -- format versions ---------------------------------------------------------------------------------


def _with_metadata(source: Path, target: Path, change: dict[bytes, bytes | None]) -> Path:
    table = ipc.open_file(pa.py_buffer(source.read_bytes())).read_all()
    meta = dict(table.schema.metadata)
    for key, value in change.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    table = table.replace_schema_metadata(meta)
    with ipc.new_file(str(target), table.schema) as writer:
        writer.write_table(table)
    return target


def test_a_newer_format_version_is_refused_with_upgrade_advice(tmp_path: Path) -> None:
    newer = str(FORMAT_VERSION + 1).encode()
    path = _with_metadata(
        CURRENT / "model_v1.arrow", tmp_path / "future.arrow", {b"modelrows_format_version": newer}
    )
    with pytest.raises(UnknownSchemaError) as info:
        read_model_row(path)
    assert str(info.value) == (
        f"{path}: written in modelrows format version {FORMAT_VERSION + 1}; this modelrows reads "
        f"up to {FORMAT_VERSION}. Upgrade modelrows to read it."
    )
    assert FORMAT_VERSION == 2


def test_a_malformed_format_version_is_refused(tmp_path: Path) -> None:
    path = _with_metadata(
        V1 / "model_v1.arrow", tmp_path / "odd.arrow", {b"modelrows_format_version": b"one"}
    )
    with pytest.raises(UnknownSchemaError) as info:
        read_model_row(path)
    assert str(info.value) == (
        f"{path}: 'modelrows_format_version' metadata b'one' is not a whole number"
    )


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_a_file_without_format_version_is_read_by_its_schema(version: Path, tmp_path: Path) -> None:
    path = _with_metadata(
        version / "model_v1.arrow", tmp_path / "legolas.arrow", {b"modelrows_format_version": None}
    )
    row = read_model_row(path, verify=True)  # another writer's file: no values checksum to check
    assert row == make_golden.model_v1_row()


def test_a_version_2_file_without_its_values_checksum_is_corrupt(tmp_path: Path) -> None:
    path = _with_metadata(
        V2 / "model_v1.arrow", tmp_path / "bare.arrow", {b"modelrows_values_checksum": None}
    )
    assert read_model_row(path) == make_golden.model_v1_row()  # reading does not check it
    with pytest.raises(CorruptRowError) as info:
        read_model_row(path, verify=True)
    assert str(info.value) == (
        f"{path}: written in format version 2, which stores a values checksum, but its "
        "'modelrows_values_checksum' metadata is missing; the file is corrupt"
    )


def test_a_version_1_file_is_verified_by_its_tensors_alone(tmp_path: Path) -> None:
    """Format version 1 has no values checksum: a changed value passes verification there (the
    reason for version 2), and the same change in a version-2 file does not."""
    for version in VERSIONS:
        table = ipc.open_file(pa.py_buffer((version / "model_v1.arrow").read_bytes())).read_all()
        changed = table.set_column(1, "architecture_version", pa.array([99], pa.int64()))
        path = tmp_path / f"{version.name}.arrow"
        with ipc.new_file(str(path), changed.schema) as writer:
            writer.write_table(changed)
        if version == V1:
            assert read_model_row(path, verify=True).architecture_version == 99
        else:
            with pytest.raises(CorruptRowError, match="values checksum mismatch"):
                read_model_row(path, verify=True)


# -- the golden catalog -----------------------------------------------------------------------------

GOLDEN_CATALOG = CURRENT / make_golden.CATALOG3  # what today's writer writes
GOLDEN_CATALOGS = [  # every catalog format, and row files of every format version
    V1 / make_golden.CATALOG,
    V1 / make_golden.CATALOG2,
    V2 / make_golden.CATALOG2,
    V2 / make_golden.CATALOG3,
]


def _catalog_tree(root: Path) -> tuple[list[str], list[str]]:
    """(partition directories, row file names with the row id masked), sorted."""
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "_index")
    files = sorted(
        f"{p.parent.name}/<row_id>.{p.name.split('.', 1)[1]}" for p in root.rglob("*.arrow")
    )
    return dirs, files


def _logical_rows(root: Path) -> list[dict[str, Any]]:
    """Every row file's columns without the managed ones, ordered by run then epoch."""
    rows = []
    for path in root.rglob("*.arrow"):
        table = ipc.open_file(pa.memory_map(str(path))).read_all()
        assert table.column_names[:2] == ["row_id", "written_at"]
        rows.append(table.drop_columns(["row_id", "written_at"]).to_pylist()[0])
    return sorted(rows, key=lambda r: (r["run"], r["epoch"]))


@pytest.mark.parametrize("golden", GOLDEN_CATALOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reader_reads_the_golden_catalog(golden: Path, tmp_path: Path) -> None:
    # a copy: a catalog written before the index (format 1) gets its index on first use
    shutil.copytree(golden, tmp_path / "catalog")
    catalog = Catalog.open(tmp_path / "catalog")
    assert catalog.schema == "modelrows-golden.model@1>modelrows.model@1"
    assert catalog.partition_by == ("run",)
    assert len(catalog) == 3
    assert catalog.verify() == []
    assert catalog.sql(
        "SELECT run, epoch, accuracy FROM models ORDER BY run, epoch"
    ).fetchall() == [
        ("baseline", 1, 0.625),
        ("baseline", 2, 0.75),
        ("odd/run=ü", 1, 0.625),
    ]
    frame = catalog.scan().sort("run", "epoch").collect()
    assert frame["config"].struct.field("layers").to_list() == [[32, 16]] * 3
    expected = {(r.run, r.epoch): r for r in make_golden.catalog_rows()}
    for row_id in catalog.index_table().column("row_id").to_pylist():  # lookups by id
        row = Catalog.open(tmp_path / "catalog").get(row_id, verify=True)
        assert row.to_dict() | {"row_id": None, "written_at": None} == expected[
            (row.run, row.epoch)  # type: ignore[attr-defined]
        ].to_dict() | {"row_id": None, "written_at": None}
    for row in catalog.rows():
        want = expected[(row.run, row.epoch)]
        assert type(row) is type(want)
        got = row.to_dict()
        assert len(got.pop("row_id")) == 26
        assert got.pop("written_at").tzinfo is not None
        assert got == want.to_dict()


def _logical_index(root: Path) -> list[dict[str, Any]]:
    """The index's rows without what varies between writes (ids, times, file names)."""
    table = Catalog.open(root).index_table()
    varying = ["row_id", "written_at", "_path", "_checksum"]
    return sorted(table.drop_columns(varying).to_pylist(), key=lambda r: (r["run"], r["epoch"]))


def test_a_catalog_written_before_the_index_is_indexed_on_first_use(tmp_path: Path) -> None:
    shutil.copytree(V1 / make_golden.CATALOG, tmp_path / "old")
    assert not (tmp_path / "old" / "_index").exists()
    catalog = Catalog.open(tmp_path / "old")
    assert catalog.format_version == 1
    assert len(catalog) == 3  # built here, from the row files
    assert (tmp_path / "old" / "_index" / "manifests").is_dir()
    shutil.copytree(V1 / make_golden.CATALOG2, tmp_path / "new")  # row files of the same version
    assert _logical_index(tmp_path / "old") == _logical_index(tmp_path / "new")


def test_writer_reproduces_the_golden_catalog(tmp_path: Path) -> None:
    fresh = make_golden.write_catalog(tmp_path / "catalog").root
    assert (fresh / "_modelrows_catalog.json").read_bytes() == (
        GOLDEN_CATALOG / "_modelrows_catalog.json"
    ).read_bytes()
    assert _catalog_tree(fresh) == _catalog_tree(GOLDEN_CATALOG)
    assert _logical_rows(fresh) == _logical_rows(GOLDEN_CATALOG)
    shutil.copytree(GOLDEN_CATALOG, tmp_path / "golden")
    assert _logical_index(fresh) == _logical_index(tmp_path / "golden")


def test_a_catalog_of_format_2_keeps_parquet_log_entries_for_its_readers(tmp_path: Path) -> None:
    # readers written for format 2 know Parquet log entries only: an append there must stay
    # visible to them, so today's writer keeps writing Parquet entries into such a catalog
    shutil.copytree(V2 / make_golden.CATALOG2, tmp_path / "catalog")
    catalog = Catalog.open(tmp_path / "catalog")
    assert catalog.format_version == 2
    row = make_golden.catalog_rows()[0].replace(epoch=9)
    row_id = catalog.append(row)
    log = sorted(p.name for p in (tmp_path / "catalog" / "_index" / "log").iterdir())
    assert (
        [n for n in log if n.startswith(row_id)]
        == [n for n in log if n.startswith(row_id) and n.endswith(".add.parquet")]
        != []
    )
    assert len(Catalog.open(tmp_path / "catalog")) == 4
    fresh = make_golden.write_catalog(tmp_path / "fresh").root  # a new catalog: Arrow IPC entries
    assert {p.name.rsplit(".", 2)[-2:][1] for p in (fresh / "_index" / "log").iterdir()} == {"ipc"}
