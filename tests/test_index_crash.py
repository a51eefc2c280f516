"""SIGKILL a process in the middle of appending, deleting and compacting, again and again: the
catalog always opens and queries; every append that returned is there unless deleted, every delete
that returned holds, no partial row or batch is ever visible; afterwards vacuum(older_than=0)
leaves no garbage and verify() finds nothing wrong.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import workers
from modelrows import Catalog
from modelrows._catalog._index import LOG, MANIFESTS, SEGMENTS
from modelrows._rowfile import read_row_file
from workers import StressRowV1

KILLS = 54
MODES = ("append", "delete", "compact")  # what the victim mostly does, in turn


class Outcome:
    """What the victims' reports say happened."""

    def __init__(self) -> None:
        self.appended: set[str] = set()  # appends that returned
        self.deleted: set[str] = set()  # deletes that returned
        self.maybe_deleted: set[str] = set()  # deletes killed in flight
        self.in_flight: Counter[str] = Counter()  # the call each kill interrupted

    def read(self, report: Path) -> None:
        lines = report.read_text().splitlines()
        assert lines[0] == "ready", lines[:1]
        pending = "between calls"
        for line in lines[1:]:
            word, _, rest = line.partition(" ")
            if word == "appended":
                self.appended.update(rest.split())
                pending = "between calls"
            elif word == "deleting":
                self.maybe_deleted.add(rest)
                pending = "delete"
            elif word == "deleted":
                self.deleted.add(rest)
                pending = "between calls"
            elif word == "compacted":
                pending = "between calls"
            else:
                assert word == "start", line
                pending = rest
        self.in_flight[pending] += 1


def check(root: Path, outcome: Outcome, checked: set[str]) -> dict[str, str]:
    """The catalog opens and answers; returns row id -> file of every live row."""
    catalog = Catalog.open(root)
    table = catalog.index_table()
    ids = table["row_id"].to_pylist()
    live = dict(zip(ids, table["_path"].to_pylist(), strict=True))
    assert len(ids) == len(live), "a row is listed twice"
    lost = outcome.appended - set(live) - outcome.deleted - outcome.maybe_deleted
    assert not lost, f"appends that returned are missing: {sorted(lost)}"
    assert not outcome.deleted & set(live), "a delete that returned did not hold"
    batches = Counter(
        (w, e // 3)
        for w, e, run in zip(
            table["writer"].to_pylist(),
            table["epoch"].to_pylist(),
            table["run"].to_pylist(),
            strict=True,
        )
        if run == "batch"
    )
    assert set(batches.values()) <= {3}, "an append_many is partly visible"
    for key in set(live.values()) - checked:  # no partial row is ever visible
        read_row_file(root / key)
        checked.add(key)
    return live


@pytest.mark.stress
def test_sigkill_during_appends_deletes_and_compactions(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    ctx = workers.context()
    rng = random.Random(20240917)
    outcome = Outcome()
    checked: set[str] = set()
    for kill in range(KILLS):
        report = tmp_path / f"victim{kill}"
        mode = MODES[kill % len(MODES)]
        proc = ctx.Process(target=workers.index_victim, args=(str(root), str(report), kill, mode))
        proc.start()
        workers.wait_for_line(report, timeout=120)  # "ready": the calls begin now
        time.sleep(rng.uniform(0.0, 0.15))  # a random moment to kill at, not a synchronisation
        proc.kill()
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL
        outcome.read(report)
        check(root, outcome, checked)

    catalog = Catalog.open(root)
    live = check(root, outcome, checked)
    n = len(live)
    assert n > 0 and outcome.deleted and len(catalog) == n
    assert catalog.scan().select("row_id").collect().height == n
    assert catalog.sql("SELECT count(DISTINCT row_id) FROM models").fetchall() == [(n,)]
    assert catalog.verify() == []
    before = {
        "tmp": len(list(root.rglob(".*.tmp"))),
        "row files": len(catalog._row_files()) - n,  # unpublished, or deleted but not removed
        "segments": len(list((root / SEGMENTS).glob("*.parquet"))),
        "log": len(list((root / LOG).glob("*.parquet"))),
        "manifests": len(list((root / MANIFESTS).glob("*.json"))),
    }

    removed = catalog.vacuum(older_than=0)  # nothing runs now: everything left over is garbage
    manifest = catalog._index.latest()
    assert manifest is not None
    assert list(root.rglob(".*.tmp")) == []
    assert set(catalog._row_files()) == set(live)  # no unpublished row file, no deleted row's
    assert sorted(SEGMENTS + p.name for p in (root / SEGMENTS).glob("*")) == sorted(
        manifest.segments
    )
    assert Catalog.open(root).index_table()["row_id"].to_pylist() == sorted(live)
    assert catalog.verify() == []
    catalog.compact()  # and compacts: one segment, nothing else
    assert len(catalog.index_files()) == 1 and len(Catalog.open(root)) == n
    print(
        f"\n{KILLS} kills, in flight: {dict(outcome.in_flight)}; {n} rows live, "
        f"{len(outcome.appended)} appends and {len(outcome.deleted)} deletes returned "
        f"({len(outcome.maybe_deleted - outcome.deleted)} deletes killed in flight); before "
        f"vacuum: {before}; vacuum removed {len(removed)} files"
    )
