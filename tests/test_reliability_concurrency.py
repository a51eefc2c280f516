"""Concurrent appends from real processes, with readers querying all the while (Delta Lake and
Lance test their commit protocols the same way): nothing lost, nothing torn, nothing duplicated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import workers
from modelrows import Catalog
from modelrows._catalog import _index as catalog_module
from workers import StressRowV1

WRITERS = 8
APPENDS = 50
READERS = 2


@pytest.mark.stress
def test_eight_writers_and_two_readers_in_separate_processes(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    ctx = workers.context()
    stop = tmp_path / "stop"
    reports = tmp_path / "reports"
    reports.mkdir()
    readers = [
        ctx.Process(target=workers.reader, args=(str(root), str(stop), str(reports / f"r{i}")))
        for i in range(READERS)
    ]
    writers = [
        ctx.Process(target=workers.writer, args=(str(root), i, APPENDS, str(reports / f"w{i}")))
        for i in range(WRITERS)
    ]
    for p in readers:
        p.start()
    for i in range(READERS):  # readers are querying before the first append
        workers.wait_for_line(reports / f"r{i}")
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
    stop.touch()
    for p in readers:
        p.join(timeout=60)
    seen = [json.loads((reports / f"r{i}").read_text().splitlines()[-1]) for i in range(READERS)]
    assert all("error" not in s for s in seen), seen
    assert [p.exitcode for p in writers + readers] == [0] * (WRITERS + READERS)

    returned = {
        i: (reports / f"w{i}").read_text().split() for i in range(WRITERS)
    }  # ids each append returned, in order
    assert all(len(ids) == APPENDS for ids in returned.values())
    all_ids = [row_id for ids in returned.values() for row_id in ids]
    assert len(set(all_ids)) == WRITERS * APPENDS == 400

    catalog = Catalog.open(root)
    assert len(catalog) == 400
    table = catalog.scan().collect()
    assert sorted(table["row_id"].to_list()) == sorted(all_ids)
    assert catalog.sql("SELECT count(DISTINCT row_id) FROM models").fetchall() == [(400,)]
    counts = dict(catalog.sql("SELECT run, count(*) FROM models GROUP BY run").fetchall())
    assert counts == {"shared": 200, **{f"w{i}": 25 for i in range(WRITERS)}}
    for i, ids in returned.items():  # every row is the one its writer appended, in order
        rows = [catalog.get(row_id, verify=True) for row_id in ids]
        assert [(r.writer, r.epoch) for r in rows] == [(i, e) for e in range(APPENDS)]
        assert all(r.weights["step"].item() == r.epoch for r in rows)
    assert catalog.verify() == []
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]

    counts = [c for s in seen for c in s["counts"]]
    assert any(0 < c < 400 for c in counts), seen  # the readers did overlap the writers
    assert all(s["loaded"] > 0 for s in seen), seen
    print(f"\nreader passes: {[len(s['counts']) for s in seen]}, counts seen: {counts}")


def test_row_ids_stay_unique_in_forked_children() -> None:
    """A forked child must not continue its parent's per-millisecond counter."""
    future_ms = 2**47  # the parent "already used" this millisecond: both would count up from it
    catalog_module._last_id[:] = [future_ms, 12345]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        os.write(write_end, catalog_module.new_id().encode())
        os._exit(0)
    os.close(write_end)
    mine = catalog_module.new_id()
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        theirs = f.read().decode()
    catalog_module._last_id[:] = [0, 0]
    assert len(theirs) == 26 and theirs != mine
