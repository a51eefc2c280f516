"""_blob, the weights column's codec: tensors -> a laid-out Arrow value (built in memory, or
streamed in place of a placeholder) -> checked entries -> views, and the tensor table's checks.

(End-to-end streaming through row files is in test_streamed_writes.py; the bytes the codec
writes are frozen by the golden files, test_format.py.)

The tensor table is checked fast when it is well formed, carefully when not: ``decode_entries``
first tries whole-column checks (``_well_formed_entries``) and falls back to
the entry-by-entry pass (``_checked_entries``) that names the exact problem. The two must agree:
whatever the fast pass accepts, the careful pass accepts identically, and whatever the careful
pass refuses, the fast pass refuses too (returns None).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from checksums import reference_checksum
from modelrows import CorruptRowError, ModelV1, Weights, fetch_weights, write_model_row
from modelrows import _blob as blob
from modelrows._blob import _TENSOR_STRUCT, _checked_entries, _well_formed_entries
from modelrows._format import ALIGNMENT, is_weights_type

DTYPES = ["float32", "bfloat16", "int8", "complex128", "bool", "float64", "nonsense", ""]


NULLABLE = pa.struct(  # the file's type, but as a hostile file may hold it: nulls anywhere
    [
        pa.field("name", pa.string()),
        pa.field("dtype", pa.string()),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("offset", pa.int64()),
        pa.field("nbytes", pa.int64()),
    ]
)


def bad(msg: str) -> CorruptRowError:
    return CorruptRowError(f"t.arrow: {msg}", path="t.arrow")


entry = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b", "c", "d", ""]) | st.none(),
        "dtype": st.sampled_from(DTYPES),
        "shape": st.lists(st.integers(-2, 5) | st.none(), max_size=4)
        | st.lists(st.just(1), min_size=65, max_size=66)
        | st.none(),
        "offset": st.sampled_from([0, 1, 8, 64, 128, 1 << 40]) | st.integers(-8, 300) | st.none(),
        "nbytes": st.integers(-4, 200) | st.none(),
    }
)


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(entry, max_size=5), st.integers(0, 400), st.integers(0, 3), st.integers(0, 64))
def test_the_fast_and_careful_passes_agree(
    rows: list[dict[str, object]], blob_len: int, skip: int, base: int
) -> None:
    pad = [{"name": "pad", "dtype": "int8", "shape": [], "offset": 0, "nbytes": 1}] * skip
    table = pa.array(pad + rows, type=NULLABLE)
    table = table.slice(skip)  # a slice of a longer table, as in a multi-row file
    try:
        careful = _checked_entries(table, blob_len, base, "t.arrow", bad)
    except CorruptRowError:
        careful = None
    fast = _well_formed_entries(table, blob_len, base)
    if careful is None:
        assert fast is None
    elif fast is not None:
        assert fast == careful


def test_a_well_formed_table_takes_the_fast_pass() -> None:
    rows = [
        {"name": "w", "dtype": "float32", "shape": [2, 3], "offset": 64, "nbytes": 24},
        {"name": "tied", "dtype": "float32", "shape": [2, 3], "offset": 64, "nbytes": 24},
        {"name": "b", "dtype": "bfloat16", "shape": [], "offset": 128, "nbytes": 2},
        {"name": "e", "dtype": "int8", "shape": [0, 4], "offset": 100, "nbytes": 0},
    ]
    table = pa.array(rows, type=_TENSOR_STRUCT)
    fast = _well_formed_entries(table, 130, 8)
    assert fast is not None
    assert fast == _checked_entries(table, 130, 8, "t.arrow", bad)
    assert [e.offset for e in fast] == [72, 72, 136, 0]  # shifted by base; empty at 0


# -- tensors -> value -> views -----------------------------------------------------------------------


def tensors() -> dict[str, torch.Tensor]:
    w = torch.randn(3, 5)
    return {
        "w": w,
        "tied": w,
        "b": torch.randn(5).to(torch.bfloat16),
        "scalar": torch.tensor(7, dtype=torch.int16),
        "empty": torch.zeros(0, 2),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
    }


def test_plan_layout_places_each_tensor_on_a_64_byte_boundary_once() -> None:
    entries, sources, size = blob.plan_layout(tensors())
    assert [e.name for e in entries] == ["w", "tied", "b", "scalar", "empty", "strided"]
    live = [e for e in entries if e.nbytes]
    assert all(e.offset % ALIGNMENT == 0 for e in live)
    assert entries[0][3:] == entries[1][3:]  # the tie is stored once
    assert [offset for offset, _ in sources] == [entries[i].offset for i in (0, 2, 3, 4, 5)]
    assert size % ALIGNMENT == 0 and size >= max(e.offset + e.nbytes for e in live)


def test_a_value_built_in_memory_decodes_to_the_same_tensors() -> None:
    src = tensors()
    entries, sources, _size = blob.plan_layout(src)
    heard: list[str] = []
    fingerprint = blob.fingerprint_of(entries)
    array = blob.weights_array(entries, sources, fingerprint, None, on_checksum=heard.append)
    assert is_weights_type(array.type) and array.type == blob.WEIGHTS_ARROW_TYPE
    decoded = blob.decode_weights(array, 0, blob.DecodeContext("mem"))
    assert decoded is not None
    assert decoded.fingerprint == fingerprint
    assert decoded.checksum == heard[0] == reference_checksum(fetch_weights(src))
    assert blob.checksum_of(decoded.storage, decoded.entries) == decoded.checksum
    views = blob.tensor_views(blob.as_tensor_bytes(decoded.storage), decoded.entries)
    for name, t in src.items():
        assert views[name].dtype == t.dtype and torch.equal(views[name], t), name
    assert views["w"] is views["tied"]


def test_a_streamed_value_replaces_its_placeholders_as_the_sink_writes() -> None:
    src = tensors()
    entries, sources, _size = blob.plan_layout(src)
    heard: list[str] = []

    def build(position: int) -> tuple[pa.RecordBatch, blob.BlobPlan, blob.BlobSink]:
        plan = blob.BlobPlan(position)
        array = blob.weights_array(
            entries, sources, blob.fingerprint_of(entries), plan, on_checksum=heard.append
        )
        batch = pa.RecordBatch.from_arrays([array], names=["weights"])
        dry = blob.BlobSink()  # a dry run writes nothing and finds where the buffers land
        with ipc.new_file(dry, batch.schema) as w:
            w.write_batch(batch)
        return batch, plan, dry

    batch, plan, dry = build(0)
    key = blob.blob_buffers(batch)["weights"]
    batch, plan, dry = build(dry.positions[key])  # planned where it lands: the layout holds
    key = blob.blob_buffers(batch)["weights"]
    assert plan.stream is not None and heard == []  # nothing streamed yet
    assert key == (plan.stream.blob.address, plan.stream.blob.size)
    assert dry.positions[key] % ALIGNMENT == plan.position % ALIGNMENT

    class Collect:
        def __init__(self) -> None:
            self.out = io.BytesIO()
            self.finished = False

        def write(self, data: object) -> None:
            self.out.write(memoryview(data))  # type: ignore[arg-type]

        def finish(self) -> None:
            self.finished = True

    collect = Collect()
    sink = blob.BlobSink(collect, [plan.stream])
    with ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    sink.close()
    assert collect.finished and not sink.blobs and not sink.checksums
    assert sink.pos == dry.pos and heard == [plan.stream.checksum]

    data = collect.out.getvalue()
    back = ipc.open_file(pa.BufferReader(pa.py_buffer(data))).get_batch(0)
    assert back.column(0).field("checksum")[0].as_py() == heard[0]
    raw = np.frombuffer(data, dtype=np.uint8)
    ctx = blob.DecodeContext("streamed", raw, pa.py_buffer(data).address)
    decoded = blob.decode_weights(back.column(0), 0, ctx)
    assert decoded is not None and decoded.storage is raw  # views of the bytes, no copy
    assert all(e.offset % ALIGNMENT == 0 for e in decoded.entries if e.nbytes)  # file offsets
    views = blob.tensor_views(blob.as_tensor_bytes(decoded.storage), decoded.entries)
    assert all(torch.equal(views[n], t) for n, t in src.items())


def test_a_null_value_decodes_to_none() -> None:
    array = pa.array([None], type=blob.WEIGHTS_ARROW_TYPE)
    assert blob.decode_weights(array, 0, blob.DecodeContext("nulls")) is None


def test_a_wrong_fingerprint_is_corruption() -> None:
    entries, sources, _size = blob.plan_layout({"x": torch.ones(3)})
    array = blob.weights_array(entries, sources, "0" * 32, None, on_checksum=lambda c: None)
    with pytest.raises(CorruptRowError, match=r"f\.arrow: the weights' fingerprint '0{32}' does"):
        blob.decode_weights(array, 0, blob.DecodeContext("f.arrow"))


def test_a_tensor_misaligned_for_its_dtype_is_copied_to_aligned_memory() -> None:
    entries, sources, _size = blob.plan_layout({"x": torch.arange(4.0)})
    array = blob.weights_array(
        entries, sources, blob.fingerprint_of(entries), None, on_checksum=lambda c: None
    )
    data = array.field("data")[0].as_buffer()
    shifted = np.zeros(data.size + 1, dtype=np.uint8)[1:]  # the blob one byte off
    shifted[:] = np.frombuffer(data, dtype=np.uint8)
    ctx = blob.DecodeContext("odd", shifted, shifted.ctypes.data - array.field("data").offset)
    moved = pa.StructArray.from_arrays(
        [array.field("tensors"),
         pa.Array.from_buffers(pa.large_binary(), 1, [None, array.field("data").buffers()[1],
                                                      pa.py_buffer(shifted)]),
         array.field("fingerprint"), array.field("checksum")],
        fields=list(blob.WEIGHTS_ARROW_TYPE),
    )  # fmt: skip
    decoded = blob.decode_weights(moved, 0, ctx)
    assert decoded is not None
    assert decoded.storage.ctypes.data % ALIGNMENT == 0  # a fresh aligned copy
    views = blob.tensor_views(blob.as_tensor_bytes(decoded.storage), decoded.entries)
    assert torch.equal(views["x"], torch.arange(4.0))


def test_check_torch_dtypes_names_the_tensor_and_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = (blob.TensorEntry("x", "float8_e5m2", (2,), 64, 2),)
    assert blob.check_torch_dtypes(entries, "f.arrow")["float8_e5m2"] is torch.float8_e5m2
    monkeypatch.delitem(blob.DTYPE_NAMES, "float8_e5m2")
    with pytest.raises(CorruptRowError) as info:
        blob.check_torch_dtypes(entries, "f.arrow")
    assert str(info.value) == (
        f"f.arrow: tensor 'x' has dtype 'float8_e5m2', which this torch ({torch.__version__}) "
        "lacks; upgrade torch to read it"
    )


def test_decoding_a_file_s_weights_imports_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "m.model.arrow"
    w = fetch_weights({"a": torch.randn(4, 4), "b": torch.randn(3).to(torch.bfloat16)})
    write_model_row(path, ModelV1(weights=w))
    code = (
        "import sys\n"
        "from modelrows._rowfile import read_row_file\n"
        "from modelrows._blob import decode_weights, checksum_of\n"
        "batch, ctx = read_row_file(sys.argv[1])\n"
        "d = decode_weights(batch.column(0), 0, ctx)\n"
        "print([e.name for e in d.entries], checksum_of(d.storage, d.entries) == d.checksum)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split("\n")[:2] == ["['a', 'b'] True", "False"]


def test_weights_from_a_file_state_their_facts_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "m.model.arrow"
    src = fetch_weights({"a": torch.randn(4, 4), "t": torch.ones(2), "e": torch.zeros(0)})
    write_model_row(path, ModelV1(weights=src))
    from modelrows import read_model_row

    back = read_model_row(path).weights
    assert isinstance(back, Weights) and back._storage_t is None  # no tensor built yet
    assert [e.name for e in back.entries] == ["a", "t", "e"]
    assert (back.nbytes, back.fingerprint, back.ties) == (src.nbytes, src.fingerprint, {})
    assert back.checksum == back.stored_checksum == reference_checksum(src) and back.verify()
    assert back._storage_t is None  # the checksum hashed the file's bytes, not tensors
    assert back == src and back._storage_t is not None  # tensors now
