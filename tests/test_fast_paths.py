"""The fast paths keep the semantics: huge-page packing with plain memcpys, preallocated files,
writes in 2 MiB runs.

fetch_weights copies contiguous CPU tensors as raw bytes (NumPy memcpy) into 64-byte-aligned
memory and everything else through torch's copy_; write_model_row reserves files of 1 MiB and
more with fallocate(2) before writing them.
"""

from __future__ import annotations

import itertools
import mmap
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from checksums import reference_checksum
from modelrows import ModelV1, fetch_weights, read_model_row, write_model_row
from modelrows import _rowfile as rowfile
from modelrows._format import WRITE_ALIGN
from modelrows._weights import empty_bytes


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


# -- writes in huge-page runs ------------------------------------------------------------------------


def many_tensors() -> dict[str, torch.Tensor]:
    """3,000 tiny tensors (many pieces per 2 MiB run) and a few large ones (split across runs)."""
    torch.manual_seed(3)
    out = {f"small.{i}": torch.randn(3) for i in range(3000)}
    out.update({f"large.{i}": torch.randn(700_000 + i) for i in range(4)})  # 2.8 MB each
    return out


def test_a_file_is_written_in_runs_that_end_on_2_mib_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[tuple[int, int, int]] = []  # (file offset, bytes, pieces)
    real = os.writev

    def spy(fd: int, buffers: list[memoryview]) -> int:
        n = real(fd, buffers)
        runs.append((os.lseek(fd, 0, os.SEEK_CUR) - n, n, len(buffers)))
        return n

    monkeypatch.setattr(os, "writev", spy)
    path = tmp_path / "m.arrow"
    weights = fetch_weights(many_tensors())
    write_model_row(path, ModelV1(weights=weights), fsync=False)
    size = path.stat().st_size
    assert size > 4 * WRITE_ALIGN
    assert [offset for offset, _, _ in runs] == [0, *itertools.accumulate(n for _, n, _ in runs)][
        :-1
    ]  # one after the other, from the start
    assert sum(n for _, n, _ in runs) == size
    assert all((offset + n) % WRITE_ALIGN == 0 for offset, n, _ in runs[:-1])
    assert max(pieces for _, _, pieces in runs) < 1024  # IOV_MAX
    assert read_model_row(path, verify=True).weights == weights


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = fetch_weights(many_tensors())
    write_model_row(tmp_path / "whole.arrow", ModelV1(weights=weights), fsync=False)
    real = os.writev

    def at_most_10_000_bytes(fd: int, buffers: list[memoryview]) -> int:
        out, room = [], 10_000
        for b in buffers:
            if room <= 0:
                break
            out.append(b[:room])
            room -= len(out[-1])
        return real(fd, out)

    monkeypatch.setattr(os, "writev", at_most_10_000_bytes)
    write_model_row(tmp_path / "short.arrow", ModelV1(weights=weights), fsync=False)
    assert (tmp_path / "short.arrow").read_bytes() == (tmp_path / "whole.arrow").read_bytes()


def pmd_mapped_fraction(path: Path) -> float:
    """The share of ``path``'s whole 2 MiB stretches that a fresh mapping maps with one page-table
    entry each (FilePmdMapped in /proc/self/smaps), after touching every page."""
    size = path.stat().st_size
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for i in range(0, size, 4096):
            m[i]
        pmd = 0
        inside = False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.endswith(str(path))
            elif inside and first == "FilePmdMapped:":
                pmd += int(line.split()[1]) * 1024
    return pmd / (size - size % WRITE_ALIGN)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_fresh_row_maps_in_huge_pages_where_the_kernel_caches_files_in_them(
    tmp_path: Path,
) -> None:
    # what the kernel does with any file written in 2 MiB-aligned runs: large folios need
    # Linux 6.16+ on ext4 (or XFS ...); elsewhere there is nothing to check
    reference = tmp_path / "reference.bin"
    with reference.open("wb") as f:
        for _ in range(16):
            f.write(os.urandom(WRITE_ALIGN))
    if pmd_mapped_fraction(reference) < 0.9:
        pytest.skip("this kernel or filesystem does not cache files in 2 MiB folios")
    path = tmp_path / "m.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights(many_tensors())), fsync=False)
    assert pmd_mapped_fraction(path) >= 0.9


def test_rows_of_one_layout_start_from_where_the_last_one_landed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[int] = []
    real = rowfile.row_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rowfile, "row_batch", counted)
    monkeypatch.setattr(rowfile, "_LANDED", {})

    def write(name: str, tensors: dict[str, torch.Tensor]) -> int:
        builds.clear()
        path = tmp_path / name
        write_model_row(path, ModelV1(weights=fetch_weights(tensors)), fsync=False)
        back = read_model_row(path, verify=True).weights
        assert all(t.data_ptr() % 64 == 0 for t in back.values())  # 64-byte aligned in the file
        assert back == fetch_weights(tensors)
        return len(builds)

    assert write("a.arrow", {"w": torch.randn(100)}) == 2  # planned from scratch: two passes
    assert write("b.arrow", {"w": torch.randn(100)}) == 1  # the same layout: the guess holds
    # a longer tensor table moves the blob: the guess is wrong, and the dry run corrects it
    assert write("c.arrow", {"w" * 300: torch.randn(100)}) == 2
    assert write("d.arrow", {"v" * 300: torch.randn(100)}) == 1
