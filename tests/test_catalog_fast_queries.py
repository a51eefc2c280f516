"""The short cuts queries take (benchmarks/index.py measures them) give what the long way gives.

- ``best`` of a numeric column without ``where`` ranks in Arrow, without starting DuckDB: the same
  row as the SQL ranking (``where="TRUE"`` takes that), with nulls, NaN, -0.0 and ties.
- ``len`` reads the count from the newest manifest when it describes every row, and the index
  otherwise: the number of rows ``scan`` sees, in every state of the index.
- ``get`` reads only the row id and path columns of the one row group that can hold the id.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from modelrows import Catalog, CatalogError, ModelV1


class FastRowV1(ModelV1, schema="test.fast", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    loss: float | None = None


def row(
    run: str, epoch: int | None, accuracy: float | None, loss: float | None = None
) -> FastRowV1:
    return FastRowV1(
        weights={"w": torch.full((4,), float(epoch or 0))},
        run=run,
        epoch=epoch,
        accuracy=accuracy,
        loss=loss,
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.create(tmp_path / "c", FastRowV1, partition_by=["run"])


TRICKY = [None, math.nan, -0.0, 0.0, 1.5, 1.5, -math.inf, math.inf, 0.25]


@pytest.mark.parametrize("seed", range(6))
def test_best_without_where_ranks_as_the_sql_does(catalog: Catalog, seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.choice(TRICKY) for _ in range(30)]
    epochs = [rng.choice([None, 1, 2, 2, 3, -4]) for _ in range(30)]
    rows = [row(f"r{i % 3}", e, v, loss=rng.choice(TRICKY)) for i, (v, e) in enumerate(zip(values, epochs, strict=True))]  # fmt: skip
    catalog.append_many(rows[:20], fsync=False)
    catalog.compact()
    catalog.append_many(rows[20:], fsync=False)  # some in a segment, some in the log
    for by in ("accuracy", "loss", "epoch"):
        for descending in (True, False):
            fast = catalog.best(by, descending=descending)
            sql = catalog.best(by, descending=descending, where="TRUE")
            assert (fast and fast.row_id) == (sql and sql.row_id), (by, descending)


def test_best_of_a_catalog_without_values_is_none(catalog: Catalog) -> None:
    assert catalog.best("accuracy") is None
    catalog.append_many([row("a", 1, None), row("a", 2, math.nan)], fsync=False)
    assert catalog.best("accuracy") is None
    assert catalog.best("accuracy", descending=False) is None
    best = catalog.best("epoch", descending=False)
    assert best is not None and best.epoch == 1


def test_len_agrees_with_scan_in_every_state_of_the_index(catalog: Catalog) -> None:
    def check() -> None:
        fresh = Catalog.open(catalog.root)
        assert len(fresh) == len(catalog) == fresh.scan().collect().height

    check()  # empty
    ids = catalog.append_many([row("a", i, 0.1 * i) for i in range(10)], fsync=False)
    check()  # rows in the log only
    catalog.compact()
    check()  # all in a segment: the count comes from the manifest
    catalog.delete(ids[:3], fsync=False)
    check()  # a delete entry in the log
    catalog.compact(full=False)
    check()  # deletes recorded in the manifest
    catalog.append(row("b", 99, 0.5), fsync=False)
    check()
    catalog.compact()
    check()
    assert len(catalog) == 8


def test_len_refuses_a_damaged_segment_without_parsing_it(catalog: Catalog) -> None:
    catalog.append_many([row("a", i, 0.1) for i in range(5)], fsync=False)
    catalog.compact()
    [segment] = [catalog.root / key for key in catalog.index_files()]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(CatalogError, match="the index file is damaged"):
        len(Catalog.open(catalog.root))


def test_get_finds_rows_in_every_row_group_and_in_the_log(catalog: Catalog) -> None:
    from modelrows._catalog import _index

    ids = catalog.append_many([row(f"r{i % 4}", i, 0.01 * i) for i in range(200)], fsync=False)
    group = _index._ROW_GROUP
    _index._ROW_GROUP = 16  # many row groups in the segment
    try:
        catalog.compact()
    finally:
        _index._ROW_GROUP = group
    late = catalog.append(row("r9", 1000, 0.5), fsync=False)
    for row_id, epoch in [*zip(ids, range(200), strict=True), (late, 1000)]:
        got = Catalog.open(catalog.root).get(row_id)  # fresh: nothing cached
        assert got.row_id == row_id and got.epoch == epoch
        assert Catalog.open(catalog.root).path_of(row_id).name.startswith(row_id)
