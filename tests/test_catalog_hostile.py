"""Reliability round 2 (issue 17) for the catalog: hostile descriptions and directories,
concurrent creators, threads sharing one Catalog, SQL that must not reach outside the catalog,
and every documented field type through every query."""

from __future__ import annotations

import datetime as dt
import errno
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch.nn as nn

from modelrows import (
    Catalog,
    CatalogError,
    ModelRowsError,
    ModelV1,
    Row,
    RowFileError,
    StorageError,
    fetch_weights,
)
from modelrows._catalog import _index


class HostileRowV1(ModelV1, schema="hostile.row", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None


def weights() -> object:
    return fetch_weights(nn.Linear(2, 2))


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog.create(tmp_path / "c", HostileRowV1, partition_by=["run"])
    for i in range(4):
        cat.append(HostileRowV1(weights=weights(), run=f"r{i % 2}", epoch=i, accuracy=i / 4))
    return cat


# -- the catalog description -----------------------------------------------------------------------


def _description(catalog: Catalog) -> Path:
    return catalog.root / "_modelrows_catalog.json"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[" * 100_000 + "]" * 100_000, "not JSON (RecursionError)"),
        ("[1, 2, 3]", "a JSON list, not an object"),
        ('"catalog"', "a JSON str, not an object"),
        ("{not json", "not JSON (JSONDecodeError)"),
    ],
    ids=["deeply-nested", "array", "string", "garbage"],
)
def test_a_malformed_description_is_a_catalog_error_naming_the_file(
    catalog: Catalog, content: str, problem: str
) -> None:
    path = _description(catalog)
    path.write_text(content)
    with pytest.raises(CatalogError) as info:
        Catalog.open(catalog.root)
    assert str(info.value) == (
        f"{path} is not a valid catalog description: {problem}. It is not what Catalog.create "
        "wrote; restore it, or create the catalog again in an empty directory."
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"partition_by": ["nope"]}, "'partition_by' names 'nope', not a column"),
        ({"partition_by": [3]}, "'partition_by' is not a list of column names"),
        ({"partition_by": "run"}, "'partition_by' is not a list of column names"),
        ({"partition_by": ["accuracy"]}, "partition column 'accuracy' is double, not str or int"),
        ({"schema": 7}, "'schema' is missing or not a string"),
        ({"format_version": "2"}, "'format_version' is '2'"),
        ({"arrow_schema": "!!"}, "'arrow_schema' cannot be read"),
    ],
)
def test_a_description_with_wrong_values_is_refused_at_open(
    catalog: Catalog, change: dict[str, object], problem: str
) -> None:
    path = _description(catalog)
    meta = json.loads(path.read_text())
    meta.update(change)
    path.write_text(json.dumps(meta))
    with pytest.raises(
        CatalogError,
        match="^"
        + __import__("re").escape(f"{path} is not a valid catalog description: {problem}"),
    ):
        Catalog.open(catalog.root)


def test_a_fifo_or_a_device_as_description_is_refused_without_reading(catalog: Catalog) -> None:
    path = _description(catalog)
    path.unlink()
    os.mkfifo(path)  # a reader that opened it would block forever
    code = (
        "import sys; from modelrows import Catalog, CatalogError\n"
        "try:\n    Catalog.open(sys.argv[1])\nexcept CatalogError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(catalog.root)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == (
        f"{path} is not a valid catalog description: it is not a regular file. It is not what "
        "Catalog.create wrote; restore it, or create the catalog again in an empty directory."
    )
    path.unlink()
    path.symlink_to("/dev/zero")  # endless: a reader that followed it would fill memory
    with pytest.raises(CatalogError, match="it is not a regular file"):
        Catalog.open(catalog.root)


# -- creating ----------------------------------------------------------------------------------------


def _create(root: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        cat = Catalog.create(root, HostileRowV1, partition_by=["run"])
        results.put(("ok", cat.schema))
    except Exception as exc:  # reported to the parent, which asserts there were none
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_twelve_processes_creating_the_same_catalog_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_create, args=(str(tmp_path / "c"), results)) for _ in range(12)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == [("ok", HostileRowV1.__qualified__)] * 12
    cat = Catalog.open(tmp_path / "c")
    cat.append(HostileRowV1(weights=weights(), run="a"))
    assert len(cat) == 1


def test_create_on_a_read_only_or_full_file_system_is_a_modelrows_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_open = builtins.open
    for code in (errno.EROFS, errno.ENOSPC):

        def failing(file: object, mode: str = "r", *args: object, _code: int = code) -> object:
            if "x" in mode or "w" in mode:
                raise OSError(_code, os.strerror(_code), str(file))
            return real_open(file, mode, *args)  # type: ignore[call-overload]

        with monkeypatch.context() as m:
            m.setattr(builtins, "open", failing)
            with pytest.raises(StorageError) as info:
                Catalog.create(tmp_path / f"c{code}", HostileRowV1)
        assert os.strerror(code) in str(info.value)
        assert "_modelrows_catalog.json" in str(info.value)


