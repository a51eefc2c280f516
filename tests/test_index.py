"""The catalog index's protocol, step by step (src/modelrows/_catalog/_index.py): racing
compactors, readers that lose a manifest or a log entry under them, automatic compaction,
deletes that are all or nothing, and reindex restoring a lost or damaged index.

The races are made deterministic by interleaving: a store primitive of one catalog object is
wrapped so that another catalog object (another "process" on the same files) acts at exactly the
instant under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import workers
from modelrows import Catalog, CatalogError, ModelV1, RowNotFoundError, fetch_weights
from modelrows._catalog import _index
from modelrows._catalog._index import LOG, MANIFESTS, SEGMENTS


class IndexRowV1(ModelV1, schema="index.unit", version=1):
    run: str
    epoch: int
    accuracy: float | None = None


def row(epoch: int, run: str = "a") -> IndexRowV1:
    weights = fetch_weights({"w": torch.full((4,), float(epoch))})
    return IndexRowV1(weights=weights, run=run, epoch=epoch, accuracy=epoch / 100)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    Catalog.create(tmp_path / "c", IndexRowV1, partition_by=["run"])
    return tmp_path / "c"


def fill(catalog: Catalog, epochs: range, run: str = "a") -> list[str]:
    return [catalog.append(row(e, run), fsync=False) for e in epochs]


def answers(catalog: Catalog) -> dict[str, Any]:
    """What the queries a user runs answer: every row's columns, len, scan, sql, best, get."""
    table = catalog.index_table()
    ids = sorted(table.column("row_id").to_pylist())
    best = catalog.best("accuracy")
    return {
        "rows": sorted(
            zip(
                table.column("row_id").to_pylist(),
                table.column("run").to_pylist(),
                table.column("epoch").to_pylist(),
                table.column("_path").to_pylist(),
                strict=True,
            )
        ),
        "len": len(catalog),
        "scan": sorted(catalog.scan().select("row_id").collect()["row_id"].to_list()),
        "sql": catalog.sql(
            "SELECT run, count(*), sum(epoch) FROM models GROUP BY run ORDER BY run"
        ).fetchall(),
        "best": None if best is None else best.row_id,  # type: ignore[attr-defined]
        "get": [catalog.get(i).epoch for i in ids],  # type: ignore[attr-defined]
    }


def keys(root: Path, prefix: str) -> list[str]:
    base = root / prefix
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def live_ids(catalog: Catalog) -> list[str]:
    return sorted(catalog.index_table().column("row_id").to_pylist())


def intercept(
    monkeypatch: pytest.MonkeyPatch, obj: object, name: str, before: Callable[..., bool]
) -> list[int]:
    """Wrap ``obj.name`` so that ``before(*args)`` runs first; it returns whether it acted (it
    acts once). Returns a list that counts the wrapped calls."""
    real = getattr(obj, name)
    calls = [0]
    acted = [False]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if not acted[0]:
            acted[0] = before(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


# -- compactors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("full", [True, False], ids=["full", "fold"])
def test_two_compactors_race_one_wins_and_the_loser_leaves_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch, full: bool
) -> None:
    loser, winner = Catalog.open(root), Catalog.open(root)
    ids = fill(loser, range(6))
    loser.delete([ids[0]], fsync=False)
    before = answers(Catalog.open(root))
    won: list[bool] = []

    def race(key: str, *args: Any, **kwargs: Any) -> bool:
        if not key.startswith(MANIFESTS):
            return False  # the loser's segment: written; now the winner publishes first
        won.append(winner.compact(full=full, fsync=False))
        return True

    intercept(monkeypatch, loser.store, "put_if_absent", race)
    assert loser.compact(full=full, fsync=False) is False
    assert won == [True]
    winning = Catalog.open(root)._index.latest()
    assert winning is not None and winning.sequence == 1 and len(winning.segments) == 1
    # the winner's segment, none of the loser's
    assert [SEGMENTS + k for k in keys(root, SEGMENTS)] == list(winning.segments)
    assert keys(root, MANIFESTS) == ["00000000000000000000.json", "00000000000000000001.json"]
    assert keys(root, LOG) == []  # the winner's housekeeping
    assert not list(root.rglob("*.tmp"))
    assert answers(Catalog.open(root)) == before
    assert not list(root.glob(f"run=a/{ids[0]}.*"))  # the deleted row's file is gone


