"""What share of an append is spent computing the weights' checksum (XXH3-64 over tensor bytes)?

Times ``Catalog.append`` of fresh weights (whose checksum is not yet known, as after
``fetch_weights``) and, within the same appends, the time spent in ``checksum_of``, for models
from 1 MB to 256 MB, with and without fsync. Prints, per case, the fastest of several appends
and the fastest checksum (the least disturbed by other work on the machine), and their ratio.

    PYTHONPATH=src python benchmarks/checksum_cost.py
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modelrows import Catalog, ModelV1, fetch_weights
from modelrows import weights as weights_module

SIZES_MB = [1, 16, 64, 256]
REPEATS = 9


def timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    return wrapper


def main() -> None:
    real = weights_module.checksum_of
    print(f"{'model':>8} {'fsync':>6} {'append ms':>10} {'checksum ms':>12} {'share':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.create(Path(tmp) / "c", ModelV1)
        for mb in SIZES_MB:
            state = {f"layer{i}": torch.randn(mb * 2**18 // 4) for i in range(4)}  # 4 tensors
            for fsync in (True, False):
                totals, checksums = [], []
                for _ in range(REPEATS):
                    w = fetch_weights(state)  # fresh: its checksum is computed by the append
                    spent: list[float] = []
                    weights_module.checksum_of = timed(real, spent)
                    try:
                        start = time.perf_counter()
                        catalog.append(ModelV1(weights=w), fsync=fsync)
                        totals.append(time.perf_counter() - start)
                    finally:
                        weights_module.checksum_of = real
                    checksums.append(sum(spent))
                total, checksum = min(totals), min(checksums)
                print(f"{mb:>5} MB {fsync!s:>6} {total * 1000:>10.1f} {checksum * 1000:>12.2f} "
                      f"{checksum / total:>7.1%}")  # fmt: skip
                for path in catalog._row_files().values():  # keep the disk small
                    path.unlink()


if __name__ == "__main__":
    main()
