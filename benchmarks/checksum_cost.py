"""What share of an append does computing the weights' checksum (XXH3-64 over tensor bytes) cost?

A write hashes each chunk of tensor bytes as it streams it to the file (on a second thread for
rows of 8 MB and more), so the checksum's cost is the time it adds to an append. This script
measures exactly that: ``Catalog.append`` of fresh weights with the real hash and, alternating
with it, with a hash that does nothing, for models of 1 MB to 256 MB, with and without fsync.
It prints the median of each, the median paired difference as a share of the real append, and the CPU time
spent hashing (which a second core hides).

    PYTHONPATH=src python benchmarks/checksum_cost.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from modelrows import Catalog, ModelV1, fetch_weights
from modelrows import _blob as blob_module

SIZES_MB = [1, 16, 64, 256]
REPEATS = 15


class NoHash:
    """Stands in for the hash: does nothing, returns a checksum of the right shape."""

    def update(self, data: Any) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 16


class TimedHash:
    """The real hash, recording the time its updates take (on whichever thread runs them)."""

    spent: ClassVar[list[float]] = []

    def __init__(self) -> None:
        self.h = REAL()

    def update(self, data: Any) -> None:
        start = time.perf_counter()
        self.h.update(data)
        TimedHash.spent.append(time.perf_counter() - start)

    def hexdigest(self) -> str:
        return str(self.h.hexdigest())


REAL = blob_module._new_hasher


def main() -> None:
    print(f"{'model':>8} {'fsync':>6} {'append ms':>10} {'no-hash ms':>11} {'added ms':>9} "
          f"{'share':>7} {'hash CPU ms':>12}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.create(Path(tmp) / "c", ModelV1)
        for mb in SIZES_MB:
            state = {f"layer{i}": torch.randn(mb * 2**18 // 4) for i in range(4)}  # 4 tensors
            for fsync in (True, False):
                times: dict[str, list[float]] = {"real": [], "none": []}
                cpu: list[float] = []
                for rep in range(REPEATS):
                    kinds = [("real", TimedHash), ("none", NoHash)]
                    for kind, hasher in kinds if rep % 2 else kinds[::-1]:  # alternate who is first
                        TimedHash.spent = []
                        blob_module._new_hasher = hasher  # type: ignore[assignment]
                        try:
                            w = fetch_weights(state)  # fresh: the append computes its checksum
                            start = time.perf_counter()
                            catalog.append(ModelV1(weights=w), fsync=fsync)
                            times[kind].append(time.perf_counter() - start)
                        finally:
                            blob_module._new_hasher = REAL
                        if kind == "real":
                            cpu.append(sum(TimedHash.spent))
                        for path in catalog._row_files().values():  # keep the disk small
                            path.unlink()
                real, none = statistics.median(times["real"]), statistics.median(times["none"])
                # median of the paired differences: each real append against the one next to it
                added = statistics.median(
                    r - n for r, n in zip(times["real"], times["none"], strict=True)
                )
                print(f"{mb:>5} MB {fsync!s:>6} {real * 1000:>10.1f} {none * 1000:>11.1f} "
                      f"{added * 1000:>9.2f} {added / real:>7.1%} "
                      f"{statistics.median(cpu) * 1000:>12.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
