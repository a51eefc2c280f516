"""write_model_row / read_model_row: round trips, atomicity, unknown schemas, bad files.

The first group mirrors LegolasFlux.jl's own test suite (simple round trip, missing weights,
non-numeric attributes ignored, wrong sizes and counts, norm layers, the extension example).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
import torch.nn as nn

from modelrows import (
    CorruptRowError,
    ModelV1,
    NotArrowFileError,
    Row,
    RowCountError,
    RowFileError,
    SchemaMismatchError,
    StorageError,
    UnknownSchemaError,
    WeightsMismatchError,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)
from modelrows._schema import lookup


class DigitsConfigV1(Row, schema="digits.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0


class DigitsRowV1(ModelV1, schema="digits.model", version=1):
    epoch: int | None = None
    accuracy: float | None = None
    config: DigitsConfigV1 | None = None


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


# -- LegolasFlux.jl's test cases, in PyTorch -------------------------------------------------------


def test_simple_model_roundtrip(tmp_path: Path) -> None:
    model = small_model()
    path = tmp_path / "simple.model.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights(model), architecture_version=1))
    row = read_model_row(path)
    assert type(row) is ModelV1 and row.architecture_version == 1
    fresh = small_model()
    load_weights(fresh, row.weights)
    x = torch.randn(3, 4)
    assert torch.equal(fresh(x), model(x))


def test_missing_weights_column_and_missing_required_field(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"ModelV1.weights is required \(Weights\)"):
        ModelV1(architecture_version=1)
    path = tmp_path / "noweights.arrow"
    schema = pa.schema([("architecture_version", pa.int64())], metadata={
        "legolas_schema_qualified": "modelrows.model@1"})  # fmt: skip
    with ipc.new_file(path, schema) as w:
        w.write_batch(pa.record_batch([pa.array([1])], schema=schema))
    with pytest.raises(SchemaMismatchError) as info:
        read_model_row(path)
    assert str(info.value) == (
        f"{path} does not hold ModelV1 (modelrows.model@1): "
        "missing required column 'weights' (Weights)"
    )


def test_non_numeric_attributes_are_ignored() -> None:
    # activations, dropout probabilities, flags: not tensors, so not weights
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3), nn.GELU(approximate="tanh"))
    assert list(fetch_weights(model)) == ["0.weight", "0.bias"]


def test_wrong_sizes_and_counts_raise() -> None:
    w = fetch_weights(small_model())
    with pytest.raises(WeightsMismatchError, match=r"shape mismatch: 0.weight is \(8, 4\)"):
        load_weights(nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 2)), w)
    with pytest.raises(WeightsMismatchError, match="unexpected in the weights: 2.weight"):
        load_weights(nn.Sequential(nn.Linear(4, 8)), w)
    with pytest.raises(WeightsMismatchError, match="missing from the weights: 3.weight"):
        load_weights(nn.Sequential(*small_model(), nn.Linear(2, 2)), w)


def test_norm_layers_roundtrip(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.GroupNorm(1, 3))
    model.train()
    for _ in range(3):
        model(torch.randn(4, 1, 6, 6))
    path = tmp_path / "norm.model.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights(model)))
    fresh = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.GroupNorm(1, 3))
    load_weights(fresh, read_model_row(path).weights)
    model.eval()
    fresh.eval()
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(model(x), fresh(x))


def test_extension_example_roundtrips_as_its_own_class(tmp_path: Path) -> None:
    row = DigitsRowV1(
        weights=fetch_weights(small_model()), architecture_version=1, epoch=3, accuracy=0.91,
        config=DigitsConfigV1(seed=7, dropout_rate=0.25),
    )  # fmt: skip
    path = tmp_path / "digits.model.arrow"
    write_model_row(path, row)
    back = read_model_row(path)
    assert type(back) is DigitsRowV1
    assert back == row
    assert back.config == DigitsConfigV1(seed=7, dropout_rate=0.25)
    assert back.declared_schema == "digits.model@1>modelrows.model@1"


# -- reading what this process does not declare ----------------------------------------------------------


def test_undeclared_schema_reads_as_nearest_ancestor_with_every_column(tmp_path: Path) -> None:
    path = tmp_path / "digits.model.arrow"
    write_model_row(path, DigitsRowV1(weights=fetch_weights(small_model()), epoch=4, accuracy=0.5,
                                      config=DigitsConfigV1()))  # fmt: skip
    from modelrows import _schema as schema

    del schema._registry["digits.model@1"]
    back = read_model_row(path)
    assert type(back) is ModelV1
    assert back.declared_schema == "digits.model@1>modelrows.model@1"
    assert back.extras == {"epoch": 4, "accuracy": 0.5, "config": {"seed": 5, "dropout_rate": 0.0}}
    assert back.epoch == 4  # available by name
    assert "file declares digits.model@1>modelrows.model@1" in repr(back)
    with pytest.raises(Exception, match="carries undeclared columns"):
        write_model_row(tmp_path / "again.arrow", back)


def test_a_fresh_process_reads_a_row_without_the_class(tmp_path: Path) -> None:
    path = tmp_path / "digits.model.arrow"
    write_model_row(path, DigitsRowV1(weights=fetch_weights(small_model()), epoch=9))
    code = (
        "import sys; from modelrows import read_model_row; r = read_model_row(sys.argv[1]); "
        "print(type(r).__name__, r.declared_schema, r.epoch, len(r.weights))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split() == ["ModelV1", "digits.model@1>modelrows.model@1", "9", "4"]


def test_unknown_chain_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.arrow"
    schema = pa.schema([("a", pa.int64())], metadata={"legolas_schema_qualified": "nobody.knows@1"})
    with ipc.new_file(path, schema) as w:
        w.write_batch(pa.record_batch([pa.array([1])], schema=schema))
    with pytest.raises(UnknownSchemaError, match="none of its schemas is declared in this process"):
        read_model_row(path)


# -- atomic writes ---------------------------------------------------------------------------------------


def test_replacing_keeps_the_old_file_until_the_new_one_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "m.model.arrow"
    old = ModelV1(weights=fetch_weights(small_model()), architecture_version=1)
    write_model_row(path, old)
    before = path.read_bytes()

    class Boom(RuntimeError):
        pass

    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    os.fsync = failing_fsync  # type: ignore[assignment]
    try:
        with pytest.raises(StorageError, match="failed at step 'fsync'.*previous content"):
            write_model_row(path, ModelV1(weights=fetch_weights(small_model())))
    finally:
        os.fsync = real_fsync
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.model.arrow"]  # no temp file left
    write_model_row(path, old.replace(architecture_version=2))
    assert read_model_row(path).architecture_version == 2


def test_a_killed_writer_never_leaves_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "big.model.arrow"
    code = (
        "import sys, torch; from modelrows import *\n"
        "w = fetch_weights({'x': torch.randn(8_000_000)})\n"
        "print('ready', flush=True)\n"
        "while True: write_model_row(sys.argv[1], ModelV1(weights=w), fsync=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    import time

    time.sleep(1.5)
    proc.kill()
    proc.wait()
    if path.exists():  # whatever was renamed into place is whole
        assert read_model_row(path, verify=True).weights["x"].shape == (8_000_000,)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert all(n.startswith(".") and n.endswith(".tmp") for n in leftovers)


# -- bad input -------------------------------------------------------------------------------------------


def valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "valid.model.arrow"
    write_model_row(path, DigitsRowV1(weights=fetch_weights(small_model()), epoch=1))
    return path


def write_table(path: Path, table: pa.Table) -> Path:
    with ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    return path


def test_not_an_arrow_file(tmp_path: Path) -> None:
    p = tmp_path / "text.arrow"
    p.write_text("hello, I am not Arrow at all, just some text")
    with pytest.raises(NotArrowFileError) as info:
        read_model_row(p)
    assert str(info.value) == (
        f"{p}: not an Arrow IPC file (the ARROW1 magic is missing at the start); "
        "is it truncated, or another format?"
    )
    empty = tmp_path / "empty.arrow"
    empty.write_bytes(b"")
    with pytest.raises(NotArrowFileError, match="0 bytes is too short"):
        read_model_row(empty)
    with pytest.raises(RowFileError, match="no such file"):
        read_model_row(tmp_path / "missing.arrow")


def test_truncated_files(tmp_path: Path) -> None:
    data = valid_file(tmp_path).read_bytes()
    for cut in [10, len(data) // 2, len(data) - 7, len(data) - 1]:
        p = tmp_path / f"cut{cut}.arrow"
        p.write_bytes(data[:cut])
        with pytest.raises(NotArrowFileError, match=str(p)):
            read_model_row(p)


def test_zero_or_several_rows(tmp_path: Path) -> None:
    table = ipc.open_file(valid_file(tmp_path)).read_all()
    with pytest.raises(RowCountError, match="holds 0 rows"):
        read_model_row(write_table(tmp_path / "zero.arrow", table.slice(0, 0)))
    two = pa.concat_tables([table, table]).combine_chunks()
    with pytest.raises(RowCountError, match="holds 2 rows; a row file holds exactly one"):
        read_model_row(write_table(tmp_path / "two.arrow", two))


def test_missing_or_malformed_identifier(tmp_path: Path) -> None:
    table = ipc.open_file(valid_file(tmp_path)).read_all()
    with pytest.raises(UnknownSchemaError, match="has no 'legolas_schema_qualified' metadata"):
        read_model_row(write_table(tmp_path / "nometa.arrow", table.replace_schema_metadata({})))
    bad = table.replace_schema_metadata({"legolas_schema_qualified": "Digits Model v1"})
    with pytest.raises(UnknownSchemaError, match="malformed schema identifier 'Digits Model v1'"):
        read_model_row(write_table(tmp_path / "badmeta.arrow", bad))


def test_wrong_column_types(tmp_path: Path) -> None:
    table = ipc.open_file(valid_file(tmp_path)).read_all()
    table = table.set_column(table.schema.get_field_index("epoch"), "epoch", pa.array(["one"]))
    with pytest.raises(SchemaMismatchError, match="column 'epoch' is string, expected int | None"):
        read_model_row(write_table(tmp_path / "types.arrow", table))


def test_tensor_bytes_shorter_than_dtype_times_shape(tmp_path: Path) -> None:
    table = ipc.open_file(valid_file(tmp_path)).read_all()
    weights = table.column("weights").to_pylist()[0]
    weights["tensors"][0]["shape"] = [800, 4]
    weights["tensors"][0]["nbytes"] = 800 * 4 * 4
    col = pa.array([weights], type=table.schema.field("weights").type)
    table = table.set_column(0, table.schema.field("weights"), col)
    with pytest.raises(
        CorruptRowError, match=r"tensor '0.weight' needs bytes \[\d+, \d+\) but the data holds only"
    ):
        read_model_row(write_table(tmp_path / "short.arrow", table))
    weights["tensors"][0]["nbytes"] = 12
    col = pa.array([weights], type=table.schema.field("weights").type)
    table = table.set_column(0, table.schema.field("weights"), col)
    with pytest.raises(
        CorruptRowError, match=r"is float32 \(800, 4\) = 12800 bytes but declares 12"
    ):
        read_model_row(write_table(tmp_path / "lying.arrow", table))


def test_flipped_tensor_byte_is_caught_by_verify(tmp_path: Path) -> None:
    path = valid_file(tmp_path)
    row = read_model_row(path)
    offset = row.weights["0.weight"].data_ptr() - row.weights._storage.data_ptr()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    read_model_row(path)  # structure is fine; bytes are only checked on request
    with pytest.raises(CorruptRowError, match="checksum mismatch in column 'weights'"):
        read_model_row(path, verify=True)


def test_writes_from_mapped_rows_are_independent_of_the_source(tmp_path: Path) -> None:
    src = valid_file(tmp_path)
    row = read_model_row(src)
    copy_path = tmp_path / "copy.model.arrow"
    write_model_row(copy_path, row)
    assert read_model_row(copy_path, verify=True) == row
    row.weights["0.weight"].add_(1)  # a private mapping: the file itself never changes
    assert read_model_row(src, verify=True).weights["0.weight"].ne(row.weights["0.weight"]).all()
    assert lookup("digits.model@1") is DigitsRowV1


# -- rows in memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "pyarrow"])
def test_a_row_file_in_memory_reads_like_the_file(tmp_path: Path, kind: str) -> None:
    model = small_model()
    path = tmp_path / "m.model.arrow"
    write_model_row(path, DigitsRowV1(weights=fetch_weights(model), epoch=4))
    data = path.read_bytes()
    source = {
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "memoryview": lambda: memoryview(data),
        "pyarrow": lambda: pa.py_buffer(data),
    }[kind]()
    row = read_model_row(source, verify=True)  # type: ignore[arg-type]
    assert isinstance(row, DigitsRowV1) and row.epoch == 4
    assert row.weights == fetch_weights(model)
    fresh = small_model()
    load_weights(fresh, row.weights)
    assert fetch_weights(fresh) == fetch_weights(model)


def test_a_row_in_a_writable_buffer_is_viewed_not_copied(tmp_path: Path) -> None:
    path = tmp_path / "m.model.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights({"x": torch.arange(16.0)})))
    buf = bytearray(path.read_bytes())
    row = read_model_row(buf)
    x = row.weights["x"]
    address = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    assert address <= x.data_ptr() < address + len(buf)
    assert torch.equal(x, torch.arange(16.0))


def test_a_bad_buffer_is_refused_like_a_bad_file(tmp_path: Path) -> None:
    data = valid_file(tmp_path).read_bytes()
    with pytest.raises(NotArrowFileError) as info:
        read_model_row(b"hello, I am not Arrow at all, just some text")
    assert str(info.value) == (
        "in-memory row file: not an Arrow IPC file (the ARROW1 magic is missing at the start); "
        "is it truncated, or another format?"
    )
    with pytest.raises(NotArrowFileError, match="^s3://b/k.arrow: 3 bytes is too short"):
        read_model_row(b"ARR", where="s3://b/k.arrow")
    with pytest.raises(NotArrowFileError, match="^s3://b/k.arrow: "):
        read_model_row(data[: len(data) // 2], where="s3://b/k.arrow")
    flipped = bytearray(data)
    row = read_model_row(bytes(flipped))
    offset = row.weights["0.weight"].data_ptr() - row.weights._storage.data_ptr()
    flipped[offset] ^= 0xFF
    with pytest.raises(CorruptRowError, match="^mem: checksum mismatch in column 'weights'"):
        read_model_row(flipped, verify=True, where="mem")


# -- read_row_metadata -----------------------------------------------------------------------------


def test_read_row_metadata_gives_every_column_but_tensors(tmp_path: Path) -> None:
    from modelrows._rowfile import read_row_metadata

    w = fetch_weights(small_model())
    row = DigitsRowV1(weights=w, epoch=3, accuracy=0.5, config=DigitsConfigV1(seed=9))
    path = tmp_path / "d.model.arrow"
    write_model_row(path, row)
    meta = read_row_metadata(path)
    assert meta == {
        "weights": w.checksum,
        "architecture_version": None,
        "epoch": 3,
        "accuracy": 0.5,
        "config": {"seed": 9, "dropout_rate": 0.0},
    }
    assert read_row_metadata(path.read_bytes()) == meta
    assert read_row_metadata(pa.py_buffer(path.read_bytes())) == meta


def test_read_row_metadata_of_a_catalog_row_has_its_managed_columns(tmp_path: Path) -> None:
    from modelrows import Catalog
    from modelrows._rowfile import read_row_metadata

    catalog = Catalog.create(tmp_path / "cat", DigitsRowV1)
    row_id = catalog.append(DigitsRowV1(weights=fetch_weights(small_model()), epoch=1))
    meta = read_row_metadata(catalog.path_of(row_id))
    assert meta["row_id"] == row_id and meta["epoch"] == 1
    assert meta["written_at"].tzinfo is not None
    assert list(meta)[:2] == ["row_id", "written_at"]


def test_read_row_metadata_needs_no_declared_schema(tmp_path: Path) -> None:
    from modelrows._rowfile import read_row_metadata

    path = valid_file(tmp_path)
    code = (
        "import sys; from modelrows._rowfile import read_row_metadata\n"
        "m = read_row_metadata(sys.argv[1]); print(m['epoch'], m['config'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert out.stdout.strip() == "1 None"
    assert read_row_metadata(path)["epoch"] == 1


def test_read_row_metadata_checks_like_read_model_row(tmp_path: Path) -> None:
    from modelrows._rowfile import read_row_metadata

    table = ipc.open_file(valid_file(tmp_path)).read_all()
    with pytest.raises(RowCountError, match="holds 2 rows"):
        read_row_metadata(
            write_table(tmp_path / "two.arrow", pa.concat_tables([table, table]).combine_chunks())
        )
    newer = table.replace_schema_metadata(
        {**table.schema.metadata, b"modelrows_format_version": b"3"}
    )
    with pytest.raises(UnknownSchemaError, match="written in modelrows format version 3"):
        read_row_metadata(write_table(tmp_path / "v3.arrow", newer))
    with pytest.raises(NotArrowFileError):
        read_row_metadata(b"x" * 100)


def test_declaring_and_reading_metadata_import_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "d.model.arrow"
    write_model_row(path, DigitsRowV1(weights=fetch_weights(small_model()), epoch=7))
    code = (
        "import sys\n"
        "import modelrows\n"
        "from modelrows import ModelV1, Row\n"
        "class ConfigV1(Row, schema='notorch.config', version=1):\n"
        "    seed: int = 5\n"
        "class RunV1(ModelV1, schema='notorch.run', version=1):\n"
        "    epoch: int | None = None\n"
        "    config: ConfigV1 | None = None\n"
        "assert RunV1.arrow_schema().names == ['weights', 'architecture_version', 'epoch', 'config']\n"
        "from modelrows._rowfile import read_row_metadata\n"
        "meta = read_row_metadata(sys.argv[1])\n"
        "row = modelrows.read_model_row(sys.argv[1])\n"
        "print(meta['epoch'], meta['weights'] == row.weights.stored_checksum, row.weights.verify())\n"
        "print(sorted(m for m in ('torch', 'polars', 'duckdb') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert out.stdout.splitlines() == ["7 True True", "[]"]
