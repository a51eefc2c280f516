"""The catalog: one row per checkpoint in a hive-partitioned Arrow dataset on disk.

Layout (docs/format.md)::

    root/_modelrows_catalog.json                      what the catalog remembers
    root/<key>=<value>/.../<row_id>.<schema>.arrow    one immutable file per append

Appends need no lock: each row is written under a temporary name (``.``-prefixed, ``.tmp``
suffix), flushed and fsynced, then hard-linked into place under a unique, time-ordered row id,
and the directory is fsynced. Queries go through one pyarrow dataset, which Polars and DuckDB
scan with projection and filter pushdown: a query that does not name ``weights`` reads none of it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import secrets
import stat
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from .._arrowtypes import IntType
from .._atomic import PendingFile, fsync_dir, write_atomic
from .._errors import (
    CatalogError,
    CorruptRowError,
    CorruptRowWarning,
    ModelRowsError,
    RowFileError,
    RowNotFoundError,
    StorageError,
)
from .._format import (
    CATALOG_FILE,
    CATALOG_FORMAT,
    CATALOG_FORMAT_VERSION,
    HIVE_NULL,
    ROW_ID,
    ROW_ID_TYPE,
    WRITTEN_AT,
    WRITTEN_AT_TYPE,
    is_temp_name,
    is_weights_type,
    managed_fields,
    parse_row_file_name,
    parse_temp_name,
    row_file_name,
)
from .._ipcguard import check_schema_message
from .._rowfile import (
    PathLike,
    decode_row,
    prepare_row_file,
    read_model_row,
    read_row_file,
    verify_row,
)
from .._schema import ModelV1, Row, nearest_declared

__all__ = ["CATALOG_FILE", "Catalog", "CorruptRow", "OnCorrupt", "new_row_id"]

MAX_PARTITION_SEGMENT = 200  # bytes of one encoded "key=value" directory name
_PROGRESS_MIN_ROWS = 1000  # verify() shows a progress bar by default from this many rows

OnCorrupt = Literal["raise", "skip"]
"""What a query does with a row file it cannot read: raise an error naming it, or skip it with a
:class:`~modelrows.CorruptRowWarning`."""


class CorruptRow(NamedTuple):
    """A row :meth:`Catalog.verify` found unreadable or corrupt."""

    row_id: str
    path: Path
    problem: str


# -- row ids: ULIDs (48-bit milliseconds, 80 random bits, Crockford base32), monotonic per process --

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_id = [0, 0]


def new_row_id() -> str:
    """A unique, time-ordered 26-character row id (a ULID)."""
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_id[0]:
            ms, rand = _last_id[0], _last_id[1] + 1  # same millisecond: count up
        else:
            rand = int.from_bytes(secrets.token_bytes(10), "big")
        _last_id[0], _last_id[1] = ms, rand
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _forget_last_id() -> None:
    """In a forked child: draw fresh randomness, or parent and children would count up alike."""
    global _id_lock
    _id_lock = threading.Lock()
    _last_id[0] = _last_id[1] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_last_id)


def _encode_segment(key: str, value: object) -> str:
    return f"{key}={urllib.parse.quote(str(value), safe='')}"


def _is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a symlink to one, as the tree walk requires)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class Catalog:
    """A partitioned Arrow dataset of model rows on disk.

    >>> import tempfile, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights
    >>> class RunRowV1(ModelV1, schema="doc.run", version=1):
    ...     run: str
    ...     epoch: int | None = None
    >>> catalog = Catalog.create(tempfile.mkdtemp() + "/runs", RunRowV1, partition_by=["run"])
    >>> row_id = catalog.append(RunRowV1(weights=fetch_weights(nn.Linear(2, 2)), run="a", epoch=1))
    >>> catalog.scan().select("run", "epoch").collect().rows()
    [('a', 1)]
    >>> catalog.get(row_id).epoch
    1
    """

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.root = root
        self.schema: str = meta["schema"]
        self.partition_by: tuple[str, ...] = tuple(meta["partition_by"])
        self.arrow_schema: pa.Schema = meta["_arrow_schema"]
        self.schema_name = self.schema.split(">")[0].split("@")[0]
        self._con: duckdb.DuckDBPyConnection | None = None
        # what _problem found per file, keyed by (inode, size, mtime): row files are immutable
        self._checked: dict[Path, tuple[tuple[int, int, int], _Problem | None]] = {}
        self._files: dict[str, Path] = {}  # row id -> file, as of the last walk of the tree

    # -- creating and opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, root: PathLike, row_class: type[Row], *, partition_by: Sequence[str] = ()
    ) -> Catalog:
        """Create a catalog of ``row_class`` rows at ``root`` (or open the identical one there)."""
        if not (isinstance(row_class, type) and issubclass(row_class, ModelV1)):
            raise CatalogError(
                f"a catalog holds model rows: {row_class!r} does not extend ModelV1 "
                "(modelrows.model@1)"
            )
        if isinstance(partition_by, str):
            raise CatalogError(f"partition_by takes a list of field names, e.g. [{partition_by!r}]")
        keys = list(partition_by)
        for key in keys:
            field = row_class.__row_fields__.get(key)
            if field is None:
                raise CatalogError(
                    f"cannot partition by {key!r}: {row_class.__name__} has no such field "
                    f"(fields: {', '.join(row_class.__row_fields__)})"
                )
            if not (field.type.name == "str" or isinstance(field.type, IntType)):
                raise CatalogError(
                    f"cannot partition by {key!r} of type {field.type.signature()}: partition "
                    "fields must be str or int"
                )
        if len(set(keys)) != len(keys):
            raise CatalogError(f"partition_by repeats a field: {keys}")
        target = Path(root)
        file_schema = _file_schema(row_class)
        meta = {
            "format": CATALOG_FORMAT,
            "format_version": CATALOG_FORMAT_VERSION,
            "schema": row_class.__qualified__,
            "partition_by": keys,
            "arrow_schema": base64.b64encode(file_schema.serialize().to_pybytes()).decode("ascii"),
        }
        existing = target / CATALOG_FILE
        if not existing.exists():
            if target.exists() and any(
                not p.name.startswith(".") and p.name != "README.md" for p in target.iterdir()
            ):
                raise CatalogError(
                    f"{target} is not empty and holds no catalog; choose an empty or new directory"
                )
            target.mkdir(parents=True, exist_ok=True)
            text = json.dumps(meta, indent=2).encode("utf-8") + b"\n"

            def write(f: IO[bytes]) -> None:
                f.write(text)

            try:
                write_atomic(existing, write, replace=False)
            except ModelRowsError:
                if not existing.exists():  # lost a race with another creator: compare below
                    raise
        catalog = cls.open(target)
        if catalog.schema != row_class.__qualified__ or catalog.partition_by != tuple(keys):
            raise CatalogError(
                f"{target} already holds a catalog of {catalog.schema} partitioned by "
                f"{list(catalog.partition_by)}; cannot create one of {row_class.__qualified__} "
                f"partitioned by {keys}. Open it with Catalog.open, or choose another directory."
            )
        return catalog

    @classmethod
    def open(cls, root: PathLike) -> Catalog:
        """Open the catalog at ``root``; its row class need not be imported for queries."""
        target = Path(root)
        path = target / CATALOG_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CatalogError(
                f"no catalog at {target} ({CATALOG_FILE} is missing); create one with "
                "Catalog.create(root, RowClass, partition_by=[...])"
            ) from None
        except OSError as exc:
            raise CatalogError(f"cannot read {path}: {exc}") from exc
        try:
            meta = json.loads(raw)
            if meta.get("format") != CATALOG_FORMAT:
                raise ValueError(f"'format' is not {CATALOG_FORMAT!r}")
            version = meta.get("format_version")
            if not isinstance(version, int) or version > CATALOG_FORMAT_VERSION:
                raise CatalogError(
                    f"{path}: catalog format version {version!r}; this modelrows reads up to "
                    f"{CATALOG_FORMAT_VERSION}. Upgrade modelrows to open it."
                )
            if not isinstance(meta.get("schema"), str) or not isinstance(
                meta.get("partition_by"), list
            ):
                raise ValueError("'schema' or 'partition_by' is missing")
            raw_schema = base64.b64decode(meta["arrow_schema"], validate=True)
            check_schema_message(raw_schema, where=f"{path} ('arrow_schema')")
            meta["_arrow_schema"] = pa.ipc.read_schema(pa.py_buffer(raw_schema))
        except CatalogError:
            raise
        except (ModelRowsError, ValueError, TypeError, KeyError, pa.ArrowException) as exc:
            raise CatalogError(f"{path} is not a valid catalog description: {exc}") from exc
        return cls(target, meta)

    def __repr__(self) -> str:
        return (
            f"Catalog({str(self.root)!r}, schema={self.schema!r}, "
            f"partition_by={list(self.partition_by)})"
        )

    @property
    def row_class(self) -> type[Row]:
        """The nearest class of the catalog's schema declared in this process."""
        return nearest_declared(self.schema, where=str(self.root))

    # -- appending ----------------------------------------------------------------------------------
    def _check_row(self, row: Row) -> list[str]:
        qualified = getattr(type(row), "__qualified__", None)
        if not isinstance(row, Row) or qualified != self.schema:
            raise CatalogError(
                f"{self.root} holds {self.schema} rows; refusing a row of "
                f"{qualified or type(row).__name__}"
            )
        segments = []
        for key in self.partition_by:
            value = getattr(row, key)
            if value is None:
                raise CatalogError(
                    f"partition field {key!r} is None; every row of {self.root} needs a {key}"
                )
            if value == "":
                raise CatalogError(f"partition field {key!r} is empty; give it a value")
            if value == HIVE_NULL:
                raise CatalogError(
                    f"partition field {key!r} is {HIVE_NULL!r}, which hive readers take for a "
                    "missing value; choose another value"
                )
            segment = _encode_segment(key, value)
            if len(segment.encode()) > MAX_PARTITION_SEGMENT:
                raise CatalogError(
                    f"partition value of {key!r} is too long ({len(segment)} bytes encoded, at most "
                    f"{MAX_PARTITION_SEGMENT}); use a shorter value"
                )
            segments.append(segment)
        return segments

    def _prepare(self, row: Row, segments: list[str], *, fsync: bool) -> tuple[str, PendingFile]:
        directory = self.root.joinpath(*segments)
        self._mkdirs(directory, fsync=fsync)
        row_id = new_row_id()
        managed = {
            ROW_ID: (ROW_ID_TYPE, row_id),
            WRITTEN_AT: (WRITTEN_AT_TYPE, dt.datetime.now(dt.timezone.utc)),
        }
        path = directory / row_file_name(row_id, self.schema_name)
        return row_id, prepare_row_file(path, row, managed=managed, fsync=fsync)

    def _mkdirs(self, directory: Path, *, fsync: bool) -> None:
        missing = []
        d = directory
        while not d.exists() and d != self.root:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            step = "mkdir"
            try:
                d.mkdir(exist_ok=True)
                if fsync:
                    step = "directory fsync"
                    fsync_dir(d.parent)
            except OSError as exc:
                raise StorageError(
                    f"creating partition directory {d} failed at step {step!r}: {exc}. "
                    "No row was written.",
                    path=str(d),
                    step=step,
                ) from exc

    def append(self, row: Row, *, fsync: bool = True) -> str:
        """Write ``row`` as one immutable file in its partition; return its new row id.

        Atomic and lock-free: concurrent writers in separate processes never collide, and a
        crash leaves either the whole row or nothing visible. ``fsync=False`` skips the flushes
        to stable storage (faster; a power loss may then lose recent rows, never tear one).
        """
        segments = self._check_row(row)
        row_id, pending = self._prepare(row, segments, fsync=fsync)
        pending.commit(replace=False)
        return row_id

    def append_many(self, rows: Iterable[Row], *, fsync: bool = True) -> list[str]:
        """Append several rows: every row is checked and written before any becomes visible."""
        batch = list(rows)
        segments = [self._check_row(r) for r in batch]
        prepared: list[tuple[str, PendingFile]] = []
        try:
            for row, segs in zip(batch, segments, strict=True):
                prepared.append(self._prepare(row, segs, fsync=fsync))
            for _, pending in prepared:
                pending.commit(replace=False, sync_dir=False)
        except BaseException as exc:
            stuck = []
            for _, pending in prepared:
                pending.abort()
                if pending.visible:  # take back what became visible: all or nothing
                    try:
                        pending.path.unlink()
                    except OSError:
                        stuck.append(str(pending.path))
            if not isinstance(exc, StorageError):
                raise
            raise StorageError(
                f"appending {len(batch)} rows failed at step {exc.step!r} of {exc.path}: "
                f"{exc.__cause__}. "
                + (
                    f"Rows already in place could not be taken back: {', '.join(stuck)}."
                    if stuck
                    else "None of the rows was added."
                ),
                path=exc.path,
                step=exc.step,
                visible=bool(stuck),
            ) from exc
        if fsync:
            for directory in sorted({p.path.parent for _, p in prepared}):
                try:
                    fsync_dir(directory)
                except OSError as exc:
                    raise StorageError(
                        f"appending {len(batch)} rows failed at step 'directory fsync' of "
                        f"{directory}: {exc}. The rows are in place but may not be durable yet.",
                        path=str(directory),
                        step="directory fsync",
                        visible=True,
                    ) from exc
        return [row_id for row_id, _ in prepared]

    # -- finding files ------------------------------------------------------------------------------
    def _row_files(self) -> dict[str, Path]:
        """Every row file under the root, by row id, without opening any."""
        found: dict[str, Path] = {}
        depth = len(self.partition_by)

        def walk(directory: Path, level: int) -> None:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return
            for entry in entries:
                if entry.name.startswith((".", "_")):
                    continue
                if level < depth:
                    if entry.is_dir(follow_symlinks=False) and "=" in entry.name:
                        walk(Path(entry.path), level + 1)
                elif (parsed := parse_row_file_name(entry.name)) and entry.is_file(
                    follow_symlinks=False
                ):
                    found[parsed[0]] = Path(entry.path)

        walk(self.root, 0)
        self._files = found
        return found

    def __len__(self) -> int:
        return len(self._row_files())

    def path_of(self, row_id: str) -> Path:
        """The file holding ``row_id``; RowNotFoundError if there is none.

        Row files never move, so a file found by an earlier walk of the tree is used while it
        exists; the tree is walked again (every partition directory listed) only for an id not
        seen yet or whose file is gone."""
        known = self._files.get(row_id)
        if known is not None and _is_regular(known):
            return known
        return self._path_in(self._row_files(), row_id)

    def _path_in(self, files: dict[str, Path], row_id: str) -> Path:
        path = files.get(row_id)
        if path is None:
            raise RowNotFoundError(f"no row {row_id!r} in the catalog at {self.root}")
        return path

    # -- queries --------------------------------------------------------------------------------------
    def _problem(self, row_id: str, path: Path, *, verify: bool = False) -> _Problem | None:
        """Why ``path`` cannot serve as row ``row_id`` of this catalog, or None if it can.

        Checks the file's structure (as :func:`read_model_row` does), that its columns are the
        catalog's and that it holds the row its name says; ``verify=True`` also decodes the row and
        recomputes its checksum. No tensor byte is read otherwise.
        """
        try:
            batch, ctx = read_row_file(path)
            if not batch.schema.equals(self.arrow_schema, check_metadata=False):
                raise CorruptRowError(
                    f"{path}: its columns are not the catalog's ("
                    f"{_schema_difference(batch.schema, self.arrow_schema)}); the file does not "
                    f"belong in {self.root}",
                    path=str(path),
                )
            stored = batch.column(0)[0].as_py()
            if stored != row_id:
                raise CorruptRowError(
                    f"{path}: its name says row {row_id} but it holds row {stored!r}; was it "
                    "renamed or copied by hand?",
                    path=str(path),
                )
            if verify:
                verify_row(decode_row(batch, 0, ctx), where=ctx.where)
        except ModelRowsError as exc:
            return type(exc), str(exc)
        return None

    def _checked_problem(self, row_id: str, path: Path) -> _Problem | None:
        """:meth:`_problem`, remembered per file while the file stays the same."""
        try:
            st = path.stat()
        except OSError:
            return self._problem(row_id, path)  # gone: say so, remember nothing
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._checked.get(path)
        if cached is None or cached[0] != key:
            cached = (key, self._problem(row_id, path))
            self._checked[path] = cached
        return cached[1]

    def _queryable_files(self, on_corrupt: OnCorrupt) -> list[str]:
        """Every row file a query may read; a corrupt one raises, or is skipped with a warning."""
        if on_corrupt not in ("raise", "skip"):
            raise CatalogError(f"on_corrupt is 'raise' or 'skip', not {on_corrupt!r}")
        files = []
        present = self._row_files()
        for gone in self._checked.keys() - set(present.values()):  # forget files deleted since
            del self._checked[gone]
        for row_id, path in sorted(present.items(), key=lambda item: item[1]):
            problem = self._checked_problem(row_id, path)
            if problem is None:
                files.append(str(path))
            elif on_corrupt == "raise":
                kind, message = problem
                raise (kind if issubclass(kind, RowFileError) else RowFileError)(
                    f"{message} (pass on_corrupt='skip' to query the other rows; "
                    "Catalog.verify() lists every corrupt row)",
                    path=str(path),
                )
            else:
                _skip_warning(problem[1])
        return files

    def dataset(self, *, on_corrupt: OnCorrupt = "raise") -> ds.Dataset:
        """A pyarrow dataset over every row file (hive partitions, explicit schema).

        Each file's structure is checked once (then remembered while the file is unchanged), so
        no reader ever meets a corrupt file: ``on_corrupt="raise"`` raises an error naming the
        first one, ``"skip"`` leaves corrupt files out with a :class:`CorruptRowWarning` each.
        """
        partitioning = ds.partitioning(
            pa.schema([self.arrow_schema.field(k) for k in self.partition_by]), flavor="hive"
        )
        return ds.dataset(
            self._queryable_files(on_corrupt),
            schema=self.arrow_schema,
            format="arrow",
            partitioning=partitioning,
            partition_base_dir=str(self.root),
        )

    def _columns(self, *, weights: bool) -> list[str]:
        return [
            f.name for f in self.arrow_schema if weights or f.name not in self._weight_columns()
        ]

    def _weight_columns(self) -> set[str]:
        return {f.name for f in self.arrow_schema if is_weights_type(f.type)}

    def scan(self, *, weights: bool = False, on_corrupt: OnCorrupt = "raise") -> pl.LazyFrame:
        """A Polars LazyFrame of every row: all columns but weights (unless asked), with row_id.

        ``on_corrupt``: see :meth:`dataset`.
        """
        columns = self._columns(weights=weights)
        return pl.scan_pyarrow_dataset(self.dataset(on_corrupt=on_corrupt)).select(columns)

    def sql(self, query: str, *, on_corrupt: OnCorrupt = "raise") -> duckdb.DuckDBPyRelation:
        """Run DuckDB SQL where the table ``models`` is the catalog; returns a relation.

        ``on_corrupt``: see :meth:`dataset`.
        """
        dataset = self.dataset(on_corrupt=on_corrupt)
        if self._con is None:
            self._con = duckdb.connect()
        con = self._con
        with contextlib.suppress(duckdb.Error):
            con.unregister("models")
        con.register("models", dataset)
        try:
            return con.sql(query)
        except duckdb.Error as exc:
            raise CatalogError(f"SQL error: {exc}".replace("\n", " ")) from exc

    def _ids(self, *, where: str | None, order: str, on_corrupt: OnCorrupt) -> list[str]:
        clause = f"WHERE {where}" if where else ""
        rel = self.sql(
            f"SELECT row_id FROM models {clause} ORDER BY {order}", on_corrupt=on_corrupt
        )
        return [r[0] for r in rel.fetchall()]

    def best(
        self,
        by: str,
        *,
        descending: bool = True,
        where: str | None = None,
        verify: bool = False,
        on_corrupt: OnCorrupt = "raise",
    ) -> Row | None:
        """The row with the highest ``by`` (lowest with ``descending=False``), or None if none.

        ``where`` is a SQL condition (``"run = 'a' AND epoch > 2"``). Ties go to the earliest row;
        null and NaN values never rank. With ``on_corrupt="skip"``, a corrupt row (or, with
        ``verify=True``, one whose checksum fails) is skipped with a warning for the next best.
        """
        if by not in self.arrow_schema.names or by in self._weight_columns():
            raise CatalogError(
                f"cannot rank by {by!r}: not a column of {self.schema} "
                f"(columns: {', '.join(self._columns(weights=False))})"
            )
        cond = f'"{by}" IS NOT NULL'
        if pa.types.is_floating(self.arrow_schema.field(by).type):
            cond += f' AND NOT isnan("{by}")'
        if where:
            cond += f" AND ({where})"
        order = f'"{by}" {"DESC" if descending else "ASC"}, row_id'
        if on_corrupt == "raise":
            order += " LIMIT 1"
        ids = self._ids(where=cond, order=order, on_corrupt=on_corrupt)
        files = self._row_files() if ids else {}
        for row_id in ids:
            row = self._load(row_id, files, verify=verify, on_corrupt=on_corrupt)
            if row is not None:
                return row
        return None

    def get(self, row_id: str, *, verify: bool = False) -> Row:
        """One row by id, weights zero-copy; opens exactly one file.

        The row's ``row_id`` and ``written_at`` are available as ``row.row_id``/``row.written_at``.
        """
        return read_model_row(self.path_of(row_id), verify=verify)

    def _load(
        self, row_id: str, files: dict[str, Path], *, verify: bool, on_corrupt: OnCorrupt
    ) -> Row | None:
        """get() through ``files`` (one walk of the tree serves many rows), or None with a warning
        for a corrupt row when ``on_corrupt="skip"``."""
        path = self._path_in(files, row_id)
        try:
            return read_model_row(path, verify=verify)
        except RowFileError as exc:
            if on_corrupt == "raise":
                raise
            _skip_warning(str(exc))
            return None

    def rows(
        self, where: str | None = None, *, verify: bool = False, on_corrupt: OnCorrupt = "raise"
    ) -> Iterator[Row]:
        """Every row (matching the SQL condition ``where``), oldest first.

        With ``on_corrupt="skip"``, corrupt rows (or, with ``verify=True``, rows whose checksum
        fails) are skipped with a warning.
        """
        ids = self._ids(where=where, order="row_id", on_corrupt=on_corrupt)
        files = self._row_files() if ids else {}
        for row_id in ids:
            row = self._load(row_id, files, verify=verify, on_corrupt=on_corrupt)
            if row is not None:
                yield row

    # -- housekeeping ------------------------------------------------------------------------------
    def vacuum(self, *, older_than: float = 3600.0) -> list[Path]:
        """Remove temporary files left by crashed writers; return what was removed.

        A temporary file is removed when the process that wrote it (named in it) is gone from this
        machine, or when it is older than ``older_than`` seconds.
        """
        removed = []
        now = time.time()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
            for name in filenames:
                if not is_temp_name(name):
                    continue
                path = Path(dirpath) / name
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > older_than or not _writer_alive(name):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def verify(
        self, *, progress: bool | Callable[[int, int], None] | None = None
    ) -> list[CorruptRow]:
        """Re-read every row and recompute every checksum; return the corrupt rows by id and path.

        Each file's structure, columns and row id are checked and every tensor byte is hashed
        again; nothing remembered from earlier queries is trusted. ``progress`` is a callable
        ``(done, total)``, or True/False for a progress bar on stderr (tqdm when installed, else
        plain lines); by default a bar is shown from 1000 rows when stderr is a terminal.

        >>> import tempfile, torch.nn as nn
        >>> from modelrows import ModelV1, fetch_weights
        >>> catalog = Catalog.create(tempfile.mkdtemp() + "/c", ModelV1)
        >>> _ = catalog.append(ModelV1(weights=fetch_weights(nn.Linear(2, 2))))
        >>> catalog.verify()
        []
        """
        files = sorted(self._row_files().items())
        step, close = _progress(progress, len(files), f"verifying {self.root}")
        bad = []
        try:
            for done, (row_id, path) in enumerate(files, 1):
                problem = self._problem(row_id, path, verify=True)
                if problem is not None:
                    bad.append(CorruptRow(row_id, path, problem[1]))
                step(done)
        finally:
            close()
        return bad


