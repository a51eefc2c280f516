"""The catalog index at scale: queries from a fresh ``Catalog.open`` at 100,000 and 1,000,000 rows,
small appends with the index against the row file alone, and the same queries on the same rows in
Lance and in one Parquet file read by DuckDB, side by side in one run.

    python benchmarks/index.py                          # 100,000 + 1,000,000 rows (5-15 min)
    python benchmarks/index.py --quick                  # 500 + 5,000 rows, seconds: CI runs this
    python benchmarks/index.py --rows 10000 --big-rows 0 --json results.json
    python benchmarks/index.py --profile                # also pyinstrument profiles (stderr)

How the catalogs are built (printed in the output too):

- ``--rows`` (100,000): every row is real. Rows (about 1 KB of float32 weights each, 100 runs,
  partitioned by ``run``) go in through the public API, ``catalog.append_many`` in batches of 1,000
  with ``fsync=False`` (one real row file per row, one real index entry per batch), then
  ``catalog.compact()``. One ``append`` per row would write the same files with one index entry
  each, which compaction folds into the same segment (the append section times single appends).
- ``--big-rows`` (1,000,000): a fast path. The metadata of every row is generated (the same
  columns and value distributions, unique time-ordered row ids, plausible ``_path``, ``_size``,
  ``_checksum``) and published as one index segment through the private ``Index`` class
  (``Index.rebuild``, which ``catalog.reindex()`` uses too), so the index is exactly what a
  compacted catalog of that many rows holds. Only the rows a query loads (the best row, the rows
  ``get`` fetches) have real row files, appended through the public API with the metadata
  generated for them. A query never opens another row file, so its time is the same as over a
  catalog of a million real files (which would take ~30 minutes and ~8 GB to write here).

Every figure is a median over repetitions, round-robin (see benchmarks/common.py), on a warm page
cache, with the median CPU time beside it (the machine is shared: wall time includes waiting for
a core). Ratios are modelrows' time / the peer's time (above 1: modelrows is slower), paired per
round. Needs the ``bench`` extra (pylance for the Lance peer; without it, Lance is skipped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import Contender, paired_ratio, race

import modelrows
from modelrows import Catalog, ModelV1, write_model_row
from modelrows._catalog import _index

RUNS = 100
WEIGHT_FLOATS = 256  # 1 KB of float32 weights per row
BATCH = 1_000  # rows per append_many while building
PER_EPOCH = 10  # checkpoints per epoch


class IndexBenchRowV1(ModelV1, schema="bench.index", version=1):
    """A checkpoint of a training run with the metrics a team queries."""

    run: str
    epoch: int | None = None
    step: int | None = None
    accuracy: float | None = None
    loss: float | None = None
    lr: float | None = None
    commit_sha: str | None = None


METADATA = ("run", "epoch", "step", "accuracy", "loss", "lr", "commit_sha")


@dataclass
class Sizes:
    rows: int  # the catalog of real rows
    big_rows: int  # the fast-path catalog
    reps: int  # rounds of each query (median)
    big_reps: int
    cli_reps: int
    cli_warmup: int
    append_chunk: int  # appends per timed round (fsync=False); fsync=True: half as many
    append_reps: int
    lance_single_appends: int  # Lance appends of one row each, timed, before the batches
    log_appends: int  # single appends left in the log for the "not yet compacted" queries


FULL = Sizes(
    rows=100_000, big_rows=1_000_000, reps=9, big_reps=5, cli_reps=5, cli_warmup=1,
    append_chunk=20, append_reps=25, lance_single_appends=1_000, log_appends=100,
)  # fmt: skip
QUICK = Sizes(
    rows=500, big_rows=5_000, reps=2, big_reps=2, cli_reps=1, cli_warmup=0,
    append_chunk=4, append_reps=3, lance_single_appends=20, log_appends=10,
)  # fmt: skip


@dataclass
class Result:
    """One line of the table."""

    section: str
    name: str
    value: float  # seconds
    detail: str = ""
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[tuple[str, bool]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


# -- timing: wall and CPU --------------------------------------------------------------------------

_CPU: dict[int, list[float]] = {}


def cpu_now() -> float:
    """CPU seconds of this process (every thread) and of its finished children."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed_race(contenders: list[Contender], *, reps: int, warmup: int = 1) -> None:
    """common.race (round-robin, medians of wall time), also recording each run's CPU time: on a
    shared machine the wall time includes waiting for a core, the CPU time does not."""
    for c in contenders:
        samples = _CPU.setdefault(id(c), [])

        def run(inner: Callable[[], object] = c.run, samples: list[float] = samples) -> None:
            t0 = cpu_now()
            inner()
            samples.append(cpu_now() - t0)

        c.run = run
    gc.collect()
    gc.freeze()  # what exists now is never collected: race's gc.collect() before each run is quick
    race(contenders, reps=reps, warmup=warmup)
    gc.unfreeze()
    for c in contenders:
        _CPU[id(c)] = _CPU[id(c)][-len(c.times) :]


