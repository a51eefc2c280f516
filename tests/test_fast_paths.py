"""The fast paths keep the semantics: huge-page packing with plain memcpys, preallocated files.

fetch_weights copies contiguous CPU tensors as raw bytes (NumPy memcpy) into 64-byte-aligned
memory and everything else through torch's copy_; write_model_row reserves files of 1 MiB and
more with fallocate(2) before writing them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from checksums import reference_checksum
from modelrows import ModelV1, fetch_weights, read_model_row, write_model_row
from modelrows.weights import empty_bytes


@pytest.mark.parametrize("n", [0, 1, 63, 4096, 5 * 1024 * 1024 + 3])
def test_empty_bytes_is_aligned_and_sized(n: int) -> None:
    t = empty_bytes(n)
    assert t.dtype == torch.uint8 and t.shape == (n,) and t.data_ptr() % 64 == 0


def test_every_copy_path_gives_the_exact_bytes_and_checksum() -> None:
    c = torch.randn(6, dtype=torch.complex64)
    big = torch.randn(600_000)  # 2.4 MB: several memcpy pieces
    tensors = {
        "big": big,
        "strided": torch.arange(20.0).reshape(4, 5).t(),  # non-contiguous: copy_
        "conj": c.conj(),  # conjugate bit: copy_ resolves it
        "neg": c.conj().imag,  # negative bit (and strided)
        "bf16": torch.randn(7, 3).to(torch.bfloat16),
        "scalar": torch.tensor(3, dtype=torch.int16),
        "empty": torch.zeros(0, 4),
        "flags": torch.tensor([True, False, True]),
        "tied": big,
    }
    w = fetch_weights(tensors)
    for name, t in tensors.items():
        expected = t.resolve_conj().resolve_neg()
        assert w[name].dtype == t.dtype and w[name].shape == t.shape, name
        assert torch.equal(w[name], expected), name
        assert w[name].data_ptr() % 64 == 0, name
    assert w["tied"] is w["big"]
    assert w.checksum == reference_checksum(w)


def test_a_preallocated_file_is_exactly_its_arrow_bytes(tmp_path: Path) -> None:
    model = torch.nn.Linear(1024, 1024)  # 4 MB: preallocated
    path = tmp_path / "big.model.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights(model)), fsync=False)
    data = path.read_bytes()
    assert data[:6] == b"ARROW1" and data[-6:] == b"ARROW1"  # no reserved tail left over
    back = read_model_row(path, verify=True).weights
    assert torch.equal(back["weight"], model.weight.detach())
    # rewriting in place with a smaller row leaves no trace of the bigger one
    write_model_row(path, ModelV1(weights=fetch_weights(torch.nn.Linear(2, 2))), fsync=False)
    assert path.stat().st_size < 4096
    assert read_model_row(path, verify=True).weights["weight"].shape == (2, 2)


def test_read_views_are_contiguous_tensors_of_the_mapped_file(tmp_path: Path) -> None:
    tensors = {
        "f32": torch.randn(3, 1, 5),
        "bf16": torch.randn(4, 2).to(torch.bfloat16),
        "i64": torch.tensor(7),
        "empty": torch.zeros(2, 0, 3),
        "bool": torch.tensor([[True], [False]]),
        "f64": torch.randn(5).double(),
    }
    tensors["tied"] = tensors["f32"]
    path = tmp_path / "m.model.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights(tensors)), fsync=False)
    w = read_model_row(path, verify=True).weights
    start = w._storage.data_ptr()
    for name, t in tensors.items():
        back = w[name]
        assert back.is_contiguous() and back.shape == t.shape and back.dtype == t.dtype, name
        assert torch.equal(back, t), name
        if back.numel():
            assert start <= back.data_ptr() < start + w._storage.numel(), name
    assert w["tied"] is w["f32"]
