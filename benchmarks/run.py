"""modelrows against safetensors and torch.save, measured side by side in one run.

    python benchmarks/run.py            # the full suite (about 400 MB models, 1 GB peak test)
    python benchmarks/run.py --quick    # small sizes, a few seconds: checks the suite still runs
    python benchmarks/run.py --json results.json --only save,load

Prints one table: each contender's median over several repetitions (round-robin, warm page
cache), its ratio against the reference of its section, and the targets of docs/benchmarks.md
as met or missed. Needs the ``bench`` extra (safetensors) besides modelrows itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl
import torch
from common import (
    MB,
    BenchRowV1,
    Contender,
    build_model,
    memcpy_into,
    paired_ratio,
    proc_io,
    proc_status,
    race,
    state_bytes,
    unlink,
)
from safetensors.torch import load_file, load_model, save_file

from modelrows import (
    Catalog,
    ModelV1,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)

HERE = Path(__file__).resolve().parent
SECTIONS = ("save", "load", "peak", "query", "append")


@dataclass
class Sizes:
    model_bytes: int
    peak_bytes: int
    reps: int
    query_small_rows: tuple[int, ...]
    query_large_rows: tuple[int, ...]
    query_reps: int
    append_rows: int
    append_rows_fsync: int
    peak_methods: int  # how many of the load methods the peak-memory section runs
    load_reps: int  # loads take tens of milliseconds: more rounds steady their paired ratios
    prefault: int = 3  # before each timed save, touch this many checkpoints' worth of memory


FULL = Sizes(400 * MB, 1000 * MB, 7, (1_000, 2_000, 10_000), (1_000, 2_000), 5, 2_000, 200, 6, 25)
QUICK = Sizes(19 * MB, 38 * MB, 2, (40, 80), (40, 80), 2, 50, 10, 2, 2)
SMALL_WEIGHTS = 4 * 1024
LARGE_WEIGHTS = 4 * 1024 * 1024


@dataclass
class Result:
    """One line of the table."""

    section: str
    name: str
    value: float  # seconds, bytes or rows per second, as ``unit`` says
    unit: str
    detail: str = ""  # throughput, bytes read ...
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[tuple[str, bool]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def timing(
        cls,
        section: str,
        c: Contender,
        nbytes: int,
        ratios: dict[str, float],
        targets: list[tuple[str, bool]],
    ) -> Result:
        """A timed contender's line: median time, throughput over ``nbytes``, every repetition."""
        return cls(
            section, c.name, c.median, "s", gbps(nbytes, c.median), ratios, targets,
            extra={"times": c.times},
        )  # fmt: skip


def fmt_value(r: Result) -> str:
    if r.unit == "s":
        return f"{r.value * 1e3:,.1f} ms"
    if r.unit == "B":
        return f"{r.value / MB:,.0f} MB"
    return f"{r.value:,.0f} {r.unit}"


def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.2f} GB/s"


def target(
    label: str, ratio: float, *, at_least: float | None = None, at_most: float | None = None
):
    met = (at_least is None or ratio >= at_least) and (at_most is None or ratio <= at_most)
    return (label, bool(met))


# -- 1. save -----------------------------------------------------------------------------------------