# -- partition directories ------------------------------------------------------------------------


def test_a_row_file_moved_to_another_partition_is_caught_by_verify(catalog: Catalog) -> None:
    row_id = catalog.sql("SELECT row_id FROM models WHERE run = 'r0' LIMIT 1").fetchall()[0][0]
    path = catalog.path_of(row_id)
    elsewhere = catalog.root / "run=r1" / path.name
    path.rename(elsewhere)
    catalog.reindex()  # the index now points at the moved file ...
    assert catalog.get(row_id).run == "r0"  # ... and every query agrees: the row says r0
    assert catalog.sql(f"SELECT run FROM models WHERE row_id = '{row_id}'").fetchall() == [("r0",)]
    [bad] = catalog.verify()
    assert bad.row_id == row_id and bad.path == elsewhere
    assert bad.problem == (
        f"{elsewhere}: the row says partition run=r0 but its file is in run=r1; was it moved by "
        "hand?"
    )


def test_a_partition_directory_that_does_not_parse_does_not_break_queries(
    tmp_path: Path,
) -> None:
    cat = Catalog.create(tmp_path / "c", HostileRowV1, partition_by=["epoch"])
    row_id = cat.append(HostileRowV1(weights=weights(), run="a", epoch=5))
    path = cat.path_of(row_id)
    for name in ("epoch=abc", "epoch=99999999999999999999"):
        (cat.root / name).mkdir()
        (cat.root / name / path.name).write_bytes(path.read_bytes())  # a copy by hand
    assert cat.sql("SELECT epoch FROM models").fetchall() == [(5,)]  # the index, unaffected
    assert cat.scan().collect()["epoch"].to_list() == [5]
    cat.reindex()  # the copies hold the same row id: the index keeps one, the one that fits
    assert len(cat) == 1
    assert cat.path_of(row_id) == path
    assert cat.verify() == []  # the row in the index is where it says


# -- threads -------------------------------------------------------------------------------------------


def test_one_catalog_shared_by_eight_threads(catalog: Catalog) -> None:
    errors: list[BaseException] = []
    appended: list[str] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            for j in range(10):
                if i % 2:
                    row_id = catalog.append(
                        HostileRowV1(weights=weights(), run=f"t{i}", epoch=j, accuracy=j / 10),
                        fsync=False,
                    )
                    with lock:
                        appended.append(row_id)
                else:
                    catalog.sql("SELECT run, count(*) FROM models GROUP BY run").fetchall()
                    catalog.scan().collect()
                    assert catalog.best("accuracy") is not None
                    len(catalog)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(appended) == 40
    present = set(catalog.scan().collect()["row_id"].to_list())
    assert set(appended) <= present and len(catalog) == 44


# -- SQL sees the catalog and nothing else ------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT row_id FROM models UNION ALL SELECT content FROM read_text('/etc/hostname')",
        "COPY (SELECT * FROM models) TO '{out}'",
        "ATTACH '{out}' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
    ],
)
def test_sql_cannot_reach_outside_the_catalog(catalog: Catalog, tmp_path: Path, query: str) -> None:
    out = tmp_path / "leak.csv"
    with pytest.raises(CatalogError) as info:
        catalog.sql(query.format(out=out)).fetchall()
    assert "root:" not in str(info.value)  # no file's content in the message
    assert not out.exists()


@pytest.mark.parametrize(
    "where",
    [
        "1=1); COPY (SELECT 1) TO '{out}'; --",
        "run = 'r0'; COPY (SELECT 1) TO '{out}'",
        "1=1 UNION SELECT content FROM read_text('/etc/passwd')",
    ],
)
def test_where_is_one_expression(catalog: Catalog, tmp_path: Path, where: str) -> None:
    out = tmp_path / "written.csv"
    for call in (
        lambda w: list(catalog.rows(where=w)),
        lambda w: catalog.best("accuracy", where=w),
        lambda w: catalog.delete(where=w),
    ):
        with pytest.raises(CatalogError, match="bad where condition"):
            call(where.format(out=out))
    assert not out.exists() and len(catalog) == 4


# -- every documented field type through every query ------------------------------------------------


class ConfigV1(Row, schema="hostile.config", version=1):
    seed: int = 0


