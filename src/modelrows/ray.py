"""Evaluate every checkpoint of a catalog on a Ray cluster (the ``modelrows[ray]`` extra).

:func:`read_catalog` turns a catalog's metadata (every column but weights, plus ``row_id``)
into a ``ray.data.Dataset``; no weight byte reaches the driver. :func:`map_checkpoints` runs a
function over checkpoints on Ray workers: each worker builds the model once (per key), loads
each row's weights straight from the catalog (memory-mapped from a local or shared filesystem),
calls ``fn(model, row)`` and returns plain columns; with ``results=`` the workers also append
one :class:`EvaluationV1` row per checkpoint to a second catalog, which a DuckDB join ranks.

Weights never travel through Ray: only row ids and the plain columns ``fn`` returns do. Ray ships
``fn`` and ``model_factory`` to the workers with its own serializer, as it does for any function.

This module is imported on demand (``import modelrows.ray``), never by ``import modelrows``;
it imports Ray only when a function here is called, so :class:`EvaluationV1` rows can be
declared and read where Ray is not installed.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from ._catalog import Catalog
from ._errors import CatalogError, ModelRowsError
from ._schema import Row, nearest_declared
from ._weights import load_weights

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

__all__ = ["EvaluationV1", "map_checkpoints", "read_catalog"]

CatalogLike = Catalog | str | os.PathLike[str]
ModelFactory = Callable[[Row], torch.nn.Module]
RowFunction = Callable[[torch.nn.Module, Row], Mapping[str, Any]]

_RESULT_COLUMNS = ("row_id", "error")  # what every result batch holds besides fn's columns


class EvaluationV1(Row, schema="modelrows.evaluation", version=1):
    """``modelrows.evaluation@1``: one result of a function run on one checkpoint (no weights).

    ``model_row_id`` is the ``row_id`` of the evaluated row in the model catalog; ``error`` says
    why the row could not be evaluated (None when it was). Extend it with your metrics, each
    with a default (a row that failed carries only its error)::

        class NoisyEvalV1(EvaluationV1, schema="digits.noisy-eval", version=1):
            noisy_accuracy: float | None = None

    >>> EvaluationV1(model_row_id="01J...", error=None)
    EvaluationV1(model_row_id='01J...', error=None)
    """

    model_row_id: str
    error: str | None = None


def _need_ray() -> None:
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ModelRowsError(
            f"modelrows.ray needs Ray ({exc}); install it with pip install 'modelrows[ray]'"
        ) from exc


def _open(catalog: CatalogLike) -> Catalog:
    return catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)


def _location(catalog: CatalogLike) -> str:
    """What a worker passes to Catalog.open to open the same catalog (a path or a URL)."""
    where = catalog.url if isinstance(catalog, Catalog) else os.fspath(catalog)
    return where if "://" in where else os.path.abspath(where)  # workers have their own cwd


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _metadata_columns(catalog: Catalog) -> list[str]:
    """Every column a query may read without touching weights: all but weights, plus row_id."""
    return list(catalog.scan().collect_schema().names())


def _metadata(catalog: Catalog, *, where: str | None, columns: Sequence[str] | None) -> pa.Table:
    """The metadata rows matching ``where``, oldest first, as one Arrow table (no weights).

    The one place that reads the catalog for Ray, from its index (catalog.sql opens no row
    file). Ray could read the index's Parquet files itself (catalog.index_files()), were the rows
    appended or deleted since the last compaction (the index's log) not needed too; that switch
    is here alone.
    """
    available = _metadata_columns(catalog)
    wanted = list(available if columns is None else columns)
    if unknown := [c for c in wanted if c not in available]:
        raise CatalogError(
            f"{catalog.url} has no column {', '.join(map(repr, unknown))} to read (its columns "
            f"without weights: {', '.join(available)})"
        )
    if "row_id" not in wanted:
        wanted.insert(0, "row_id")
    clause = f"WHERE {where}" if where else ""
    query = f"SELECT {', '.join(map(_quote, wanted))} FROM models {clause} ORDER BY row_id"
    result = catalog.sql(query).arrow()
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result


def read_catalog(
    catalog: CatalogLike,
    *,
    where: str | None = None,
    columns: Sequence[str] | None = None,
    override_num_blocks: int | None = None,
) -> ray.data.Dataset:
    """A ``ray.data.Dataset`` of the catalog's metadata rows: every column but weights.

    ``catalog`` is a :class:`~modelrows.Catalog` or what :meth:`Catalog.open` takes (a path, a URL).
    ``where`` is a SQL condition as in :meth:`Catalog.rows` (``"run = 'a' AND epoch > 2"``);
    ``columns`` picks columns (``row_id`` is always kept). Rows come oldest first, in
    ``override_num_blocks`` blocks (by default as many as Ray Data's minimum for a read, at most
    one per row), so that many workers share them. Ray is started if it is not running.

    >>> import modelrows.ray as mr                                       # doctest: +SKIP
    >>> mr.read_catalog("catalog/digits", where="epoch >= 10").count()  # doctest: +SKIP
    15
    """
    _need_ray()
    import ray.data

    table = _metadata(_open(catalog), where=where, columns=columns)
    if override_num_blocks is None:
        minimum = ray.data.DataContext.get_current().read_op_min_num_blocks
        override_num_blocks = max(1, min(table.num_rows, minimum))
    dataset: ray.data.Dataset = ray.data.from_arrow(table, override_num_blocks=override_num_blocks)
    return dataset


def _import_path(cls: type[Row]) -> tuple[str, str] | None:
    """(module, qualified name) that a worker imports ``cls`` from, or None if it cannot."""
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    return cls.__module__, cls.__qualname__


def _result_class(results: Catalog) -> tuple[type[EvaluationV1], tuple[str, str]]:
    cls = nearest_declared(results.schema, where=results.url)
    if cls.__qualified__ != results.schema:
        raise CatalogError(
            f"{results.url} holds {results.schema} rows, whose class is not declared in this "
            "process; import the module that declares it before map_checkpoints"
        )
    if not issubclass(cls, EvaluationV1):
        raise CatalogError(
            f"results go to a catalog of rows extending modelrows.ray.EvaluationV1 "
            f"(model_row_id, error); {results.url} holds {results.schema} rows"
        )
    if required := [n for n, f in cls.__row_fields__.items() if f.required and n != "model_row_id"]:
        raise CatalogError(
            f"{cls.__name__}: give {', '.join(map(repr, required))} a default (e.g. "
            "`float | None = None`): a checkpoint that fails is recorded with its error only"
        )
    where = _import_path(cls)
    if where is None:
        raise CatalogError(
            f"{cls.__name__} is declared in the script run as __main__ (or inside a function), "
            "where Ray workers cannot import it; declare it at the top level of a module that "
            "the workers import (next to your script, or shipped with runtime_env={'py_modules': "
            "[...]})"
        )
    return cls, where


def _compute(concurrency: int | tuple[int, int] | None, options: dict[str, Any]) -> None:
    if concurrency is None:
        return
    if "compute" in options:
        raise ModelRowsError("pass either concurrency= or compute=, not both")
    import ray.data

    if isinstance(concurrency, int):
        options["compute"] = ray.data.ActorPoolStrategy(size=concurrency)
    else:
        low, high = concurrency
        options["compute"] = ray.data.ActorPoolStrategy(min_size=low, max_size=high)


def map_checkpoints(
    catalog: CatalogLike,
    fn: RowFunction,
    *,
    model_factory: ModelFactory,
    where: str | None = None,
    key: str | None = None,
    results: CatalogLike | None = None,
    verify: bool = True,
    batch_size: int | None = None,
    concurrency: int | tuple[int, int] | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    **ray_options: Any,
) -> ray.data.Dataset:
    """Run ``fn(model, row)`` on every checkpoint (matching ``where``) on Ray workers.

    Each worker builds a model with ``model_factory(row)`` once per value of the ``key`` column
    (e.g. ``"architecture_version"`` or a config column; once in all if None), then for each
    row: reads it with ``Catalog.get`` (weights memory-mapped; checksums checked unless
    ``verify=False``), copies its weights in with :func:`~modelrows.load_weights` and calls
    ``fn``, which returns a dict of plain values (numbers, strings, None, lists, dicts).

    Returns a Dataset with, per row, ``row_id`` (the checkpoint's), ``fn``'s columns and
    ``error``: None, or why that row failed (a corrupt file, weights that no longer fit the
    model, an exception in ``fn``); one row failing never fails the job.

    With ``results`` (a catalog of :class:`EvaluationV1` rows, or its path), each worker also
    appends one row per checkpoint to it, a batch at a time with the catalog's atomic appends,
    and the job runs before this returns (so reading the result twice never appends twice).
    The row class must be importable by the workers (declared in a module, not in ``__main__``).

    ``batch_size``, ``num_cpus``, ``num_gpus`` and ``**ray_options`` (``memory``,
    ``runtime_env``, ``compute`` ...) go to ``Dataset.map_batches``; ``concurrency=n`` is a pool
    of ``n`` workers (``(m, n)``: from m to n). A GPU worker's ``model_factory`` puts the model
    on its device; the weights are copied onto it.

    >>> import modelrows.ray as mr                                             # doctest: +SKIP
    >>> def evaluate(model, row):                                              # doctest: +SKIP
    ...     return {"test_accuracy": accuracy(model, x_test, y_test)}
    >>> mr.map_checkpoints("catalog/digits", evaluate, model_factory=lambda row:
    ...     digits_model(row.config), key="config", concurrency=2).take_all()  # doctest: +SKIP
    """
    source = _open(catalog)
    columns = ["row_id"]
    if key is not None:
        if key in ("row_id", "written_at"):
            raise CatalogError(f"key {key!r} differs on every row; key by a shared column")
        columns.append(key)
    result_location = result_path = None
    if results is not None:
        _, result_path = _result_class(_open(results))
        result_location = _location(results)
    imports = []
    try:
        model_class: type[Row] | None = source.row_class
    except ModelRowsError:  # not declared here: workers read rows as ModelV1 (+ row.extras)
        model_class = None
    if model_class is not None:
        path = _import_path(model_class)
        if path is None:
            warnings.warn(
                f"{model_class.__name__} is declared in __main__, where Ray workers cannot import "
                f"it: rows reach fn as their nearest declared ancestor, with the other columns in "
                f"row.extras. Declare it in a module to get {model_class.__name__} rows.",
                stacklevel=2,
            )
        else:
            imports.append(path)
    data = read_catalog(source, where=where, columns=columns)

    options: dict[str, Any] = dict(ray_options)
    _compute(concurrency, options)
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    if num_gpus is not None:
        options["num_gpus"] = num_gpus
    out = data.map_batches(
        _CheckpointWorker,
        batch_format="pyarrow",
        batch_size=batch_size,
        fn_constructor_kwargs={
            "source": _location(catalog),
            "fn": fn,
            "model_factory": model_factory,
            "key": key,
            "results": result_location,
            "result_class": result_path,
            "imports": imports,
            "verify": verify,
        },
        **options,
    )
    return out.materialize() if results is not None else out


class _CheckpointWorker:
    """The Ray actor behind map_checkpoints: one per worker, models cached per key value."""

    def __init__(
        self,
        *,
        source: str,
        fn: RowFunction,
        model_factory: ModelFactory,
        key: str | None,
        results: str | None,
        result_class: tuple[str, str] | None,
        imports: Sequence[tuple[str, str]],
        verify: bool,
    ) -> None:
        for module, name in imports:  # declares the model rows' class before any row is read
            _import_class(module, name)
        self.catalog = Catalog.open(source)
        self.fn = fn
        self.model_factory = model_factory
        self.key = key
        self.verify = verify
        self.results = Catalog.open(results) if results is not None else None
        self.result_class: type[Row] | None = None
        self.schema: pa.Schema | None = None
        if result_class is not None:
            cls = self.result_class = _import_class(*result_class)
            fields = [f for f in cls.arrow_schema() if f.name not in ("model_row_id", "error")]
            self.schema = pa.schema(
                [pa.field("row_id", pa.string()), *fields, pa.field("error", pa.string())]
            )
        self.models: dict[str, torch.nn.Module] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("row_id").to_pylist()
        keys = batch.column(self.key).to_pylist() if self.key is not None else [None] * len(ids)
        outputs = [self._evaluate(row_id, key) for row_id, key in zip(ids, keys, strict=True)]
        if self.results is not None:
            return self._append(ids, outputs)
        names = list(dict.fromkeys(n for values, _ in outputs for n in values))
        columns: dict[str, Any] = {"row_id": pa.array(ids, pa.string())}
        for name in names:
            columns[name] = [values.get(name) for values, _ in outputs]
        columns["error"] = pa.array([error for _, error in outputs], pa.string())
        return pa.table(columns)

    def _evaluate(self, row_id: str, key: Any) -> tuple[dict[str, Any], str | None]:
        """fn's columns for one row, or ({}, why it failed)."""
        try:
            row = self.catalog.get(row_id, verify=self.verify)
            cache_key = json.dumps(key, sort_keys=True, default=str)
            model = self.models.get(cache_key)
            if model is None:
                model = self.models[cache_key] = self.model_factory(row)
            load_weights(model, row.weights)
            values = self.fn(model, row)
            return _plain_columns(values), None
        except Exception as exc:  # one row failing is that row's result, never the job's
            return {}, f"{type(exc).__name__}: {exc}"

    def _append(self, ids: list[str], outputs: list[tuple[dict[str, Any], str | None]]) -> pa.Table:
        assert self.results is not None and self.result_class is not None
        rows: list[Row] = []
        for row_id, (values, error) in zip(ids, outputs, strict=True):
            try:
                rows.append(self.result_class(model_row_id=row_id, error=error, **values))
            except Exception as exc:  # fn's columns do not fit the result class: say so
                message = f"{type(exc).__name__}: {exc}"
                rows.append(self.result_class(model_row_id=row_id, error=message))
        self.results.append_many(rows)  # all of the batch or none of it
        out = []
        for row in rows:
            values = row.to_dict()
            values["row_id"] = values.pop("model_row_id")
            out.append(values)
        return pa.Table.from_pylist(out, schema=self.schema)


def _import_class(module: str, qualname: str) -> type[Row]:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelRowsError(
            f"a Ray worker cannot import {module}.{qualname} ({exc}); make the module importable "
            "on every worker (install it, or pass runtime_env={'py_modules': [...]} or "
            "{'working_dir': ...})"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, Row)):
        raise ModelRowsError(f"{module}.{qualname} is not a row class")
    return obj


_PLAIN = (bool, int, float, str, bytes, type(None))


def _plain_columns(values: object) -> dict[str, Any]:
    """``fn``'s result checked: a dict of column name -> plain value."""
    if not isinstance(values, Mapping):
        raise TypeError(
            f"fn must return a dict of column name -> value, got {type(values).__name__}"
        )
    out = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise TypeError(f"fn returned a column name that is not a str: {name!r}")
        if name in _RESULT_COLUMNS:
            raise ValueError(
                f"fn returned a column named {name!r}, which map_checkpoints sets itself; rename it"
            )
        out[name] = _plain(value, name)
    return out


def _plain(value: Any, name: str) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, np.generic):  # numpy scalars: numpy.float32(0.5) -> 0.5
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, name) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, name) for k, v in value.items()}
    raise TypeError(
        f"fn returned a {type(value).__module__}.{type(value).__name__} for column {name!r}; "
        "return plain values (e.g. float(tensor) or tensor.tolist())"
    )
