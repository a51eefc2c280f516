"""Reliability of the row-file layer (issue 17): loads that fail half-way, the integrity of a
whole row (values checksum, format version 2), reads of files truncated or damaged in place.

Figures these tests reach are in docs/reliability.md ("Rows: whole-row integrity, loads, reads").
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
import torch.nn as nn

from modelrows import (
    Catalog,
    CorruptRowError,
    ModelRowsError,
    ModelV1,
    Row,
    RowFileError,
    Weights,
    WeightsError,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)
from modelrows import _rowfile as rowfile

# -- 1. loads that fail half-way leave the model untouched ------------------------------------------


def _bits(model: nn.Module) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    """Every parameter and buffer (persistent or not) of ``model``: dtype, shape and bytes."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {
        name: (
            t.dtype,
            tuple(t.shape),
            t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
        for name, t in tensors
    }


class _Stack(nn.Module):
    """Ten layers and a last module whose tensor is the one that cannot be loaded."""

    def __init__(self, last: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(8, 8) for _ in range(10)])
        self.last = last


class _Expanded(nn.Module):
    """A buffer that is an expanded (stride-0) view: torch refuses to copy into it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.zeros(1).expand(16))


class _Plain(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("table", torch.zeros(16, dtype=dtype))


def _source(last: nn.Module, tmp_path: Path, *, from_file: bool) -> Weights:
    """Other values for every tensor of ``_Stack(last)``: in memory, or read from a row file
    (whose small tensors load by memmove, the others by copy_)."""
    torch.manual_seed(1)
    source = _Stack(last)
    with torch.no_grad():
        for t in [*source.parameters(), *source.buffers()]:
            t.copy_(torch.randn(t.shape, dtype=t.dtype))
    weights = fetch_weights(source)
    if not from_file:
        return weights
    path = tmp_path / "source.model.arrow"
    write_model_row(path, ModelV1(weights=weights), fsync=False)
    return read_model_row(path).weights  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def warn_always() -> Iterator[None]:
    """torch warns of a complex-to-real cast once per process; make it warn every time."""
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


@pytest.mark.parametrize("from_file", [False, True], ids=["in-memory", "from-file"])
def test_a_load_whose_last_tensor_is_an_expanded_buffer_changes_nothing(
    tmp_path: Path, from_file: bool
) -> None:
    weights = _source(_Plain(), tmp_path, from_file=from_file)
    model = _Stack(_Expanded())
    assert list(model.state_dict())[-1] == "last.table"
    before = _bits(model)
    with pytest.raises(WeightsError) as info:
        load_weights(model, weights)
    assert str(info.value) == (
        "cannot load weights into _Stack: last.table is an expanded view in the model (stride 0 "
        "in a dimension of size > 1: several of its elements share one memory location), which "
        "nothing can be copied into; the model was not changed. Give the model a tensor of its "
        "own there (e.g. register the buffer as .clone() of the expanded one)."
    )
    assert _bits(model) == before


@pytest.mark.parametrize("from_file", [False, True], ids=["in-memory", "from-file"])
def test_a_cast_whose_warning_is_an_error_fails_before_copying(
    tmp_path: Path, from_file: bool, warn_always: None
) -> None:
    weights = _source(_Plain(torch.complex64), tmp_path, from_file=from_file)
    model = _Stack(_Plain(torch.float32))
    before = _bits(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="Casting complex values to real"):
            load_weights(model, weights, cast=True)
    assert _bits(model) == before
    # without the error filter the same load goes through, warning once, and loads everything
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_weights(model, weights, cast=True)
    assert report.complete
    assert any("Casting complex values to real" in str(w.message) for w in caught)
    assert torch.equal(model.last.table, weights["last.table"].real)


@pytest.mark.parametrize("from_file", [False, True], ids=["in-memory", "from-file"])
def test_a_load_into_inference_tensors_outside_inference_mode_changes_nothing(
    tmp_path: Path, from_file: bool
) -> None:
    weights = _source(_Plain(), tmp_path, from_file=from_file)
    model = _Stack(_Plain())
    with torch.inference_mode():
        model.last.table = torch.zeros(16)  # an inference tensor, made by a model built there
    before = _bits(model)
    with pytest.raises(WeightsError) as info:
        load_weights(model, weights)
    assert str(info.value) == (
        "cannot load weights into _Stack: last.table is an inference tensor (made under "
        "torch.inference_mode()), which cannot be changed outside inference mode; the model was "
        "not changed. Load inside torch.inference_mode(), or build the model outside it."
    )
    assert _bits(model) == before
    with torch.inference_mode():
        assert load_weights(model, weights).complete
    assert torch.equal(model.last.table, weights["last.table"])


# -- 2. the values checksum covers every value of a row -------------------------------------------


class _EvalRowV1(ModelV1, schema="rel17.eval", version=1):
    run: str
    epoch: int
    accuracy: float
    note: str | None = None
    tags: list[str]


def _catalog_row_file(tmp_path: Path) -> tuple[Catalog, str, Path]:
    catalog = Catalog.create(tmp_path / "catalog", _EvalRowV1, partition_by=["run"])
    weights = Weights({"w": torch.arange(4, dtype=torch.float32).reshape(2, 2)})
    row = _EvalRowV1(
        weights=weights, run="r", epoch=12345, accuracy=0.8125, note="n", tags=["a", "bc"]
    )
    row_id = catalog.append(row, fsync=False)
    return catalog, row_id, catalog.path_of(row_id)


def _tensor_bytes(raw: bytes) -> range:
    """Where the tensor bytes of a row file lie (its one tensor: no padding inside the range)."""
    buf = pa.py_buffer(raw)
    batch = ipc.open_file(pa.BufferReader(buf)).get_batch(0)
    weights = batch.column("weights")
    data = weights.field("data")
    offsets = np.frombuffer(data.buffers()[1], dtype="<i8")
    start = data.buffers()[2].address - buf.address + int(offsets[data.offset])
    [tensor] = weights.field("tensors")[0].as_py()
    return range(start + tensor["offset"], start + tensor["offset"] + tensor["nbytes"])


def _values(row: Row) -> tuple[Any, ...]:
    """Everything a reader takes from a row: class, schema, values, extras, tensors."""
    values = row.to_dict()
    weights = values.pop("weights")
    tensors = {k: t.clone() for k, t in weights.items()}
    return type(row), row.declared_schema, values, row.extras, tensors


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    ta, tb = a[-1], b[-1]
    if a[:-1] != b[:-1] or list(ta) != list(tb):
        return False
    return all(
        ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k])
        for k in ta
    )


def _classify(raw: bytes, original: tuple[Any, ...]) -> str:
    """``caught`` (verify=True raises), ``harmless`` (reads back the same), or ``missed``."""
    try:
        row = read_model_row(raw, verify=True, where="mutant")
    except ModelRowsError:
        return "caught"
    return "harmless" if _same(_values(row), original) else "missed"


MUTATIONS = (0x01, 0x80, 0xFF)  # xor masks: the low bit, the high bit, every bit


def test_every_single_byte_mutation_that_changes_a_value_is_caught_by_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, row_id, path = _catalog_row_file(tmp_path)
    raw = path.read_bytes()
    original = _values(read_model_row(raw, verify=True))
    tensors = _tensor_bytes(raw)
    positions = [i for i in range(len(raw)) if i not in tensors]
    outcomes: dict[str, int] = {"caught": 0, "harmless": 0, "missed": 0}
    changed_values: list[tuple[int, int]] = []  # mutations that change a value
    for i in positions:
        for mask in MUTATIONS:
            mutant = bytearray(raw)
            mutant[i] ^= mask
            outcome = _classify(bytes(mutant), original)
            outcomes[outcome] += 1
            if outcome == "caught":
                with monkeypatch.context() as m:  # without the values checksum (format 1)?
                    m.setattr(rowfile, "verify_values", lambda batch, *, where: None, raising=False)
                    if _classify(bytes(mutant), original) == "missed":
                        changed_values.append((i, mask))
    tried = sum(outcomes.values())
    print(
        f"\n{len(raw)}-byte row file, {len(positions)} bytes outside the tensors x "
        f"{len(MUTATIONS)} masks = {tried} mutations: {outcomes['caught']} caught, "
        f"{outcomes['harmless']} harmless, {outcomes['missed']} missed; "
        f"{len(changed_values)} of the caught ones change a value that only the values "
        "checksum catches"
    )
    assert outcomes["missed"] == 0
    assert tried == len(positions) * len(MUTATIONS)
    assert len(changed_values) > 50  # the test sees what it guards against

    # the same damage in place, keeping the file's size and times: the catalog catches it too
    stat = path.stat()
    for i, mask in changed_values:
        mutant = bytearray(raw)
        mutant[i] ^= mask
        path.write_bytes(mutant)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size
        assert path.stat().st_mtime_ns == stat.st_mtime_ns
        with pytest.raises(ModelRowsError):
            catalog.get(row_id, verify=True)
        assert [bad.row_id for bad in catalog.verify()] == [row_id], (i, mask)
    path.write_bytes(raw)
    assert catalog.verify() == []


# -- 3. a file truncated under a reader: mmap=False copies; the default mapping gets SIGBUS -------


def _big_row(path: Path) -> Weights:
    weights = Weights({"a": torch.randn(256, 1024), "b": torch.randn(1024)})  # 1 MB
    write_model_row(path, ModelV1(weights=weights, architecture_version=3), fsync=False)
    return weights


def test_a_row_read_with_mmap_false_survives_its_file_being_truncated(tmp_path: Path) -> None:
    path = tmp_path / "shared.model.arrow"
    written = _big_row(path)
    row = read_model_row(path, mmap=False)
    os.truncate(path, 0)  # another program rewrites the file in place
    assert row.weights == written  # every tensor byte, read after the truncation
    assert row.weights.verify()
    assert row.architecture_version == 3
    # and through a catalog, with verify=True, truncated between the read and the load
    catalog = Catalog.create(tmp_path / "catalog", ModelV1)
    row_id = catalog.append(ModelV1(weights=written), fsync=False)
    got = catalog.get(row_id, verify=True, mmap=False)
    os.truncate(catalog.path_of(row_id), 100)
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(256, 1024))
    model.b = nn.Parameter(torch.zeros(1024))
    assert load_weights(model, got.weights).complete
    assert torch.equal(model.a, written["a"]) and torch.equal(model.b, written["b"])


def test_a_file_that_shrinks_while_being_copied_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.model.arrow"
    _big_row(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        os.truncate(path, size // 2)
        with pytest.raises(RowFileError) as info:
            rowfile._read_copy(fd, size, str(path))
    finally:
        os.close(fd)
    assert str(info.value) == (
        f"{path}: the file shrank from {size} to {size // 2} bytes while it was read; is another "
        "program rewriting it in place?"
    )


_TOUCH_AFTER_TRUNCATE = """
import os, sys
from modelrows import read_model_row
path = sys.argv[1]
row = read_model_row(path, mmap=sys.argv[2] == "map")
os.truncate(path, 0)
print("truncated", flush=True)
print(float(row.weights["a"].sum()), flush=True)
"""


@pytest.mark.parametrize("mode", ["map", "copy"])
def test_the_default_mapping_gets_sigbus_when_its_file_is_truncated(
    tmp_path: Path, mode: str
) -> None:
    """The documented limit of mapping (docs/reliability.md), shown in a child process."""
    path = tmp_path / "m.model.arrow"
    _big_row(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("PYTHONFAULTHANDLER", None)
    child = subprocess.run(
        [sys.executable, "-c", _TOUCH_AFTER_TRUNCATE, str(path), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.stdout.startswith("truncated\n")
    if mode == "map":
        assert child.returncode == -signal.SIGBUS, (child.returncode, child.stderr)
    else:
        assert child.returncode == 0, child.stderr


# -- 4. damage in place that keeps size and times: nothing remembered hides it ---------------------


def _poke(path: Path, position: int, mask: int) -> None:
    """Flip bits of one byte in place (same inode, same size), then restore the file's times."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ mask]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def test_a_row_file_damaged_in_place_keeping_size_and_mtime_is_caught(tmp_path: Path) -> None:
    catalog, row_id, path = _catalog_row_file(tmp_path)
    raw = path.read_bytes()
    # read and verified once first: whatever a reader might remember of the file is there now
    assert catalog.get(row_id, verify=True).epoch == 12345
    assert catalog.verify() == []
    damages = {
        "a tensor byte": (_tensor_bytes(raw).start + 5, "checksum mismatch in column 'weights'"),
        "the epoch": (raw.index(struct.pack("<q", 12345)), "values checksum mismatch"),
    }
    for what, (position, problem) in damages.items():
        _poke(path, position, 0x10)
        assert catalog.sql("SELECT epoch FROM models").fetchall() == [(12345,)]  # the index
        with pytest.raises(CorruptRowError) as info:
            catalog.get(row_id, verify=True)
        assert str(info.value).startswith(f"{path}: {problem}"), what
        bad = catalog.verify()
        assert [(b.row_id, b.path) for b in bad] == [(row_id, path)], what
        assert bad[0].problem.startswith(f"{path}: {problem}"), what
        _poke(path, position, 0x10)  # repaired: clean again
        assert catalog.verify() == []
        assert catalog.get(row_id, verify=True).epoch == 12345
