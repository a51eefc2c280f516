"""Retention: the best k per group, the latest n, every aliased row; the rest deleted at once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from modelrows import Catalog, CatalogError, ModelV1, fetch_weights


class EpochRowV1(ModelV1, schema="test.retention.epoch", version=1):
    run: str
    seed: int
    epoch: int
    accuracy: float | None = None
    loss: float | None = None


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.create(tmp_path / "c", EpochRowV1, partition_by=["run"])


def fill(catalog: Catalog, run: str, accuracies: list[float | None], seed: int = 0) -> list[str]:
    """One row per epoch, oldest first; loss = 1 - accuracy."""
    rows = []
    for epoch, acc in enumerate(accuracies):
        loss = None if acc is None else 1.0 - acc
        weights = fetch_weights({"w": torch.tensor([float(epoch)])})
        rows.append(EpochRowV1(weights=weights, run=run, seed=seed, epoch=epoch, accuracy=acc,
                               loss=loss))  # fmt: skip
    return catalog.append_many(rows)


def epochs(catalog: Catalog, run: str) -> list[int]:
    found = catalog.sql(f"SELECT epoch FROM models WHERE run = '{run}' ORDER BY epoch").fetchall()
    return [e for (e,) in found]


def test_top_k_per_partition_plus_the_latest(catalog: Catalog) -> None:
    a = fill(catalog, "a", [0.5, 0.9, 0.7, 0.8, 0.6])
    b = fill(catalog, "b", [0.2, 0.1, 0.3])
    deleted = catalog.retain(by="accuracy", keep_top_k=2, keep_last=1)
    assert deleted == sorted([a[0], a[2], b[1]])
    assert epochs(catalog, "a") == [1, 3, 4]  # 0.9, 0.8 and the latest
    assert epochs(catalog, "b") == [0, 2]  # 0.3 (also the latest), 0.2
    assert catalog.retain(by="accuracy", keep_top_k=2, keep_last=1) == []  # a fixed point
    for row_id in deleted:  # their files are gone too
        assert list(catalog.root.glob(f"run=*/{row_id}.*")) == []
    assert catalog.verify() == []


def test_min_mode_and_nulls_and_nans_rank_last(catalog: Catalog) -> None:
    fill(catalog, "a", [None, 0.5, math.nan, 0.7, 0.6, None])
    catalog.retain(by="loss", mode="min", keep_top_k=2)
    assert epochs(catalog, "a") == [3, 4]  # losses 0.3 and 0.4; null and NaN rank last
    fill(catalog, "n", [None, 0.5, math.nan, None])
    catalog.retain(by="accuracy", keep_top_k=3, where="run = 'n'")
    assert epochs(catalog, "n") == [0, 1, 2]  # 0.5, then the unranked, earliest first


def test_ties_go_to_the_earliest_row(catalog: Catalog) -> None:
    fill(catalog, "a", [0.5, 0.9, 0.9, 0.9, 0.1])
    catalog.retain(by="accuracy", keep_top_k=2)
    assert epochs(catalog, "a") == [1, 2]


def test_keep_last_alone_and_keep_nothing_but_aliases(catalog: Catalog) -> None:
    ids = fill(catalog, "a", [0.1, 0.2, 0.3, 0.4])
    assert catalog.retain(keep_last=2) == ids[:2]
    catalog.alias("production", ids[2])
    assert catalog.retain(by="accuracy", keep_top_k=0, keep_last=0) == [ids[3]]
    assert epochs(catalog, "a") == [2]


def test_per_any_grouping_and_where(catalog: Catalog) -> None:
    fill(catalog, "a", [0.5, 0.9, 0.7], seed=1)
    fill(catalog, "b", [0.8, 0.6, 0.4], seed=1)
    fill(catalog, "c", [0.3, 0.2], seed=2)
    catalog.retain(by="accuracy", keep_top_k=2, per=["seed"], dry_run=False)
    assert (epochs(catalog, "a"), epochs(catalog, "b"), epochs(catalog, "c")) == ([1], [0], [0, 1])
    catalog.retain(by="accuracy", keep_top_k=1, per=[], where="seed = 1 OR run = 'c'")
    assert (epochs(catalog, "a"), epochs(catalog, "b"), epochs(catalog, "c")) == ([1], [], [])
    assert len(catalog) == 1


def test_aliased_rows_are_never_deleted(catalog: Catalog) -> None:
    ids = fill(catalog, "a", [0.1, 0.9, 0.2, 0.3])
    catalog.alias("worst", ids[0])
    catalog.alias("run=a/third", ids[2])
    catalog.retain(by="accuracy", keep_top_k=1)
    assert epochs(catalog, "a") == [0, 1, 2]
    catalog.unalias("worst")
    assert catalog.retain(by="accuracy", keep_top_k=1) == [ids[0]]


def test_dry_run_deletes_nothing(catalog: Catalog) -> None:
    ids = fill(catalog, "a", [0.1, 0.9, 0.2])
    assert catalog.retain(by="accuracy", keep_top_k=1, dry_run=True) == [ids[0], ids[2]]
    assert len(catalog) == 3
    assert catalog.retain(by="accuracy", keep_top_k=1) == [ids[0], ids[2]]
    assert len(catalog) == 1


def test_one_retention_is_one_atomic_delete(catalog: Catalog) -> None:
    fill(catalog, "a", [0.1 * i for i in range(10)])
    log = catalog.root / "_index" / "log"
    before = {p.name for p in log.iterdir()}
    assert len(catalog.retain(by="accuracy", keep_top_k=3)) == 7
    new = {p.name for p in log.iterdir()} - before
    assert len(new) == 1 and next(iter(new)).endswith(".del.ipc")


def test_what_retention_cannot_do_is_refused(catalog: Catalog) -> None:
    fill(catalog, "a", [0.1])
    cases = [
        (
            {"by": "accuracy"},
            "retain keeps the keep_top_k best rows, the keep_last latest, or both",
        ),
        ({"by": "accuracy", "keep_top_k": 1, "mode": "best"}, "mode is 'max' or 'min', not 'best'"),
        ({"keep_top_k": 1}, "keep_top_k ranks rows by a column: give by='<column>'"),
        ({"by": "acc", "keep_top_k": 1}, "cannot rank by 'acc': not a column of"),
        ({"by": "weights", "keep_top_k": 1}, "cannot rank by 'weights': not a column of"),
        ({"by": "accuracy", "keep_top_k": -1}, "keep_top_k is a whole number >= 0 or None"),
        ({"by": "accuracy", "keep_last": True}, "keep_last is a whole number >= 0 or None"),
        ({"keep_last": 1, "per": "run"}, r"per takes a list of column names, e.g. per=\['run'\]"),
        ({"keep_last": 1, "per": ["nope"]}, "cannot group by 'nope': not a column"),
        ({"keep_last": 1, "where": "no_such_column > 1"}, "bad where condition"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CatalogError, match=message):
            catalog.retain(**kwargs)  # type: ignore[arg-type]
    assert len(catalog) == 1