def cpu_times(c: Contender) -> list[float]:
    return _CPU.get(id(c), [])


def detail(c: Contender, per: int = 1) -> str:
    cpu = cpu_times(c)
    text = f"min {fmt_ms(min(c.times) / per)}"
    return text + (f", cpu {fmt_ms(statistics.median(cpu) / per)}" if cpu else "")


# -- the rows ------------------------------------------------------------------------------------


def metadata(n: int, seed: int) -> dict[str, np.ndarray]:
    """The metadata of ``n`` checkpoints of RUNS runs training side by side: row i is checkpoint
    i // RUNS of run i % RUNS."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    k = i // RUNS
    shas = np.array([f"{rng.integers(1 << 40):010x}{r:030x}"[:40] for r in range(RUNS)])
    return {
        "run": np.array([f"run{r:03d}" for r in range(RUNS)])[i % RUNS],
        "epoch": k // PER_EPOCH,
        "step": (k + 1) * 100,
        "accuracy": rng.random(n),
        "loss": rng.random(n) * 2,
        "lr": 1e-3 * 0.99 ** (k // PER_EPOCH),
        "commit_sha": shas[i % RUNS],
    }


def make_row(meta: dict[str, np.ndarray], i: int, base: torch.Tensor) -> IndexBenchRowV1:
    w = base.clone()
    w[0] = i  # every row's weights differ
    return IndexBenchRowV1(
        weights={"w": w},
        run=str(meta["run"][i]),
        epoch=int(meta["epoch"][i]),
        step=int(meta["step"][i]),
        accuracy=float(meta["accuracy"][i]),
        loss=float(meta["loss"][i]),
        lr=float(meta["lr"][i]),
        commit_sha=str(meta["commit_sha"][i]),
    )


def build_real(root: Path, n: int) -> tuple[Catalog, str]:
    """A catalog of ``n`` real rows: append_many in batches, fsync=False, then compact()."""
    meta = metadata(n, seed=1)
    base = torch.randn(WEIGHT_FLOATS)
    cat = Catalog.create(root, IndexBenchRowV1, partition_by=["run"])
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        rows = [make_row(meta, i, base) for i in range(start, min(n, start + BATCH))]
        cat.append_many(rows, fsync=False)
        if start and start % (20 * BATCH) == 0:
            rate = start / (time.perf_counter() - t0)
            log(f"  {start:,} of {n:,} rows ({rate:,.0f} rows/s)")
    t_compact = time.perf_counter()
    cat.compact()
    elapsed = time.perf_counter() - t0
    how = (
        f"append_many in batches of {BATCH:,}, fsync=False, then compact(): "
        f"{elapsed:.0f} s ({n / elapsed:,.0f} rows/s; the compaction {time.perf_counter() - t_compact:.1f} s)"
    )
    return cat, how


def build_synthetic(root: Path, n: int, get_ids: int) -> tuple[Catalog, str, list[str]]:
    """A catalog whose index holds ``n`` rows, of which only the rows queries load are real files
    (the best by accuracy and ``get_ids`` random rows); returns the ids of the latter."""
    t0 = time.perf_counter()
    meta = metadata(n, seed=2)
    cat = Catalog.create(root, IndexBenchRowV1, partition_by=["run"])
    rng = random.Random(3)
    best = int(np.argmax(meta["accuracy"]))
    real = sorted({best, *rng.sample(range(n), get_ids)})
    base = torch.randn(WEIGHT_FLOATS)
    # the rows queries load: real files and entries, with the metadata generated for them
    cat.append_many([make_row(meta, i, base) for i in real], fsync=False)
    real_entries = cat.index_table()
    by_position = dict(zip(real, real_entries.column("row_id").to_pylist(), strict=True))
    schema = cat._index.schema
    ids = [_index.new_id() for _ in range(n)]
    for i, rid in by_position.items():
        ids[i] = rid
    written = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    sample_size = int(real_entries.column("_size")[0].as_py())
    arrays: dict[str, Any] = {
        "row_id": pa.array(ids, pa.string()),
        "written_at": pa.array(
            np.datetime64(written.replace(tzinfo=None), "us") + np.arange(n).astype("m8[s]"),
            pa.timestamp("us", tz="UTC"),
        ),
        **{k: pa.array(meta[k]) for k in METADATA},
        "_path": pa.array(
            [f"run={r}/{rid}.bench.index.arrow" for r, rid in zip(meta["run"], ids, strict=True)]
        ),
        "_size": pa.array(np.full(n, sample_size, dtype=np.int64)),
        "_checksum": pa.array(
            [f"{x:016x}" for x in np.random.default_rng(4).integers(1 << 62, size=n)]
        ),
    }
    for f in schema:  # columns the benchmark does not vary (architecture_version): as written
        if f.name not in arrays:
            arrays[f.name] = pa.repeat(real_entries.column(f.name)[0], n)
    table = pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)
    keep = np.ones(n, dtype=bool)
    keep[real] = False  # the real rows' entries come from their files' own entries
    table = pa.concat_tables([table.filter(pa.array(keep)), real_entries.select(schema.names)])
    log_seen = [k[len(_index.LOG) :] for k, _ in cat.store.list(_index.LOG)]
    cat._index.rebuild(table, log_seen, fsync=False)
    elapsed = time.perf_counter() - t0
    check = Catalog.open(root)
    assert len(check) == n, (len(check), n)
    assert check.best("accuracy").row_id == by_position[best]  # type: ignore[union-attr]
    how = (
        f"generated metadata of {n:,} rows published as one index segment through Index.rebuild; "
        f"real row files only for the {len(real)} rows queries load: {elapsed:.0f} s"
    )
    return cat, how, [by_position[i] for i in real if i != best]


def peer_table(cat: Catalog) -> pa.Table:
    """The catalog's metadata as a peer stores it: the index without its own columns."""
    return cat.index_table().drop_columns(["_path", "_size", "_checksum"]).sort_by("row_id")


