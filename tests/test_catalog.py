"""The catalog: appends, partitions, Polars and DuckDB queries, best/get/rows, reopening."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pytest
import torch
import torch.nn as nn

from modelrows import (
    Catalog,
    CatalogError,
    ModelV1,
    Row,
    RowFileError,
    RowNotFoundError,
    fetch_weights,
    load_weights,
)
from modelrows._catalog import new_row_id


class ConfigV1(Row, schema="cat.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0


class RunRowV1(ModelV1, schema="cat.model", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    commit_sha: str | None = None
    config: ConfigV1 | None = None


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def row(run: str, epoch: int, accuracy: float | None, seed: int = 0) -> RunRowV1:
    return RunRowV1(
        weights=fetch_weights(model(seed)), run=run, epoch=epoch, accuracy=accuracy,
        commit_sha=f"sha{epoch}", config=ConfigV1(seed=seed),
    )  # fmt: skip


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.create(tmp_path / "cat", RunRowV1, partition_by=["run"])


def filled(catalog: Catalog) -> dict[str, tuple[str, int, float]]:
    ids = {}
    for run, accs in {"a": [0.5, 0.7, 0.6], "b": [0.4, 0.9, 0.8]}.items():
        for epoch, acc in enumerate(accs):
            ids[catalog.append(row(run, epoch, acc, seed=epoch))] = (run, epoch, acc)
    return ids


def test_appends_land_in_partitions_as_one_file_each(catalog: Catalog) -> None:
    ids = filled(catalog)
    assert len(catalog) == 6
    assert len(set(ids)) == 6
    files = sorted(p.relative_to(catalog.root).as_posix() for p in catalog.root.rglob("*.arrow"))
    assert [f.split("/")[0] for f in files] == ["run=a"] * 3 + ["run=b"] * 3
    assert all(f.endswith(".cat.model.arrow") for f in files)
    meta = json.loads((catalog.root / "_modelrows_catalog.json").read_text())
    assert meta["schema"] == "cat.model@1>modelrows.model@1"
    assert meta["partition_by"] == ["run"]


def test_row_ids_are_unique_and_time_ordered() -> None:
    ids = [new_row_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_scan_and_sql_agree(catalog: Catalog) -> None:
    ids = filled(catalog)
    lf = catalog.scan()
    assert isinstance(lf, pl.LazyFrame)
    assert lf.collect_schema().names() == [
        "row_id", "written_at", "architecture_version", "run", "epoch", "accuracy",
        "commit_sha", "config",
    ]  # fmt: skip
    by_polars = (
        lf.filter(pl.col("run") == "b").sort("accuracy", descending=True)
        .select("row_id", "epoch", "accuracy").collect().rows()
    )  # fmt: skip
    by_duckdb = catalog.sql(
        "SELECT row_id, epoch, accuracy FROM models WHERE run = 'b' ORDER BY accuracy DESC"
    ).fetchall()
    assert by_polars == by_duckdb
    assert [r[1:] for r in by_duckdb] == [(1, 0.9), (2, 0.8), (0, 0.4)]
    assert {r[0] for r in by_duckdb} == {i for i, v in ids.items() if v[0] == "b"}
    cfg = catalog.sql("SELECT config.seed FROM models WHERE epoch = 2 ORDER BY run").fetchall()
    assert cfg == [(2,), (2,)]
    assert "weights" in catalog.scan(weights=True).collect_schema().names()
    assert isinstance(catalog.dataset(), ds.Dataset)


def test_best_get_and_rows(catalog: Catalog) -> None:
    ids = filled(catalog)
    best = catalog.best("accuracy")
    assert isinstance(best, RunRowV1)
    assert (best.run, best.epoch, best.accuracy) == ("b", 1, 0.9)
    assert ids[best.row_id] == ("b", 1, 0.9)
    worst = catalog.best("accuracy", descending=False)
    assert worst is not None
    assert worst.accuracy == 0.4
    best_a = catalog.best("accuracy", where="run = 'a'")
    assert best_a is not None
    assert (best_a.run, best_a.epoch) == ("a", 1)
    assert catalog.best("accuracy", where="run = 'nope'") is None

    fresh = model(1)
    load_weights(fresh, best.weights)
    assert torch.equal(fresh[0].weight, model(1)[0].weight)

    some_id = next(iter(ids))
    got = catalog.get(some_id, verify=True)
    assert (got.run, got.epoch, got.accuracy) == ids[some_id]
    assert got.config == ConfigV1(seed=got.epoch)
    with pytest.raises(RowNotFoundError, match="no row 'NOPE' in the catalog at"):
        catalog.get("NOPE")

    epochs = [(r.run, r.epoch) for r in catalog.rows(where="epoch >= 1")]
    assert epochs == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]  # oldest first
    assert len(list(catalog.rows())) == 6


def test_best_ignores_nulls_and_rejects_unknown_columns(catalog: Catalog) -> None:
    catalog.append(row("a", 0, None))
    catalog.append(row("a", 1, 0.3))
    best = catalog.best("accuracy")
    assert best is not None
    assert best.accuracy == 0.3
    with pytest.raises(CatalogError, match="cannot rank by 'loss': not a column"):
        catalog.best("loss")
    with pytest.raises(CatalogError, match="cannot rank by 'weights'"):
        catalog.best("weights")


@pytest.mark.parametrize(
    "value",
    ["a/b", "x=y", "with space", "ünïcödé ✓", "..", "100%", "a\\b", "_under", ".dot", "?#&"],
)
def test_partition_values_with_odd_characters_roundtrip(catalog: Catalog, value: str) -> None:
    row_id = catalog.append(row(value, 1, 0.5))
    assert catalog.get(row_id).run == value
    assert catalog.scan().select("run").collect().item() == value
    assert catalog.sql("SELECT run FROM models").fetchall() == [(value,)]
    assert catalog.sql(
        f"SELECT count(*) FROM models WHERE run = '{value.replace(chr(39), '')}'"
    ).fetchall() == [(1,)]
    (directory,) = [p for p in catalog.root.iterdir() if p.is_dir() and p.name != "_index"]
    assert directory.name.startswith("run=")
    assert "/" not in directory.name[4:]


def test_refused_rows_write_nothing(catalog: Catalog, tmp_path: Path) -> None:
    class OtherV1(ModelV1, schema="cat.other", version=1):
        run: str

    other = OtherV1(weights=fetch_weights(model(0)), run="a")
    with pytest.raises(CatalogError) as info:
        catalog.append(other)
    assert str(info.value) == (
        f"{catalog.root} holds cat.model@1>modelrows.model@1 rows; refusing a row of "
        "cat.other@1>modelrows.model@1"
    )
    with pytest.raises(CatalogError, match="partition field 'run' is empty"):
        catalog.append(row("", 0, 0.1))
    with pytest.raises(CatalogError, match="partition value of 'run' is too long"):
        catalog.append(row("x" * 300, 0, 0.1))
    assert len(catalog) == 0
    assert sorted(p.name for p in catalog.root.iterdir()) == ["_index", "_modelrows_catalog.json"]
    assert [p.name for p in (catalog.root / "_index").rglob("*") if p.is_file()] == [
        "00000000000000000000.json"
    ]  # the empty index Catalog.create publishes; no entry


def test_null_partition_value_is_refused(tmp_path: Path) -> None:
    cat = Catalog.create(tmp_path / "c", RunRowV1, partition_by=["epoch"])
    with pytest.raises(CatalogError, match="partition field 'epoch' is None"):
        cat.append(RunRowV1(weights=fetch_weights(model(0)), run="a"))
    rid = cat.append(row("a", 7, 0.1))
    assert cat.get(rid).epoch == 7
    assert cat.scan().select("epoch").collect().item() == 7


def test_append_many_is_all_or_nothing_on_refusal(catalog: Catalog) -> None:
    ids = catalog.append_many([row("a", 0, 0.1), row("b", 0, 0.2)])
    assert len(ids) == 2
    assert len(catalog) == 2
    with pytest.raises(CatalogError, match="is empty"):
        catalog.append_many([row("a", 1, 0.3), row("", 1, 0.3)])
    assert len(catalog) == 2


def test_create_and_open_rules(tmp_path: Path) -> None:
    root = tmp_path / "c"
    Catalog.create(root, RunRowV1, partition_by=["run"])
    assert Catalog.create(root, RunRowV1, partition_by=["run"]).partition_by == ("run",)
    with pytest.raises(
        CatalogError,
        match=r"already holds a catalog of cat.model@1>modelrows.model@1 partitioned by \['run'\]",
    ):
        Catalog.create(root, RunRowV1, partition_by=[])
    with pytest.raises(CatalogError, match="no catalog at"):
        Catalog.open(tmp_path / "nowhere")
    with pytest.raises(CatalogError, match="RunRowV1 has no such field"):
        Catalog.create(tmp_path / "d", RunRowV1, partition_by=["loss"])
    with pytest.raises(CatalogError, match="partition fields must be str or int"):
        Catalog.create(tmp_path / "d", RunRowV1, partition_by=["accuracy"])
    with pytest.raises(CatalogError, match="a catalog holds rows of a declared row class"):
        Catalog.create(tmp_path / "d", Row)  # Row itself declares no schema
    plain = Catalog.create(tmp_path / "plain", ConfigV1)  # rows without weights are rows too
    assert plain.get(plain.append(ConfigV1(seed=3))).seed == 3
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CatalogError, match="is not empty and holds no catalog"):
        Catalog.create(busy, RunRowV1)
    (root / "_modelrows_catalog.json").write_text("{not json")
    with pytest.raises(CatalogError, match="is not a valid catalog description"):
        Catalog.open(root)


def test_empty_catalog_queries_return_empty_results(catalog: Catalog) -> None:
    assert len(catalog) == 0
    frame = catalog.scan().collect()
    assert frame.height == 0
    assert "accuracy" in frame.columns
    rel = catalog.sql("SELECT run, accuracy FROM models")
    assert rel.columns == ["run", "accuracy"]
    assert rel.fetchall() == []
    assert catalog.best("accuracy") is None
    assert list(catalog.rows()) == []


def test_a_relation_answers_from_the_catalog_as_it_was_when_sql_was_called(
    catalog: Catalog,
) -> None:
    """A relation is lazy: one fetched after later appends and later sql() calls still answers
    from its own snapshot (each call registers ``models`` in a cursor of its own)."""
    ids = filled(catalog)
    before = catalog.sql("SELECT count(*) FROM models")
    newest = catalog.sql("SELECT max(epoch) FROM models")
    catalog.append(row("c", 9, 0.1), fsync=False)
    after = catalog.sql("SELECT count(*) FROM models")
    assert after.fetchall() == [(len(ids) + 1,)]
    assert before.fetchall() == [(len(ids),)]
    assert newest.fetchall() == [(max(epoch for _, epoch, _ in ids.values()),)]


def test_non_row_files_are_ignored(catalog: Catalog) -> None:
    filled(catalog)
    (catalog.root / "README.md").write_text("about this catalog")
    (catalog.root / "run=a" / "notes.txt").write_text("x")
    (catalog.root / "run=a" / ".hidden.arrow").write_bytes(b"garbage")
    (catalog.root / "run=a" / "_scratch.arrow").write_bytes(b"garbage")
    (catalog.root / "run=a" / ".01ABC.cat.model.arrow.123-abc.tmp").write_bytes(b"partial")
    assert len(catalog) == 6
    assert catalog.scan().collect().height == 6
    assert catalog.sql("SELECT count(*) FROM models").fetchall() == [(6,)]


def test_vacuum_leaves_a_young_temporary_file_of_another_machine_alone(catalog: Catalog) -> None:
    """On a file system shared between machines, a temporary file's pid says nothing here: one
    whose host tag is another machine's is removed only once older than ``older_than`` (its
    writer may be writing it now), while one of this machine's whose process is gone goes at
    once. Without the tag, the other machine's live writer lost its file to any vacuum."""
    from modelrows._format import host_tag

    filled(catalog)
    part = catalog.root / "run=a"
    dead = 4194303  # above any pid Linux hands out: no such process here
    other = "0badf00d" if host_tag() != "0badf00d" else "0badf00e"
    theirs = part / f".01ABC.cat.model.arrow.{dead}-{other}-0123456789ab.tmp"
    ours = part / f".01ABD.cat.model.arrow.{dead}-{host_tag()}-0123456789ab.tmp"
    for leftover in (theirs, ours):
        leftover.write_bytes(b"half a row")
    removed = catalog.vacuum(older_than=3600.0)
    assert ours in removed and not ours.exists()
    assert theirs not in removed and theirs.exists()
    os.utime(theirs, (time.time() - 7200, time.time() - 7200))
    assert theirs in catalog.vacuum(older_than=3600.0) and not theirs.exists()
    assert len(catalog) == 6


