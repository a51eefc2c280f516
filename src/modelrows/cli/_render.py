"""Printing rows: rich tables that fit the terminal, CSV, and lossless JSON.

- Tables and CSV summarise bytes values as ``<bytes: 6,716>`` unless ``raw`` (then base64);
  JSON always carries them whole, as base64.
- Weights columns (after DuckDB too, which may change their binary types) become a summary:
  tensor count, fingerprint and checksum, never their bytes.
- Times are ISO 8601, NaN and infinities are null in JSON and empty in CSV.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ._app import Format, stdout

_WEIGHTS_SUMMARY = pa.struct(
    [("tensors", pa.int64()), ("fingerprint", pa.string()), ("checksum", pa.string())]
)
_GIVE_WAY_FIRST = ("written_at", "architecture_version", "training_state")
"""Columns modelrows fills (the write time, modelrows.model's architecture version,
modelrows.training's JSON state document): the first to give way in a narrow table."""


def resolve_format(fmt: Format | None) -> Format:
    """The format asked for, else a table on a terminal and CSV otherwise."""
    if fmt is not None:
        return fmt
    return Format.table if stdout().is_terminal else Format.csv


def is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _is_weights(t: pa.DataType, weights_type: pa.DataType | None) -> bool:
    """A weights column: a struct with the weights type's fields (DuckDB may retype them)."""
    if weights_type is None or not pa.types.is_struct(t):
        return False
    names = {weights_type.field(i).name for i in range(weights_type.num_fields)}
    return {t.field(i).name for i in range(t.num_fields)} == names


def summarize_weights(table: pa.Table, weights_type: pa.DataType | None) -> pa.Table:
    """Weights columns become a summary: tensor count, fingerprint and checksum (no bytes)."""
    for i, field in enumerate(table.schema):
        if _is_weights(field.type, weights_type):
            summaries = [
                pa.StructArray.from_arrays(
                    [
                        pc.list_value_length(c.field("tensors")).cast(pa.int64()),
                        c.field("fingerprint").cast(pa.string()),
                        c.field("checksum").cast(pa.string()),
                    ],
                    fields=list(_WEIGHTS_SUMMARY),
                    mask=c.is_null(),
                )
                for c in table.column(i).chunks
            ]
            column = pa.chunked_array(summaries, type=_WEIGHTS_SUMMARY)
            table = table.set_column(i, field.name, column)
    return table


def jsonable(value: Any) -> Any:
    """A plain JSON value: ISO strings for times, base64 for bytes, null for NaN."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _summarized(value: Any) -> Any:
    """Bytes, also inside nested values, as ``<bytes: N>``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<bytes: {len(value):,}>"
    if isinstance(value, Mapping):
        return {k: _summarized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_summarized(v) for v in value]
    return value


def csv_cell(value: Any, *, raw: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    plain = jsonable(value if raw else _summarized(value))
    return plain if isinstance(plain, str) else json.dumps(plain)


def table_cell(value: Any, *, raw: bool = False) -> Text:
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("true" if value else "false")
    if isinstance(value, float):
        return Text(f"{value:.6g}")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() == dt.timedelta(0):
            return Text(value.strftime("%Y-%m-%d %H:%M:%SZ"))
        return Text(value.isoformat(sep=" ", timespec="seconds"))
    if isinstance(value, bytes | bytearray | memoryview) and not raw:
        return Text(f"<bytes: {len(value):,}>", style="dim")
    if isinstance(value, Text):
        return value
    plain = jsonable(value if raw else _summarized(value))
    return Text(plain if isinstance(plain, str) else json.dumps(plain))


def emit_table(
    table: pa.Table,
    fmt: Format | None,
    *,
    caption: str = "",
    raw: bool = False,
    weights_type: pa.DataType | None = None,
) -> None:
    """Print query results as a rich table, CSV or a JSON array of objects."""
    table = summarize_weights(table, weights_type)
    rows = table.to_pylist()
    fmt = resolve_format(fmt)
    if fmt is Format.json:
        sys.stdout.write(json.dumps(jsonable(rows), indent=2) + "\n")
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([csv_cell(r[n], raw=raw) for n in table.column_names] for r in rows)
    else:
        numbers = [is_number(f.type) for f in table.schema]
        nested = [pa.types.is_nested(f.type) for f in table.schema]
        cells = [[table_cell(r[n], raw=raw) for n in table.column_names] for r in rows]
        stdout().print(fitted_table(table.column_names, numbers, cells, caption, nested))


_NARROWEST = 12
"""A text column is shortened (with an ellipsis) to no fewer cells than this before a column of
plain values is hidden."""


def fitted_table(
    names: Sequence[str],
    numbers: Sequence[bool],
    cells: Sequence[Sequence[Text]],
    caption: str,
    nested: Sequence[bool],
) -> Table:
    """A table of one line per row that fits the terminal. What gives way, in this order:
    the bookkeeping columns (``_GIVE_WAY_FIRST``); the columns of nested
    values (structs and lists, shown as JSON: ``config``), from the last one on; then the wide
    text columns are shortened with an ellipsis, all to the same width (as wide as the terminal
    allows, never below a few cells, never ``row_id``), so that a long run name keeps as much
    as it can; then columns are hidden from the last one on. The caption names those shortened
    or left out."""
    console = stdout()
    shown = list(range(len(names)))
    hidden: list[str] = []
    caps: dict[int, int] = {}  # column -> the most cells it may take

    def build() -> Table:
        shortened = [names[i] for i in shown if i in caps]
        notes = (
            f"shortened to fit: {', '.join(shortened)}" if shortened else "",
            f"hidden to fit the terminal: {', '.join(hidden)}" if hidden else "",
        )
        out = Table(
            box=box.SIMPLE_HEAD,
            header_style="bold",
            caption="; ".join(part for part in (caption, *notes) if part) or None,
            pad_edge=False,
        )
        for i in shown:
            out.add_column(
                escape(names[i]),
                justify="right" if numbers[i] else "left",
                no_wrap=True,
                max_width=caps.get(i),
                overflow="ellipsis",
            )
        for row in cells:
            out.add_row(*[row[i] for i in shown])
        return out

    def width(i: int) -> int:
        return min(caps.get(i, 1 << 20), max([len(names[i]), *(row[i].cell_len for row in cells)]))

    def hide(i: int) -> None:
        shown.remove(i)
        hidden.append(names[i])

    unbounded = console.options.update(max_width=1 << 20)
    out = build()
    while (excess := console.measure(out, options=unbounded).maximum - console.width) > 0:
        candidates = [i for i in shown if names[i] != "row_id"]
        if len(candidates) <= 1:
            break
        bookkeeping = [i for i in candidates if names[i] in _GIVE_WAY_FIRST]
        structured = [i for i in candidates if nested[i]]
        shrinkable = [i for i in candidates if not numbers[i] and width(i) > _NARROWEST]
        if bookkeeping:
            hide(bookkeeping[0])
        elif structured:
            hide(structured[-1])
        elif shrinkable:  # one width for all: the widest cap that takes back the excess
            cap = max(width(i) for i in shrinkable)
            while cap > _NARROWEST and sum(max(0, width(i) - cap) for i in shrinkable) < excess:
                cap -= 1
            for i in shrinkable:
                if width(i) > cap:
                    caps[i] = cap
        else:  # the last column: a row's own fields come in the order they were declared
            hide(candidates[-1])
        out = build()
    return out


def emit_record(record: Mapping[str, Any], fmt: Format | None, *, raw: bool = False) -> None:
    """Print one row: a field/value table, one CSV line under a header, or one JSON object."""
    fmt = resolve_format(fmt)
    if fmt is Format.json:
        sys.stdout.write(json.dumps(jsonable(dict(record)), indent=2) + "\n")
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(list(record))
        writer.writerow([csv_cell(v, raw=raw) for v in record.values()])
    else:
        out = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
        out.add_column(style="bold")
        out.add_column()
        for name, value in record.items():
            out.add_row(escape(name), table_cell(value, raw=raw))
        stdout().print(out)


def grid(rows: Sequence[tuple[str, str | Text]]) -> Table:
    """Two columns, the first bold: ``name  value`` lines."""
    out = Table.grid(padding=(0, 2))
    out.add_column(style="bold")
    out.add_column()
    for name, value in rows:
        out.add_row(name, value)
    return out