_Problem = tuple[type[ModelRowsError], str]  # what is wrong with a row file: error class, message


def _skip_warning(message: str) -> None:
    warnings.warn(f"skipping a corrupt row file: {message}", CorruptRowWarning, stacklevel=4)


def _schema_difference(found: pa.Schema, expected: pa.Schema) -> str:
    have = {f.name: f for f in found}
    want = {f.name: f for f in expected}
    parts = []
    if missing := [n for n in want if n not in have]:
        parts.append(f"missing {', '.join(missing)}")
    if extra := [n for n in have if n not in want]:
        parts.append(f"unexpected {', '.join(extra)}")
    if changed := [n for n in want if n in have and not have[n].equals(want[n])]:
        parts.append(f"of another type: {', '.join(changed)}")
    return "; ".join(parts) or "the columns are in another order"


def _progress(
    progress: bool | Callable[[int, int], None] | None, total: int, label: str
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(report ``done``, finish) for a loop of ``total`` steps: a callback, a bar, or nothing."""
    if callable(progress):
        callback = progress
        return (lambda done: callback(done, total)), (lambda: None)
    show = progress if progress is not None else total >= _PROGRESS_MIN_ROWS
    if not show or total == 0:
        return (lambda done: None), (lambda: None)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # no tqdm: a line on stderr every tenth of the way
        every = max(1, total // 10)

        def line(done: int) -> None:
            if done % every == 0 or done == total:
                print(f"{label}: {done}/{total} rows", file=sys.stderr, flush=True)

        return line, (lambda: None)
    # disable=None: no bar unless stderr is a terminal, when the caller did not ask for one
    bar = tqdm(
        total=total,
        desc=label,
        unit="row",
        file=sys.stderr,
        disable=None if progress is None else False,
    )
    return (lambda done: bar.update(done - bar.n)), bar.close


def _file_schema(row_class: type[Row]) -> pa.Schema:
    schema = row_class.arrow_schema()
    return pa.schema(managed_fields() + list(schema), metadata=schema.metadata)


def _writer_alive(tmp_name: str) -> bool:
    """Whether the pid in ``.<name>.<pid>-<hex>.tmp`` is a live process on this machine."""
    parsed = parse_temp_name(tmp_name)
    if parsed is None:
        return False
    pid = parsed[1]
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
