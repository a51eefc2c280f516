"""_format: the format's facts say what docs/format.md says, and only _format spells them.

(tests/test_format.py checks the bytes against the golden files; this file checks the constants
and name rules that produce and recognise them.)
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pytest

from modelrows import _format as fmt

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "format.md").read_text()
SRC = ROOT / "src" / "modelrows"


def test_dtype_table_matches_the_document() -> None:
    rows = re.findall(r"^\| `([a-z0-9_]+)`(?:, `([a-z0-9_]+)`)? \| (\d+) \|", DOC, re.MULTILINE)
    documented: dict[str, int] = {}
    for first, second, size in rows:
        for name in filter(None, (first, second)):
            documented[name] = int(size)
    assert documented == fmt.DTYPE_ITEMSIZE
    assert set(fmt.FORMAT_DTYPES) == set(fmt.DTYPE_ITEMSIZE)


def test_itemsizes_agree_with_torch() -> None:
    import torch

    for name, size in fmt.DTYPE_ITEMSIZE.items():
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):  # an older torch may lack a float8 variant
            assert dtype.itemsize == size, name


def test_metadata_keys_versions_and_names_are_the_documented_ones() -> None:
    assert f"| `{fmt.METADATA_SCHEMA_KEY}` |" in DOC
    assert f"| `{fmt.METADATA_FORMAT_KEY}` |" in DOC
    assert f"This document is row-file format version **{fmt.FORMAT_VERSION}**" in DOC
    assert f"format version **{fmt.CATALOG_FORMAT_VERSION}** (`format_version = " in DOC
    assert f"{fmt.INDEX_DIR}/" in DOC
    assert f"`format_version` | `{fmt.CATALOG_FORMAT_VERSION}`" in DOC
    assert f'| `format` | `"{fmt.CATALOG_FORMAT}"` |' in DOC
    assert f"root/{fmt.CATALOG_FILE}" in DOC or f"  {fmt.CATALOG_FILE}" in DOC
    assert f"multiple of {fmt.ALIGNMENT}" in DOC
    assert f"at most {fmt.MAX_NDIM} of them" in DOC
    assert f"`checksum` guards the tensor bytes: `{fmt.CHECKSUM_PREFIX}`" in DOC
    assert fmt.MAGIC.decode() in DOC


def test_managed_columns_are_the_documented_ones() -> None:
    assert fmt.MANAGED_COLUMNS == ("row_id", "written_at")
    assert "| `row_id` | `utf8`, not null |" in DOC
    assert '| `written_at` | `timestamp[us, tz="UTC"]`, not null |' in DOC
    fields = fmt.managed_fields()
    assert [f.name for f in fields] == list(fmt.MANAGED_COLUMNS)
    assert [f.type for f in fields] == [pa.string(), pa.timestamp("us", tz="UTC")]
    assert not any(f.nullable for f in fields)
    assert (fields[0].type, fields[1].type) == (fmt.ROW_ID_TYPE, fmt.WRITTEN_AT_TYPE)


def test_reserved_columns() -> None:
    assert fmt.is_reserved_column("row_id") and fmt.is_reserved_column("written_at")
    assert fmt.is_reserved_column("_private")
    assert not fmt.is_reserved_column("epoch")


def test_the_weights_struct_fields_are_the_documented_ones() -> None:
    from modelrows._blob import WEIGHTS_ARROW_TYPE

    assert tuple(f.name for f in WEIGHTS_ARROW_TYPE) == fmt.WEIGHTS_FIELDS
    for name in fmt.WEIGHTS_FIELDS:
        assert f"  {name}:" in DOC


def test_is_weights_type_is_by_field_names() -> None:
    from modelrows._blob import WEIGHTS_ARROW_TYPE

    assert fmt.is_weights_type(WEIGHTS_ARROW_TYPE)
    # as DuckDB hands it back: binary for large_binary
    duck = pa.struct([pa.field(f.name, pa.binary() if f.name == "data" else f.type)
                      for f in WEIGHTS_ARROW_TYPE])  # fmt: skip
    assert fmt.is_weights_type(duck)
    with_extra = pa.struct([*WEIGHTS_ARROW_TYPE, pa.field("note", pa.string())])
    assert fmt.is_weights_type(with_extra)
    without_checksum = pa.struct([f for f in WEIGHTS_ARROW_TYPE if f.name != "checksum"])
    assert not fmt.is_weights_type(without_checksum)
    assert not fmt.is_weights_type(pa.large_binary())
    # LegolasFlux.jl's weights are another layout, not this one
    assert not fmt.is_weights_type(pa.struct([pa.field("weights", pa.list_(pa.float32()))]))


# -- names -----------------------------------------------------------------------------------------


def test_temp_name_hides_the_file_and_names_its_writer() -> None:
    name = fmt.temp_name("01ABC.digits.model.arrow")
    host = f"{zlib.crc32(os.uname().nodename.encode()):08x}"
    assert re.fullmatch(rf"\.01ABC\.digits\.model\.arrow\.\d+-{host}-[0-9a-f]{{12}}\.tmp", name), (
        name
    )
    assert fmt.is_temp_name(name) and not fmt.is_row_file_name(name)
    assert fmt.parse_temp_name(name) == ("01ABC.digits.model.arrow", os.getpid(), host)
    assert fmt.temp_name("x") != fmt.temp_name("x")  # random part: two writers never collide


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        (".01ABC.cat.model.arrow.123-abc.tmp", ("01ABC.cat.model.arrow", 123, None)),
        (".a.b.4194303-0a1b2c.tmp", ("a.b", 4194303, None)),  # written before host tags
        (".a.b.77-0badf00d-0a1b2c3d4e5f.tmp", ("a.b", 77, "0badf00d")),
        (".a.b.77-0badf00d1-0a1b2c.tmp", None),  # 9 digits: neither a tag nor random hex
        (".x.tmp", None),  # a temporary file, but not named by modelrows
        ("01ABC.cat.model.arrow", None),
        (".a.12-zz.tmp", None),
        ("a.12-ab.tmp", None),
    ],
)
def test_parse_temp_name(name: str, parsed: tuple[str, int, str | None] | None) -> None:
    assert fmt.parse_temp_name(name) == parsed


def test_row_file_names() -> None:
    name = fmt.row_file_name("01J0000000000000000000000A", "digits.model")
    assert name == "01J0000000000000000000000A.digits.model.arrow"
    assert fmt.parse_row_file_name(name) == ("01J0000000000000000000000A", "digits.model")
    assert fmt.parse_row_file_name("solo.arrow") == ("solo", "")
    for not_a_row in ("_modelrows_catalog.json", "_x.arrow", ".hidden.arrow", "a.arrow.tmp",
                      "notes.txt", fmt.CATALOG_FILE):  # fmt: skip
        assert not fmt.is_row_file_name(not_a_row)
        assert fmt.parse_row_file_name(not_a_row) is None


# -- one home: no other module spells these values --------------------------------------------------


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.add(id(node.value))  # attribute docstrings
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str | bytes)
        and id(node) not in docstrings
    ]


def test_no_module_but_format_spells_the_format() -> None:
    spelled = {
        fmt.METADATA_SCHEMA_KEY, fmt.METADATA_FORMAT_KEY, fmt.CATALOG_FILE, fmt.CATALOG_FORMAT,
        fmt.HIVE_NULL, fmt.CHECKSUM_PREFIX, fmt.MAGIC, ".tmp", fmt.ROW_FILE_SUFFIX,
    }  # fmt: skip
    found = [
        f"{path.relative_to(SRC)}:{line}: {value!r}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "_format.py"
        for line, value in _code_strings(path)
        if value in spelled
    ]
    assert found == [], "format facts spelled outside _format:\n" + "\n".join(found)


def test_importing_format_loads_no_heavy_module() -> None:
    code = (
        "import sys; import modelrows._format as f; f.temp_name('x'); f.is_row_file_name('a')\n"
        "print(sorted(m for m in ('torch', 'pyarrow', 'numpy', 'polars', 'duckdb')"
        " if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"
