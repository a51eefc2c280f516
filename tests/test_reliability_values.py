"""Bad values: wrong types, missing fields, awkward partition values, absurdly long strings, NaN
and infinities. Each either round-trips exactly (through the row file, Polars and DuckDB) or is
refused with a clear error, and then nothing is written.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from modelrows import (
    Catalog,
    CatalogError,
    ModelRowsError,
    ModelV1,
    RowValidationError,
    fetch_weights,
)
from modelrows import _arrowtypes as arrowtypes

UTC = dt.timezone.utc


class ValueRowV1(ModelV1, schema="reliability.values", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    loss: np.float32 | None = None
    step: np.uint64 | None = None
    note: str | None = None
    blob: bytes | None = None
    when: dt.datetime | None = None
    tags: list[str] | None = None


def weights() -> Any:
    return fetch_weights({"w": torch.arange(4.0)})


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.create(tmp_path / "c", ValueRowV1, partition_by=["run"])


def micros(when: dt.datetime) -> int:
    return (when - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


def same(a: Any, b: Any) -> bool:
    """Exact equality, where NaN equals NaN and -0.0 differs from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    return type(a) is type(b) and a == b  # fmt: skip


LONG = "long " * 2_000_000  # 10 MB
ROUND_TRIPS: dict[str, tuple[str, Any]] = {
    "nan": ("accuracy", math.nan),
    "inf": ("accuracy", math.inf),
    "-inf": ("accuracy", -math.inf),
    "-0.0": ("accuracy", -0.0),
    "subnormal": ("accuracy", 5e-324),
    "largest-float": ("accuracy", 1.7976931348623157e308),
    "float32-nan": ("loss", math.nan),
    "float32-inf": ("loss", -math.inf),
    "int64-min": ("epoch", -(2**63)),
    "int64-max": ("epoch", 2**63 - 1),
    "uint64-max": ("step", 2**64 - 1),
    "empty-string": ("note", ""),
    "nul-and-controls": ("note", "a\x00b\n\r\t\x7f"),
    "astral-and-rtl": ("note", "🦜 ‮ שלום ﷽"),
    "10-MB-string": ("note", LONG),
    "10-MB-bytes": ("blob", LONG.encode()),
    "empty-bytes": ("blob", b""),
    "first-instant": ("when", dt.datetime(1, 1, 1, tzinfo=UTC)),
    "last-instant": ("when", dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    "empty-list": ("tags", []),
    "list-of-odd-strings": ("tags", ["", "\x00", "x" * 100_000]),
}


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=list(ROUND_TRIPS))
def test_values_round_trip_exactly_through_file_polars_and_duckdb(
    catalog: Catalog, case: str
) -> None:
    field, value = ROUND_TRIPS[case]
    row_id = catalog.append(ValueRowV1(weights=weights(), run="r", **{field: value}))
    stored = getattr(catalog.get(row_id, verify=True), field)
    expected = tuple(value) if isinstance(value, list) else value
    assert same(stored, expected) if not isinstance(value, list) else stored == expected
    polars_value = catalog.scan().select(field).collect().item()
    column = f'"{field}"'
    if isinstance(value, dt.datetime):  # DuckDB needs pytz to fetch TIMESTAMPTZ: compare instants
        column, value, polars_value = f"epoch_us({column})", micros(value), micros(polars_value)
    [(duck_value,)] = catalog.sql(f"SELECT {column} FROM models").fetchall()
    for seen in (polars_value, duck_value):
        if isinstance(value, float):
            assert same(float(seen), value)
        elif isinstance(seen, pl.Series):
            assert seen.to_list() == value
        else:
            assert seen == value


PARTITION_VALUES = ["a/b", "a\\b", "C:\\temp", "..", ".", ".hidden", "_under", "x=y", "%2F",
                    "a b", "\x00", "\n", "é", "🦜", "-1", "k" * 196]  # fmt: skip


