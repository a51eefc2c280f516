"""Row schemas: declaration rules, conversion, checks, registry, Arrow validation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import torch.nn as nn

from modelrows import (
    ModelV1,
    Row,
    RowValidationError,
    SchemaError,
    SchemaMismatchError,
    fetch_weights,
)
from modelrows._schema import lookup, nearest_declared, parse_qualified


class ConfigV1(Row, schema="test.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0


class RunRowV1(ModelV1, schema="test.run", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    config: ConfigV1 | None = None

    def check(self) -> None:
        if self.accuracy is not None and not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(f"accuracy {self.accuracy} is outside [0, 1]")


def weights():
    return fetch_weights(nn.Linear(2, 2))


def test_identifiers_and_chain() -> None:
    assert ModelV1.__qualified__ == "modelrows.model@1"
    assert RunRowV1.__qualified__ == "test.run@1>modelrows.model@1"
    assert ConfigV1.__qualified__ == "test.config@1"
    assert list(RunRowV1.__row_fields__) == [
        "weights", "architecture_version", "run", "epoch", "accuracy", "config",
    ]  # fmt: skip
    assert lookup("test.run@1") is RunRowV1
    assert nearest_declared("other.model@3>test.run@1>modelrows.model@1") is RunRowV1


def test_construction_converts_and_checks_every_value() -> None:
    row = RunRowV1(weights=weights(), run="r", epoch=np.int64(3), accuracy=1, config={"seed": 2})
    assert row.epoch == 3 and type(row.epoch) is int
    assert row.accuracy == 1.0 and type(row.accuracy) is float
    assert row.config == ConfigV1(seed=2, dropout_rate=0.0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epoch", 3.7, "RunRowV1.epoch: expected int, got float 3.7"),
        ("epoch", "3", "RunRowV1.epoch: expected int, got str '3'"),
        ("epoch", True, "RunRowV1.epoch: expected int, got bool True"),
        ("run", 5, "RunRowV1.run: expected str, got int 5"),
        ("accuracy", "high", "RunRowV1.accuracy: expected float, got str 'high'"),
        ("run", None, "RunRowV1.run: expected str, got None"),
        ("epoch", 2**64, "RunRowV1.epoch: 18446744073709551616 is out of range for int"),
    ],
)
def test_no_silent_truncation(field: str, value: object, message: str) -> None:
    values = {"weights": weights(), "run": "r", field: value}
    with pytest.raises(RowValidationError) as info:
        RunRowV1(**values)
    assert str(info.value).startswith(message)


def test_required_unknown_and_row_checks() -> None:
    with pytest.raises(RowValidationError, match=r"RunRowV1.run is required \(str\)"):
        RunRowV1(weights=weights())
    with pytest.raises(RowValidationError, match="has no field 'epochs'"):
        RunRowV1(weights=weights(), run="r", epochs=3)
    with pytest.raises(RowValidationError, match=r"accuracy 1.5 is outside \[0, 1\]"):
        RunRowV1(weights=weights(), run="r", accuracy=1.5)


def test_all_supported_annotations_map_to_arrow() -> None:
    class Everything(Row, schema="test.everything", version=0):
        i: int
        f: float
        s: str
        b: bool
        raw: bytes
        when: dt.datetime
        day: dt.date
        tags: list[str]
        grid: list[list[int]]
        small: np.float32
        tiny: np.int8
        maybe: int | None = None

    schema = Everything.arrow_schema()
    assert [str(f.type) for f in schema] == [
        "int64", "double", "string", "bool", "binary", "timestamp[us, tz=UTC]", "date32[day]",
        "list<item: string not null>", "list<item: list<item: int64 not null> not null>",
        "float", "int8", "int64",
    ]  # fmt: skip
    assert schema.field("maybe").nullable and not schema.field("i").nullable
    row = Everything(
        i=1, f=0.5, s="x", b=True, raw=b"\x00", when=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        day=dt.date(2024, 1, 2), tags=["a"], grid=[[1, 2], []], small=0.1, tiny=-128,
    )  # fmt: skip
    assert row.small == float(np.float32(0.1))
    with pytest.raises(RowValidationError, match="out of range for np.int8"):
        row.replace(tiny=200)
    with pytest.raises(RowValidationError, match="overflows np.float32"):
        row.replace(small=1e300)
    with pytest.raises(RowValidationError, match="has no time zone"):
        row.replace(when=dt.datetime(2024, 1, 1))
    with pytest.raises(RowValidationError, match=r"item 1: expected str, got int 2"):
        row.replace(tags=["a", 2])


def test_unmappable_annotation_fails_at_definition() -> None:
    with pytest.raises(SchemaError, match="Bad.x: cannot map annotation <class 'set'>"):

        class Bad(Row, schema="test.bad", version=1):
            x: set

    with pytest.raises(SchemaError, match="union .* is not supported"):

        class Bad2(Row, schema="test.bad2", version=1):
            x: int | str


@pytest.mark.parametrize(
    ("schema", "version", "message"),
    [
        ("Bad_Name", 1, "schema name 'Bad_Name' must match"),
        ("ok.name", -1, "version -1 must be an int >= 0"),
        ("ok.name", "1", "version '1' must be an int >= 0"),
        ("ok.name", True, "version True must be an int >= 0"),
        (None, None, "must declare its schema"),
    ],
)
def test_declaration_rules(schema: object, version: object, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        type("X", (Row,), {"__annotations__": {"a": int}}, schema=schema, version=version)


def test_extension_rules() -> None:
    class Narrow(RunRowV1, schema="test.narrow", version=1):
        architecture_version: int  # int | None -> int
        run: str = "default"

    assert not Narrow.__row_fields__["architecture_version"].type.nullable
    assert Narrow(weights=weights(), architecture_version=2).run == "default"

    with pytest.raises(
        SchemaError, match=r"cannot change inherited field 'epoch' from int \| None"
    ):

        class Widen(RunRowV1, schema="test.widen", version=1):
            epoch: str | None = None

    with pytest.raises(SchemaError, match="cannot start with '_'"):

        class Private(Row, schema="test.private", version=1):
            _secret: int

    with pytest.raises(SchemaError, match="another version of itself"):

        class RunRowV2(RunRowV1, schema="test.run", version=2):
            pass

    with pytest.raises(SchemaError, match="at most one parent"):

        class Two(ConfigV1, RunRowV1, schema="test.two", version=1):  # type: ignore[misc]
            pass

    with pytest.raises(SchemaError, match="'replace' is reserved"):

        class Reserved(Row, schema="test.reserved", version=1):
            replace: int


def test_registry_allows_identical_redeclaration_but_not_a_changed_one() -> None:
    class Again(Row, schema="test.config", version=1):
        seed: int = 5
        dropout_rate: float = 0.0

    assert lookup("test.config@1") is Again
    with pytest.raises(SchemaError, match=r"Bump the version \(version=2\)"):

        class Changed(Row, schema="test.config", version=1):
            seed: int = 5
            dropout_rate: float = 0.0
            extra: str = ""


def test_rows_are_immutable_values() -> None:
    w = weights()
    a = RunRowV1(weights=w, run="r", epoch=1, config=ConfigV1())
    b = RunRowV1(weights=w, run="r", epoch=1, config=ConfigV1())
    assert a == b and hash(a) == hash(b)
    assert a != a.replace(epoch=2)
    with pytest.raises(AttributeError, match="immutable"):
        a.epoch = 5  # type: ignore[misc]
    d = a.to_dict()
    assert d["config"] == {"seed": 5, "dropout_rate": 0.0} and d["weights"] is w
    assert repr(a) == (
        "RunRowV1(weights=<Weights: 2 tensors, 24 B>, architecture_version=None, run='r', "
        "epoch=1, accuracy=None, config=ConfigV1(seed=5, dropout_rate=0.0))"
    )


def test_arrow_schema_carries_the_qualified_identifier() -> None:
    meta = RunRowV1.arrow_schema().metadata
    assert meta[b"legolas_schema_qualified"] == b"test.run@1>modelrows.model@1"
    assert meta[b"modelrows_format_version"] == b"2"


def test_schema_validation_reports_every_problem_and_accepts_compatible_types() -> None:
    good = pa.schema(
        [
            ("weights", RunRowV1.arrow_schema().field("weights").type),
            ("run", pa.large_string()),
            ("epoch", pa.int32()),
            ("unrelated", pa.float64()),
        ]
    )
    RunRowV1.validate_schema(good)
    bad = pa.schema([("epoch", pa.string()), ("config", pa.struct([("seed", pa.string())]))])
    with pytest.raises(SchemaMismatchError) as info:
        RunRowV1.validate_schema(bad, where="f.arrow")
    assert info.value.problems == [
        "missing required column 'weights' (Weights)",
        "missing required column 'run' (str)",
        "column 'epoch' is string, expected int | None",
        "column 'config' is struct<seed: string>, expected test.config@1 | None",
    ]
    assert str(info.value).startswith("f.arrow does not hold RunRowV1")


def test_parse_qualified_rejects_malformed_identifiers() -> None:
    assert parse_qualified("a@1>b.c-d@0") == ["a@1", "b.c-d@0"]
    for bad in ["", "a", "a@", "a@x", "A@1", "a@1>", "a@1>a@2", "a@01"]:
        with pytest.raises(Exception, match="schema identifier"):
            parse_qualified(bad)
