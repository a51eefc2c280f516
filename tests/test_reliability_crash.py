"""SIGKILL a process in the middle of appending, again and again (SQLite's and Lance's crash
tests in miniature): afterwards the catalog opens and queries, every append that returned is
there, no partial row is visible, and leftover temporary files are ignored by every reader and
removed by vacuum().
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

import workers
from modelrows import Catalog
from modelrows._catalog._index import SEGMENTS
from modelrows._rowfile import read_row_file
from workers import StressRowV1

KILLS = 60


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


@pytest.mark.stress
def test_sigkill_at_random_moments_never_loses_or_tears_a_row(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog.create(root, StressRowV1, partition_by=["run"])
    ctx = workers.context()
    rng = random.Random(20240601)
    returned: set[str] = set()
    checked: set[str] = set()
    for kill in range(KILLS):
        report = tmp_path / f"appender{kill}"
        proc = ctx.Process(target=workers.appender, args=(str(root), str(report), kill))
        proc.start()
        workers.wait_for_line(report)  # "ready": the catalog is open, appends begin now
        time.sleep(rng.uniform(0.0, 0.12))
        proc.kill()
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL

        lines = report.read_text().split()
        assert lines[0] == "ready"
        returned.update(lines[1:])
        catalog = Catalog.open(root)  # always opens
        table = catalog.index_table()
        files = dict(zip(table["row_id"].to_pylist(), table["_path"].to_pylist(), strict=True))
        assert returned <= set(files), "an append that returned is missing"
        for key in set(files.values()) - checked:  # no partial row is ever visible
            read_row_file(root / key)
            checked.add(key)
    catalog = Catalog.open(root)
    leftovers = temp_files(root)
    n = len(catalog)
    assert n >= len(returned) > 0

    # the catalog's readers see exactly the rows, never a temporary or unpublished file
    assert catalog.scan().select(pl.len()).collect().item() == n
    assert catalog.sql("SELECT count(*) FROM models").fetchall() == [(n,)]
    assert catalog.verify() == []
    unpublished = len(catalog._row_files()) - n  # killed between the row file and its entry
    assert 0 <= unpublished <= KILLS
    # a kill inside an append's automatic compaction, after its segment was written and before
    # its manifest was published, leaves a segment no manifest names
    newest = catalog._index.latest()
    assert newest is not None
    orphans = {
        root / key
        for key, _ in catalog.store.list(SEGMENTS)
        if key.endswith(".parquet") and key not in newest.segments
    }
    removed = catalog.vacuum(older_than=0)  # no writer is running: everything left is garbage
    assert set(leftovers) | orphans <= set(removed)
    assert len(removed) == len(leftovers) + unpublished + len(orphans)
    assert temp_files(root) == []
    assert len(Catalog.open(root)) == n
    # after vacuum, plain readers of the directory (no modelrows) see exactly the rows too
    plain = ds.dataset(root, format="arrow", partitioning="hive", exclude_invalid_files=False)
    assert len(plain.files) == n and plain.count_rows() == n
    assert duckdb.sql("SELECT count(*) FROM plain").fetchall() == [(n,)]
    globbed = pl.scan_ipc(f"{root}/[!_]*/*.arrow", hive_partitioning=True)
    assert globbed.select(pl.len()).collect().item() == n
    linked = [p for p in leftovers if (p.parent / p.name[1:].rsplit(".", 2)[0]).exists()]
    print(
        f"\n{KILLS} kills, {n} rows, {len(returned)} appends returned before a kill; "
        f"{len(leftovers)} kills inside an append left a temporary file ({len(linked)} of them "
        f"after the row was linked in place), {unpublished} left a row file without its index "
        f"entry, {len(orphans)} a compaction's unpublished segment; all ignored by readers and "
        "vacuumed"
    )
