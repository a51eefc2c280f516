"""The index under real concurrency: writers, readers, a compactor and a deleter in separate
processes (as Delta Lake and Lance test their commit protocols), and read-your-writes from one
process to another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workers
from modelrows import Catalog, RowNotFoundError
from modelrows._catalog import _index
from modelrows._catalog._index import LOG
from workers import StressRowV1

WRITERS = 8
APPENDS = 50
READERS = 2
DELETE_EVERY = 8  # the deleter deletes about one row in this many appended


def last_report(path: Path) -> dict[str, Any]:
    lines = path.read_text().splitlines()
    assert lines, path
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class CountingStore:
    """Wraps a store: every key a query lists, and every object it reads."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.listed: list[str] = []
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = self._store.list(prefix)
        self.listed += [k for k, _ in found]
        return found

    def get(self, key: str) -> bytes:
        self.read.append(key)
        data: bytes = self._store.get(key)
        return data

    def local_path(self, key: str) -> Any:
        if key:
            self.read.append(key)
        return self._store.local_path(key)


@pytest.mark.stress
def test_writers_readers_a_compactor_and_a_deleter_in_separate_processes(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    ctx = workers.context()
    stop, reports = tmp_path / "stop", tmp_path / "reports"
    reports.mkdir()
    deletes = reports / "deleter"
    readers = [
        ctx.Process(
            target=workers.index_reader,
            args=(str(root), str(stop), str(deletes), str(reports / f"r{i}"), i),
        )
        for i in range(READERS)
    ]
    compactor = ctx.Process(
        target=workers.index_compactor, args=(str(root), str(stop), str(reports / "compactor"))
    )
    deleter = ctx.Process(
        target=workers.index_deleter, args=(str(root), str(stop), str(deletes), 7, DELETE_EVERY)
    )
    writers = [
        ctx.Process(
            target=workers.index_writer, args=(str(root), i, APPENDS, str(reports / f"w{i}"))
        )
        for i in range(WRITERS)
    ]
    others = [*readers, compactor, deleter]
    try:
        for p in others:
            p.start()
        for path in [*(reports / f"r{i}" for i in range(READERS)), reports / "compactor", deletes]:
            workers.wait_for_line(path, timeout=120)  # all run before the first append
        for p in writers:
            p.start()
        for p in writers:
            p.join(timeout=240)
    finally:
        stop.touch()
        for p in others:
            p.join(timeout=60)
        for p in [*writers, *others]:
            if p.is_alive():  # pragma: no cover - a hung worker: fail, leave nothing running
                p.kill()
    seen = [last_report(reports / f"r{i}") for i in range(READERS)]
    assert all("error" not in s for s in seen), seen[0].get("error") or seen[1].get("error")
    compacted = last_report(reports / "compactor")
    assert "error" not in compacted, compacted["error"]
    deleter_lines = deletes.read_text().splitlines()
    assert "error" not in json.loads(deleter_lines[-1]), deleter_lines[-1]
    assert [p.exitcode for p in [*writers, *others]] == [0] * (WRITERS + READERS + 2)

    appended = [i for w in range(WRITERS) for i in (reports / f"w{w}").read_text().split()]
    assert len(appended) == len(set(appended)) == WRITERS * APPENDS
    deleted = {line.split()[1] for line in deleter_lines if line.startswith("deleted ")}
    attempted = {line.split()[1] for line in deleter_lines if line.startswith("deleting ")}
    assert attempted == deleted and deleted <= set(appended)  # the deleter finished each one

    catalog = Catalog.open(root)
    final = catalog.sql("SELECT row_id FROM models").fetchall()
    assert sorted(r[0] for r in final) == sorted(set(appended) - deleted)  # each exactly once
    assert len(catalog) == len(final) == WRITERS * APPENDS - len(deleted)
    assert catalog.scan().select("row_id").collect().height == len(final)
    for s in seen:  # a row a reader saw vanish before its get was being deleted
        assert set(s["vanished"]) <= deleted, s["vanished"]
        assert any(0 < c < len(final) for c in s["counts"]), s["counts"]  # overlapped the writes
    assert catalog.verify() == []
    on_disk = set(catalog._row_files())
    assert not on_disk & deleted  # every deleted row's file is gone

    # the index is compacted: segments, a short log; a query lists and reads only index files
    manifest = catalog._index.latest()
    assert manifest is not None and manifest.segments and compacted["published"] > 0
    counting = CountingStore(catalog.store)
    fresh = Catalog(counting, catalog_meta(root))
    assert len(fresh) == len(final)
    best = fresh.best("accuracy")
    fresh.sql("SELECT run, max(epoch) FROM models GROUP BY run").fetchall()
    log = {k for k in counting.listed if k.startswith(LOG)}
    assert all(k.startswith("_index/") for k in counting.listed), "a query listed row files"
    index_reads = {k for k in counting.read if k.startswith("_index/")}
    assert len(index_reads) <= 1 + len(manifest.segments) + len(log)
    assert len(manifest.segments) <= _index.MAX_SEGMENTS and len(log) < _index.COMPACT_AT
    rows_read = [k for k in counting.read if not k.startswith("_index/")]
    assert best is not None and rows_read == [catalog._entry(best.row_id)["_path"]]  # type: ignore[attr-defined]
    overlapped = [sum(0 < c < len(final) for c in s["counts"]) for s in seen]
    print(
        f"\n{WRITERS} writers x {APPENDS} appends, {len(deleted)} deletes, "
        f"{compacted['runs']} compactions ({compacted['published']} published); reader passes "
        f"{[s['passes'] for s in seen]} ({overlapped} during the appends), rows loaded "
        f"{[s['loaded'] for s in seen]}, deleted rows "
        f"checked {[s['checked_deleted'] for s in seen]}, vanished under a get "
        f"{[len(s['vanished']) for s in seen]}; after: {len(manifest.segments)} segment(s), "
        f"{len(log)} log entries, {len(set(counting.listed))} keys listed and "
        f"{len(index_reads)} index files read by a query ({len(on_disk)} row files)"
    )


def catalog_meta(root: Path) -> dict[str, Any]:
    from modelrows._catalog import CATALOG_FILE, _parse_description

    path = root / CATALOG_FILE
    return _parse_description(path.read_bytes(), path)


def _ops(count: int) -> Iterator[str]:
    pattern = ["add", "add", "del", "add", "compact", "add_many", "del", "add", "fold", "del"]
    for i in range(count):
        yield pattern[i % len(pattern)]


@pytest.mark.stress
def test_read_your_writes_across_processes(tmp_path: Path) -> None:
    """Process A appends, deletes and compacts; after each call returned it tells process B,
    whose very next queries (on a catalog object it keeps, with whatever it cached) must show
    exactly that state."""
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    ctx = workers.context()
    to_b, b_end = ctx.Pipe()
    proc = ctx.Process(target=workers.index_observer, args=(str(root), b_end))
    proc.start()
    try:
        assert to_b.recv() == "ready"
        catalog = Catalog.open(root)
        live: list[str] = []
        for step, op in enumerate(_ops(60)):
            if op in ("add", "add_many"):
                rows = [
                    workers.stress_row(0, step * 10 + k, numel=8, run=f"r{step % 3}")
                    for k in range(1 if op == "add" else 3)
                ]
                new = catalog.append_many(rows, fsync=False)
                live += new
                message = {"op": "add", "ids": new, "live": len(live)}
            elif op == "del":
                gone = [live.pop(len(live) // 2)]
                assert catalog.delete(gone, fsync=False) == gone
                message = {"op": "del", "ids": gone, "live": len(live)}
            else:
                catalog.compact(full=op == "compact", fsync=False)
                message = {"op": op, "ids": [], "live": len(live)}
            to_b.send(json.dumps(message))  # A's call has returned: B queries now
            answer = json.loads(to_b.recv())
            assert answer == {"ok": step}, answer
        to_b.send("stop")
    finally:
        proc.join(timeout=60)
        if proc.is_alive():  # pragma: no cover
            proc.kill()
    assert proc.exitcode == 0
    assert sorted(Catalog.open(root).index_table().column("row_id").to_pylist()) == sorted(live)


def test_a_row_deleted_between_a_query_and_its_load_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that found a row in the index while another process deleted it gets
    RowNotFoundError for it (never a message blaming a file removed by hand), and best() gives
    the next best row."""
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    reader, deleter = Catalog.open(root), Catalog.open(root)
    ids = [
        deleter.append(workers.stress_row(0, e, numel=8, run="a"), fsync=False) for e in range(4)
    ]
    real_read = reader._read
    targets = [ids[0], ids[3]]  # deleted by the other process once the reader found them

    def delete_then_read(row_id: str, key: str, **kwargs: Any) -> Any:
        if row_id in targets:
            targets.remove(row_id)
            deleter.delete([row_id], fsync=False)
        return real_read(row_id, key, **kwargs)

    monkeypatch.setattr(reader, "_read", delete_then_read)
    with pytest.raises(RowNotFoundError) as info:
        reader.get(ids[0])
    assert str(info.value).startswith(f"no row {ids[0]!r} in the catalog at {root}")
    best = reader.best("accuracy")  # the best row (epoch 3) is deleted under it: epoch 2
    assert best is not None and best.epoch == 2  # type: ignore[attr-defined]
    assert sorted(reader.index_table().column("row_id").to_pylist()) == sorted(ids[1:3])


def test_rows_under_appends_and_deletes_of_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rows() reads one snapshot: a row appended while it starts is not in it (it used to fail
    with KeyError), a row deleted while it iterates is skipped."""
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    reader, other = Catalog.open(root), Catalog.open(root)
    ids = [other.append(workers.stress_row(0, e, numel=8, run="a"), fsync=False) for e in range(4)]
    real_ids = reader._ids

    def append_first(**kwargs: Any) -> list[str]:
        ids.append(other.append(workers.stress_row(0, 9, numel=8, run="a"), fsync=False))
        return real_ids(**kwargs)

    monkeypatch.setattr(reader, "_ids", append_first)
    rows = reader.rows()
    first = next(rows)
    other.delete([ids[2]], fsync=False)  # deleted while the reader iterates
    epochs = [first.epoch, *(r.epoch for r in rows)]  # type: ignore[attr-defined]
    assert epochs == [0, 1, 3]
    assert len(Catalog.open(root)) == 4