def bench_save(sizes: Sizes, work: Path, dtype: torch.dtype) -> list[Result]:
    model = build_model(sizes.model_bytes, dtype)
    nbytes = state_bytes(model)
    label = f"save {str(dtype).removeprefix('torch.')} {nbytes / MB:.0f} MB"
    d = work / f"save-{label.split()[1]}"
    d.mkdir()
    cat = Catalog.create(d / "catalog", BenchRowV1, partition_by=["run"])
    fetched = ModelV1(weights=fetch_weights(model))
    ids: list[str] = []

    def append(fsync: bool, copy: bool = False) -> None:
        weights = fetch_weights(model, copy=copy)
        ids.append(
            cat.append(BenchRowV1(weights=weights, run="a", epoch=1, accuracy=0.5), fsync=fsync)
        )

    def drop_appended() -> None:
        cat.path_of(ids.pop()).unlink()

    def st_fsync(path: Path) -> None:
        save_file(model.state_dict(), path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    p = {k: d / f"{k}.bin" for k in ("ours", "snap", "write", "st", "stf", "pt")}
    ours = Contender(
        "modelrows: write_model_row(ModelV1(weights=fetch_weights(model, copy=False)))",
        lambda: write_model_row(
            p["ours"], ModelV1(weights=fetch_weights(model, copy=False)), fsync=False
        ),
        after=lambda: unlink(p["ours"]),
    )
    append_live = Contender(
        "modelrows: catalog.append(fsync=False), fetch_weights(model, copy=False)",
        lambda: append(False),
        after=drop_appended,
    )
    cs = [
        ours,
        append_live,
        Contender(
            "modelrows: catalog.append(fsync=True), fetch_weights(model, copy=False)",
            lambda: append(True),
            after=drop_appended,
        ),
        Contender(
            "modelrows: write_model_row(ModelV1(weights=fetch_weights(model))), snapshot copy",
            lambda: write_model_row(p["snap"], ModelV1(weights=fetch_weights(model)), fsync=False),
            after=lambda: unlink(p["snap"]),
        ),
        Contender(
            "modelrows: fetch_weights(model) only (the snapshot copy)", lambda: fetch_weights(model)
        ),
        Contender(
            "modelrows: write_model_row only (snapshot fetched beforehand)",
            lambda: write_model_row(p["write"], fetched, fsync=False),
            after=lambda: unlink(p["write"]),
            # forget the cached checksum: each write hashes the bytes, as for fresh weights
            before=lambda: object.__setattr__(fetched.weights, "_checksum", None),
        ),
        Contender(
            "modelrows: catalog.append(fsync=False), snapshot copy",
            lambda: append(False, copy=True),
            after=drop_appended,
        ),
        Contender(
            "safetensors: save_file(model.state_dict())",
            lambda: save_file(model.state_dict(), p["st"]),
            after=lambda: unlink(p["st"]),
        ),
        Contender(
            "safetensors: save_file + fsync",
            lambda: st_fsync(p["stf"]),
            after=lambda: unlink(p["stf"]),
        ),
        Contender(
            "torch.save(model.state_dict())",
            lambda: torch.save(model.state_dict(), p["pt"]),
            after=lambda: unlink(p["pt"]),
        ),
    ]
    race(cs, reps=sizes.reps, prefault_bytes=sizes.prefault * nbytes, settle=True)
    st = next(c for c in cs if c.name.startswith("safetensors: save_file(model"))
    out = []
    for c in cs:
        speed = paired_ratio(st, c)
        targets = []
        if c is ours or c is append_live:
            targets.append(target(">= 1.0x safetensors", speed, at_least=1.0))
        out.append(Result.timing(label, c, nbytes, {"vs safetensors": speed}, targets))
    shutil.rmtree(d)
    return out


# -- 2. load -----------------------------------------------------------------------------------------


@dataclass
class Saved:
    """One model saved by every contender of a load: a row file, a catalog row, safetensors and
    torch.save files."""

    row_file: Path
    catalog: Catalog
    row_id: str
    st: Path
    pt: Path


def save_everywhere(model: torch.nn.Module, d: Path) -> Saved:
    ours, st, pt = d / "m.model.arrow", d / "m.safetensors", d / "m.pt"
    write_model_row(ours, ModelV1(weights=fetch_weights(model)), fsync=False)
    cat = Catalog.create(d / "catalog", BenchRowV1, partition_by=["run"])
    row_id = cat.append(BenchRowV1(weights=fetch_weights(model), run="a"), fsync=False)
    save_file(model.state_dict(), st)
    torch.save(model.state_dict(), pt)
    return Saved(ours, cat, row_id, st, pt)


def bench_load(sizes: Sizes, work: Path, dtype: torch.dtype) -> list[Result]:
    model = build_model(sizes.model_bytes, dtype)
    nbytes = state_bytes(model)
    label = f"load {str(dtype).removeprefix('torch.')} {nbytes / MB:.0f} MB"
    d = work / f"load-{label.split()[1]}"
    d.mkdir()
    saved = save_everywhere(model, d)
    ours, st, pt, cat, row_id = saved.row_file, saved.st, saved.pt, saved.catalog, saved.row_id
    source = {k: v.clone() for k, v in model.state_dict().items()}
    del model
    fresh = build_model(sizes.model_bytes, dtype, seed=1)

    memcpy = Contender("memcpy limit: copy_ an in-memory state dict", memcpy_into(fresh, source))
    mine = Contender(
        "modelrows: load_weights(model, read_model_row(path).weights)",
        lambda: load_weights(fresh, read_model_row(ours).weights),
    )
    from_cat = Contender(
        "modelrows: load_weights(model, catalog.get(row_id).weights)",
        lambda: load_weights(fresh, cat.get(row_id).weights),
    )
    st_model = Contender("safetensors: load_model(model, path)", lambda: load_model(fresh, st))
    cs = [
        memcpy,
        mine,
        from_cat,
        st_model,
        Contender(
            "safetensors: model.load_state_dict(load_file(path))",
            lambda: fresh.load_state_dict(load_file(st)),
        ),
        Contender(
            "torch.load(mmap=True, weights_only=True) + load_state_dict",
            lambda: fresh.load_state_dict(torch.load(pt, mmap=True, weights_only=True)),
        ),
    ]
    race(cs, reps=sizes.load_reps)  # no prefault: loading into a built model allocates little
    for k, v in fresh.state_dict().items():  # the loads really happened
        assert torch.equal(v, source[k]), k
    out = []
    for c in cs:
        ratios = {"vs safetensors": paired_ratio(st_model, c), "vs memcpy": paired_ratio(memcpy, c)}
        targets = []
        if c is mine or c is from_cat:
            targets = [
                target(">= 1.0x safetensors", ratios["vs safetensors"], at_least=1.0),
                target(">= 0.9x memcpy", ratios["vs memcpy"], at_least=0.9),
            ]
        out.append(Result.timing(label, c, nbytes, ratios, targets))
    shutil.rmtree(d)
    return out


# -- 3. peak memory ----------------------------------------------------------------------------------


def peak_of(method: str, path: str, target_bytes: int) -> dict[str, int]:
    """Run one load in a fresh process; return its extra VmHWM and sampled anonymous peak."""
    child = subprocess.Popen(
        [sys.executable, str(HERE / "peak_child.py"), method, path, str(target_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"peak child for {method} failed to start: {line!r}")
        ready = json.loads(line.split(" ", 1)[1])
        anon_peak = ready["RssAnon"]
        child.stdin.write("go\n")
        child.stdin.flush()
        done_line = ""
        while not done_line:  # sample the anonymous RSS from outside about every millisecond
            with contextlib.suppress(FileNotFoundError, KeyError, ProcessLookupError):
                anon_peak = max(anon_peak, proc_status(child.pid)["RssAnon"])
            readable, _, _ = select.select([child.stdout], [], [], 0.001)
            if readable:
                done_line = child.stdout.readline() or "eof"
        if not done_line.startswith("done "):
            raise RuntimeError(f"peak child for {method} failed: {done_line!r}")
        done = json.loads(done_line.split(" ", 1)[1])
    finally:
        child.stdin.close()
        child.wait(timeout=120)
    return {
        "hwm_extra": done["VmHWM"] - ready["VmHWM"],
        "anon_extra": max(anon_peak, done["RssAnon"]) - ready["RssAnon"],
        "model_rss": ready["VmRSS"],
    }


def bench_peak(sizes: Sizes, work: Path) -> list[Result]:
    model = build_model(sizes.peak_bytes)
    nbytes = state_bytes(model)
    label = f"peak memory, load {nbytes / MB:.0f} MB"
    d = work / "peak"
    d.mkdir()
    saved = save_everywhere(model, d)
    ours, st, pt, row_id = saved.row_file, saved.st, saved.pt, saved.row_id
    del model
    methods = [
        ("modelrows: read_model_row + load_weights", "modelrows", ours),
        ("safetensors: load_model", "safetensors.load_model", st),
        ("modelrows: catalog.get + load_weights", "catalog", f"{d / 'catalog'}#{row_id}"),
        ("safetensors: load_file + load_state_dict", "safetensors.load_file", st),
        ("torch.load(mmap=True) + load_state_dict", "torch.load(mmap)", pt),
        ("torch.load (no mmap) + load_state_dict", "torch.load", pt),
    ]
    out = []
    for name, method, path in methods[: sizes.peak_methods]:
        m = peak_of(method, str(path), sizes.peak_bytes)
        ratio = m["hwm_extra"] / nbytes
        targets = []
        if method in ("modelrows", "catalog"):
            targets.append(target("<= 1.1x checkpoint", ratio, at_most=1.1))
        out.append(
            Result(
                label,
                name,
                m["hwm_extra"],
                "B",
                f"anon +{m['anon_extra'] / MB:,.0f} MB",
                {"HWM / checkpoint": ratio, "anon / checkpoint": m["anon_extra"] / nbytes},
                targets,
                extra=m,
            )
        )
    shutil.rmtree(d)
    return out


# -- 4. queries --------------------------------------------------------------------------------------


def fill(cat: Catalog, start: int, stop: int, weights_bytes: int, rng: random.Random) -> None:
    base = torch.randn(weights_bytes // 4)
    for i in range(start, stop):
        base[0] = i  # every row's weights differ
        row = BenchRowV1(
            weights={"w": base}, run=f"run{i % 10}", epoch=i // 10, accuracy=rng.random()
        )
        cat.append(row, fsync=False)


QUERIES: dict[str, Callable[[Catalog], object]] = {
    "best by accuracy: catalog.best('accuracy')": lambda c: c.best("accuracy"),
    "best by accuracy: Polars": lambda c: (
        c.scan().sort("accuracy", descending=True, nulls_last=True).head(1).collect()
    ),
    "best by accuracy: DuckDB": lambda c: c.sql(
        "SELECT row_id, run, epoch, accuracy FROM models ORDER BY accuracy DESC LIMIT 1"
    ).fetchall(),
    "run and epoch: catalog.best(where=...)": lambda c: c.best(
        "accuracy", where="run = 'run3' AND epoch = 7"
    ),
    "run and epoch: Polars": lambda c: (
        c.scan().filter((pl.col("run") == "run3") & (pl.col("epoch") == 7)).collect()
    ),
    "run and epoch: DuckDB": lambda c: c.sql(
        "SELECT row_id, accuracy FROM models WHERE run = 'run3' AND epoch = 7"
    ).fetchall(),
}


def bench_queries(sizes: Sizes, work: Path) -> list[Result]:
    """Grow a catalog of 4 KB rows and one of 4 MB rows; at each row count, time every query on
    both, round-robin, so the two weight sizes are compared under the same machine conditions."""
    rng = random.Random(0)
    catalogs = {
        w: Catalog.create(work / f"query-{w}", BenchRowV1, partition_by=["run"])
        for w in (SMALL_WEIGHTS, LARGE_WEIGHTS)
    }
    filled = dict.fromkeys(catalogs, 0)
    measured: dict[tuple[int, int], dict[str, tuple[Contender, int]]] = {}
    for n in sorted(set(sizes.query_small_rows) | set(sizes.query_large_rows)):
        present = [
            w
            for w, counts in (
                (SMALL_WEIGHTS, sizes.query_small_rows),
                (LARGE_WEIGHTS, sizes.query_large_rows),
            )
            if n in counts
        ]
        for w in present:
            fill(catalogs[w], filled[w], n, w, rng)
            filled[w] = n
        cs = {
            (w, name): Contender(name, lambda q=q, c=catalogs[w]: q(c))
            for w in present
            for name, q in QUERIES.items()
        }
        race(list(cs.values()), reps=sizes.query_reps)
        for w in present:
            results = {}
            for name, q in QUERIES.items():
                before = proc_io()["rchar"]
                q(catalogs[w])
                results[name] = (cs[(w, name)], proc_io()["rchar"] - before)
            measured[(w, n)] = results
    for w in catalogs:
        shutil.rmtree(work / f"query-{w}")
    out = []
    small_first = sizes.query_small_rows[0]
    for (weights_bytes, n), results in sorted(measured.items()):
        size = "4 KB" if weights_bytes == SMALL_WEIGHTS else "4 MB"
        label = f"query, {n:,} rows x {size} weights"
        for name, (c, read) in results.items():
            ratios: dict[str, float] = {}
            targets = []
            if weights_bytes == LARGE_WEIGHTS and (SMALL_WEIGHTS, n) in measured:
                ratio = paired_ratio(c, measured[(SMALL_WEIGHTS, n)][name][0])
                ratios["4 MB / 4 KB time"] = ratio
                targets.append(target("<= 1.3x 4 KB time", ratio, at_most=1.3))
            elif weights_bytes == SMALL_WEIGHTS and n != small_first:
                ratios[f"time / {small_first:,} rows"] = (
                    c.median / measured[(SMALL_WEIGHTS, small_first)][name][0].median
                )
            out.append(
                Result(
                    label,
                    name,
                    c.median,
                    "s",
                    f"{read / 1000:,.0f} KB read",
                    ratios,
                    targets,
                    extra={"bytes_read": read, "times": c.times},
                )
            )
    return out


# -- 5. small appends --------------------------------------------------------------------------------


def bench_append(sizes: Sizes, work: Path) -> list[Result]:
    d = work / "append"
    d.mkdir()
    weights = {"w": torch.randn(SMALL_WEIGHTS // 4)}
    out = []
    for fsync, n in ((False, sizes.append_rows), (True, sizes.append_rows_fsync)):
        cat = Catalog.create(d / f"catalog-{fsync}", BenchRowV1, partition_by=["run"])
        chunk = max(1, n // 5)
        ours = Contender(
            f"modelrows: catalog.append(fsync={fsync}), 4 KB rows",
            lambda cat=cat, fsync=fsync, chunk=chunk: append_rows(cat, weights, chunk, fsync=fsync),
        )
        peer = Contender(
            f"safetensors: save_file of the same 4 KB, one file each{' + fsync' if fsync else ''}",
            lambda fsync=fsync, chunk=chunk: save_files(d, weights, chunk, fsync=fsync),
        )
        race([ours, peer], reps=5, warmup=0 if sizes is QUICK else 1)
        for c in (ours, peer):
            rate = chunk / c.median
            ratios = {"vs safetensors": paired_ratio(peer, c)}
            out.append(
                Result(
                    f"append {n:,} small rows",
                    c.name,
                    rate,
                    "rows/s",
                    f"{c.median / chunk * 1e3:.2f} ms/row",
                    ratios,
                    extra={"times": c.times, "rows_per_time": chunk},
                )
            )
    shutil.rmtree(d)
    return out


def append_rows(cat: Catalog, weights: dict[str, torch.Tensor], n: int, *, fsync: bool) -> None:
    for i in range(n):
        row = BenchRowV1(weights=weights, run=f"run{i % 10}", epoch=i, accuracy=0.5)
        cat.append(row, fsync=fsync)


def save_files(d: Path, weights: dict[str, torch.Tensor], n: int, *, fsync: bool) -> None:
    for _ in range(n):
        path = d / f"{time.time_ns()}-{random.getrandbits(32):08x}.safetensors"
        save_file(weights, path)
        if fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# -- the table ---------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import duckdb
    import pyarrow
    import safetensors

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = proc_meminfo_total()
    thp = "?"
    with contextlib.suppress(OSError):
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem / 1e9:.0f} GB",
        "kernel": platform.release(),
        "thp": thp,
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "safetensors": safetensors.__version__,
        "polars": pl.__version__,
        "duckdb": duckdb.__version__,
    }


def proc_meminfo_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def render(results: list[Result]) -> str:
    header = ("section", "contender", "median", "detail", "ratio", "target")
    rows = []
    for r in results:
        ratio = ", ".join(f"{v:.2f}x {k}" for k, v in r.ratios.items())
        tgt = "; ".join(f"{label}: {'met' if met else 'MISSED'}" for label, met in r.targets)
        rows.append((r.section, r.name, fmt_value(r), r.detail, ratio, tgt))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON ('-': stdout)"
    )
    parser.add_argument("--dir", help="where to put benchmark data (default: a temp dir)")
    parser.add_argument("--reps", type=int, help="repetitions of each timing (median)")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark data")
    parser.add_argument(
        "--no-prefault",
        action="store_true",
        help="do not touch fresh memory before each timed save (see benchmarks/common.py)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads for everyone (default: torch's own)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes.reps = sizes.query_reps = sizes.load_reps = args.reps
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.no_prefault:
        sizes.prefault = 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="modelrows-bench-", dir=args.dir))
    started = time.perf_counter()
    results: list[Result] = []
    steps: list[tuple[str, Callable[[], list[Result]]]] = [
        ("save", lambda: bench_save(sizes, work, torch.float32)),
        ("save", lambda: bench_save(sizes, work, torch.bfloat16)),
        ("load", lambda: bench_load(sizes, work, torch.float32)),
        ("load", lambda: bench_load(sizes, work, torch.bfloat16)),
        ("peak", lambda: bench_peak(sizes, work)),
        ("query", lambda: bench_queries(sizes, work)),
        ("append", lambda: bench_append(sizes, work)),
    ]
    try:
        for section, step in steps:
            if section in only:
                t0 = time.perf_counter()
                results += step()
                print(f"[{section}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    info = machine()
    mode = "quick" if args.quick else "full"
    print(
        f"modelrows benchmarks ({mode}, {elapsed:.0f} s): "
        + ", ".join(f"{k} {v}" for k, v in info.items())
    )
    print(render(results))
    verdicts = [met for r in results for _, met in r.targets]
    print(f"targets met: {sum(verdicts)} of {len(verdicts)}")
    if args.json:
        payload = {
            "mode": mode,
            "seconds": elapsed,
            "machine": info,
            "results": [asdict(r) for r in results],
            "medians_of": {
                "reps": sizes.reps,
                "load_reps": sizes.load_reps,
                "query_reps": sizes.query_reps,
            },
        }
        text = json.dumps(payload, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