def build_parquet(path: Path, meta: pa.Table) -> str:
    t0 = time.perf_counter()
    pq.write_table(meta, path, compression="zstd", row_group_size=100_000)
    return (
        f"the same metadata in one Parquet file (zstd, row groups of 100,000): "
        f"{time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e6:.1f} MB"
    )


def build_lance(path: Path, meta: pa.Table, single: int) -> tuple[str, float]:
    """The same rows (metadata and 1 KB of weights as a binary column) in a Lance dataset: the
    first ``single`` rows one append each (timed), the rest in appends of 10,000 rows; then
    compacted, old versions cleaned up, and a BTREE index on row_id."""
    import lance

    n = meta.num_rows
    size = WEIGHT_FLOATS * 4  # each row its own random float32 weights, as checkpoints differ
    data = np.random.default_rng(5).random(n * WEIGHT_FLOATS, dtype=np.float32)
    large = (n + 1) * size >= 1 << 31  # 32-bit offsets up to 2 GiB
    offsets = np.arange(0, (n + 1) * size, size, dtype=np.int64 if large else np.int32)
    weights = pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(),
        n,
        [None, pa.py_buffer(offsets), pa.py_buffer(data)],
    )
    table = meta.append_column("weights", weights)
    single = min(single, n)
    t0 = time.perf_counter()
    for i in range(single):
        lance.write_dataset(table.slice(i, 1), path, mode="append" if i else "create")
    per_append = (time.perf_counter() - t0) / max(1, single)
    t1 = time.perf_counter()
    for start in range(single, n, 10_000):
        lance.write_dataset(table.slice(start, 10_000), path, mode="append" if start else "create")
    t2 = time.perf_counter()
    ds = lance.dataset(path)
    ds.optimize.compact_files()
    ds = lance.dataset(path)
    ds.cleanup_old_versions(older_than=dt.timedelta(0))
    ds.create_scalar_index("row_id", "BTREE")
    t3 = time.perf_counter()
    assert lance.dataset(path).count_rows() == n
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    how = (
        f"Lance {lance.__version__}: metadata + weights (binary, 1 KB); "
        + (
            f"{single:,} appends of one row ({per_append * 1e3:.1f} ms each), the rest "
            if single
            else ""
        )
        + f"in appends of 10,000 rows ({t2 - t1:.1f} s), "
        f"then compact_files + cleanup_old_versions + BTREE index on row_id ({t3 - t2:.1f} s); "
        f"{size / 1e6:.0f} MB"
    )
    return how, per_append


