"""Bodies of the processes the concurrency and crash tests start, and how they start them.

Processes come from a multiprocessing *forkserver* that imported modelrows once: each child is a
fresh process forked from that clean server (no test state, no threads), sharing nothing with
the others but the filesystem, and starts in milliseconds instead of the seconds an interpreter
importing torch takes. That is what lets CI afford hundreds of appends and dozens of SIGKILLs.

Children report through files written with ``os.write`` on ``O_APPEND`` descriptors: a line
written before a SIGKILL is in the kernel, so the test knows exactly which appends returned.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from pathlib import Path

import pyarrow as pa
import torch

from modelrows import Catalog, ModelV1, fetch_weights


class StressRowV1(ModelV1, schema="reliability.stress", version=1):
    run: str
    writer: int
    epoch: int
    accuracy: float | None = None


def context() -> BaseContext:
    """A forkserver context whose server has already imported modelrows and this module."""
    multiprocessing.set_forkserver_preload(["modelrows", "workers"])
    return multiprocessing.get_context("forkserver")


def _report(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def stress_row(writer: int, epoch: int, *, numel: int, run: str) -> StressRowV1:
    gen = torch.Generator().manual_seed(writer * 100_003 + epoch)
    weights = fetch_weights(
        {"w": torch.randn(numel, generator=gen), "step": torch.tensor(epoch, dtype=torch.int64)}
    )
    return StressRowV1(weights=weights, run=run, writer=writer, epoch=epoch, accuracy=epoch / 100)


def writer(root: str, index: int, appends: int, report: str) -> None:
    """Append ``appends`` rows, alternating a shared partition and this writer's own."""
    catalog = Catalog.open(root)
    for epoch in range(appends):
        run = "shared" if epoch % 2 == 0 else f"w{index}"
        row_id = catalog.append(stress_row(index, epoch, numel=256, run=run))
        _report(report, row_id)


def reader(root: str, stop: str, report: str) -> None:
    """Query in a loop until ``stop`` exists; report "ready" after the first pass, then the row
    counts seen (they may only grow) and rows loaded, or the first error."""
    counts: list[int] = []
    loaded = 0
    try:
        catalog = Catalog.open(root)
        while not os.path.exists(stop):
            polars_ids = catalog.scan().select("row_id").collect()["row_id"].to_list()
            [(duck_count,)] = catalog.sql("SELECT count(*) FROM models").fetchall()
            now = min(len(polars_ids), duck_count)
            if counts and now < counts[-1]:
                raise AssertionError(f"rows disappeared: saw {counts[-1]}, now {now}")
            counts.append(max(len(polars_ids), duck_count))
            for row_id in sorted(polars_ids)[-3:]:  # the newest rows, fully loaded and checked
                row = catalog.get(row_id, verify=True)
                assert isinstance(row, StressRowV1) and row.weights["step"].item() == row.epoch
                loaded += 1
            if len(counts) == 1:
                _report(report, "ready")
        _report(report, json.dumps({"counts": counts, "loaded": loaded}))
    except BaseException:
        _report(report, json.dumps({"error": traceback.format_exc()}))
        raise


def appender(root: str, report: str, seed: int) -> None:
    """Append forever (until killed); write each returned row id to ``report``."""
    catalog = Catalog.open(root)
    rng = random.Random(seed)
    len(catalog)  # the index read once: what a first query imports is loaded before "ready"
    pa.array([0]).to_numpy()  # pyarrow's first conversion imports pandas (when installed)
    _report(report, "ready")
    for epoch in range(1_000_000):
        numel = rng.choice([16, 4096, 262_144, 1_048_576])  # 64 B .. 4 MiB of float32
        row_id = catalog.append(stress_row(seed, epoch, numel=numel, run=f"r{seed % 3}"))
        _report(report, row_id)


