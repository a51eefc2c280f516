"""The catalog: one row per checkpoint in a hive-partitioned directory of Arrow files, and an
index of their metadata in Parquet that every query reads.

Layout (docs/format.md)::

    root/_modelrows_catalog.json                      what the catalog remembers
    root/<key>=<value>/.../<row_id>.<schema>.arrow    one immutable file per row: the truth
    root/_index/...                                   the index (see _index.py): derived data

An append writes the row file (create-if-absent), then publishes its index entry
(create-if-absent): the entry is the commit point. A delete publishes a delete entry, then
removes the files. Queries never list or open the row files; ``get`` opens exactly one.
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple

import pyarrow as pa

from .._arrowtypes import IntType
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
    MANAGED_COLUMNS,
    ROW_ID_TYPE,
    WRITTEN_AT_TYPE,
    is_row_file_name,
    is_temp_name,
    is_weights_type,
    managed_fields,
    row_file_name,
)
from .._ipcguard import check_schema_message
from .._rowfile import (
    PathLike,
    decode_row,
    read_row_file,
    row_writer,
    verify_row,
)
from .._schema import Row, nearest_declared
from . import _aliases, _index, _retention  # retention and aliases
from ._index import CHECKSUM, PATH, SIZE, Index, new_id
from ._remote import read_for_index
from ._store import LocalStore, Store

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds

__all__ = ["CATALOG_FILE", "Catalog", "CorruptRow", "OnCorrupt", "new_row_id"]

MAX_PARTITION_SEGMENT = 200  # bytes of one encoded "key=value" directory name
_MAX_DESCRIPTION_BYTES = 1 << 20
_PROGRESS_MIN_ROWS = 1000  # verify() and reindex() show a progress bar by default from here
_SLOW_NOTICE_S = 1.0  # building an index that takes longer says so on stderr

OnCorrupt = Literal["raise", "skip"]
"""What loading a row whose file cannot be read does: raise an error naming it, or skip it with a
:class:`~modelrows.CorruptRowWarning`."""

new_row_id = new_id


class CorruptRow(NamedTuple):
    """A row :meth:`Catalog.verify` found missing, unreadable or corrupt."""

    row_id: str
    path: Path | str
    """The row's file (a URL string for a catalog on object storage)."""
    problem: str


def _encode_segment(key: str, value: object) -> str:
    return f"{key}={urllib.parse.quote(str(value), safe='')}"


def _description_error(path: object, problem: str) -> CatalogError:
    return CatalogError(
        f"{path} is not a valid catalog description: {problem}. It is not what Catalog.create "
        "wrote; restore it, or create the catalog again in an empty directory."
    )


def _read_description(path: Path) -> bytes:
    """The description file's bytes: a regular file of bounded size (never a FIFO or a device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _description_error(path, "it is not a regular file")
    if st.st_size > _MAX_DESCRIPTION_BYTES:
        raise _description_error(path, f"{st.st_size} bytes, more than any description holds")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from exc
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_DESCRIPTION_BYTES + 1)
    if len(raw) > _MAX_DESCRIPTION_BYTES:
        raise _description_error(path, "it is larger than any description")
    return raw


def _parse_description(raw: bytes, path: object) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _description_error(path, f"not JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise _description_error(path, f"a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != CATALOG_FORMAT:
        raise _description_error(path, "'format' is not 'modelrows.catalog'")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _description_error(path, f"'format_version' is {version!r}")
    if version > CATALOG_FORMAT_VERSION:
        raise CatalogError(
            f"{path}: catalog format version {version!r}; this modelrows reads up to "
            f"{CATALOG_FORMAT_VERSION}. Upgrade modelrows to open it."
        )
    schema, keys = meta.get("schema"), meta.get("partition_by")
    if not isinstance(schema, str):
        raise _description_error(path, "'schema' is missing or not a string")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _description_error(path, "'partition_by' is not a list of column names")
    if len(set(keys)) != len(keys):
        raise _description_error(path, f"'partition_by' repeats a column: {keys}")
    try:
        raw_schema = base64.b64decode(meta.get("arrow_schema") or "", validate=True)
        check_schema_message(raw_schema, where=f"{path} ('arrow_schema')")
        arrow_schema = pa.ipc.read_schema(pa.py_buffer(raw_schema))
    except (ModelRowsError, ValueError, TypeError, pa.ArrowException) as exc:
        raise _description_error(path, f"'arrow_schema' cannot be read ({exc})") from exc
    for key in keys:
        if key not in arrow_schema.names:
            raise _description_error(path, f"'partition_by' names {key!r}, not a column")
        t = arrow_schema.field(key).type
        if not (pa.types.is_string(t) or pa.types.is_integer(t)):
            raise _description_error(path, f"partition column {key!r} is {t}, not str or int")
    if list(arrow_schema.names[: len(MANAGED_COLUMNS)]) != list(MANAGED_COLUMNS):
        raise _description_error(path, "'arrow_schema' lacks the managed columns")
    meta["_arrow_schema"] = arrow_schema
    return meta


def open_store(root: PathLike | str) -> Store:
    """The store a catalog location names: a local path or ``file://`` URL, ``s3://``, or
    ``gs://`` / ``az://`` (Google Cloud Storage, Azure Blob Storage, through obstore)."""
    text = str(root)
    scheme, sep, _ = text.partition("://")
    if not sep:
        return LocalStore(Path(root))
    if scheme == "file":
        return LocalStore(Path(urllib.parse.unquote(urllib.parse.urlparse(text).path)))
    if scheme == "s3":
        try:
            from ._s3 import S3Store  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise CatalogError(
                f"{text}: S3 catalogs need the s3 extra: pip install 'modelrows[s3]' ({exc})"
            ) from exc
        return S3Store.from_url(text)  # type: ignore[no-any-return,unused-ignore]
    if scheme.lower() in ("gs", "az", "azure", "adl", "abfs", "abfss"):
        from ._objstore import ObjStore

        return ObjStore.from_url(text)
    raise CatalogError(
        f"{text}: unsupported URL scheme {scheme!r}; a catalog is a local path, a file:// URL, "
        "an s3://bucket/prefix, gs://bucket/prefix or az://container/prefix URL"
    )