def test_a_compactor_paused_until_its_sequence_number_was_recycled_breaks_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compactor that read manifest 1, then paused (ten minutes, say) while others published
    2, 3 and 4 and removed 2, publishes manifest 2 again when it wakes: a stale state nobody reads
    (readers take the newest). Its housekeeping must not treat the newest manifest's segments
    as orphans."""
    paused, others = Catalog.open(root), Catalog.open(root)
    fill(paused, range(2))
    paused.compact(full=False, fsync=False)
    fill(paused, range(2, 3))
    real_time = time.time

    def others_move_on(key: str, *args: Any, **kwargs: Any) -> bool:
        if not key.startswith(MANIFESTS):
            return False
        for epoch in range(10, 13):
            fill(others, range(epoch, epoch + 1))
            assert others.compact(full=False, fsync=False)
        # the pause lasted past the age under which a segment is presumed in the making
        monkeypatch.setattr(_index.time, "time", lambda: real_time() + 3600)
        return True

    intercept(monkeypatch, paused.store, "put_if_absent", others_move_on)
    paused.compact(full=False, fsync=False)
    fresh = Catalog.open(root)
    assert sorted(r[2] for r in answers(fresh)["rows"]) == [0, 1, 2, 10, 11, 12]
    assert fresh.verify() == []


def test_compaction_never_takes_an_appenders_index_entry_in_the_making(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction that lists the log while an append's entry is still a temporary file must
    neither cover nor remove that file: the append links it a moment later."""
    appender, compactor = Catalog.open(root), Catalog.open(root)
    fill(appender, range(2))
    real_link = os.link

    def compact_first(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if "/_index/log/" in str(dst) and not compacted:
            assert any(name.endswith(".tmp") for name in os.listdir(root / LOG))
            compacted.append(compactor.compact(fsync=False))
        return real_link(src, dst, *args, **kwargs)

    compacted: list[bool] = []
    monkeypatch.setattr(os, "link", compact_first)
    new = appender.append(row(7), fsync=False)  # no error
    monkeypatch.undo()
    assert compacted == [True]
    manifest = Catalog.open(root)._index.latest()
    assert manifest is not None and not any(name.endswith(".tmp") for name in manifest.covered)
    assert new in live_ids(Catalog.open(root)) and len(Catalog.open(root)) == 3


def test_compaction_never_takes_another_compactors_segment_in_the_making(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Catalog.open(root), Catalog.open(root)
    fill(first, range(3))
    real_link = os.link
    done: list[bool] = []

    def other_compacts(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if "/_index/segments/" in str(dst) and not started:
            started.append(True)
            fill(second, range(3, 4))
            done.append(second.compact(fsync=False))  # its housekeeping lists our temp file
        return real_link(src, dst, *args, **kwargs)

    started: list[bool] = []

    monkeypatch.setattr(os, "link", other_compacts)
    first.compact(fsync=False)  # no error: it lost the race, or published after the other
    monkeypatch.undo()
    assert done == [True]
    assert sorted(r[2] for r in answers(Catalog.open(root))["rows"]) == [0, 1, 2, 3]


def test_vacuum_leaves_segments_in_the_making_alone(root: Path) -> None:
    catalog = Catalog.open(root)
    fill(catalog, range(2))
    # a compactor (this process, alive) writing its segment's temporary file right now
    tmp = root / SEGMENTS / f".{_index.new_id()}.parquet.{os.getpid()}-0123456789ab.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(b"PAR1 in the making")
    catalog.vacuum()
    assert tmp.exists()


# -- readers ----------------------------------------------------------------------------------------


def test_a_reader_whose_manifest_disappears_reads_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = Catalog.open(root), Catalog.open(root)
    ids = fill(writer, range(4))
    len(reader)  # warm: the reader has read manifest 0 and the log before

    def two_compactions(prefix: str) -> bool:
        if prefix != MANIFESTS:
            return False
        for epoch in (10, 11):  # manifests 1 and 2 are published, manifest 0 is removed
            ids.extend(fill(writer, range(epoch, epoch + 1)))
            assert writer.compact(full=False, fsync=False)
        return True

    real_list = reader.store.list
    stale: list[list[tuple[str, int]]] = []

    def stale_listing(prefix: str) -> list[tuple[str, int]]:
        found = real_list(prefix)
        if prefix == MANIFESTS and not stale:
            stale.append(found)
            two_compactions(prefix)  # after the listing: it names a manifest that is now gone
        return found

    monkeypatch.setattr(reader.store, "list", stale_listing)
    assert live_ids(reader) == sorted(ids)
    assert [k for k, _ in stale[0]] == [MANIFESTS + "00000000000000000000.json"]
    assert keys(root, MANIFESTS)[0] != "00000000000000000000.json"


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "fresh"])
@pytest.mark.parametrize("query", ["snapshot", "get", "len"])
@pytest.mark.parametrize("when", ["before the log listing", "after it", "after the manifests'"])
def test_a_compaction_anywhere_in_a_readers_listings_loses_no_row(
    root: Path, monkeypatch: pytest.MonkeyPatch, query: str, when: str, warm: bool
) -> None:
    """A reader lists the log, then the manifests. A compaction folds the log into manifest 1
    and removes the entries: just before the reader lists the log (it lists no entry and finds
    the rows in manifest 1), just after (it lists entries that manifest 1, listed next, covers),
    or after the manifests' listing too (it reads manifest 0, then finds the entries gone, or
    cached from before by a warm reader: either way no row is lost and the delete holds)."""
    reader, compactor = Catalog.open(root), Catalog.open(root)
    ids = fill(compactor, range(4))
    compactor.delete([ids[0]], fsync=False)
    if warm:
        len(reader)
    real_list = reader.store.list
    acted: list[str] = []

    def listing(prefix: str) -> list[tuple[str, int]]:
        at = {"before the log listing": (LOG, True), "after it": (LOG, False)}.get(
            when, (MANIFESTS, False)
        )
        if not acted and at == (prefix, True):
            acted.append(prefix)
            assert compactor.compact(full=False, fsync=False)
        found = real_list(prefix)
        if not acted and at == (prefix, False):
            acted.append(prefix)
            assert compactor.compact(full=False, fsync=False)
        return found

    monkeypatch.setattr(reader.store, "list", listing)
    if query == "snapshot":
        assert live_ids(reader) == sorted(ids[1:])
    elif query == "len":
        assert len(reader) == len(ids) - 1
    else:
        assert reader.get(ids[3]).epoch == 3  # type: ignore[attr-defined]
        with pytest.raises(RowNotFoundError):
            reader.get(ids[0])
    assert acted and keys(root, LOG) == []  # the compaction happened where it was meant to


def test_a_segment_missing_under_the_newest_manifest_is_damage_not_a_race(root: Path) -> None:
    catalog = Catalog.open(root)
    fill(catalog, range(3))
    catalog.compact(fsync=False)
    [segment] = catalog.index_files()
    (root / segment).unlink()
    fresh = Catalog.open(root)
    for query in (len, lambda c: c.get(live_ids(catalog)[0]), Catalog.verify):
        with pytest.raises(CatalogError) as info:
            query(fresh)
        message = str(info.value)
        assert str(root / segment) in message and "catalog.reindex()" in message, message


# -- appends ----------------------------------------------------------------------------------------


def test_len_counts_the_log_against_the_segments_as_queries_see_the_rows(root: Path) -> None:
    """len reads the manifest's count and looks the log's ids up in the segments (through their
    row_id statistics) instead of reading every segment row. In every state it equals the rows
    queries see: entries not yet compacted; deletes of a segment's row and of a log row; an id
    deleted twice (two deleters racing), also once its first delete is folded into the
    manifest; entries whose rows a rebuilt index already holds (a reindex racing appends); and
    after a compaction."""
    catalog = Catalog.open(root)
    segment = fill(catalog, range(6))
    assert catalog.compact(full=False, fsync=False)
    log = fill(catalog, range(6, 10), run="b")
    catalog.delete([segment[0], log[0]], fsync=False)
    for _ in range(2):
        catalog._index.publish_delete([segment[1]], fsync=False)
    live = sorted(set(segment + log) - {segment[0], segment[1], log[0]})

    def agree() -> None:
        fresh = Catalog.open(root)
        assert len(fresh) == len(live) == len(Catalog.open(root).index_table())
        assert live_ids(fresh) == live

    agree()
    assert catalog.compact(full=False, fsync=False)  # the deletes are recorded in the manifest,
    catalog._index.publish_delete([segment[0]], fsync=False)  # and one of them comes again
    agree()
    log = fill(catalog, range(11, 13), run="b")
    live = sorted([*live, *log])
    rows = catalog._index.snapshot().table  # a rebuilt index holding the log's rows too,
    catalog._index.rebuild(rows, [])  # covering none of its entries
    agree()
    assert catalog.compact(full=False, fsync=False)
    agree()
    live = sorted([*live, *fill(catalog, range(13, 14), run="c")])
    agree()


def test_len_of_an_add_entry_for_an_id_the_manifest_records_as_deleted(root: Path) -> None:
    """A manifest may record as deleted an id no segment holds (a second delete of a row a full
    compaction had already dropped); an add entry of that id published late (its writer stalled
    while a reindex indexed its file and a user deleted it) is not a live row, for len as for
    every query."""
    catalog = Catalog.open(root)
    ids = fill(catalog, range(3))
    assert catalog.compact(fsync=False)
    late = _index.new_id()
    catalog._index.publish_delete([late], fsync=False)
    assert catalog.compact(full=False, fsync=False)
    manifest = catalog._index.latest()
    assert manifest is not None and late in manifest.deleted
    entry = catalog.index_table().slice(0, 1)
    entry = entry.set_column(entry.schema.get_field_index("row_id"), "row_id", [[late]])
    catalog._index.publish_add(entry, fsync=False)
    fresh = Catalog.open(root)
    assert live_ids(fresh) == sorted(ids)
    assert len(fresh) == len(ids)


def test_an_append_into_a_partition_removed_by_hand_makes_it_again(root: Path) -> None:
    """The store remembers the directories it made (two stats fewer per append); a partition
    removed since, with its rows deleted first, is made again by the next append into it."""
    catalog = Catalog.open(root)
    [first] = fill(catalog, range(1), run="gone")
    catalog.delete([first], fsync=False)
    shutil.rmtree(root / "run=gone")
    [second] = fill(catalog, range(1, 2), run="gone")
    assert catalog.get(second).epoch == 1  # type: ignore[attr-defined]
    assert (root / catalog.index_table().column("_path")[0].as_py()).is_file()
    shutil.rmtree(root / "run=gone")  # and again, with fsync: made and synced
    third = catalog.append(row(2, "gone"), fsync=True)
    assert catalog.get(third).epoch == 2  # type: ignore[attr-defined]


def test_appends_compact_the_index_automatically_once_the_log_is_long(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index, "CHECK_EVERY", 1)  # every append looks at the log
    monkeypatch.setattr(_index, "COMPACT_AT", 4)
    catalog = Catalog.open(root)
    ids = fill(catalog, range(60))
    manifest = catalog._index.latest()
    assert manifest is not None and manifest.sequence >= 60 // 4 - 1
    assert 1 <= len(manifest.segments) <= _index.MAX_SEGMENTS  # folded, and merged now and then
    assert len([k for k in keys(root, LOG) if not k.startswith(".")]) < 4
    assert live_ids(Catalog.open(root)) == sorted(ids)
    counts = Catalog.open(root).sql("SELECT count(DISTINCT row_id), count(*) FROM models")
    assert counts.fetchall() == [(60, 60)]


def test_append_many_is_all_or_nothing_under_a_sigkill_before_its_entry(tmp_path: Path) -> None:
    root = tmp_path / "c"
    catalog = Catalog.create(root, workers.StressRowV1, partition_by=["run"])
    kept = workers.stress_row(0, 0, numel=8, run="x")
    first = catalog.append(kept, fsync=False)
    report = tmp_path / "report"
    proc = workers.context().Process(
        target=workers.append_many_then_die, args=(str(root), str(report), 3)
    )
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    assert report.read_text().split() == ["3-row-files-written"]
    files = sorted(p.name.split(".")[0] for p in root.glob("run=*/*.arrow"))
    assert len(files) == 4  # the three row files are on disk ...
    fresh = Catalog.open(root)
    assert live_ids(fresh) == [first] and len(fresh) == 1  # ... and none is visible
    assert fresh.sql("SELECT count(*) FROM models").fetchall() == [(1,)]
    removed = fresh.vacuum(older_than=0)
    assert sorted(p.name.split(".")[0] for p in removed) == sorted(set(files) - {first})
    assert fresh.verify() == [] and list(root.glob("run=*/*.arrow")) == [fresh.path_of(first)]


# -- deletes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        "1=1); DROP TABLE x; --",
        "epoch = 1; DELETE FROM models",
        "epoch = 1) OR (1=1",
        "epoch = 1 --",
    ],
)
def test_delete_where_is_one_condition_never_a_second_statement(root: Path, where: str) -> None:
    catalog = Catalog.open(root)
    ids = fill(catalog, range(3))
    error = None
    deleted: list[str] = []
    try:
        deleted = catalog.delete(where=where, fsync=False)
    except CatalogError as exc:
        error = str(exc)
    assert error is None or ("bad where condition" in error and where in error)
    # a comment or a balanced parenthesis may parse as one condition: then it is that condition
    assert set(deleted) <= {ids[1]}
    assert live_ids(Catalog.open(root)) == sorted(set(ids) - set(deleted))
    if not deleted:
        entries = keys(root, LOG)  # <row id>.<hash>.add.ipc: no delete entry
        assert all(k.endswith(".add.ipc") for k in entries)
        assert sorted(k.split(".")[0] for k in entries) == sorted(ids)