# -- the queries ----------------------------------------------------------------------------------


@dataclass
class Query:
    """One query, as each contender runs it."""

    kind: str  # best, len, scan filter, sql filter, get
    modelrows: Callable[[Catalog], object]
    label: str


def queries(run: str, epoch: int, ids: Iterator[str]) -> list[Query]:
    sql_filter = f"SELECT row_id, accuracy FROM models WHERE run = '{run}' AND epoch = {epoch}"
    return [
        Query("best", lambda c: c.best("accuracy"), "catalog.best('accuracy')"),
        Query("len", len, "len(catalog)"),
        Query(
            "scan filter",
            lambda c: (
                c.scan().filter((pl.col("run") == run) & (pl.col("epoch") == epoch)).collect()
            ),
            f"catalog.scan().filter(run == '{run}' & epoch == {epoch}).collect()",
        ),
        Query("sql filter", lambda c: c.sql(sql_filter).fetchall(), f'catalog.sql("{sql_filter}")'),
        Query("get", lambda c: c.get(next(ids)), "catalog.get(row_id)"),
    ]


def lance_ops(run: str, epoch: int, ids: Iterator[str]) -> dict[str, Callable[[Any], object]]:
    from lance.dataset import ColumnOrdering

    columns = ["row_id", "written_at", *METADATA]
    flt = f"run = '{run}' AND epoch = {epoch}"
    return {
        "best": lambda d: d.to_table(
            filter="accuracy IS NOT NULL",
            order_by=[ColumnOrdering("accuracy", ascending=False)],
            limit=1,
        ),
        "len": lambda d: d.count_rows(),
        "scan filter": lambda d: d.to_table(columns=columns, filter=flt),
        "sql filter": lambda d: d.to_table(columns=["row_id", "accuracy"], filter=flt),
        "get": lambda d: d.to_table(filter=f"row_id = '{next(ids)}'"),
    }


def parquet_ops(
    path: Path, run: str, epoch: int, ids: Iterator[str]
) -> dict[str, Callable[[duckdb.DuckDBPyConnection], object]]:
    src = f"read_parquet('{path}')"
    return {
        "best": lambda con: con.sql(
            f"SELECT * FROM {src} WHERE accuracy IS NOT NULL AND NOT isnan(accuracy) "
            "ORDER BY accuracy DESC, row_id LIMIT 1"
        ).fetchall(),
        "len": lambda con: con.sql(f"SELECT count(*) FROM {src}").fetchall(),
        "scan filter": lambda con: (
            pl.scan_parquet(path)
            .filter((pl.col("run") == run) & (pl.col("epoch") == epoch))
            .collect()
        ),
        "sql filter": lambda con: con.sql(
            f"SELECT row_id, accuracy FROM {src} WHERE run = '{run}' AND epoch = {epoch}"
        ).fetchall(),
        "get": lambda con: con.sql(
            f"SELECT * FROM {src} WHERE row_id = ?", params=[next(ids)]
        ).fetchall(),
    }