def wait_for_line(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no report in {path} after {timeout} s")
        time.sleep(0.002)


def append_many_then_die(root: str, report: str, rows: int) -> None:
    """append_many ``rows`` rows, SIGKILLed once their row files are written, before the index
    entry that would publish them."""
    import signal

    from modelrows._catalog._index import Index

    def die(*args: object, **kwargs: object) -> None:
        _report(report, f"{rows}-row-files-written")
        os.kill(os.getpid(), signal.SIGKILL)

    Index.publish_add = die  # type: ignore[method-assign]  # this child only
    catalog = Catalog.open(root)
    batch = [stress_row(1, epoch, numel=8, run=f"m{epoch}") for epoch in range(rows)]
    catalog.append_many(batch, fsync=False)
    _report(report, "returned")  # never reached


# -- the index stress tests (tests/test_index_stress.py) ------------------------------------------


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _deleted(path: str) -> set[str]:
    """The ids whose delete returned, as the deleter reports them."""
    return {line.split()[1] for line in _lines(path) if line.startswith("deleted ")}


def index_writer(root: str, index: int, appends: int, report: str) -> None:
    """``writer`` without fsync (what is tested is concurrency, not durability), at a lower
    priority: on two cores, eight writers would otherwise finish their appends between two passes
    of the readers, the compactor and the deleter."""
    os.nice(5)
    catalog = Catalog.open(root)
    for epoch in range(appends):
        run = "shared" if epoch % 2 == 0 else f"w{index}"
        row_id = catalog.append(stress_row(index, epoch, numel=64, run=run), fsync=False)
        _report(report, row_id)


def index_reader(root: str, stop: str, deletes: str, report: str, seed: int) -> None:
    """Query until ``stop`` exists: len, sql, scan, best, and get of ids seen. Before each pass
    it reads which deletes returned (``deletes``): none of those rows may be visible. A row seen
    that vanishes before its get must be one being deleted (the test checks); anything else is
    an error, reported with its traceback."""
    from modelrows import RowNotFoundError

    rng = random.Random(seed)
    passes, vanished, checked_deleted, loaded = 0, [], 0, 0
    counts: list[int] = []
    try:
        catalog = Catalog.open(root)
        while not os.path.exists(stop):
            gone = _deleted(deletes)  # deletes that returned before this pass began
            scanned = catalog.scan().select("row_id", "epoch").collect()
            ids = scanned["row_id"].to_list()
            sql_ids = [r[0] for r in catalog.sql("SELECT row_id FROM models").fetchall()]
            n = len(catalog)
            counts.append(len(ids))
            for name, seen in (("scan", ids), ("sql", sql_ids)):
                if len(set(seen)) != len(seen):
                    raise AssertionError(f"{name} lists a row twice")
                if back := gone & set(seen):
                    raise AssertionError(f"{name} shows deleted rows {sorted(back)}")
            if n < 0 or (not ids and n > 1_000):
                raise AssertionError(f"len {n}")
            best = catalog.best("accuracy")
            if best is not None and best.row_id in gone:  # type: ignore[attr-defined]
                raise AssertionError(f"best() gave the deleted row {best.row_id}")  # type: ignore[attr-defined]
            for row_id in sorted(ids)[-2:] + rng.sample(ids, min(2, len(ids))):
                try:
                    row = catalog.get(row_id, verify=True)
                except RowNotFoundError:
                    vanished.append(row_id)
                    continue
                assert isinstance(row, StressRowV1) and row.weights["step"].item() == row.epoch
                loaded += 1
            for row_id in rng.sample(sorted(gone), min(2, len(gone))):
                try:
                    catalog.get(row_id)
                except RowNotFoundError:
                    checked_deleted += 1
                else:
                    raise AssertionError(f"get() loaded the deleted row {row_id}")
            passes += 1
            if passes == 1:
                _report(report, "ready")
        _report(
            report,
            json.dumps(
                {
                    "passes": passes,
                    "vanished": vanished,
                    "checked_deleted": checked_deleted,
                    "loaded": loaded,
                    "counts": counts,
                }
            ),
        )
    except BaseException:
        _report(report, json.dumps({"error": traceback.format_exc()}))
        raise


def index_compactor(root: str, stop: str, report: str) -> None:
    """compact() in a loop until ``stop`` exists, then once more."""
    runs = published = 0
    try:
        catalog = Catalog.open(root)
        _report(report, "ready")
        while not os.path.exists(stop):
            done = catalog.compact(fsync=False)
            published += done
            runs += 1
            if (
                not done
            ):  # nothing to fold: back off (a spinning loop starves the writers on 2 cores)
                time.sleep(0.01)
        published += catalog.compact(fsync=False)
        _report(report, json.dumps({"runs": runs + 1, "published": published}))
    except BaseException:
        _report(report, json.dumps({"error": traceback.format_exc()}))
        raise


def index_deleter(root: str, stop: str, report: str, seed: int, every: int) -> None:
    """Delete random visible rows (now and then the current best) until ``stop`` exists, about
    one row in ``every`` appended: "deleting <id>" before each delete, "deleted <id>" once it
    returned. Its own next query must not show the row again."""
    rng = random.Random(seed)
    deleted: set[str] = set()
    try:
        catalog = Catalog.open(root)
        _report(report, "ready")
        while not os.path.exists(stop):
            ids = catalog.index_table().column("row_id").to_pylist()
            if back := deleted & set(ids):
                raise AssertionError(f"deleted rows are back: {sorted(back)}")
            if not ids or (len(ids) + len(deleted)) < every * (len(deleted) + 1):
                time.sleep(0.01)  # not due yet (this pass was a read): back off, as the compactor
                continue
            target = ids[rng.randrange(len(ids))]
            if rng.random() < 0.3:
                best = catalog.best("accuracy")
                target = best.row_id if best is not None else target  # type: ignore[attr-defined]
            _report(report, f"deleting {target}")
            assert catalog.delete([target], fsync=False) == [target]
            deleted.add(target)
            _report(report, f"deleted {target}")
        _report(report, json.dumps({"deleted": len(deleted)}))
    except BaseException:
        _report(report, json.dumps({"error": traceback.format_exc()}))
        raise


def index_observer(root: str, conn: Connection) -> None:
    """Process B of the read-your-writes test: after each message from process A (which sends it
    once its call returned), query with the same catalog object and answer ``{"ok": step}``, or
    what was wrong."""
    from modelrows import RowNotFoundError

    catalog = Catalog.open(root)
    len(catalog)  # the index is read (and cached) before A starts
    conn.send("ready")
    step = 0
    while (message := conn.recv()) != "stop":
        sent = json.loads(message)
        problems: list[str] = []
        try:
            seen = set(catalog.scan().select("row_id").collect()["row_id"].to_list())
            if len(catalog) != sent["live"] or len(seen) != sent["live"]:
                problems.append(f"len {len(catalog)}, scan {len(seen)}, not {sent['live']}")
            if catalog.sql("SELECT count(*) FROM models").fetchall() != [(sent["live"],)]:
                problems.append("sql count")
            for row_id in sent["ids"]:
                where = f"SELECT count(*) FROM models WHERE row_id = '{row_id}'"
                [(count,)] = catalog.sql(where).fetchall()
                if sent["op"] == "add":
                    if row_id not in seen or count != 1:
                        problems.append(f"{row_id} appended but not visible")
                    catalog.get(row_id, verify=True)
                else:
                    if row_id in seen or count != 0:
                        problems.append(f"{row_id} deleted but visible")
                    try:
                        catalog.get(row_id)
                        problems.append(f"{row_id} deleted but get() loads it")
                    except RowNotFoundError:
                        pass
        except Exception:
            problems.append(traceback.format_exc())
        conn.send(json.dumps({"ok": step} if not problems else {"problems": problems}))
        step += 1


def index_victim(root: str, report: str, seed: int, mode: str) -> None:
    """Append (one row, or three with append_many), delete and compact at random until killed,
    mostly doing what ``mode`` names. Writes "start <op>" before each call and what it returned
    after ("appended <ids>", "deleting <id>" / "deleted <id>", "compacted")."""
    weights = {"append": (8, 1, 1), "delete": (1, 9, 0), "compact": (1, 0, 9)}[mode]
    rng = random.Random(seed)
    catalog = Catalog.open(root)
    catalog.index_table()  # the index read once: what a first query imports is loaded
    pa.array([0]).to_numpy()  # pyarrow's first conversion imports pandas (when installed)
    _report(report, "ready")
    for step in range(1_000_000):
        op = rng.choices(["append", "delete", "compact"], weights)[0]
        if op == "append":
            batch = rng.random() < 0.3  # three rows, all or nothing
            rows = [
                stress_row(
                    seed,
                    step * 3 + k,
                    numel=rng.choice([16, 4096, 65_536]),
                    run="batch" if batch else f"r{seed % 3}",
                )
                for k in range(3 if batch else 1)
            ]
            _report(report, "start append")
            ids = catalog.append_many(rows, fsync=False)
            _report(report, "appended " + " ".join(ids))
        elif op == "delete":
            table = catalog.index_table()
            ids = [
                i
                for i, run in zip(
                    table["row_id"].to_pylist(), table["run"].to_pylist(), strict=True
                )
                if run != "batch"  # batches stay whole, so that the test can count them
            ]
            if not ids:
                continue
            target = ids[rng.randrange(len(ids))]
            _report(report, f"deleting {target}")
            if rng.random() < 0.3:
                assert catalog.delete(where=f"row_id = '{target}'", fsync=False) == [target]
            else:
                catalog.delete([target], fsync=False)
            _report(report, f"deleted {target}")
        else:
            _report(report, "start compact")
            catalog.compact(full=rng.random() < 0.5, fsync=False)
            _report(report, "compacted")


def _preload_pandas() -> None:
    """Reading Parquet makes pyarrow import pandas (when installed): a second in every child
    under load. The forkserver imports this module once; import pandas there too."""
    import contextlib

    with contextlib.suppress(ImportError):
        import pandas  # noqa: F401


_preload_pandas()


def _forkserver_finds_this_module() -> None:
    """The forkserver ignores the parent's sys.path (CPython 3.11's forkserver.main takes it and
    never applies it), so preloading this module fails silently unless PYTHONPATH names this
    directory, and every child then imports torch itself (seconds each). It inherits the
    environment: name this directory there before it starts."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, here])


_forkserver_finds_this_module()
