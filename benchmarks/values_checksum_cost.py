"""What does the values checksum (format version 2) add to appending and verifying a small row?

Every row file stores ``modelrows_values_checksum``: XXH3-64 of a canonical encoding of its
schema identifier, column names and every value but the tensors (docs/format.md 2.3). A write
computes it once from the Arrow arrays it builds; ``verify=True`` reads recompute it. This
script measures what that adds where it weighs most, on small rows: ``Catalog.append`` of a
4 KB model row with 14 columns (strings, numbers, a list, a nested struct, a timestamp), with
the real checksum and, alternating with it (who goes first swaps every round), with a stand-in
that returns a constant; and ``Catalog.get(verify=True)`` of such a row, with and without the
values check. It prints each median, the median of the paired differences, and that as a share.

    PYTHONPATH=src python benchmarks/values_checksum_cost.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from modelrows import Catalog, ModelV1, Row, fetch_weights
from modelrows import _rowfile as rowfile_module


class RunConfigV1(Row, schema="bench-values.config", version=1):
    seed: int
    dropout: float
    widths: list[int]


class EvalRowV1(ModelV1, schema="bench-values.model", version=1):
    run: str
    epoch: int
    step: int
    accuracy: float
    loss: float
    lr: float
    commit: str | None = None
    tags: list[str]
    config: RunConfigV1
    started: dt.datetime
    finished: bool = False


REAL = rowfile_module._values_checksum


def _constant(qualified: str, columns: Any, index: int = 0) -> str:
    return "xxh3-64:0000000000000000"


def _verify_values_off(batch: Any, *, where: str) -> None:
    pass


REAL_VERIFY = rowfile_module.verify_values


def _paired(
    first: Callable[[], float], second: Callable[[], float], rounds: int
) -> tuple[float, float, float]:
    """Medians of ``first`` and ``second`` run alternately, and of their paired differences."""
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
    diff = statistics.median(x - y for x, y in zip(a, b, strict=True))
    return statistics.median(a), statistics.median(b), diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    weights = fetch_weights(nn.Linear(31, 32))  # 4 KB
    started = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)

    def row(epoch: int) -> EvalRowV1:
        return EvalRowV1(
            weights=weights, architecture_version=1, run="resnet-lr3e-4", epoch=epoch,
            step=epoch * 1000, accuracy=0.5 + epoch / 1e4, loss=1.0 / (epoch + 1), lr=3e-4,
            commit="0123abcd", tags=["baseline", "augment"],
            config=RunConfigV1(seed=7, dropout=0.1, widths=[64, 128, 256]), started=started,
        )  # fmt: skip

    print(f"{'operation':<28} {'fsync':>5} {'with':>9} {'without':>9} {'added':>9} {'share':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.create(Path(tmp) / "c", EvalRowV1, partition_by=["run"])
        epoch = [0]

        def append(checksum: Callable[..., str], fsync: bool) -> Callable[[], float]:
            def run() -> float:
                epoch[0] += 1
                r = row(epoch[0])
                rowfile_module._values_checksum = checksum  # type: ignore[assignment]
                try:
                    start = time.perf_counter()
                    catalog.append(r, fsync=fsync)
                    return time.perf_counter() - start
                finally:
                    rowfile_module._values_checksum = REAL

            return run

        for fsync in (False, True):
            rounds = args.rounds if not fsync else max(20, args.rounds // 5)
            with_, without, added = _paired(append(REAL, fsync), append(_constant, fsync), rounds)
            print(f"{'Catalog.append, 4 KB row':<28} {fsync!s:>5} {with_ * 1e3:>7.3f}ms "
                  f"{without * 1e3:>7.3f}ms {added * 1e3:>7.3f}ms {added / with_:>7.1%}")  # fmt: skip

        row_id = catalog.append(row(0), fsync=False)

        def get(check: Callable[..., None]) -> Callable[[], float]:
            def run() -> float:
                rowfile_module.verify_values = check  # type: ignore[assignment]
                try:
                    start = time.perf_counter()
                    catalog.get(row_id, verify=True)
                    return time.perf_counter() - start
                finally:
                    rowfile_module.verify_values = REAL_VERIFY

            return run

        with_, without, added = _paired(get(REAL_VERIFY), get(_verify_values_off), args.rounds)
        print(f"{'Catalog.get(verify=True)':<28} {'':>5} {with_ * 1e3:>7.3f}ms "
              f"{without * 1e3:>7.3f}ms {added * 1e3:>7.3f}ms {added / with_:>7.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