def cycle(items: list[str]) -> Iterator[str]:
    while True:
        yield from items


def bench_queries(
    label: str,
    root: Path,
    n: int,
    get_ids: list[str],
    reps: int,
    work: Path,
    *,
    peers: bool,
    lance_single: int,
    targets: dict[str, float],
) -> tuple[list[Result], list[str]]:
    """Every query on ``root`` from a fresh Catalog.open and on a warm object, and the same on the
    peers, in one round-robin race; results and the lines saying how the peers were built."""
    run, epoch = "run042", max(0, n // RUNS // PER_EPOCH // 2)
    ids = cycle(get_ids)
    qs = queries(run, epoch, ids)
    warm = Catalog.open(root)
    contenders: dict[tuple[str, str, str], Contender] = {}
    for q in qs:
        q.modelrows(warm)  # warm the object (and the page cache)
        contenders[("modelrows", "fresh", q.kind)] = Contender(
            f"{q.kind}: Catalog.open(root) + {q.label}",
            lambda q=q: q.modelrows(Catalog.open(root)),
        )
        contenders[("modelrows", "warm", q.kind)] = Contender(
            f"{q.kind}: {q.label}, warm object", lambda q=q: q.modelrows(warm)
        )
    how: list[str] = []
    if peers:
        meta = peer_table(warm)
        parquet = work / f"{label}.parquet"
        how.append(build_parquet(parquet, meta))
        log(f"  {how[-1]}")
        pops = parquet_ops(parquet, run, epoch, ids)
        con = duckdb.connect()
        for kind, op in pops.items():
            op(con)
            contenders[("parquet", "fresh", kind)] = Contender(
                f"{kind}: Parquet + DuckDB read_parquet, new connection",
                lambda op=op: op(duckdb.connect()),
            )
            contenders[("parquet", "warm", kind)] = Contender(
                f"{kind}: Parquet + DuckDB read_parquet, warm connection",
                lambda op=op, con=con: op(con),
            )
        try:
            import lance
        except ImportError:
            how.append("Lance: not installed (pip install pylance); skipped")
        else:
            lpath = work / f"{label}.lance"
            lhow, _ = build_lance(lpath, meta, lance_single)
            how.append(lhow)
            log(f"  {lhow}")
            lops = lance_ops(run, epoch, ids)
            lds = lance.dataset(str(lpath))
            for kind, op in lops.items():
                op(lds)
                contenders[("lance", "fresh", kind)] = Contender(
                    f"{kind}: Lance, lance.dataset(path) + query",
                    lambda op=op: op(lance.dataset(str(lpath))),
                )
                contenders[("lance", "warm", kind)] = Contender(
                    f"{kind}: Lance, warm dataset", lambda op=op, lds=lds: op(lds)
                )
    log(f"  timing {len(contenders)} contenders x {reps} rounds")
    timed_race(list(contenders.values()), reps=reps)
    out = []
    for state in ("fresh", "warm"):
        section = f"query {n:,} rows, {'fresh open' if state == 'fresh' else 'warm object'}"
        for q in qs:
            for who in ("modelrows", "lance", "parquet"):
                c = contenders.get((who, state, q.kind))
                if c is None:
                    continue
                ratios = {}
                tgts = []
                if who == "modelrows":
                    for peer, name in (("lance", "Lance"), ("parquet", "Parquet+DuckDB")):
                        other = contenders.get((peer, state, q.kind))
                        if other is not None:
                            ratios[f"vs {name}"] = paired_ratio(c, other)
                    limit = targets.get(q.kind)
                    if state == "fresh" and limit is not None:
                        tgts.append((f"< {limit * 1e3:g} ms", c.median < limit))
                name = f"modelrows: {c.name}" if who == "modelrows" else c.name
                out.append(
                    Result(
                        section,
                        name,
                        c.median,
                        detail(c),
                        ratios,
                        tgts,
                        extra={
                            "who": who,
                            "state": state,
                            "kind": q.kind,
                            "times": c.times,
                            "cpu": cpu_times(c),
                        },
                    )
                )
    return out, how


TARGETS = {"best": 0.1, "len": 0.02, "scan filter": 0.1, "sql filter": 0.1, "get": 0.005}
BIG_TARGETS = {"best": 1.0}


def bench_uncompacted(
    cat: Catalog, root: Path, n: int, get_ids: list[str], appends: int, reps: int
) -> list[Result]:
    """The queries from a fresh open after ``appends`` single appends that no compaction has
    folded yet (each is one small Parquet file in the log that every query reads)."""
    base = torch.randn(WEIGHT_FLOATS)
    meta = metadata(RUNS, seed=9)
    for i in range(appends):
        cat.append(make_row(meta, i % RUNS, base), fsync=False)
    entries = len(cat.store.list(_index.LOG))
    run, epoch = "run042", max(0, n // RUNS // PER_EPOCH // 2)
    qs = queries(run, epoch, cycle(get_ids))
    cs = [
        Contender(f"{q.kind}: Catalog.open(root) + {q.label}", lambda q=q: q.modelrows(Catalog.open(root)))
        for q in qs
    ]  # fmt: skip
    timed_race(cs, reps=reps)
    section = (
        f"query {n:,} rows + {appends} appends not compacted ({entries} log entries), fresh open"
    )
    return [
        Result(section, "modelrows: " + c.name, c.median, detail(c),
               extra={"kind": q.kind, "times": c.times, "cpu": cpu_times(c), "log_entries": entries})
        for q, c in zip(qs, cs, strict=True)
    ]  # fmt: skip


# -- the command line, end to end ------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The environment of a child that imports the modelrows this script imported."""
    src = str(Path(modelrows.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def cli_command() -> list[str]:
    script = shutil.which("modelrows", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-c", "import sys; from modelrows.cli import main; sys.exit(main())"]


def bench_cli(root: Path, n: int, reps: int, warmup: int, *, torch_too: bool) -> list[Result]:
    """``modelrows best`` end to end in a new process, beside what any process pays to start:
    the interpreter, ``import modelrows.cli``, and torch (which the CLI imports today)."""
    env = cli_env()

    def child(args: list[str]) -> Callable[[], None]:
        def run() -> None:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")

        return run

    best = Contender(
        "modelrows best ROOT --by accuracy --format json (subprocess)",
        child([*cli_command(), "best", str(root), "--by", "accuracy", "--format", "json"]),
    )
    others = [
        Contender(
            "python -c 'import modelrows.cli' (what every command pays first)",
            child([sys.executable, "-c", "import modelrows.cli"]),
        ),
        Contender("python -c pass", child([sys.executable, "-c", "pass"])),
    ]
    if torch_too:  # seconds on a busy machine: not in --quick
        others.insert(
            1, Contender("python -c 'import torch'", child([sys.executable, "-c", "import torch"]))
        )
    timed_race([best, *others], reps=reps, warmup=warmup)
    section = f"cli {n:,} rows"
    out = [
        Result(section, "modelrows: " + best.name, best.median, detail(best), {},
               [("< 1000 ms", best.median < 1.0)],
               extra={"times": best.times, "cpu": cpu_times(best)}),
    ]  # fmt: skip
    for c in others:
        out.append(
            Result(section, c.name, c.median, detail(c),
                   extra={"times": c.times, "cpu": cpu_times(c)})
        )  # fmt: skip
    return out


# -- small appends -----------------------------------------------------------------------------------


class AppendPair:
    """``catalog.append`` of ``chunk`` rows against writing the same rows' files alone."""

    def __init__(self, cat: Catalog, part: Path, chunk: int, *, fsync: bool) -> None:
        self.cat, self.part, self.chunk, self.fsync = cat, part, chunk, fsync
        self.base = torch.randn(WEIGHT_FLOATS)
        self.meta = metadata(RUNS, seed=6)
        self.rows: list[IndexBenchRowV1] = []
        self.written: list[Path] = []

    def prepare(self) -> None:  # untimed: fresh row objects (no checksum cached)
        self.rows = [make_row(self.meta, 7, self.base) for _ in range(self.chunk)]

    def append(self) -> None:
        for row in self.rows:
            self.cat.append(row, fsync=self.fsync)

    def alone(self) -> None:
        for row in self.rows:
            path = self.part / f"{_index.new_id()}.bench.index.arrow"
            write_model_row(path, row, fsync=self.fsync)
            self.written.append(path)

    def drop(self) -> None:  # untimed: the partition keeps its size
        for path in self.written:
            path.unlink()
        self.written.clear()


def bench_append(cat: Catalog, sizes: Sizes) -> list[Result]:
    """``catalog.append`` (row file + index entry, into the catalog of ``sizes.rows`` rows)
    against writing the same row file alone into the partition (``write_model_row``: temporary
    name, fsync, rename, directory fsync: what an append was before the index), paired,
    round-robin (A B, B A, ...)."""
    part = cat.root / "run=run007"
    part.mkdir(exist_ok=True)
    out = []
    for fsync in (False, True):
        chunk = sizes.append_chunk if not fsync else max(1, sizes.append_chunk // 2)
        pair = AppendPair(cat, part, chunk, fsync=fsync)
        a = Contender(
            f"catalog.append(row, fsync={fsync}) (row file + index entry)",
            pair.append,
            before=pair.prepare,
        )
        b = Contender(
            f"write_model_row(partition/<id>.arrow, row, fsync={fsync}) (the row file alone)",
            pair.alone,
            before=pair.prepare,
            after=pair.drop,
        )
        timed_race([a, b], reps=sizes.append_reps)
        paired = paired_ratio(a, b)
        total = sum(a.times) / sum(b.times)
        section = f"append 1 KB rows, fsync={fsync}, {chunk} per round"
        out.append(
            Result(
                section,
                "modelrows: " + a.name,
                a.median / chunk,
                f"{chunk / a.median:,.0f} appends/s, {detail(a, chunk)}",
                {"paired vs the file alone": paired, "total time vs the file alone": total},
                [("<= 1.2x the file alone", paired <= 1.2)],
                extra={"times": a.times, "cpu": cpu_times(a), "per_round": chunk},
            )
        )
        out.append(
            Result(
                section,
                b.name,
                b.median / chunk,
                f"{chunk / b.median:,.0f} appends/s, {detail(b, chunk)}",
                extra={"times": b.times, "cpu": cpu_times(b), "per_round": chunk},
            )
        )
    return out


def profile(cat: Catalog, root: Path, get_id: str) -> None:
    """pyinstrument profiles of fresh queries and of appends, on stderr."""
    from pyinstrument import Profiler

    base = torch.randn(WEIGHT_FLOATS)
    meta = metadata(RUNS, seed=7)
    jobs: list[tuple[str, Callable[[], object]]] = [
        ("5 x Catalog.open + best('accuracy')", lambda: [Catalog.open(root).best("accuracy") for _ in range(5)]),
        ("5 x Catalog.open + len", lambda: [len(Catalog.open(root)) for _ in range(5)]),
        ("20 x Catalog.open + get", lambda: [Catalog.open(root).get(get_id) for _ in range(20)]),
        ("200 x append(fsync=False)", lambda: [cat.append(make_row(meta, 3, base), fsync=False) for _ in range(200)]),
        ("50 x append(fsync=True)", lambda: [cat.append(make_row(meta, 3, base), fsync=True) for _ in range(50)]),
    ]  # fmt: skip
    for label, job in jobs:
        profiler = Profiler(interval=0.0002)
        profiler.start()
        job()
        profiler.stop()
        log(f"\n== profile: {label}")
        text = profiler.output_text(
            unicode=False,
            color=False,
            processor_options={"show_regex": r".*[\\/]modelrows[\\/].*", "filter_threshold": 0.02},
        )
        log(text)


# -- the table -----------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    try:
        import lance

        lance_version = lance.__version__
    except ImportError:
        lance_version = "not installed"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "polars": pl.__version__,
        "duckdb": duckdb.__version__,
        "pylance": lance_version,
    }


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.2f} ms" if ms < 10 else f"{ms:,.1f} ms"


def render(results: list[Result]) -> str:
    header = ("section", "contender", "median", "detail", "ratio", "target")
    rows = []
    for r in results:
        ratio = ", ".join(f"{v:.2f}x {k}" for k, v in r.ratios.items())
        tgt = "; ".join(f"{label}: {'met' if met else 'MISSED'}" for label, met in r.targets)
        rows.append((r.section, r.name, fmt_ms(r.value), r.detail, ratio, tgt))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return "\n".join(lines)


SECTIONS = ("query", "cli", "append", "big")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument("--rows", type=int, help="rows of the real catalog (default 100,000)")
    parser.add_argument(
        "--big-rows", type=int, help="rows of the fast-path catalog (default 1,000,000; 0: none)"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each query (median)")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--no-peers", action="store_true", help="skip Lance and Parquet+DuckDB")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles on stderr")
    parser.add_argument("--dir", help="where to put benchmark data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark data")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON ('-': stdout)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rows is not None:
        sizes.rows = args.rows
    if args.big_rows is not None:
        sizes.big_rows = args.big_rows
    if args.reps:
        sizes.reps = sizes.big_reps = args.reps
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if only - set(SECTIONS):
        parser.error(f"unknown sections {sorted(only - set(SECTIONS))}; choose from {SECTIONS}")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="modelrows-bench-index-", dir=args.dir))
    started = time.perf_counter()
    results: list[Result] = []
    how: list[str] = []
    peers = not args.no_peers
    try:
        if only & {"query", "cli", "append"}:
            log(f"building a catalog of {sizes.rows:,} rows")
            root = work / "catalog"
            cat, line = build_real(root, sizes.rows)
            how.append(f"{sizes.rows:,} rows: {line}")
            log(f"  {line}")
            get_ids = random.Random(8).sample(cat.index_table().column("row_id").to_pylist(), 50)
            if "query" in only:
                log("queries")
                res, lines = bench_queries(
                    "rows", root, sizes.rows, get_ids, sizes.reps, work,
                    peers=peers, lance_single=sizes.lance_single_appends, targets=TARGETS,
                )  # fmt: skip
                results += res
                how += [f"{sizes.rows:,} rows: {x}" for x in lines]
            if "cli" in only:
                log("the command line")
                results += bench_cli(
                    root, sizes.rows, sizes.cli_reps, sizes.cli_warmup, torch_too=not args.quick
                )
            if "query" in only and sizes.log_appends:
                log(f"queries with {sizes.log_appends} appends not yet compacted")
                results += bench_uncompacted(
                    cat, root, sizes.rows, get_ids, sizes.log_appends, sizes.reps
                )
            if args.profile:
                profile(cat, root, get_ids[0])
            if "append" in only:
                log("appends")
                results += bench_append(cat, sizes)
            shutil.rmtree(root, ignore_errors=True)
        if "big" in only and sizes.big_rows:
            log(f"building a catalog of {sizes.big_rows:,} rows (fast path)")
            root = work / "big"
            _, line, big_ids = build_synthetic(root, sizes.big_rows, 20)
            how.append(f"{sizes.big_rows:,} rows: {line}")
            log(f"  {line}")
            res, lines = bench_queries(
                "big", root, sizes.big_rows, big_ids, sizes.big_reps, work,
                peers=peers, lance_single=0, targets=BIG_TARGETS,
            )  # fmt: skip
            results += res
            how += [f"{sizes.big_rows:,} rows: {x}" for x in lines]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    info = versions()
    mode = "quick" if args.quick else "full"
    print(
        f"modelrows index benchmark ({mode}, {elapsed:.0f} s): "
        + ", ".join(f"{k} {v}" for k, v in info.items())
    )
    for line in how:
        print(f"- {line}")
    print(render(results))
    verdicts = [met for r in results for _, met in r.targets]
    print(f"targets met: {sum(verdicts)} of {len(verdicts)}")
    if args.json:
        payload = {
            "mode": mode,
            "seconds": elapsed,
            "machine": info,
            "rows": sizes.rows,
            "big_rows": sizes.big_rows,
            "how": how,
            "results": [asdict(r) for r in results],
        }
        text = json.dumps(payload, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