class EveryTypeV1(ModelV1, schema="hostile.every", version=1):
    run: str
    i: int
    f: float
    b: bool
    raw: bytes
    when: dt.datetime
    day: dt.date
    half: np.float16
    single: np.float32
    double: np.float64
    i8: np.int8
    u16: np.uint16
    i32: np.int32
    u64: np.uint64
    tags: list[str]
    config: ConfigV1
    maybe: float | None = None


def test_every_documented_field_type_through_every_query(tmp_path: Path) -> None:
    cat = Catalog.create(tmp_path / "c", EveryTypeV1, partition_by=["run"])
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    for k in range(3):
        cat.append(
            EveryTypeV1(
                weights=weights(), run="a", i=k, f=k / 2, b=bool(k % 2), raw=bytes([k]) * 3,
                when=when, day=dt.date(2026, 1, 1 + k), half=np.float16(k + 0.5),
                single=np.float32(k), double=np.float64(k), i8=np.int8(-k), u16=np.uint16(k),
                i32=np.int32(k), u64=np.uint64(2**63 + k), tags=["x"] * k,
                config=ConfigV1(seed=k), maybe=None if k else 1.0,
            )
        )  # fmt: skip
    names = [n for n in EveryTypeV1.__row_fields__ if n != "weights"]
    for name in names:
        assert len(cat.scan().select(name).collect()) == 3, name
        assert len(cat.sql(f'SELECT "{name}" FROM models').fetchall()) == 3, name
    assert cat.sql("SELECT max(half) FROM models").fetchall() == [(2.5,)]
    for name in ("i", "f", "half", "single", "double", "i8", "u16", "i32", "u64", "day", "raw"):
        assert cat.best(name) is not None, name
    assert [r.half for r in cat.rows(where="half > 1")] == [np.float16(1.5), np.float16(2.5)]
    assert isinstance(cat.get(cat.best("u64").row_id).u64, np.uint64 | int)


def test_every_error_here_is_a_modelrows_error(catalog: Catalog) -> None:
    with pytest.raises(ModelRowsError):
        catalog.get(123)  # type: ignore[arg-type]
    with pytest.raises(ModelRowsError):
        catalog.sql(None)  # type: ignore[arg-type]
    best = catalog.best("accuracy").row_id
    catalog.path_of(best).unlink()
    with pytest.raises(RowFileError):
        catalog.get(best)


def test_a_damaged_index_file_is_refused_before_any_engine_parses_it(catalog: Catalog) -> None:
    catalog.compact()
    [segment] = [catalog.root / key for key in catalog.index_files()]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01  # bit rot that keeps size and mtime alike
    segment.write_bytes(bytes(data))
    fresh = Catalog.open(catalog.root)
    for query in (lambda: len(fresh), lambda: fresh.sql("SELECT 1 FROM models").fetchall()):
        with pytest.raises(CatalogError) as info:
            query()
        assert str(info.value) == (
            f"{segment}: the index file is damaged (its bytes do not match the hash in its "
            "name); rebuild the index with catalog.reindex() (or `modelrows reindex`)"
        )
    assert fresh.reindex() == 4
    assert len(fresh) == 4 and fresh.verify() == []


def _forge_entry(catalog: Catalog, table: pa.Table, **options: Any) -> Path:
    """An add entry in the catalog's log with the right hash in its name, holding ``table``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table)
    data = sink.getvalue().to_pybytes()
    path = catalog.root / _index.LOG / f"{_index.new_id()}.{_index._digest(data)}.add.ipc"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("forgery", ["compressed", "extension type", "other columns"])
def test_a_forged_log_entry_is_refused_before_arrow_reads_it(
    catalog: Catalog, forgery: str
) -> None:
    # the hash in the name matches: only the entry's own checks stand between it and pyarrow
    good = catalog.index_table().slice(0, 1)
    if forgery == "compressed":  # a compressed body declares sizes allocated before any check
        path = _forge_entry(catalog, good, compression="zstd")
        reason = "compressed"
    elif forgery == "extension type":  # a type pyarrow would build with registered code
        meta = {b"ARROW:extension:name": b"evil.type", b"ARROW:extension:metadata": b""}
        fields = [f.with_metadata(meta) if f.name == "run" else f for f in good.schema]
        path = _forge_entry(catalog, good.cast(pa.schema(fields)))
        reason = "extension"
    else:
        path = _forge_entry(catalog, pa.table({"row_id": ["X"], "surprise": [1]}))
        reason = "columns are not the catalog's"
    fresh = Catalog.open(catalog.root)
    with pytest.raises(CatalogError) as info:
        len(fresh)
    assert str(info.value).startswith(f"{path}: ")
    assert reason in str(info.value) and "catalog.reindex()" in str(info.value)
    path.unlink()
    assert len(Catalog.open(catalog.root)) == 4