def test_delete_where_deletes_what_the_condition_selects(root: Path) -> None:
    catalog = Catalog.open(root)
    ids = fill(catalog, range(4)) + fill(catalog, range(4), run="b")
    assert catalog.delete(where="run = 'b' AND epoch >= 2", fsync=False) == sorted(ids[6:])
    assert live_ids(Catalog.open(root)) == sorted(ids[:6])
    assert catalog.delete(where="epoch > 100", fsync=False) == []


def test_deleting_an_unknown_id_raises_and_deletes_nothing(root: Path) -> None:
    catalog = Catalog.open(root)
    ids = fill(catalog, range(3))
    log = keys(root, LOG)
    with pytest.raises(RowNotFoundError) as info:
        catalog.delete([ids[0], "01NOSUCHROW0000000000000000"], fsync=False)
    assert str(info.value) == (
        f"no row '01NOSUCHROW0000000000000000' in the catalog at {root}; nothing was deleted"
    )
    assert keys(root, LOG) == log and live_ids(Catalog.open(root)) == sorted(ids)
    assert catalog.path_of(ids[0]).exists()
    catalog.delete(ids[0], fsync=False)
    with pytest.raises(RowNotFoundError):  # deleted once: a second delete finds nothing
        catalog.delete([ids[0]], fsync=False)


