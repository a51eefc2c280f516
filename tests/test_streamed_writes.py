"""Writes stream every tensor from where it lives into the file, hashing it on the way.

A row's weights blob is never assembled in memory: the writer hands Arrow a placeholder and
writes each tensor's bytes in its place, hashing them as they pass (on a second thread for
large rows), then writes the checksum after them. ``fetch_weights(model, copy=False)`` lets a
write read the model's own tensors with no snapshot copy at all.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from checksums import reference_checksum
from modelrows import Catalog, ModelV1, fetch_weights, load_weights, read_model_row, write_model_row
from modelrows import _blob as blob_module
from modelrows import _weights as weights_module
from modelrows._blob import placeholder
from modelrows._errors import StorageError


def mixed_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    big = torch.randn(3_000_000)  # 12 MB: hashed on a second thread, in several chunks
    c = torch.randn(6, dtype=torch.complex64)
    return {
        "big": big,
        "strided": torch.arange(20.0).reshape(4, 5).t(),
        "conj": c.conj(),
        "bf16": torch.randn(7, 3).to(torch.bfloat16),
        "scalar": torch.tensor(3, dtype=torch.int16),
        "empty": torch.zeros(0, 4),
        "flags": torch.tensor([True, False, True]),
        "tied": big,
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", ["small", "large"])
def test_live_and_snapshot_weights_write_the_same_bytes(tmp_path: Path, size: str) -> None:
    tensors = mixed_tensors()
    if size == "small":
        del tensors["big"], tensors["tied"]
    snapshot, live = fetch_weights(tensors), fetch_weights(tensors, copy=False)
    write_model_row(tmp_path / "a.arrow", ModelV1(weights=snapshot), fsync=False)
    write_model_row(tmp_path / "b.arrow", ModelV1(weights=live), fsync=False)
    assert digest(tmp_path / "a.arrow") == digest(tmp_path / "b.arrow")
    back = read_model_row(tmp_path / "b.arrow", verify=True).weights
    assert back.stored_checksum == reference_checksum(snapshot)
    for name, t in tensors.items():
        assert torch.equal(back[name], t.resolve_conj()), name
        assert back[name].data_ptr() % 64 == 0, name
    if size == "large":
        assert back["tied"] is back["big"]


def test_rewriting_read_weights_streams_them_from_the_mapped_file(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(700, 700), nn.BatchNorm1d(700))  # ~2 MB
    write_model_row(tmp_path / "a.arrow", ModelV1(weights=fetch_weights(model)), fsync=False)
    read = read_model_row(tmp_path / "a.arrow").weights
    write_model_row(tmp_path / "b.arrow", ModelV1(weights=read), fsync=False)
    assert digest(tmp_path / "a.arrow") == digest(tmp_path / "b.arrow")


def test_copy_false_views_the_model_and_a_write_stores_its_current_values(tmp_path: Path) -> None:
    model = nn.Linear(4, 3)
    live = fetch_weights(model, copy=False)
    assert live["weight"].data_ptr() == model.weight.data_ptr()  # no copy
    assert not live["weight"].requires_grad
    before = live.checksum
    with torch.no_grad():
        model.weight.add_(1.0)  # a training step after fetching
    assert live.checksum != before  # a live view's checksum is never stale
    write_model_row(tmp_path / "m.arrow", ModelV1(weights=live), fsync=False)
    fresh = nn.Linear(4, 3)
    load_weights(fresh, read_model_row(tmp_path / "m.arrow", verify=True).weights)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)


def test_catalog_append_of_live_weights_loads_back_exactly(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(1, 3, 8, 8))
    model[0].weight.data = model[0].weight.data.to(torch.bfloat16).float()  # any dtype mix works
    cat = Catalog.create(tmp_path / "c", ModelV1)
    row_id = cat.append(ModelV1(weights=fetch_weights(model, copy=False)), fsync=False)
    row = cat.get(row_id, verify=True)
    assert row.weights == fetch_weights(model)


def test_the_checksum_of_a_large_write_is_computed_on_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()
    real = blob_module._new_hasher

    class Spy:
        def __init__(self) -> None:
            self.h = real()

        def update(self, data: object) -> None:
            threads.add(threading.current_thread().name)
            self.h.update(data)

        def hexdigest(self) -> str:
            return str(self.h.hexdigest())

    monkeypatch.setattr(blob_module, "_new_hasher", Spy)
    tensors = mixed_tensors()
    write_model_row(tmp_path / "big.arrow", ModelV1(weights=fetch_weights(tensors)), fsync=False)
    assert threads and all(name.startswith("modelrows-checksum") for name in threads)
    threads.clear()
    write_model_row(tmp_path / "small.arrow", ModelV1(weights=fetch_weights(nn.Linear(2, 2))))
    assert threads == {threading.current_thread().name}  # small rows: no thread to start
    assert read_model_row(tmp_path / "big.arrow", verify=True).weights.verify()


def test_a_write_failing_mid_stream_leaves_nothing_and_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights(nn.Linear(2, 2))), fsync=False)
    old = digest(path)
    calls = {"n": 0}
    real_stream = blob_module._stream

    def failing_write_after_three(sources, start, end, write, hash_):  # type: ignore[no-untyped-def]
        def write_some(data: object) -> object:
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(28, "No space left on device")
            return write(data)

        return real_stream(sources, start, end, write_some, hash_)

    monkeypatch.setattr(blob_module, "_stream", failing_write_after_three)
    before = set(threading.enumerate())
    with pytest.raises(StorageError, match="step 'write'"):
        write_model_row(path, ModelV1(weights=fetch_weights(mixed_tensors())), fsync=False)
    assert digest(path) == old  # the old row is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.arrow"]  # no temporary file left
    assert set(threading.enumerate()) <= before  # the hashing thread has finished


def test_a_large_load_from_a_file_maps_its_pages_on_a_second_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(1500, 1500), nn.BatchNorm1d(1500))  # 9 MB: prefaulted
    write_model_row(tmp_path / "m.arrow", ModelV1(weights=fetch_weights(model)), fsync=False)
    seen: list[tuple[str, int]] = []
    real = weights_module._MADVISE
    if real is None:
        pytest.skip("madvise is not reachable through ctypes here")

    def spy(start: int, n: int, advice: int) -> int:
        seen.append((threading.current_thread().name, n))
        return real(start, n, advice)

    monkeypatch.setattr(weights_module, "_MADVISE", spy)
    fresh = nn.Sequential(nn.Linear(1500, 1500), nn.BatchNorm1d(1500))
    load_weights(fresh, read_model_row(tmp_path / "m.arrow").weights)
    assert {name for name, _ in seen} == {"modelrows-prefault"}
    assert sum(n for _, n in seen) >= 9_000_000  # every tensor's pages
    assert fetch_weights(fresh) == fetch_weights(model)
    assert not [t for t in threading.enumerate() if t.name == "modelrows-prefault"]

    # where madvise fails (a kernel without MADV_POPULATE_READ), the copy maps the pages itself
    monkeypatch.setattr(weights_module, "_MADVISE", lambda start, n, advice: -1)
    other = nn.Sequential(nn.Linear(1500, 1500), nn.BatchNorm1d(1500))
    load_weights(other, read_model_row(tmp_path / "m.arrow").weights)
    assert fetch_weights(other) == fetch_weights(model)

    # weights in memory (not a mapped file) are never prefaulted
    seen.clear()
    monkeypatch.setattr(weights_module, "_MADVISE", spy)
    load_weights(other, fetch_weights(model))
    assert seen == []


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.int64, torch.bool,
          torch.complex64, torch.float64, torch.uint8]  # fmt: skip


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """Tensors of mixed dtypes and shapes (empty and 0-d included), some tied, some strided."""
    out: dict[str, torch.Tensor] = {}
    for i in range(draw(st.integers(0, 6))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        t = (torch.rand(shape) * 100).to(dtype)
        kind = draw(st.sampled_from(["plain", "transposed", "tie"]))
        if kind == "transposed" and t.dim() >= 2:
            t = t.transpose(0, 1)
        elif kind == "tie" and out:
            t = out[draw(st.sampled_from(sorted(out)))]
        out[f"t{i}"] = t
    return out


@settings(max_examples=60, deadline=None, database=None)
@given(tensors=state_dicts(), threaded=st.booleans())
def test_any_state_dict_streams_to_the_bytes_of_its_snapshot(
    tmp_path_factory: pytest.TempPathFactory,
    tensors: dict[str, torch.Tensor],
    threaded: bool,
) -> None:
    d = tmp_path_factory.mktemp("prop")
    with pytest.MonkeyPatch.context() as mp:
        if threaded:  # every layout hashed on the second thread, however small
            mp.setattr(blob_module, "HASH_ON_A_THREAD_FROM", 0)
        snapshot = fetch_weights(tensors)
        write_model_row(d / "a.arrow", ModelV1(weights=snapshot), fsync=False)
        write_model_row(
            d / "b.arrow", ModelV1(weights=fetch_weights(tensors, copy=False)), fsync=False
        )
    assert digest(d / "a.arrow") == digest(d / "b.arrow")
    back = read_model_row(d / "b.arrow", verify=True).weights
    assert back == snapshot
    assert back.stored_checksum == reference_checksum(snapshot)


def test_the_blob_placeholder_of_a_model_larger_than_memory_costs_nothing() -> None:
    size = 1 << 40  # 1 TiB: far beyond this machine's memory and commit limit
    buf = placeholder(size)
    assert buf.size == size
    view = memoryview(buf)
    assert view[0] == 0 and view[size - 1] == 0  # zeros, mapped on demand
