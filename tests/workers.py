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