def test_a_deleted_row_is_gone_from_every_query_and_its_file_removed(root: Path) -> None:
    catalog, other = Catalog.open(root), Catalog.open(root)
    ids = fill(catalog, range(4))
    answers(other)  # the other reader has read (and cached) the index already
    path = catalog.path_of(ids[3])
    assert catalog.delete([ids[3]], fsync=False) == [ids[3]]
    assert not path.exists()
    got = answers(other)
    assert ids[3] not in got["scan"] and got["len"] == 3 and got["best"] == ids[2]
    with pytest.raises(RowNotFoundError):
        other.get(ids[3])
    assert other.sql(f"SELECT count(*) FROM models WHERE row_id = '{ids[3]}'").fetchall() == [(0,)]


# -- reindex ----------------------------------------------------------------------------------------


def crashed_delete(catalog: Catalog, row_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete ``row_id`` as a process killed right after publishing the delete entry would: its
    row file stays behind."""
    with monkeypatch.context() as m:
        m.setattr(catalog.store, "delete", lambda key: None)
        catalog.delete([row_id], fsync=False)


def test_reindex_keeps_a_delete_whose_row_file_a_crash_left_behind(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog.open(root)
    ids = fill(catalog, range(3))
    crashed_delete(catalog, ids[0], monkeypatch)
    assert list(root.glob(f"run=a/{ids[0]}.*"))  # the row file a crash left behind
    assert catalog.reindex() == 2
    assert live_ids(Catalog.open(root)) == sorted(ids[1:])
    ids += fill(catalog, range(10, 11))  # something for a compaction to fold ...
    assert catalog.compact(fsync=False)  # ... which drops the delete entry the rebuild covers
    assert catalog.reindex() == 3  # the row files are read again: the deleted row stays deleted
    assert live_ids(Catalog.open(root)) == sorted(ids[1:])
    catalog.vacuum(older_than=0)
    assert sorted(p.name.split(".")[0] for p in root.glob("run=a/*.arrow")) == sorted(ids[1:])


DAMAGES = [
    "index removed",
    "segments removed",
    "segment truncated",
    "segment garbage",
    "manifest garbage",
    "manifest not an index",
    "add entry garbage",
    "add entry truncated",
    "add entry of other columns",
    "delete entry garbage",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_reindex_restores_a_lost_or_damaged_index(
    root: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    catalog = Catalog.open(root)
    ids = fill(catalog, range(4)) + fill(catalog, range(4, 6), run="b")
    catalog.delete([ids[0]], fsync=False)  # folded into the segment, its file removed
    catalog.compact(full=False, fsync=False)
    ids += fill(catalog, range(6, 8))  # in the log
    crashed_delete(catalog, ids[1], monkeypatch)  # in the log; its row file left behind
    catalog.delete([ids[7]], fsync=False)
    live = sorted(set(ids) - {ids[0], ids[1], ids[7]})
    assert live_ids(Catalog.open(root)) == live
    [segment] = catalog.index_files()
    manifest = MANIFESTS + keys(root, MANIFESTS)[-1]
    [add_entry] = [
        LOG + n for n in keys(root, LOG) if n.startswith(ids[6]) and n.endswith(".add.ipc")
    ]
    [delete_entry] = [  # the crashed delete's entry
        LOG + name
        for name in keys(root, LOG)
        if name.endswith(".del.ipc")
        and ids[1] in catalog._index._read(LOG + name).column("row_id").to_pylist()
    ]

    damaged: str | None  # the file queries must name
    if damage == "index removed":
        shutil.rmtree(root / "_index")
        damaged = None
    elif damage == "segments removed":
        shutil.rmtree(root / SEGMENTS)
        damaged = segment
    elif damage == "segment truncated":
        raw = (root / segment).read_bytes()
        (root / segment).write_bytes(raw[: len(raw) // 2])
        damaged = segment
    elif damage == "segment garbage":
        (root / segment).write_bytes(b"PAR1" + os.urandom(300) + b"PAR1")
        damaged = segment
    elif damage == "manifest garbage":
        (root / manifest).write_bytes(os.urandom(200))
        damaged = manifest
    elif damage == "manifest not an index":
        (root / manifest).write_text('{"format": "something else", "segments": []}')
        damaged = manifest
    elif damage == "add entry garbage":
        (root / add_entry).write_bytes(b"garbage")
        damaged = add_entry
    elif damage == "add entry truncated":
        raw = (root / add_entry).read_bytes()
        (root / add_entry).write_bytes(raw[:-20])
        damaged = add_entry
    elif damage == "add entry of other columns":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"row_id": [ids[6]], "epoch": ["six"]}), root / add_entry)
        damaged = add_entry
    else:
        (root / delete_entry).write_bytes(b"PAR1PAR1")
        damaged = delete_entry

    queries: dict[str, Callable[[Catalog], object]] = {
        "len": len,
        "scan": lambda c: c.scan().collect(),
        "sql": lambda c: c.sql("SELECT count(*) FROM models").fetchall(),
        "best": lambda c: c.best("accuracy"),
        "rows": lambda c: list(c.rows()),
        "verify": Catalog.verify,
        "delete": lambda c: c.delete([ids[2]]),
        "compact": Catalog.compact,
    }
    if damaged is None:
        # the catalog object that had read the index says what to do; a fresh one rebuilds it
        with pytest.raises(CatalogError) as info:
            len(catalog)
        assert str(root) in str(info.value) and "catalog.reindex()" in str(info.value)
    else:
        for name, query in queries.items():
            with pytest.raises(CatalogError) as info:
                query(Catalog.open(root))
            message = str(info.value)
            assert str(root / damaged) in message, (name, message)
            assert "catalog.reindex()" in message, (name, message)
            assert type(info.value.__cause__).__module__.split(".")[0] != "duckdb", name

    restored = Catalog.open(root)
    indexed = restored.reindex()
    expected = list(live)
    if damage in ("index removed", "delete entry garbage"):
        # the record of the crashed delete is gone and its row file survived: it is back
        expected = sorted([*live, ids[1]])
    assert indexed == len(expected)
    for reader in (restored, Catalog.open(root)):
        assert live_ids(reader) == expected
        assert [reader.get(i).epoch for i in expected] == [  # type: ignore[attr-defined]
            ids.index(i) for i in expected
        ]
        assert reader.verify() == []
    # and it stays so through compactions, vacuum and another reindex
    restored.compact()
    restored.vacuum(older_than=0)
    assert restored.reindex() == len(expected) and live_ids(Catalog.open(root)) == expected
    assert answers(Catalog.open(root))["len"] == len(expected)


@pytest.mark.parametrize("when", ["files listed", "files read"])
@pytest.mark.parametrize("full", [True, False], ids=["full", "fold"])
def test_reindex_while_another_process_appends_deletes_and_compacts(
    root: Path, monkeypatch: pytest.MonkeyPatch, full: bool, when: str
) -> None:
    """Rows appended and deleted while reindex reads the row files, and folded by a compaction
    (which removes their log entries) before it publishes, are in its index as they are in the
    row files: the new rows there, the deleted ones gone."""
    rebuilder, other = Catalog.open(root), Catalog.open(root)
    ids = fill(other, range(4))
    during: list[str] = []

    def others_act() -> None:
        during.extend(fill(other, range(10, 12)))
        other.delete([ids[0], during[0]], fsync=False)
        assert other.compact(full=full, fsync=False)

    if when == "files listed":
        real_row_files = rebuilder._row_file_copies

        def row_files() -> dict[str, list[str]]:
            listed = real_row_files()
            others_act()
            return listed

        monkeypatch.setattr(rebuilder, "_row_file_copies", row_files)
    else:
        real_rebuild = rebuilder._index.rebuild

        def rebuild(*args: Any, **kwargs: Any) -> Any:
            others_act()
            return real_rebuild(*args, **kwargs)

        monkeypatch.setattr(rebuilder._index, "rebuild", rebuild)
    rebuilder.reindex()
    monkeypatch.undo()
    expected = sorted([*ids[1:], during[1]])
    assert live_ids(Catalog.open(root)) == expected
    fresh = Catalog.open(root)
    assert fresh.verify() == []
    assert [fresh.get(i).epoch for i in expected] == [1, 2, 3, 11]  # type: ignore[attr-defined]


def test_a_long_lived_reader_keeps_only_the_current_index_in_memory(root: Path) -> None:
    """A reader caches the index objects it read (they never change), but not those that no
    longer make the index: a server querying between compactions would otherwise hold a copy of
    the whole index per compaction."""
    reader, writer = Catalog.open(root), Catalog.open(root)
    for epoch in range(30):
        fill(writer, range(epoch, epoch + 1))
        writer.compact(full=True, fsync=False)  # a new segment of every row, each time
        assert len(reader) == epoch + 1
    manifest = reader._index.latest()
    assert manifest is not None
    assert set(reader._index._cache) <= {*manifest.segments, *reader._index.log_entries()}


def test_small_compactions_merge_the_newest_segments_never_the_whole_index(root: Path) -> None:
    catalog = Catalog.open(root)
    big = catalog.append_many([row(e) for e in range(600)], fsync=False)
    catalog.compact(full=True)
    [base] = catalog.index_files()  # more than 4x the rows appended below: never merged
    ids, deleted = list(big), []
    sizes = []
    for step in range(40):  # a few rows, a compaction: what a training run's appends do
        ids += fill(catalog, range(1000 + 3 * step, 1003 + 3 * step))
        if step % 7 == 3:  # a row of a small segment, and one of the big one
            victims = [ids[-5], big[step]]
            catalog.delete(victims)
            deleted += victims
        catalog.compact(full=False)
        manifest = catalog._index.latest()
        assert manifest is not None and len(manifest.segments) <= _index.MAX_SEGMENTS
        assert manifest.segments[0] == base  # the big segment is never rewritten by these
        sizes.append(len(manifest.segments))
        fresh = Catalog.open(root)
        assert live_ids(fresh) == sorted(set(ids) - set(deleted))
        assert len(fresh) == len(ids) - len(deleted)
    assert max(sizes) == _index.MAX_SEGMENTS  # merges happened
    # the deletes of rows in the big segment stay recorded (it was never rewritten); those of
    # rows whose segment was merged are not (the rows were left out)
    manifest = catalog._index.latest()
    assert manifest is not None
    assert {d for d in deleted if d in big} <= manifest.deleted < set(deleted)
    catalog.compact(full=True)  # a full compaction folds everything into one segment
    assert len(catalog.index_files()) == 1 and catalog._index.latest().deleted == frozenset()
    assert live_ids(Catalog.open(root)) == sorted(set(ids) - set(deleted))


def test_a_lookup_checks_the_bytes_it_reads_and_a_full_read_the_whole_segment(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index, "_ROW_GROUP", 8)  # a segment of several row groups
    catalog = Catalog.open(root)
    ids = catalog.append_many([row(e) for e in range(40)], fsync=False)
    catalog.compact()
    [key] = catalog.index_files()
    check = catalog._index.latest().checks[key]  # type: ignore[union-attr]
    assert len(check.groups) == 5 and check.size == (root / key).stat().st_size
    # bit rot in row group 3 (rows 24..31, sorted by id): a get of a row there says so; a get
    # elsewhere reads (and checks) other bytes only; a query reading the whole segment refuses
    start, end, _ = check.groups[3]
    data = bytearray((root / key).read_bytes())
    data[(start + end) // 2] ^= 0x01
    (root / key).write_bytes(bytes(data))
    fresh = Catalog.open(root)
    with pytest.raises(CatalogError) as info:
        fresh.get(sorted(ids)[26])
    assert str(info.value) == (
        f"{root / key}: the index file is damaged (row group 3 does not match the hash its "
        "manifest records); rebuild the index with catalog.reindex() (or `modelrows reindex`)"
    )
    assert fresh.get(sorted(ids)[2]).epoch == sorted(range(40), key=lambda e: ids[e])[2]  # type: ignore[attr-defined]
    with pytest.raises(CatalogError, match="do not match the hash in its name"):
        len(fresh)
    # a damaged footer: every lookup refuses
    data[-20] ^= 0x01
    (root / key).write_bytes(bytes(data))
    with pytest.raises(CatalogError, match=r"damaged \(its footer does not match"):
        Catalog.open(root).get(ids[0])
    assert Catalog.open(root).reindex() == 40
    assert [Catalog.open(root).get(i).epoch for i in ids] == list(range(40))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "checks",
    [[], {"x": 1}, {"S": {"size": -1, "footer": [4, "0" * 16], "row_groups": []}},
     {"S": {"size": 9, "footer": [4, "short"], "row_groups": []}},
     {"S": {"size": 9, "footer": [4, "0" * 16], "row_groups": [[1, 2]]}}],
)  # fmt: skip
def test_a_manifest_with_malformed_checks_is_refused_by_name(root: Path, checks: object) -> None:
    catalog = Catalog.open(root)
    fill(catalog, range(3))
    catalog.compact()
    manifest = catalog._index.latest()
    assert manifest is not None
    path = root / manifest.key
    data = json.loads(path.read_text())
    segment = data["segments"][0]
    if isinstance(checks, dict):
        checks = {(segment if k == "S" else k): v for k, v in checks.items()}
    data["checks"] = checks
    path.write_text(json.dumps(data))
    if checks == {"x": 1}:  # a check of no segment of the manifest: ignored
        assert len(Catalog.open(root)) == 3
        return
    with pytest.raises(CatalogError) as info:
        len(Catalog.open(root))
    assert f"{path} is not a valid index manifest" in str(info.value)
    assert "catalog.reindex()" in str(info.value)


def test_a_reader_racing_compactions_between_listing_and_stat_still_finds_the_index(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a reader's directory read sees manifests that compactions remove before it looks at them
    # (what two compactions during a reader's pause do): the index is there, the reader starts
    # over; it must never take the catalog for one without an index
    catalog = Catalog.open(root)
    ids = fill(catalog, range(3))
    catalog.compact()
    real_scandir = os.scandir
    raced = []

    def scandir_then_compact(path: Any) -> Any:
        entries = list(real_scandir(path))
        if str(path).endswith("manifests") and not raced:
            raced.append(True)
            for _ in range(2):  # each publishes a manifest and removes the older ones
                ids.extend(fill(catalog, range(1)))
                catalog.compact(full=False)
        return iter(entries)

    monkeypatch.setattr("modelrows._catalog._store.os.scandir", scandir_then_compact)
    fresh = Catalog.open(root)
    fresh._index.seen = True  # a reader already past its first look at the index
    assert len(fresh) == 5 and raced
    monkeypatch.undo()
    assert live_ids(Catalog.open(root)) == sorted(ids)
