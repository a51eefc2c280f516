"""export_safetensors / import_safetensors: exact round trips, files other tools read, targets
that are refused, and metadata that is malformed."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modelrows import (
    CorruptRowError,
    ModelV1,
    RowValidationError,
    StorageError,
    Weights,
    WeightsError,
    export_safetensors,
    fetch_weights,
    import_safetensors,
    read_model_row,
    write_model_row,
)

# every dtype of the format that safetensors stores and this torch has
DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
    torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2,
]  # fmt: skip


class TwoWeightsV1(ModelV1, schema="sttest.two", version=1):
    ema: Weights | None = None
    step: int = 0


def mixed() -> dict[str, torch.Tensor]:
    out = {}
    for i, dtype in enumerate(DTYPES):
        raw = torch.randn(3, i % 3 + 1) * 4
        out[f"t{i}.{str(dtype)[6:]}"] = raw.to(dtype) if dtype is not torch.bool else raw > 0
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.empty(0, 4)
    return out


def test_every_dtype_round_trips_and_safetensors_reads_it(tmp_path: Path) -> None:
    tensors = mixed()
    row_file = tmp_path / "m.model.arrow"
    write_model_row(row_file, ModelV1(weights=fetch_weights(tensors), architecture_version=3))
    out = tmp_path / "m.safetensors"
    meta = export_safetensors(row_file, out)  # a path: read with its checksum verified

    with safe_open(str(out), framework="pt") as f:  # the reference reader
        assert f.metadata() == meta
        assert list(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert (got.dtype, got.shape) == (t.dtype, t.shape), name
            assert torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
    assert meta["format"] == "pt"
    assert meta["modelrows.schema"] == "modelrows.model@1"
    assert meta["modelrows.column"] == "weights"
    assert json.loads(meta["modelrows.names"]) == list(tensors)
    assert (len(out.read_bytes()) - 8 - struct.unpack("<Q", out.read_bytes()[:8])[0]) == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )

    back = import_safetensors(out)
    stored = read_model_row(row_file).weights
    assert back == stored  # names in state_dict order, dtypes, shapes and bytes
    assert back.checksum == stored.checksum == meta["modelrows.checksum"]


def test_ties_come_back_and_a_row_is_built(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    net[1].weight = net[0].weight
    weights = fetch_weights(net)
    ema = fetch_weights({"w": torch.ones(2)})
    row = TwoWeightsV1(weights=weights, ema=ema, step=7)
    out = tmp_path / "tied.safetensors"
    meta = export_safetensors(row, out)  # two weights columns: `weights` is the default
    assert meta["modelrows.column"] == "weights"
    assert json.loads(meta["modelrows.ties"]) == {"1.weight": "0.weight"}
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(weights)  # the tie written as a copy

    new = import_safetensors(out, TwoWeightsV1, values={"step": 8})
    assert isinstance(new, TwoWeightsV1) and (new.step, new.ema) == (8, None)
    assert new.weights == weights and new.weights.ties == {"1.weight": "0.weight"}

    assert (
        export_safetensors(row, tmp_path / "ema.safetensors", column="ema")["modelrows.column"]
        == "ema"
    )
    with pytest.raises(
        RowValidationError, match=r"has no weights column 'nope' \(weights columns: weights, ema\)"
    ):
        export_safetensors(row, tmp_path / "x.safetensors", column="nope")
    with pytest.raises(RowValidationError, match="values sets 'weights'"):
        import_safetensors(out, TwoWeightsV1, values={"weights": weights})


def test_targets_that_are_not_regular_files_are_refused(tmp_path: Path) -> None:
    weights = fetch_weights({"w": torch.arange(4.0)})
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "link.safetensors"
    link.symlink_to(precious)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    for target, kind in [
        (link, "a symbolic link"),
        (fifo, "a FIFO"),
        (tmp_path, "a directory"),
        (Path("/dev/null"), "a device"),
    ]:
        with pytest.raises(StorageError) as info:
            export_safetensors(weights, target)
        assert str(info.value) == (
            f"cannot write {target}: it is {kind}, and export replaces only regular files; "
            "remove it or choose another path"
        )
    assert precious.read_text() == "keep me" and link.is_symlink()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.safetensors", "link.safetensors", "precious.txt"]  # fmt: skip

    missing = tmp_path / "no" / "such" / "dir" / "w.safetensors"
    with pytest.raises(StorageError) as info:
        export_safetensors(weights, missing)
    assert str(info.value) == (
        f"cannot write {missing}: the directory {missing.parent} does not exist; create it first"
    )

    regular = tmp_path / "old.safetensors"
    regular.write_bytes(b"old content")
    export_safetensors(weights, regular)  # a regular file is replaced, atomically
    assert torch.equal(import_safetensors(regular)["w"], torch.arange(4.0))


def test_what_cannot_be_exported(tmp_path: Path) -> None:
    with pytest.raises(
        WeightsError, match=r"tensor 'z' is complex128, which safetensors cannot store"
    ):
        export_safetensors(
            fetch_weights({"z": torch.zeros(2, dtype=torch.complex128)}), tmp_path / "z"
        )
    row_file = tmp_path / "r.model.arrow"
    write_model_row(row_file, ModelV1(weights=fetch_weights({"w": torch.full((64,), 3.0)})))
    data = bytearray(row_file.read_bytes())
    at = data.find(torch.full((64,), 3.0).numpy().tobytes())
    data[at] ^= 1
    row_file.write_bytes(bytes(data))
    with pytest.raises(CorruptRowError, match="checksum"):
        export_safetensors(row_file, tmp_path / "bad.safetensors")
    with pytest.raises(CorruptRowError, match="nothing was exported"):
        export_safetensors(read_model_row(row_file), tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries


def raw_safetensors(path: Path, metadata: dict[str, str]) -> None:
    header = json.dumps(
        {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("modelrows.names", "[" * 100_000 + "]" * 100_000),  # nested past the parser's recursion
        ("modelrows.names", '{"w": 1}'),
        ("modelrows.names", "not json"),
        ("modelrows.names", "[1, 2]"),
        ("modelrows.ties", '["w"]'),
        ("modelrows.ties", '{"w": ["x"]}'),
    ],
)
def test_malformed_metadata_is_one_clear_error(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "m.safetensors"
    raw_safetensors(path, {key: value})
    shape = "a list of tensor names" if key.endswith("names") else "an object of tensor names"
    with pytest.raises(WeightsError) as info:
        import_safetensors(path)
    assert str(info.value) == (
        f"{path}: metadata {key!r} is not {shape} in JSON; remove the key (the tensors import "
        "without it) or export the file again"
    )


def test_files_that_are_not_safetensors(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(WeightsError, match="fifo: not a regular file"):
        import_safetensors(fifo)
    with pytest.raises(WeightsError, match="nope.safetensors: no such file"):
        import_safetensors(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="junk.safetensors: not a readable safetensors file"):
        import_safetensors(junk)
    plain = tmp_path / "plain.safetensors"
    raw_safetensors(plain, {})  # not written by modelrows: imports as stored
    assert list(import_safetensors(plain)) == ["w"]