def test_partition_values_with_separators_and_dots_round_trip(catalog: Catalog) -> None:
    ids = {catalog.append(ValueRowV1(weights=weights(), run=v)): v for v in PARTITION_VALUES}
    assert all(catalog.get(row_id).run == v for row_id, v in ids.items())
    table = catalog.scan().select("row_id", "run").collect()
    assert dict(table.iter_rows()) == ids  # the hive partition decodes to the same value
    assert dict(catalog.sql("SELECT row_id, run FROM models").fetchall()) == ids
    for row_id in ids:  # every row lies in its own directory right under the root
        assert catalog.path_of(row_id).parent.parent == catalog.root
    assert catalog.sql("SELECT count(*) FROM models WHERE run = 'a/b'").fetchall() == [(1,)]


def test_nan_never_ranks_best(catalog: Catalog) -> None:
    for acc in [0.5, math.nan, 0.9, math.nan, 0.1]:
        catalog.append(ValueRowV1(weights=weights(), run="r", accuracy=acc))
    assert catalog.best("accuracy").accuracy == 0.9
    assert catalog.best("accuracy", descending=False).accuracy == 0.1
    assert catalog.scan().select(pl.col("accuracy").is_nan().sum()).collect().item() == 2


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


R = "ValueRowV1"
REFUSED: dict[str, tuple[Callable[[], Any], type[ModelRowsError], str]] = {
    "missing-weights": (lambda: ValueRowV1(run="r"), RowValidationError,
                        f"{R}.weights is required (Weights) but was not given"),
    "missing-partition": (lambda: ValueRowV1(weights=weights()), RowValidationError,
                          f"{R}.run is required (str) but was not given"),
    "none-partition": (lambda: ValueRowV1(weights=weights(), run=None), RowValidationError,
                       f"{R}.run: expected str, got None (declare it as `str | None` to allow missing values)"),
    "unknown-field": (lambda: ValueRowV1(weights=weights(), run="r", epochs=3), RowValidationError,
                      f"{R} (reliability.values@1) has no field 'epochs'; its fields are: weights, "
                      "architecture_version, run, epoch, accuracy, loss, step, note, blob, when, tags"),
    "weights-not-tensors": (lambda: ValueRowV1(weights=[1.0, 2.0], run="r"), RowValidationError,
                            f"{R}.weights: expected Weights (from fetch_weights(model)), got list [1.0, 2.0]"),
    "int-partition-value": (lambda: ValueRowV1(weights=weights(), run=3), RowValidationError,
                            f"{R}.run: expected str, got int 3"),
    "str-for-int": (lambda: ValueRowV1(weights=weights(), run="r", epoch="3"), RowValidationError,
                    f"{R}.epoch: expected int, got str '3'"),
    "float-for-int": (lambda: ValueRowV1(weights=weights(), run="r", epoch=3.0), RowValidationError,
                      f"{R}.epoch: expected int, got float 3.0"),
    "bool-for-int": (lambda: ValueRowV1(weights=weights(), run="r", epoch=True), RowValidationError,
                     f"{R}.epoch: expected int, got bool True"),
    "int-overflow": (lambda: ValueRowV1(weights=weights(), run="r", epoch=2**63), RowValidationError,
                     f"{R}.epoch: 9223372036854775808 is out of range for int "
                     "[-9223372036854775808, 9223372036854775807]"),
    "negative-uint": (lambda: ValueRowV1(weights=weights(), run="r", step=-1), RowValidationError,
                      f"{R}.step: -1 is out of range for np.uint64 [0, 18446744073709551615]"),
    "str-for-float": (lambda: ValueRowV1(weights=weights(), run="r", accuracy="0.5"), RowValidationError,
                      f"{R}.accuracy: expected float, got str '0.5'"),
    "inexact-int-for-float": (lambda: ValueRowV1(weights=weights(), run="r", accuracy=2**60),
                              RowValidationError,
                              f"{R}.accuracy: integer 1152921504606846976 cannot be represented exactly as float"),
    "float32-overflow": (lambda: ValueRowV1(weights=weights(), run="r", loss=1e39), RowValidationError,
                         f"{R}.loss: 1e+39 overflows np.float32"),
    "lone-surrogate": (lambda: ValueRowV1(weights=weights(), run="r", note="ok\udc80"), RowValidationError,
                       f"{R}.note: str holds '\\udc80' at index 2, a lone surrogate that is not Unicode "
                       "text; Arrow stores UTF-8 only"),
    "lone-surrogate-partition": (lambda: ValueRowV1(weights=weights(), run="\ud800"), RowValidationError,
                                 f"{R}.run: str holds '\\ud800' at index 0, a lone surrogate that is "
                                 "not Unicode text; Arrow stores UTF-8 only"),
    "naive-datetime": (lambda: ValueRowV1(weights=weights(), run="r", when=dt.datetime(2024, 1, 1)),
                       RowValidationError,
                       f"{R}.when: datetime 2024-01-01T00:00:00 has no time zone; pass an aware "
                       "datetime, e.g. datetime.now(timezone.utc)"),
    "datetime-beyond-utc": (lambda: ValueRowV1(weights=weights(), run="r", when=dt.datetime.max.replace(
        tzinfo=dt.timezone(dt.timedelta(hours=-5)))), RowValidationError,
        f"{R}.when: datetime 9999-12-31T23:59:59.999999-05:00 is out of range in UTC"),
    "str-for-list": (lambda: ValueRowV1(weights=weights(), run="r", tags="abc"), RowValidationError,
                     f"{R}.tags: expected list[str] (a list or tuple), got str 'abc'"),
    "int-in-list": (lambda: ValueRowV1(weights=weights(), run="r", tags=["a", 1]), RowValidationError,
                    f"{R}.tags: item 1: expected str, got int 1"),
    "empty-partition": (lambda: ValueRowV1(weights=weights(), run=""), CatalogError,
                        "partition field 'run' is empty; give it a value"),
    "hive-null-partition": (lambda: ValueRowV1(weights=weights(), run="__HIVE_DEFAULT_PARTITION__"),
                            CatalogError, "partition field 'run' is '__HIVE_DEFAULT_PARTITION__', "
                            "which hive readers take for a missing value; choose another value"),
    "long-partition": (lambda: ValueRowV1(weights=weights(), run="k" * 197), CatalogError,
                       "partition value of 'run' is too long (201 bytes encoded, at most 200); use "
                       "a shorter value"),
    "wrong-row-class": (lambda: ModelV1(weights=weights()), CatalogError,
                        "holds reliability.values@1>modelrows.model@1 rows; refusing a row of "
                        "modelrows.model@1"),
    "not-a-row": (lambda: {"weights": weights(), "run": "r"}, CatalogError,
                  "holds reliability.values@1>modelrows.model@1 rows; refusing a row of dict"),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_bad_values_are_refused_clearly_and_nothing_is_written(catalog: Catalog, case: str) -> None:
    catalog.append(ValueRowV1(weights=weights(), run="existing"))
    before = tree(catalog.root)
    make, error, message = REFUSED[case]
    with pytest.raises(error) as info:
        catalog.append(make())
    text = str(info.value)
    assert text == message or text == f"{catalog.root} {message}", text
    assert tree(catalog.root) == before


def test_strings_longer_than_arrow_holds_are_refused(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrow's str and bytes values hold at most 2 GiB - 2 bytes; a smaller limit stands in for it
    assert arrowtypes.MAX_VALUE_BYTES == 2**31 - 2
    monkeypatch.setattr(arrowtypes, "MAX_VALUE_BYTES", 1000)
    before = tree(catalog.root)
    for field, value in [("note", "x" * 1001), ("note", "é" * 501), ("blob", b"x" * 1001),
                         ("tags", ["ok", "y" * 1001])]:  # fmt: skip
        with pytest.raises(RowValidationError, match="bytes is longer than Arrow's limit of 1000"):
            catalog.append(ValueRowV1(weights=weights(), run="r", **{field: value}))
    assert tree(catalog.root) == before