def test_a_fresh_process_queries_without_the_row_class(catalog: Catalog) -> None:
    ids = filled(catalog)
    best_id = max(ids, key=lambda i: ids[i][2])
    code = (
        "import sys; from modelrows import Catalog\n"
        "c = Catalog.open(sys.argv[1])\n"
        "print(len(c), c.sql('SELECT max(accuracy) FROM models').fetchall()[0][0])\n"
        "r = c.best('accuracy')\n"
        "print(type(r).__name__, r.row_id, r.run, r.epoch, r.config['seed'], len(r.weights))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(catalog.root)], capture_output=True, text=True,
        check=True, env=env,
    ).stdout.split()  # fmt: skip
    assert out == ["6", "0.9", "ModelV1", best_id, "b", "1", "1", "7"]


def test_reopened_catalog_loads_the_best_model_into_a_fresh_model(catalog: Catalog) -> None:
    filled(catalog)
    again = Catalog.open(catalog.root)
    assert again.row_class is RunRowV1
    best = again.best("accuracy")
    assert best is not None
    net = model(123)
    load_weights(net, best.weights)
    reference = model(best.config.seed)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(net.state_dict()[name], tensor)


def test_duckdb_returns_written_at_as_aware_datetimes(catalog: Catalog) -> None:
    row_id = catalog.append(row("a", 0, 0.5))
    ((got_id, written_at),) = catalog.sql("SELECT row_id, written_at FROM models").fetchall()
    assert got_id == row_id
    assert written_at.tzinfo is not None
    assert written_at == catalog.get(row_id).written_at