class Catalog:
    """A partitioned dataset of model rows, one immutable Arrow file each, with a Parquet index.

    A ``Catalog`` may be shared by threads: every thread queries through its own DuckDB
    connection, and appends, deletes and compactions are safe between threads as between
    processes.

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

    def __init__(self, store: Store, meta: dict[str, Any]) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self.store = store
        local = store.local_path("")
        self.root: Path = local if local is not None else Path(store.url)
        self.url = store.url
        self.schema: str = meta["schema"]
        self.partition_by: tuple[str, ...] = tuple(meta["partition_by"])
        self.arrow_schema: pa.Schema = meta["_arrow_schema"]
        self.format_version: int = meta["format_version"]
        self.schema_name = self.schema.split(">")[0].split("@")[0]
        self._weights = frozenset(f.name for f in self.arrow_schema if is_weights_type(f.type))
        names = self.arrow_schema.names  # in order: the index row's columns, the checksums'
        self._value_names = [n for n in names if n not in self._weights]
        self._weight_names = [n for n in names if n in self._weights]
        self._index = Index(
            store,
            _index.index_schema(self.arrow_schema, self._weights),
            parquet_log=self.format_version == 2,
            on_missing=self._build_index,
        )
        self._building = threading.Lock()
        self._local = threading.local()  # one DuckDB connection per thread

    # -- creating and opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, root: PathLike | str, row_class: type[Row], *, partition_by: Sequence[str] = ()
    ) -> Catalog:
        """Create a catalog of ``row_class`` rows at ``root`` (or open the identical one there).

        Idempotent: any number of processes may create the same catalog at once."""
        # model rows (ModelV1 and its children), or rows without weights (evaluations, ...)
        if not (
            isinstance(row_class, type) and issubclass(row_class, Row) and row_class.__identifier__
        ):
            raise CatalogError(
                f"a catalog holds rows of a declared row class (a subclass of ModelV1, or of Row "
                f"for rows without weights, with schema= and version=); got {row_class!r}"
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
        store = open_store(root)
        file_schema = _file_schema(row_class)
        meta = {
            "format": CATALOG_FORMAT,
            "format_version": CATALOG_FORMAT_VERSION,
            "schema": row_class.__qualified__,
            "partition_by": keys,
            "arrow_schema": base64.b64encode(file_schema.serialize().to_pybytes()).decode("ascii"),
        }
        local = store.local_path("")
        if local is not None:
            _check_empty_for_create(local)
        text = json.dumps(meta, indent=2).encode("utf-8") + b"\n"
        store.put_if_absent(CATALOG_FILE, text)  # False: another creator was first; compare
        catalog = cls._open(store)
        if catalog.schema != row_class.__qualified__ or catalog.partition_by != tuple(keys):
            raise CatalogError(
                f"{store.url} already holds a catalog of {catalog.schema} partitioned by "
                f"{list(catalog.partition_by)}; cannot create one of {row_class.__qualified__} "
                f"partitioned by {keys}. Open it with Catalog.open, or choose another directory."
            )
        if catalog.format_version >= 2:
            catalog._index.create_empty()
        return catalog

    @classmethod
    def open(cls, root: PathLike | str) -> Catalog:
        """Open the catalog at ``root`` (a path, ``file://`` or ``s3://`` URL); its row class
        need not be imported for queries."""
        return cls._open(open_store(root))

    @classmethod
    def _open(cls, store: Store) -> Catalog:
        local = store.local_path(CATALOG_FILE)
        where = local if local is not None else f"{store.url}/{CATALOG_FILE}"
        try:
            raw = _read_description(local) if local is not None else store.get(CATALOG_FILE)
        except FileNotFoundError:
            raise CatalogError(
                f"no catalog at {store.url} ({CATALOG_FILE} is missing); create one with "
                "Catalog.create(root, RowClass, partition_by=[...])"
            ) from None
        return cls(store, _parse_description(raw, where))

    def __repr__(self) -> str:
        return (
            f"Catalog({self.url!r}, schema={self.schema!r}, partition_by={list(self.partition_by)})"
        )

    @property
    def row_class(self) -> type[Row]:
        """The nearest class of the catalog's schema declared in this process."""
        return nearest_declared(self.schema, where=self.url)

    # -- appending ----------------------------------------------------------------------------------
    def _check_row(self, row: Row) -> list[str]:
        qualified = getattr(type(row), "__qualified__", None)
        if not isinstance(row, Row) or qualified != self.schema:
            raise CatalogError(
                f"{self.url} holds {self.schema} rows; refusing a row of "
                f"{qualified or type(row).__name__}"
            )
        segments = []
        for key in self.partition_by:
            value = getattr(row, key)
            if value is None:
                raise CatalogError(
                    f"partition field {key!r} is None; every row of {self.url} needs a {key}"
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

    def _write_row(self, row: Row, segments: list[str], *, fsync: bool) -> pa.RecordBatch:
        """Write one row file (not yet visible to queries); return its index row."""
        row_id = new_id()
        written_at = dt.datetime.now(dt.timezone.utc)
        managed = {"row_id": (ROW_ID_TYPE, row_id), "written_at": (WRITTEN_AT_TYPE, written_at)}
        key = "/".join([*segments, row_file_name(row_id, self.schema_name)])
        batches: list[pa.RecordBatch] = []
        write = row_writer(row, managed=managed, written=batches)
        size = [0]

        def counted(f: IO[bytes]) -> None:
            write(f)
            size[0] = f.tell()

        try:
            created = self.store.put_stream_if_absent(key, counted, fsync=fsync)
        except StorageError as exc:
            if exc.visible:  # in place, but not published: take it back
                with contextlib.suppress(ModelRowsError, OSError):
                    self.store.delete(key)
            raise StorageError(
                str(exc), path=exc.path, step=exc.step, visible=False
            ) from exc.__cause__
        if not created:
            raise CatalogError(f"{self.url}/{key} exists already; row ids must be unique")
        return self._index_row(row, batches[-1], key, size[0])

    def _index_row(self, row: Row, batch: pa.RecordBatch, key: str, size: int) -> pa.RecordBatch:
        """The index row of ``row``, written as ``batch`` to the file ``key`` of ``size`` bytes:
        the batch's columns but the weights, then the file, its size, the weights' checksums."""
        checksums = [
            value._last_written_checksum() if value is not None else ""
            for value in (getattr(row, n) for n in self._weight_names)
        ]
        values = [batch.column(n) for n in self._value_names]
        return pa.RecordBatch.from_arrays(
            _index_columns(values, key, size, checksums), schema=self._index.schema
        )

    def append(self, row: Row, *, fsync: bool = True) -> str:
        """Write ``row`` as one immutable file in its partition and publish it in the index;
        return its new row id.

        Atomic and lock-free: concurrent writers in separate processes never collide, and a
        crash leaves either the whole row or nothing visible. The row is visible to every
        reader (in any process) once this returns. ``fsync=False`` skips the flushes to stable
        storage (faster; a power loss may then lose recent rows, never tear one).
        """
        return self.append_many([row], fsync=fsync)[0]

    def append_many(self, rows: Iterable[Row], *, fsync: bool = True) -> list[str]:
        """Append several rows, all or nothing: every row file is written first, then one index
        entry publishes them together (a crash before it leaves none visible)."""
        batch = list(rows)
        segments = [self._check_row(r) for r in batch]
        if not batch:
            return []
        self._ensure_index()
        written: list[pa.RecordBatch] = []
        try:
            for row, segs in zip(batch, segments, strict=True):
                written.append(self._write_row(row, segs, fsync=fsync))
            self._index.publish_add(pa.Table.from_batches(written), fsync=fsync)
        except BaseException as exc:
            outcome = self._publish_outcome(exc, written, len(batch))
            if outcome == "published":
                return self._appended(written, fsync=fsync)
            visible = isinstance(exc, StorageError) and exc.visible and len(written) == len(batch)
            if not visible and outcome == "failed":
                for table in written:  # never published: take the files back
                    with contextlib.suppress(ModelRowsError, OSError):
                        self.store.delete(table.column(PATH)[0].as_py())
            if not isinstance(exc, StorageError):
                raise
            n = len(batch)
            noun = f"row{'s' if n > 1 else ''}"
            raise StorageError(
                f"appending {n} {noun} to {self.url} failed at step "
                f"{exc.step!r} of {exc.path}: {exc.__cause__ or exc}. "
                + (
                    f"The row{'s are' if n > 1 else ' is'} in place but may not be durable yet."
                    if visible
                    else f"The store did not say whether the {noun} went in: the index holds "
                    f"{'them all or none' if n > 1 else 'the whole row or nothing'} (look again "
                    "later; catalog.vacuum() removes the files of rows that did not)."
                    if outcome == "unknown"
                    else f"{'None of the rows was' if n > 1 else 'The row was not'} added."
                ),
                path=exc.path,
                step=exc.step,
                visible=visible,
            ) from exc.__cause__
        return self._appended(written, fsync=fsync)

    def _appended(self, written: list[pa.RecordBatch], *, fsync: bool) -> list[str]:
        """The ids of rows just published; now and then, some housekeeping."""
        self._maybe_compact(fsync=fsync)
        return [str(t.column("row_id")[0].as_py()) for t in written]

    def _publish_outcome(
        self, exc: BaseException, written: list[pa.RecordBatch], n: int
    ) -> Literal["failed", "published", "absent", "unknown"]:
        """What a failed append left: ``"failed"``, nothing published (its row files may be
        taken back). On object storage, a request that failed while publishing the index entry
        may still have been carried out (its answer lost, or it landed after the client gave
        up), so the index is asked: ``"published"`` (the append succeeded), ``"absent"`` or
        ``"unknown"`` (the store did not answer); the row files then stay, for ``vacuum`` to
        remove once old if they are never published."""
        if len(written) != n or not isinstance(exc, StorageError):
            return "failed"
        if self.store.local_path("") is not None:
            return "failed"
        try:
            found = self._index.lookup(written[0].column("row_id")[0].as_py())
        except (ModelRowsError, OSError):
            return "unknown"
        return "absent" if found is None else "published"

    def _maybe_compact(self, *, fsync: bool) -> None:
        """Now and then (one call in CHECK_EVERY, a listing of the log): fold a long log into a
        segment, and then remove the temporary files dead writers left in the log. Bounded work
        that never grows with the catalog: what dead writers left in partitions is
        :meth:`vacuum`'s (finding it means listing every row file of a partition)."""
        if secrets.randbelow(_index.CHECK_EVERY):
            return
        with contextlib.suppress(ModelRowsError, OSError):
            if self._index.log_size() >= _index.COMPACT_AT:
                self._index.compact(fsync=fsync)
                self.store.cleanup_uploads(3600.0, _index.LOG)

    # -- the index ----------------------------------------------------------------------------------
    def _ensure_index(self) -> None:
        """Build the index of a catalog that has none (written before indexes, or lost) before
        writing to it. Readers need not call this: the index calls :meth:`_build_index` when a
        read lists no manifest (one listing fewer for every freshly opened catalog)."""
        if self._index.seen:
            return
        if not self._index.manifests():
            self._build_index()
        self._index.seen = True

    def _build_index(self) -> None:
        """Build the index of a catalog that has none; called once per catalog object at most:
        an index that vanishes after this object has read it is damage to report (rebuilding
        it silently would bring back rows whose delete it recorded)."""
        with self._building:
            if not self._index.manifests():  # not built by another thread meanwhile
                self.reindex(progress=None, _notice_from=time.monotonic())

    def _snapshot(self) -> _index.Snapshot:
        return self._index.snapshot()

    def index_table(self) -> pa.Table:
        """Every live row's index entry as an Arrow table: the non-weight columns, ``row_id``,
        ``written_at``, and ``_path`` (the row file, relative to the root), ``_size``,
        ``_checksum`` (docs/format.md, "The catalog index")."""
        return self._snapshot().table

    def index_files(self) -> list[str]:
        """The keys of the compacted index's Parquet files after a :meth:`compact` (the rows
        appended since are in ``_index/log/``); engines such as Ray or Spark read them."""
        manifest = self._index.latest()
        return list(manifest.segments) if manifest is not None else []

    def compact(self, *, full: bool = True, fsync: bool = True) -> bool:
        """Fold the index's recent entries into its Parquet segments (``full``: into one,
        dropping deleted rows); return whether a new index state was published. Safe at any
        time, with any number of appenders, readers, deleters and other compactors."""
        self._ensure_index()
        return self._index.compact(full=full, fsync=fsync) is not None

    def reindex(
        self,
        *,
        progress: bool | Callable[[int, int], None] | None = None,
        _notice_from: float | None = None,
    ) -> int:
        """Rebuild the index from the row files (the truth); return the number of rows indexed.

        Row files that cannot be read, or that are not the row their name says, are left out
        (``verify()`` names them). Deletes recorded in the index are kept when it can be read."""
        found = self._index.manifests()  # a state published after this is merged in at the end
        since = found[-1][0] if found else None
        log_before = [k[len(_index.LOG) :] for k, _ in self.store.list(_index.LOG)]
        deleted: set[str] = set()
        with contextlib.suppress(ModelRowsError):
            manifest = self._index.latest()
            if manifest is not None:
                deleted |= manifest.deleted
        for name in log_before:
            if _index.is_delete(name):
                with contextlib.suppress(ModelRowsError, _index.StaleRead):
                    deleted |= set(
                        self._index._read(_index.LOG + name).column("row_id").to_pylist()
                    )
        files = self._row_file_copies()
        step, close = _progress(progress, len(files), f"indexing {self.url}")
        tables = []
        shown = False
        try:
            for done, (row_id, keys) in enumerate(sorted(files.items()), 1):
                if row_id in deleted:
                    # a delete interrupted before it removed the file: the rebuilt index records
                    # no deletes, so the file goes first (or a later reindex brings the row back)
                    for key in keys:
                        self.store.delete(key)
                else:
                    entry = self._best_copy(row_id, keys)
                    if entry is not None:
                        tables.append(entry)
                step(done)
                if (
                    _notice_from is not None
                    and not shown
                    and time.monotonic() - _notice_from > _SLOW_NOTICE_S
                ):
                    print(
                        f"modelrows: building the index of {self.url} ({len(files)} row files); "
                        "this happens once",
                        file=sys.stderr,
                        flush=True,
                    )
                    shown = True
        finally:
            close()
        rows = (
            pa.concat_tables(tables)
            if tables
            else pa.Table.from_batches([], schema=self._index.schema)
        )
        manifest = self._index.rebuild(rows, log_before, since=since, listed=set(files))
        self._index.seen = True
        return manifest.rows

    def _best_copy(self, row_id: str, keys: list[str]) -> pa.Table | None:
        """The index row of the sound copy of ``row_id`` that lies where its partition values
        say (or the first sound one), None if no copy is sound."""
        fallback = None
        for key in sorted(keys):
            entry = self._entry_from_file(row_id, key)
            if entry is None:
                continue
            values = {k: entry.column(k)[0].as_py() for k in self.partition_by}
            if key.rpartition("/")[0] == self._partition_dir(values):
                return entry
            fallback = fallback or entry
        return fallback

    def _entry_from_file(self, row_id: str, key: str) -> pa.Table | None:
        """The index row of a row file, read from the file (from a remote store, every byte
        but its tensors'); None if it is not a sound row. A store that fails raises."""
        path = self.store.local_path(key)
        if path is None:
            where = f"{self.url}/{key}"
            try:
                batch, size = read_for_index(self.store, key, where=where)
                self._check_belongs(batch, row_id, where)
            except StorageError:
                raise
            except (ModelRowsError, FileNotFoundError):
                return None
            return self._entry_of(batch, key, size)
        if self._problem(row_id, key) is not None:
            return None
        try:
            batch, _ctx = read_row_file(path)
            size = os.stat(path).st_size
        except (RowFileError, FileNotFoundError):
            if os.path.lexists(path):
                raise
            return None  # removed since it was checked: a delete (or a compaction after one)
        return self._entry_of(batch, key, size)

    def _entry_of(self, batch: pa.RecordBatch, key: str, size: int) -> pa.Table:
        """The index row of a row file's checked record batch."""
        checksums = [batch.column(n).field("checksum")[0].as_py() or "" for n in self._weight_names]
        first = pa.array([0])  # a copy: a view would keep the file mapped (and open) as long as
        values = [batch.column(n).take(first) for n in self._value_names]  # the entry lives
        return pa.Table.from_arrays(
            _index_columns(values, key, size, checksums), schema=self._index.schema
        )

    def _row_files(self) -> dict[str, str]:
        """Every row file in the partition directories, by row id (lists them all: reindex and
        vacuum only). Of copies of one row in several directories, the one in the directory
        its name sorts first in."""
        found: dict[str, str] = {}
        for row_id, keys in self._row_file_copies().items():
            found[row_id] = keys[0]
        return found

    def _row_file_copies(self) -> dict[str, list[str]]:
        """Every row file in the partition directories: row id -> the keys holding it."""
        depth = len(self.partition_by)
        found: dict[str, list[str]] = {}
        for key, _ in self.store.list(""):
            parts = key.split("/")
            if len(parts) != depth + 1 or not is_row_file_name(parts[-1]):
                continue
            if any(p.startswith((".", "_")) or "=" not in p for p in parts[:-1]):
                continue
            found.setdefault(parts[-1].split(".", 1)[0], []).append(key)
        return found

    def _partition_dir(self, values: Mapping[str, Any]) -> str:
        """The directory (key prefix, "" for the root) where a row of these values belongs."""
        return "/".join(_encode_segment(k, values[k]) for k in self.partition_by)

    # -- finding rows -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._index.count()  # the manifest's count and the log's ids, no segment rows

    def _entry(self, row_id: str) -> dict[str, Any]:
        if not isinstance(row_id, str):
            raise CatalogError(f"a row id is a string, not {type(row_id).__name__}")
        # a row id, or an alias name resolved to its row; only the columns callers use
        entry = self._lookup_entry(row_id, columns=[PATH, "row_id"])
        if entry is None:
            raise RowNotFoundError(f"no row {row_id!r} in the catalog at {self.url}")
        return entry

    def path_of(self, row_id: str) -> Path | str:
        """The file holding ``row_id`` (found in the index), or its URL (a string) in a catalog
        on object storage; RowNotFoundError if there is none."""
        return self._path(self._entry(row_id)[PATH])

    def get(self, row_id: str, *, verify: bool = False, mmap: bool = True) -> Row:
        """One row by id, weights zero-copy; reads the index entry and opens exactly one file.
        ``mmap=False`` reads the file into memory instead (see :func:`read_model_row`).

        The row's ``row_id`` and ``written_at`` are available as ``row.row_id``/``row.written_at``.
        """
        entry = self._entry(row_id)  # row_id may be an alias: the entry has the row's id
        return self._read(entry["row_id"], entry[PATH], verify=verify, mmap=mmap)

    def _read(self, row_id: str, key: str, *, verify: bool, mmap: bool = True) -> Row:
        """Row ``row_id`` from its file ``key``: a regular file (never a link) that holds this
        catalog's columns and the row its name says, checked as every read is."""
        path = self.store.local_path(key)
        if path is None:  # a remote store: the object, read whole into memory
            batch, ctx = self._fetch(key)
            self._check_belongs(batch, row_id, ctx.where)
            row = decode_row(batch, 0, ctx)
            if verify:
                verify_row(row, where=ctx.where, batch=batch)
            return row
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except FileNotFoundError:
            self._check_not_deleted(row_id)
            raise RowFileError(
                f"{path}: the row file is gone (removed by hand?); run catalog.verify() to list "
                "such rows and catalog.reindex() to drop them from the index",
                path=str(path),
            ) from None
        if is_link:
            raise RowFileError(
                f"{path} is a symbolic link, not a row file the catalog wrote; the catalog never "
                "follows links (remove it, and run catalog.reindex())",
                path=str(path),
            )
        try:
            batch, ctx = read_row_file(path, mmap=mmap)
        except RowFileError:
            if not os.path.lexists(path):
                self._check_not_deleted(row_id)
            raise
        self._check_belongs(batch, row_id, path)
        row = decode_row(batch, 0, ctx)
        if verify:
            verify_row(row, where=ctx.where, batch=batch)
        return row

    def _fetch(self, key: str) -> tuple[pa.RecordBatch, Any]:
        """The checked record batch of row file ``key`` and its decoding context: the file
        mapped (a local store), or the object read whole into memory with parallel ranged reads
        (a remote store; no temporary file). The checks are :func:`read_model_row`'s."""
        path = self.store.local_path(key)
        if path is not None:
            return read_row_file(path)
        where = f"{self.url}/{key}"
        try:
            data = self.store.read_all(key)
        except FileNotFoundError:
            raise RowFileError(
                f"{where}: the row object is gone (deleted by hand?); run catalog.verify() to "
                "list such rows and catalog.reindex() to drop them from the index",
                path=where,
            ) from None
        return read_row_file(data, where=where)

    def _check_not_deleted(self, row_id: str) -> None:
        """The file of a row the index listed is gone: RowNotFoundError if the row was deleted
        meanwhile (a delete removes the file right after recording it); else return."""
        if self._index.lookup(row_id) is None:
            raise RowNotFoundError(
                f"no row {row_id!r} in the catalog at {self.url} (deleted while it was being read)"
            )

    def _check_belongs(self, batch: pa.RecordBatch, row_id: str, path: Path | str) -> None:
        if not batch.schema.equals(self.arrow_schema, check_metadata=False):
            raise CorruptRowError(
                f"{path}: its columns are not the catalog's ("
                f"{_schema_difference(batch.schema, self.arrow_schema)}); the file does not "
                f"belong in {self.url}",
                path=str(path),
            )
        stored = batch.column(0)[0].as_py()
        if stored != row_id:
            raise CorruptRowError(
                f"{path}: its name says row {row_id} but it holds row {stored!r}; was it "
                "renamed or copied by hand?",
                path=str(path),
            )

    # -- queries --------------------------------------------------------------------------------------
    def _columns(self, *, weights: bool = False) -> list[str]:
        return [f.name for f in self.arrow_schema if weights or f.name not in self._weights]

    def _query_table(self) -> pa.Table:
        """The live rows as queries see them: the row's columns, without the index's own. The
        whole snapshot stays with this thread: ``best`` finds the file of the row it chose there,
        without a second look at the index (on object storage, each look is a few requests)."""
        table = self._snapshot().table
        self._local.snapshot_table = table
        return table.drop_columns([PATH, SIZE, CHECKSUM])

    def dataset(self, *, weights: bool = False) -> ds.Dataset:
        """A pyarrow dataset of every live row: over the index (``weights=False``), or over the
        row files the index lists, with hive partitions (``weights=True``; local catalogs)."""
        import pyarrow.dataset as ds

        if not weights:
            return ds.dataset(self._query_table())
        table = self._snapshot().table
        paths = []
        for key in table.column(PATH).to_pylist():
            path = self.store.local_path(key)
            if path is None:
                raise CatalogError(
                    f"{self.url}: a dataset over row files needs a local catalog; query the "
                    "index (weights=False) instead"
                )
            paths.append(str(path))
        partitioning = ds.partitioning(
            pa.schema([self.arrow_schema.field(k) for k in self.partition_by]), flavor="hive"
        )
        return ds.dataset(
            sorted(paths),
            schema=self.arrow_schema,
            format="arrow",
            partitioning=partitioning,
            partition_base_dir=str(self.root),
        )

    def scan(self, *, weights: bool = False) -> pl.LazyFrame:
        """A Polars LazyFrame of every live row: all columns but weights (unless asked for, which
        reads the row files), with row_id and written_at. Reads the index, no row file."""
        import polars as pl

        if weights:
            return pl.scan_pyarrow_dataset(self.dataset(weights=True)).select(
                self._columns(weights=True)
            )
        return pl.from_arrow(self._query_table()).lazy()  # type: ignore[union-attr]

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """This thread's DuckDB connection: it sees the catalog and nothing else on the machine
        (no file access, no extensions, configuration locked)."""
        con = getattr(self._local, "con", None)
        if con is None:
            import duckdb

            con = duckdb.connect(
                config={
                    "enable_external_access": False,
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "lock_configuration": True,
                }
            )
            self._local.con = con
        return con

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Run DuckDB SQL where the table ``models`` is the catalog's index (every non-weight
        column, row_id and written_at); returns a relation.

        The relation answers from the catalog as it was when ``sql`` was called, however late
        it is fetched: each call registers its own snapshot as ``models``, in a cursor of its own
        (registering it again in one shared connection made earlier relations answer from the
        newer snapshot). The query sees the catalog and nothing else: DuckDB's file access,
        extensions and configuration changes are disabled. For the full DuckDB, read
        ``index_table()`` or ``index_files()`` with your own connection."""
        import duckdb

        if not isinstance(query, str):
            raise CatalogError(f"a SQL query is a string, not {type(query).__name__}")
        cursor = self._connection().cursor()  # the same locked-down database, its own views
        cursor.register("models", _duckdb_ready(self._query_table()))
        try:
            return cursor.sql(query)
        except duckdb.Error as exc:
            raise CatalogError(f"SQL error: {exc}") from exc

    def _where(self, rel: duckdb.DuckDBPyRelation, where: str | None) -> duckdb.DuckDBPyRelation:
        """``rel`` filtered by the SQL condition ``where``, parsed as one expression (it cannot
        end the statement or start another)."""
        import duckdb

        if where is None:
            return rel
        if not isinstance(where, str):
            raise CatalogError(f"where is a SQL condition string, not {type(where).__name__}")
        try:
            return rel.filter(where)
        except duckdb.Error as exc:
            raise CatalogError(f"bad where condition {where!r}: {exc}") from exc

    def _ids(
        self, *, where: str | None, order: Sequence[str], limit: int | None = None
    ) -> list[str]:
        import duckdb

        rel = self._where(self.sql("SELECT * FROM models"), where).order(", ".join(order))
        if limit is not None:
            rel = rel.limit(limit)
        try:
            return [r[0] for r in rel.project("row_id").fetchall()]
        except duckdb.Error as exc:
            raise CatalogError(f"SQL error: {exc}") from exc

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
        null and NaN values never rank. With ``on_corrupt="skip"``, a row whose file is corrupt
        (or, with ``verify=True``, whose checksum fails) is skipped with a warning for the next
        best.
        """
        self._check_on_corrupt(on_corrupt)
        if by not in self.arrow_schema.names or by in self._weights:
            raise CatalogError(
                f"cannot rank by {by!r}: not a column of {self.schema} "
                f"(columns: {', '.join(self._columns())})"
            )
        ftype = self.arrow_schema.field(by).type
        if isinstance(ftype, pa.StructType | pa.ListType):
            raise CatalogError(f"cannot rank by {by!r}: it is not a number, string or date")
        fast = (
            where is None
            and on_corrupt == "raise"
            and (
                pa.types.is_integer(ftype)
                or pa.types.is_float32(ftype)
                or pa.types.is_float64(ftype)
            )
        )  # the common case needs no SQL engine (starting one costs more than the search)
        for _ in range(_index._RETRIES):  # again if the best row is deleted before it loads
            if fast:
                try:
                    best = self._best_id(by, descending=descending)
                    if best is None:
                        return None
                    row_id, key = best  # the file the snapshot names: no second index read
                    return self._load(row_id, verify=verify, on_corrupt=on_corrupt, key=key)
                except RowNotFoundError:
                    continue
            rel = self._where(
                self.sql(f"SELECT * FROM models WHERE {_quote(by)} IS NOT NULL"), where
            )
            if pa.types.is_floating(self.arrow_schema.field(by).type):
                rel = rel.filter(f"NOT isnan({_quote(by)})")
            rel = rel.order(f"{_quote(by)} {'DESC' if descending else 'ASC'}, row_id")
            if on_corrupt == "raise":
                rel = rel.limit(1)
            ids = [row_id for (row_id,) in rel.project("row_id").fetchall()]
            seen: pa.Table | None = getattr(self._local, "snapshot_table", None)
            keys: dict[str, str] = {}
            if seen is not None and ids:  # the snapshot the query ran on: each row's file
                import pyarrow.compute as pc

                found = seen.filter(pc.is_in(seen.column("row_id"), value_set=pa.array(ids)))
                keys = dict(
                    zip(
                        found.column("row_id").to_pylist(),
                        found.column(PATH).to_pylist(),
                        strict=True,
                    )
                )
            try:
                for row_id in ids:
                    row = self._load(
                        row_id, verify=verify, on_corrupt=on_corrupt, key=keys.get(row_id)
                    )
                    if row is not None:
                        return row
            except RowNotFoundError:
                continue
            return None
        raise CatalogError(f"{self.url}: the best rows kept being deleted as they were loaded")

    def _best_id(self, by: str, *, descending: bool) -> tuple[str, str] | None:
        """(row id, file key) of the row best's SQL finds for a numeric ``by``, in one pass over
        the snapshot's columns: the highest (lowest) value, null and NaN never ranking, ties to
        the smallest row id."""
        import pyarrow.compute as pc

        table = self._index.snapshot(columns=[by, PATH]).table  # three columns, not every one
        values, ids, keys = table.column(by), table.column("row_id"), table.column(PATH)
        ranked = values  # nulls skipped by min/max; NaN left out here (only the numbers move)
        if pa.types.is_floating(values.type):
            ranked = values.filter(pc.invert(pc.is_nan(values)))
        target = pc.max(ranked) if descending else pc.min(ranked)
        if not target.is_valid:
            return None
        at = pc.indices_nonzero(pc.equal(values, target))  # the tied rows (null is never equal)
        tied = ids.take(at)
        row = at[pc.index(tied, pc.min(tied)).as_py()].as_py()  # the smallest id of the tied
        return str(ids[row].as_py()), str(keys[row].as_py())

    def _check_on_corrupt(self, on_corrupt: str) -> None:
        if on_corrupt not in ("raise", "skip"):
            raise CatalogError(f"on_corrupt is 'raise' or 'skip', not {on_corrupt!r}")

    def _load(
        self, row_id: str, *, verify: bool, on_corrupt: OnCorrupt, key: str | None = None
    ) -> Row | None:
        """get() (from the file ``key`` if known), or None with a warning for a corrupt row when
        ``on_corrupt="skip"``."""
        try:
            if key is not None:
                return self._read(row_id, key, verify=verify)
            return self.get(row_id, verify=verify)
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
        self._check_on_corrupt(on_corrupt)
        table = self._snapshot().table
        paths = dict(
            zip(table.column("row_id").to_pylist(), table.column(PATH).to_pylist(), strict=True)
        )
        for row_id in self._ids(where=where, order=["row_id"]):
            key = paths.get(row_id)
            if key is None:  # appended since the snapshot above (the query took its own)
                continue
            try:
                row = self._read(row_id, key, verify=verify)
            except RowNotFoundError:  # deleted while iterating
                continue
            except RowFileError as exc:
                if on_corrupt == "raise":
                    raise
                _skip_warning(str(exc))
                continue
            yield row

    # -- deleting -----------------------------------------------------------------------------------
    def delete(
        self,
        row_ids: Iterable[str] | str | None = None,
        *,
        where: str | None = None,
        fsync: bool = True,
    ) -> list[str]:
        """Delete rows by id, or those matching the SQL condition ``where``; return their ids.

        Atomic per call: one index entry records every id, and from then on no query sees them;
        their files are removed afterwards (``vacuum`` finishes what a crash left). Unknown ids
        raise RowNotFoundError and delete nothing.
        """
        if (row_ids is None) == (where is None):
            raise CatalogError("delete takes row ids or where=..., one of the two")
        snap = self._snapshot()
        live = snap.table
        if where is not None:
            ids = self._ids(where=where, order=["row_id"])
        else:
            ids = [row_ids] if isinstance(row_ids, str) else list(row_ids or [])
            if not all(isinstance(i, str) for i in ids):
                raise CatalogError("row ids are strings")
            known = set(live.column("row_id").to_pylist())
            missing = sorted(set(ids) - known)
            if missing:
                raise RowNotFoundError(
                    f"no row {', '.join(map(repr, missing[:5]))}"
                    f"{' ...' if len(missing) > 5 else ''} in the catalog at {self.url}; "
                    "nothing was deleted"
                )
        ids = sorted(set(ids))
        if not ids:
            return []
        try:
            self._index.publish_delete(ids, fsync=fsync)
        except StorageError as exc:  # say which of the two outcomes it is
            n, visible = len(ids), exc.visible
            raise StorageError(
                f"deleting {n} row{'s' if n > 1 else ''} from {self.url} failed at step "
                f"{exc.step!r} of {exc.path}: {exc.__cause__ or exc}. "
                + (
                    f"The row{'s are' if n > 1 else ' is'} deleted; the deletion may not be "
                    "durable yet."
                    if visible
                    else "Nothing was deleted."
                ),
                path=exc.path,
                step=exc.step,
                visible=visible,
            ) from exc.__cause__
        import pyarrow.compute as pc

        gone = live.filter(pc.is_in(live.column("row_id"), value_set=pa.array(ids)))
        for key in gone.column(PATH).to_pylist():
            with contextlib.suppress(ModelRowsError, OSError):
                self.store.delete(key)
        self._maybe_compact(fsync=fsync)
        return ids

    # -- housekeeping ------------------------------------------------------------------------------
    def vacuum(self, *, older_than: float = 3600.0) -> list[Path | str]:
        """Finish what crashed writers, deleters and compactors left: temporary files (whose
        writer is gone from this machine, or older than ``older_than`` seconds), files of deleted rows, row files
        never published (older than ``older_than``), index segments no manifest names. Returns
        what was removed (on object storage: URLs, as strings; abandoned multipart uploads are
        aborted as well)."""
        self._ensure_index()
        removed: list[Path | str] = []
        before = set(self._tmp_files())
        self.store.cleanup_uploads(older_than)
        removed += [p for p in before if not p.exists()]
        snap = self._index.snapshot()
        if snap.removed is not None:
            for key in snap.removed.column(PATH).to_pylist():
                if self.store.size(key) is not None:
                    self.store.delete(key)
                    removed.append(self._path(key))
        live = set(snap.table.column("row_id").to_pylist())
        now = time.time()
        for row_id, key in self._row_files().items():
            if row_id not in live and now - _index.id_time(row_id) > older_than:
                # never published (a writer died between the file and its entry), or deleted
                self.store.delete(key)
                removed.append(self._path(key))
        manifest = snap.manifest
        referenced = set(manifest.segments) if manifest is not None else set()
        for key in self._index.remove_orphan_segments(referenced, older_than=older_than):
            removed.append(self._path(key))
        return removed

    def _path(self, key: str) -> Path | str:
        """The file of ``key``, or its URL (a string) on a remote store."""
        local = self.store.local_path(key)
        return local if local is not None else f"{self.url}/{key}"

    def _tmp_files(self) -> list[Path]:
        local = self.store.local_path("")
        if local is None:
            return []
        return [
            local / key for key, _ in self.store.list("") if is_temp_name(key.rsplit("/", 1)[-1])
        ]

    def _problem(self, row_id: str, key: str, *, verify: bool = False) -> _Problem | None:
        """Why the file ``key`` cannot serve as row ``row_id`` of this catalog, or None if it can.

        Checks the file's structure (as :func:`read_model_row` does), that its columns are the
        catalog's and that it holds the row its name says; ``verify=True`` also decodes the row and
        recomputes its checksum. No tensor byte is read otherwise.
        """
        path = self._path(key)
        try:
            batch, ctx = self._fetch(key)
            self._check_belongs(batch, row_id, path)
            if verify:
                verify_row(decode_row(batch, 0, ctx), where=ctx.where, batch=batch)
        except FileNotFoundError:
            return RowFileError, f"{path}: the row file is missing (removed by hand?)"
        except StorageError:  # the store failed, not the row
            raise
        except ModelRowsError as exc:
            return type(exc), str(exc)
        return None

    def verify(
        self, *, progress: bool | Callable[[int, int], None] | None = None
    ) -> list[CorruptRow]:
        """Re-read every row the index lists and recompute every checksum; return the rows whose
        file is missing, unreadable, corrupt, or disagrees with the index (another row, another
        partition), by id and path. Nothing remembered from earlier reads is trusted.

        >>> import tempfile, torch.nn as nn
        >>> from modelrows import ModelV1, fetch_weights
        >>> catalog = Catalog.create(tempfile.mkdtemp() + "/c", ModelV1)
        >>> _ = catalog.append(ModelV1(weights=fetch_weights(nn.Linear(2, 2))))
        >>> catalog.verify()
        []
        """
        table = self._snapshot().table
        ids = table.column("row_id").to_pylist()
        keys = table.column(PATH).to_pylist()
        parts = {k: table.column(k).to_pylist() for k in self.partition_by}
        step, close = _progress(progress, len(ids), f"verifying {self.url}")
        bad = []
        try:
            for i, (row_id, key) in enumerate(sorted(zip(ids, keys, strict=True)), 1):
                path = self._path(key)
                problem = self._problem(row_id, key, verify=True)
                if problem is None:
                    at = ids.index(row_id)
                    expected = self._partition_dir({k: parts[k][at] for k in self.partition_by})
                    found = key.rpartition("/")[0]
                    if found != expected:
                        problem = (
                            CorruptRowError,
                            f"{path}: the row says partition {expected or '(none)'} but its file "
                            f"is in {found or 'the root'}; was it moved by hand?",
                        )
                if problem is not None:
                    bad.append(CorruptRow(row_id, path, problem[1]))
                step(i)
        finally:
            close()
        return bad

    # -- retention and aliases ------------------------------------------------------------------------
    # (thin methods over _retention.py and _aliases.py; docs/training.md has the semantics)
    def retain(
        self,
        *,
        by: str | None = None,
        mode: Literal["max", "min"] = "max",
        keep_top_k: int | None = None,
        per: Sequence[str] | None = None,
        keep_last: int | None = None,
        where: str | None = None,
        dry_run: bool = False,
        fsync: bool = True,
    ) -> list[str]:
        """Keep the best rows, the latest ones and the aliased ones; delete the rest in one atomic
        delete. Returns the ids deleted (``dry_run=True``: that would be; nothing is deleted).

        Among the rows ``where`` selects (a SQL condition; all by default), in each group of rows
        with the same values in the ``per`` columns (the partition columns by default, ``[]`` for
        one group), keeps the ``keep_top_k`` best by the column ``by`` (highest with
        ``mode="max"``, lowest with ``"min"``; null and NaN rank last, ties go to the earlier row)
        and the ``keep_last`` latest; keeps every row an alias points to.

        >>> import tempfile, torch.nn as nn
        >>> from modelrows import ModelV1, fetch_weights
        >>> class EpochV1(ModelV1, schema="doc.retain", version=1):
        ...     run: str
        ...     accuracy: float
        >>> catalog = Catalog.create(tempfile.mkdtemp() + "/c", EpochV1, partition_by=["run"])
        >>> w = fetch_weights(nn.Linear(1, 1))
        >>> ids = [catalog.append(EpochV1(weights=w, run="a", accuracy=x)) for x in (.5, .9, .7, .6)]
        >>> catalog.retain(by="accuracy", keep_top_k=2, keep_last=1) == [ids[0]]
        True
        """
        return _retention.retain(
            self,
            by=by,
            mode=mode,
            keep_top_k=keep_top_k,
            per=per,
            keep_last=keep_last,
            where=where,
            dry_run=dry_run,
            fsync=fsync,
        )

    def alias(
        self,
        name: str,
        row_id: str,
        *,
        expected: str | _aliases._NoCheck | None = _aliases.NO_CHECK,
        fsync: bool = True,
    ) -> _aliases.Alias:
        """Point the alias ``name`` to the row ``row_id`` (an existing row; another alias is
        resolved to its row now); return the new version. ``catalog.get(name)`` then loads it.

        Atomic and safe with concurrent setters: every set creates the next version of the alias
        (create-if-absent), the latest wins. ``expected=<row id>`` sets it only if it points to
        that row (``expected=None``: only if it is not set), else raises CatalogError.
        Names: letters, digits and ``. _ = / % -``, starting with a letter or digit, at most 200
        characters, never shaped like a row id.

        >>> import tempfile, torch.nn as nn
        >>> from modelrows import ModelV1, fetch_weights
        >>> catalog = Catalog.create(tempfile.mkdtemp() + "/c", ModelV1)
        >>> row_id = catalog.append(ModelV1(weights=fetch_weights(nn.Linear(1, 1))))
        >>> catalog.alias("production", row_id).sequence
        1
        >>> catalog.get("production").row_id == row_id
        True
        """
        return _aliases.set_alias(self, name, row_id, expected=expected, fsync=fsync)

    def unalias(
        self,
        name: str,
        *,
        expected: str | _aliases._NoCheck | None = _aliases.NO_CHECK,
        fsync: bool = True,
    ) -> _aliases.Alias | None:
        """Remove the alias ``name`` (a tombstone version keeps its history); return that
        version, or None if it was not set."""
        return _aliases.remove(self, name, expected=expected, fsync=fsync)

    def aliases(self) -> list[_aliases.Alias]:
        """Every alias set now: ``Alias(name, row_id, set_at, sequence)``, by name."""
        return list(_aliases.current_targets(self.store).values())

    def alias_history(self, name: str | None = None) -> list[_aliases.Alias]:
        """Every version of the alias ``name`` (of every alias when None), oldest first by name;
        a removal is a version whose ``row_id`` is None."""
        return _aliases.history(self.store, name)

    def _lookup_entry(
        self, name: str, *, columns: Sequence[str] | None = None
    ) -> dict[str, Any] | None:
        """The index entry of row ``name``, or of the row the alias ``name`` points to (at least
        ``columns`` of it, when given)."""
        if _aliases.is_row_id(name):
            return self._index.lookup(name, columns=columns)
        target = _aliases.resolve(self, name)
        if target is None:  # not an alias either: look it up as given
            return self._index.lookup(name, columns=columns)
        entry = self._index.lookup(target, columns=columns)
        if entry is None:
            raise _aliases.dangling(name, target, self.url)
        return entry


def _index_columns(
    values: list[pa.Array], key: str, size: int, checksums: list[str]
) -> list[pa.Array]:
    """An index row's columns: the row's values (all but its weights), then its file's key and
    size and its weights' checksums (docs/format.md 6.4)."""
    return [
        *values,
        pa.array([key], pa.string()),
        pa.array([size], pa.int64()),
        pa.array([",".join(checksums)], pa.string()),
    ]


_Problem = tuple[type[ModelRowsError], str]  # what is wrong with a row file: error class, message


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _duckdb_ready(table: pa.Table) -> pa.Table:
    """``table`` with the types DuckDB cannot scan from Arrow widened (float16 -> float32)."""
    fields = list(table.schema)
    if not any(pa.types.is_float16(f.type) for f in fields):
        return table
    return table.cast(
        pa.schema(
            [f.with_type(pa.float32()) if pa.types.is_float16(f.type) else f for f in fields],
            metadata=table.schema.metadata,
        )
    )


def _check_empty_for_create(root: Path) -> None:
    """Refuse to create a catalog in a directory that holds something else."""
    if (root / CATALOG_FILE).exists():
        return
    try:
        if root.exists() and any(
            not p.name.startswith(".") and p.name != "README.md" and p.name != "_index"
            for p in root.iterdir()
        ):
            raise CatalogError(
                f"{root} is not empty and holds no catalog; choose an empty or new directory"
            )
    except OSError as exc:
        raise CatalogError(f"cannot create a catalog at {root}: {exc}") from exc


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