def test_a_row_file_removed_by_hand_is_reported_and_dropped_by_reindex(catalog: Catalog) -> None:
    ids = filled(catalog)
    gone = next(iter(ids))
    path = catalog.path_of(gone)
    path.unlink()  # e.g. a clean-up of old epochs by hand, bypassing catalog.delete
    assert len(catalog.scan().collect()) == 6  # queries read the index, not the files
    with pytest.raises(RowFileError, match="the row file is gone"):
        catalog.get(gone)
    assert [(r.row_id, r.path) for r in catalog.verify()] == [(gone, path)]
    assert catalog.reindex() == 5
    assert len(catalog) == 5
    assert gone not in catalog.scan().collect()["row_id"].to_list()
    assert catalog.verify() == []


def test_queries_and_get_never_list_the_partition_directories(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [catalog.append(row(f"r{i % 4}", i, i / 10)) for i in range(12)]
    listed: list[str] = []
    real = os.scandir

    def spy(path: os.PathLike[str] | str) -> object:
        listed.append(str(path))
        return real(path)

    fresh = Catalog.open(catalog.root)
    assert len(fresh) == 12
    other = Catalog.open(catalog.root).append(row("r9", 99, 0.5))  # another writer's row
    monkeypatch.setattr(os, "scandir", spy)  # (an append may tidy its own partition directory)
    assert [fresh.get(i).epoch for i in ids] == list(range(12))
    assert len(fresh) == 13
    assert fresh.best("accuracy").epoch == 11
    assert fresh.get(other).epoch == 99  # seen at once
    assert listed  # the index was listed ...
    assert all("_index" in p for p in listed)  # ... and nothing else


def test_get_never_follows_a_row_file_that_became_a_symlink(catalog: Catalog) -> None:
    kept, swapped = (catalog.append(row("r", i, 0.1)) for i in range(2))
    path = catalog.path_of(swapped)
    target = path.with_name("elsewhere.bin")
    path.rename(target)
    path.symlink_to(target)
    with pytest.raises(RowFileError, match="is a symbolic link"):
        catalog.get(swapped)
    assert catalog.get(kept).epoch == 0


def test_plain_duckdb_reads_the_compacted_index(catalog: Catalog) -> None:
    """docs/format.md, 6.4: a compacted index needs nothing but a Parquet reader."""
    import duckdb

    ids = filled(catalog)
    catalog.delete([i for i, (run, epoch, _) in ids.items() if (run, epoch) == ("b", 0)])
    catalog.compact()
    glob = str(catalog.root / "_index" / "segments" / "*.parquet")
    best = duckdb.sql(
        f"SELECT row_id, run, epoch, accuracy, _path FROM read_parquet('{glob}') "
        "ORDER BY accuracy DESC LIMIT 1"
    ).fetchall()
    expected = catalog.best("accuracy")
    assert best == [(expected.row_id, expected.run, expected.epoch, expected.accuracy, best[0][4])]
    assert (catalog.root / best[0][4]).is_file()
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()
    assert count == [(len(catalog),)] == [(5,)]
