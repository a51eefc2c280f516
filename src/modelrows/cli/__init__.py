"""The ``modelrows`` command: look at a catalog of model rows from a terminal.

::

    modelrows ls                                  the rows, without weights
    modelrows sql "SELECT ... FROM models"        DuckDB SQL over the catalog
    modelrows best --by accuracy                  the best row
    modelrows show [PATH|CATALOG] [ROW_ID]        one row: schema, fields, tensors, checksum
    modelrows verify                              re-check every row's bytes
    modelrows plot --x epoch --y accuracy         learning curves, one line per run
    modelrows export ROW_ID --to m.safetensors    weights out to safetensors ...
    modelrows import m.safetensors --set run=a    ... and back in as a new row
    modelrows vacuum                              remove temporary files of crashed writers

CATALOG defaults to ``$MODELROWS_CATALOG``, else ``catalog/`` in the current directory.

Exit status: 0 on success; 1 when the command ran and found corrupt rows (``verify``, ``show``)
or nothing (``best``, ``plot``); 2 when it could not do what was asked (no catalog, bad SQL,
unknown row id, bad arguments), reported as one line on stderr without a traceback.

Only the console script loads this module. It needs the ``cli`` extra (typer, rich, safetensors);
``plot`` needs the ``plot`` extra (matplotlib), imported only when it runs.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import enum
import importlib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from .._blob import WEIGHTS_ARROW_TYPE
from .._catalog import Catalog
from .._errors import CatalogError, CommandLineError, ModelRowsError
from .._format import MANAGED_COLUMNS
from .._rowfile import read_model_row
from .._schema import Row, lookup, parse_qualified
from .._weights import Weights, fetch_weights

try:
    import typer
    from rich import box
    from rich.console import Console, Group
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table
    from rich.text import Text
    from typer.core import TyperGroup
except ImportError as _missing:  # pragma: no cover - depends on the installation
    sys.stderr.write(
        f"modelrows: error: the command line needs the cli extra ({_missing}); "
        "install it with: pip install 'modelrows[cli]'\n"
    )
    raise SystemExit(2) from None

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

__all__ = ["CommandLineError", "app", "main"]

ENV_CATALOG = "MODELROWS_CATALOG"
ENV_IMPORT = "MODELROWS_IMPORT"
DEFAULT_CATALOG = "catalog"
_WEIGHTS_FIELDS = frozenset(f.name for f in WEIGHTS_ARROW_TYPE)


class Format(str, enum.Enum):
    """How a command prints rows."""

    table = "table"
    csv = "csv"
    json = "json"


class ShowFormat(str, enum.Enum):
    """How ``show`` prints a row."""

    table = "table"
    json = "json"


class _Commands(TyperGroup):
    """The command group: a ModelRowsError becomes one line on stderr and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModelRowsError as exc:
            _fail(str(exc), code=2)


app = typer.Typer(
    name="modelrows",
    cls=_Commands,
    help=(
        "Look at a catalog of PyTorch model rows: list, query, inspect, verify, plot, "
        "export and import.\n\n"
        f"CATALOG defaults to `${ENV_CATALOG}`, else `{DEFAULT_CATALOG}/` in the current "
        "directory; every command also takes `--catalog/-c`. Output is a table on a terminal "
        "and CSV otherwise (`--format table|csv|json`).\n\n"
        "Exit status: 0 ok; 1 the command found corrupt rows or nothing; 2 it could not do "
        "what was asked (one line on stderr)."
    ),
    epilog="Run `modelrows COMMAND --help` for a command's options and an example.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# -- shared options -------------------------------------------------------------------------------

CatalogArg = Annotated[
    str | None,
    typer.Argument(
        metavar="CATALOG",
        help=f"The catalog directory (default: ${ENV_CATALOG}, else ./{DEFAULT_CATALOG}).",
        show_default=False,
    ),
]
CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        "-c",
        metavar="DIR",
        help="The catalog directory, instead of the CATALOG argument.",
        show_default=False,
    ),
]
CatalogOfTwoArg = Annotated[
    str | None,
    typer.Argument(
        metavar="CATALOG", help="The catalog, when two arguments are given.", show_default=False
    ),
]
FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format",
        "-f",
        help="table, csv or json (default: table on a terminal, csv otherwise).",
        show_default=False,
    ),
]
ModuleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--module",
        "-m",
        metavar="MODULE",
        help=(
            "Import this module first, so that the row classes it declares are used "
            f"(repeatable; also ${ENV_IMPORT}, comma-separated)."
        ),
        show_default=False,
    ),
]
WhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where",
        "-w",
        metavar="SQL",
        help="Only rows matching this SQL condition, e.g. \"run = 'a' AND epoch > 2\".",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"modelrows {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


# -- helpers: catalogs, arguments, modules --------------------------------------------------------


def _catalog_path(positional: str | None, option: str | None) -> Path:
    if positional is not None and option is not None:
        raise CommandLineError(
            f"two catalogs given ({positional!r} and --catalog {option!r}); give one"
        )
    return Path(positional or option or os.environ.get(ENV_CATALOG) or DEFAULT_CATALOG)


def _open(positional: str | None, option: str | None) -> Catalog:
    root = _catalog_path(positional, option)
    if not root.exists():
        where = (
            "the argument"
            if positional or option
            else f"${ENV_CATALOG}"
            if os.environ.get(ENV_CATALOG)
            else "the default"
        )
        raise CatalogError(
            f"no catalog at {root} ({where}); pass the catalog directory, use --catalog DIR, "
            f"or set {ENV_CATALOG}"
        )
    return Catalog.open(root)


def _catalog_and(
    first: str | None, second: str | None, option: str | None, *, what: str, usage: str
) -> tuple[Catalog, str]:
    """Resolve ``[CATALOG] VALUE``: one argument is the value, two are catalog then value."""
    if second is not None and option is not None:
        raise CommandLineError(
            f"two catalogs given ({first!r} and --catalog {option!r}); usage: {usage}"
        )
    if first is None:
        raise CommandLineError(f"missing {what}; usage: {usage}")
    if second is None:
        return _open(None, option), first
    return _open(first, None), second


def _declare_rows(modules: Sequence[str] = ()) -> None:
    """Import the user's modules that declare row classes: ``modules`` and ``$MODELROWS_IMPORT``.

    Modules are looked up on ``sys.path`` and in the current directory.
    """
    env = [m.strip() for m in os.environ.get(ENV_IMPORT, "").split(",") if m.strip()]
    names = [*modules, *env]
    if not names:
        return
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise CommandLineError(
                f"cannot import module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc


def _columns(catalog: Catalog) -> list[str]:
    """The catalog's columns without weights, in stored order (those of ``catalog.scan()``)."""
    return catalog.scan().collect_schema().names()


def _check_column(catalog: Catalog, name: str, *, use: str) -> str:
    columns = _columns(catalog)
    if name not in columns:
        raise CommandLineError(
            f"cannot {use} {name!r}: not a column of {catalog.root} (columns: {', '.join(columns)})"
        )
    return _quote(name)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _query(catalog: Catalog, query: str) -> pa.Table | None:
    """Run DuckDB SQL over the catalog; None for a statement that returns no rows."""
    # DuckDB returns None for statements without results, though Catalog.sql's hint omits it
    relation: duckdb.DuckDBPyRelation | None = catalog.sql(query)
    if relation is None:
        return None
    # newer DuckDB: to_arrow_table() (arrow() became a batch reader); older: arrow() is the table
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    try:
        table: pa.Table = fetch()
    except duckdb.Error as exc:  # errors found while running, after the query was accepted
        raise CatalogError(f"SQL error: {exc}".replace("\n", " ")) from exc
    return table


def _names_a_file(arg: str) -> bool:
    """Whether a lone argument is a row file rather than a row id (ids hold no '/' or '.')."""
    return Path(arg).is_file() or "/" in arg or os.sep in arg or arg.endswith(".arrow")


def _row_id(row: Row) -> str | None:
    value = row.extras.get("row_id")
    return value if isinstance(value, str) else None


# -- output: tables, CSV, JSON --------------------------------------------------------------------


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _format(fmt: Format | None) -> Format:
    if fmt is not None:
        return fmt
    return Format.table if _stdout().is_terminal else Format.csv


def _is_weights_type(t: pa.DataType) -> bool:
    """A weights column, also after DuckDB (which may change its binary types)."""
    return (
        pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} == _WEIGHTS_FIELDS
    )


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


_WEIGHTS_SUMMARY = pa.struct(
    [("tensors", pa.int64()), ("fingerprint", pa.string()), ("checksum", pa.string())]
)


def _summarize_weights(table: pa.Table) -> pa.Table:
    """Weights columns become a summary: tensor count, fingerprint and checksum (no bytes)."""
    for i, field in enumerate(table.schema):
        if _is_weights_type(field.type):
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


def _jsonable(value: Any) -> Any:
    """A plain JSON value: ISO strings for times, base64 for bytes, null for NaN."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Row):
        return _jsonable(value.to_dict())
    if isinstance(value, Weights):
        return {
            "tensors": len(value),
            "fingerprint": value.fingerprint,
            "checksum": value.stored_checksum or value.checksum,
        }
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    plain = _jsonable(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def _table_cell(value: Any) -> Text:
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
    if isinstance(value, bytes | bytearray | memoryview):
        return Text(f"<{len(value)} bytes>", style="dim")
    if isinstance(value, Weights):
        return Text(f"{len(value)} tensors, {value.nbytes:,} bytes", style="dim")
    plain = _jsonable(value)
    return Text(plain if isinstance(plain, str) else json.dumps(plain))


def _emit_table(table: pa.Table, fmt: Format | None, *, caption: str = "") -> None:
    """Print query results as a rich table, CSV or a JSON array of objects."""
    table = _summarize_weights(table)
    rows = table.to_pylist()
    fmt = _format(fmt)
    if fmt is Format.json:
        sys.stdout.write(json.dumps(_jsonable(rows), indent=2) + "\n")
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([_csv_cell(r[n]) for n in table.column_names] for r in rows)
    else:
        numbers = [_is_number(f.type) for f in table.schema]
        cells = [[_table_cell(r[n]) for n in table.column_names] for r in rows]
        _stdout().print(_fitted_table(table.column_names, numbers, cells, caption))


_GIVE_WAY_FIRST = ("written_at", "architecture_version")


def _fitted_table(
    names: Sequence[str], numbers: Sequence[bool], cells: Sequence[Sequence[Text]], caption: str
) -> Table:
    """A table of one line per row that fits the terminal: bookkeeping columns (``written_at``,
    ``architecture_version``) give way first, then the widest (never ``row_id``); the caption
    names those left out."""
    console = _stdout()
    shown = list(range(len(names)))
    hidden: list[str] = []

    def build() -> Table:
        note = f"; hidden to fit the terminal: {', '.join(hidden)}" if hidden else ""
        out = Table(
            box=box.SIMPLE_HEAD, header_style="bold", caption=caption + note, pad_edge=False
        )
        for i in shown:
            out.add_column(
                escape(names[i]), justify="right" if numbers[i] else "left", no_wrap=True
            )
        for row in cells:
            out.add_row(*[row[i] for i in shown])
        return out

    def width(i: int) -> int:
        return max([len(names[i]), *(row[i].cell_len for row in cells)])

    unbounded = console.options.update(max_width=1 << 20)
    out = build()
    while console.measure(out, options=unbounded).maximum > console.width:
        candidates = [i for i in shown if names[i] != "row_id"]
        if len(candidates) <= 1:
            break
        widest = max(candidates, key=lambda i: (names[i] in _GIVE_WAY_FIRST, width(i)))
        shown.remove(widest)
        hidden.append(names[widest])
        out = build()
    return out


def _emit_record(record: Mapping[str, Any], fmt: Format | None) -> None:
    """Print one row: a field/value table, one CSV line under a header, or one JSON object."""
    fmt = _format(fmt)
    if fmt is Format.json:
        sys.stdout.write(json.dumps(_jsonable(dict(record)), indent=2) + "\n")
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(list(record))
        writer.writerow([_csv_cell(v) for v in record.values()])
    else:
        out = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
        out.add_column(style="bold")
        out.add_column()
        for name, value in record.items():
            out.add_row(escape(name), _table_cell(value))
        _stdout().print(out)


def _fail(message: str, *, code: int) -> NoReturn:
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    prefix = "modelrows: error: " if code == 2 else "modelrows: "
    _stderr().print(
        Text.assemble((prefix, "bold red" if code == 2 else "bold"), line), soft_wrap=True
    )
    raise typer.Exit(code)


# -- ls, sql, best --------------------------------------------------------------------------------


@app.command("ls")
def ls(
    catalog: CatalogArg = None,
    where: WhereOpt = None,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            "-s",
            metavar="COL",
            help="Sort by this column (default: row_id).",
            show_default=False,
        ),
    ] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort in descending order.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "-n", min=0, metavar="N", help="Show at most N rows.", show_default=False
        ),
    ] = None,
    fmt: FormatOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """List the rows of a catalog, without their weights.

    Rows come oldest first unless `--sort` says otherwise. Every column but the weights is
    shown, including `row_id` and `written_at`.

    **Examples**

    ```
    $ modelrows ls
    $ modelrows ls runs/digits --where "run = 'lr-0.01'" --sort accuracy --desc -n 5
    $ modelrows ls --format json | jq '.[].accuracy'
    ```
    """
    cat = _open(catalog, catalog_opt)
    order = _check_column(cat, sort, use="sort by") if sort else "row_id"
    columns = ", ".join(_quote(c) for c in _columns(cat))
    query = f"SELECT {columns} FROM models"
    if where:
        query += f" WHERE ({where})"
    query += f" ORDER BY {order} {'DESC' if desc else 'ASC'}, row_id"
    if limit is not None:
        query += f" LIMIT {limit}"
    table = _query(cat, query)
    assert table is not None
    total = len(cat)
    caption = f"{table.num_rows} of {total} rows" if table.num_rows != total else f"{total} rows"
    _emit_table(table, fmt, caption=caption)


@app.command("sql")
def sql(
    first: CatalogOfTwoArg = None,
    second: Annotated[
        str | None,
        typer.Argument(
            metavar="QUERY",
            help="DuckDB SQL; the catalog is the table `models`.",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Run DuckDB SQL over a catalog, where the table `models` holds its rows.

    With one argument it is the query (on the default catalog); with two, the catalog then the
    query. Weights columns are shown as a summary (tensor count, fingerprint, checksum); use
    `modelrows export` for the tensors themselves.

    **Examples**

    ```
    $ modelrows sql "SELECT run, max(accuracy) AS best FROM models GROUP BY run ORDER BY best DESC"
    $ modelrows sql runs/digits "SELECT row_id, epoch FROM models WHERE commit_sha LIKE 'a1b2%'"
    ```
    """
    cat, query = _catalog_and(
        first, second, catalog_opt, what="QUERY", usage='modelrows sql [CATALOG] "SELECT ..."'
    )
    table = _query(cat, query)
    if table is not None:
        _emit_table(table, fmt)


@app.command("best")
def best(
    catalog: CatalogArg = None,
    by: Annotated[
        str,
        typer.Option(
            "--by", "-b", metavar="COL", help="The column to rank rows by.", show_default=False
        ),
    ] = "accuracy",
    minimize: Annotated[
        bool, typer.Option("--min", help="The lowest value wins (e.g. a loss).")
    ] = False,
    where: WhereOpt = None,
    fmt: FormatOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Print the best row: the highest `--by` value (the lowest with `--min`).

    Rows without a value are skipped; ties go to the earliest row. Exits with status 1 when no
    row has a value.

    **Examples**

    ```
    $ modelrows best --by accuracy
    $ modelrows best runs/digits --by loss --min --where "epoch >= 5" --format json
    ```
    """
    cat = _open(catalog, catalog_opt)
    _check_column(cat, by, use="rank by")
    row = cat.best(by, descending=not minimize, where=where)
    if row is None:
        _fail(
            f"no row of {cat.root} has a value for {by!r}" + (f" where {where}" if where else ""),
            code=1,
        )
    values = row.to_dict()  # fields, then the columns its class does not declare
    _emit_record({c: values.get(c) for c in _columns(cat)}, fmt)


# -- show ----------------------------------------------------------------------------------------


def _chain(qualified: str) -> list[dict[str, Any]]:
    """Each schema of a qualified identifier, and the class declaring it here (if any)."""
    out = []
    for ident in parse_qualified(qualified):
        cls = lookup(ident)
        out.append(
            {
                "schema": ident,
                "declared_by": f"{cls.__module__}.{cls.__qualname__}" if cls else None,
            }
        )
    return out


def _chain_text(qualified: str) -> Text:
    text = Text()
    for i, link in enumerate(_chain(qualified)):
        if i:
            text.append(" > ", style="dim")
        text.append(link["schema"], style="bold" if link["declared_by"] else "")
    return text


def _tensor_rows(weights: Weights) -> list[dict[str, Any]]:
    ties = weights.ties
    return [
        {
            "name": e.name,
            "dtype": e.dtype,
            "shape": list(e.shape),
            "nbytes": e.nbytes,
            "tied_to": ties.get(e.name),
        }
        for e in weights.entries
    ]


def _weights_facts(weights: Weights) -> dict[str, Any]:
    return {
        "tensors": _tensor_rows(weights),
        "nbytes": weights.nbytes,
        "fingerprint": weights.fingerprint,
        "stored_checksum": weights.stored_checksum,
        "checksum": weights.checksum,
        "intact": weights.verify(),
    }


def _row_facts(row: Row, *, path: Path | None, types: Mapping[str, str]) -> dict[str, Any]:
    """Everything ``show`` prints about a row, as plain data."""
    fields = type(row).__row_fields__
    out_fields = []
    weights = {}
    for name, value in row.to_dict().items():  # Weights stay Weights, nested rows become dicts
        if name in MANAGED_COLUMNS:
            continue
        field = fields.get(name)
        if isinstance(value, Weights):
            weights[name] = _weights_facts(value)
        out_fields.append(
            {
                "name": name,
                "type": field.type.signature() if field else types.get(name, "?"),
                "declared_in": field.declared_in if field else None,
                "value": value,
            }
        )
    return {
        "path": str(path) if path else None,
        "row_id": _row_id(row),
        "written_at": row.extras.get("written_at"),
        "schema": row.declared_schema,
        "chain": _chain(row.declared_schema),
        "read_as": type(row).__qualified__,
        "fields": out_fields,
        "weights": weights,
    }


def _print_row(facts: Mapping[str, Any]) -> None:
    console = _stdout()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for key in ("row_id", "path"):
        if facts[key]:
            head.add_row(key, escape(str(facts[key])))
    if facts["written_at"] is not None:
        head.add_row("written_at", _table_cell(facts["written_at"]))
    head.add_row("schema", _chain_text(facts["schema"]))
    undeclared = [c["schema"] for c in facts["chain"] if not c["declared_by"]]
    if undeclared:
        head.add_row(
            "",
            Text(
                f"read as {facts['read_as']}; not declared in this process: "
                f"{', '.join(undeclared)} (declare with --module or ${ENV_IMPORT})",
                style="dim",
            ),
        )
    fields = Table(box=box.SIMPLE_HEAD, header_style="bold", title="fields", title_justify="left")
    fields.add_column("name")
    fields.add_column("type", style="cyan")
    fields.add_column("value")
    fields.add_column("declared in", style="dim")
    for f in facts["fields"]:
        fields.add_row(
            escape(f["name"]), escape(f["type"]), _table_cell(f["value"]), f["declared_in"] or "-"
        )
    parts: list[Any] = [head, fields]
    for name, w in facts["weights"].items():
        tensors = Table(
            box=box.SIMPLE_HEAD,
            header_style="bold",
            title=f"{name}: {len(w['tensors'])} tensors, {w['nbytes']:,} bytes",
            title_justify="left",
        )
        tensors.add_column("tensor")
        tensors.add_column("dtype")
        tensors.add_column("shape")
        tensors.add_column("bytes", justify="right")
        for t in w["tensors"]:
            size = f"tied to {t['tied_to']}" if t["tied_to"] else f"{t['nbytes']:,}"
            tensors.add_row(escape(t["name"]), t["dtype"], str(tuple(t["shape"])), size)
        parts.append(tensors)
        facts_grid = Table.grid(padding=(0, 2))
        facts_grid.add_column(style="bold")
        facts_grid.add_column()
        facts_grid.add_row("fingerprint", w["fingerprint"])
        if w["stored_checksum"] is None:
            state = Text(f"{w['checksum']} (none stored)", style="yellow")
        elif w["intact"]:
            state = Text.assemble((w["checksum"], ""), ("  intact", "green"))
        else:
            state = Text(
                f"MISMATCH: stored {w['stored_checksum']}, computed {w['checksum']}",
                style="bold red",
            )
        facts_grid.add_row("checksum", state)
        parts.append(facts_grid)
    console.print(Group(*parts))


def _print_catalog(cat: Catalog) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("catalog", escape(str(cat.root)))
    head.add_row("schema", _chain_text(cat.schema))
    head.add_row("partitioned by", ", ".join(cat.partition_by) or "-")
    head.add_row("rows", str(len(cat)))
    columns = Table(box=box.SIMPLE_HEAD, header_style="bold", title="columns", title_justify="left")
    columns.add_column("name")
    columns.add_column("arrow type", style="cyan")
    for f in cat.arrow_schema:
        kind = "weights" if f.type == WEIGHTS_ARROW_TYPE else str(f.type)
        columns.add_row(escape(f.name), escape(kind))
    _stdout().print(Group(head, columns))


@app.command("show")
def show(
    first: Annotated[
        str | None,
        typer.Argument(
            metavar="PATH|CATALOG",
            help="A row file, a catalog directory, or (alone) a row id in the default catalog.",
            show_default=False,
        ),
    ] = None,
    second: Annotated[
        str | None,
        typer.Argument(metavar="ROW_ID", help="A row of the catalog.", show_default=False),
    ] = None,
    fmt: Annotated[
        ShowFormat,
        typer.Option("--format", "-f", help="A readable table, or json for scripts."),
    ] = ShowFormat.table,
    module: ModuleOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Show one row: its schema chain, fields and values, tensors, fingerprint and checksum.

    `show FILE.arrow` reads a row file; `show CATALOG ROW_ID` a row of a catalog; `show ROW_ID`
    a row of the default catalog (or of `--catalog`); `show CATALOG` (or no argument) describes
    the catalog itself. Schemas in bold are declared in this process (see `--module`); a row
    whose schema is not is read as its nearest declared ancestor, its other columns still shown.
    The checksum is recomputed over every tensor byte: a mismatch exits with status 1.

    **Examples**

    ```
    $ modelrows show runs/digits 01JD2ZK7T9X3V6QW8M4N5P0R1S
    $ modelrows show checkpoints/best.model.arrow --format json
    $ modelrows show runs/digits
    ```
    """
    _declare_rows(module or [])
    path: Path | None = None
    catalog: Catalog | None = None
    if second is not None:
        catalog, target = _catalog_and(
            first, second, catalog_opt, what="ROW_ID", usage="modelrows show CATALOG ROW_ID"
        )
    elif first is None or (catalog_opt is None and Path(first).is_dir()):
        cat = _open(first, catalog_opt)
        if fmt is ShowFormat.json:
            description = {
                "catalog": str(cat.root),
                "schema": cat.schema,
                "chain": _chain(cat.schema),
                "partition_by": list(cat.partition_by),
                "rows": len(cat),
                "columns": {
                    f.name: "weights" if f.type == WEIGHTS_ARROW_TYPE else str(f.type)
                    for f in cat.arrow_schema
                },
            }
            sys.stdout.write(json.dumps(description, indent=2) + "\n")
        else:
            _print_catalog(cat)
        return
    elif catalog_opt is None and _names_a_file(first):
        path, target = Path(first), first
    else:
        catalog, target = _open(None, catalog_opt), first
    if catalog is not None:
        path = catalog.path_of(target)  # one walk of the catalog; the row is read from the path
    row = read_model_row(target if path is None else path)
    schema = catalog.arrow_schema if catalog is not None else _file_schema(path)
    types = {f.name: str(f.type) for f in schema}
    facts = _row_facts(row, path=path, types=types)
    if fmt is ShowFormat.json:
        sys.stdout.write(json.dumps(_jsonable(facts), indent=2) + "\n")
    else:
        _print_row(facts)
    if not all(w["intact"] for w in facts["weights"].values()):
        raise typer.Exit(1)


def _file_schema(path: Path | None) -> pa.Schema:
    import pyarrow.ipc as ipc

    assert path is not None
    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).schema


# -- verify, vacuum --------------------------------------------------------------------------------


@app.command("verify")
def verify(catalog: CatalogArg = None, catalog_opt: CatalogOpt = None) -> None:
    """Re-check every row: file structure, tensor table and the checksum of every byte.

    Shows a progress bar on a terminal. Lists the corrupt rows and exits with status 1 if there
    are any.

    **Example**

    ```
    $ modelrows verify runs/digits
    ```
    """
    cat = _open(catalog, catalog_opt)
    err = _stderr()
    with Progress(
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("verify", total=None)
        bad = cat.verify(progress=lambda done, total: bar.update(task, completed=done, total=total))
        total = int(bar.tasks[0].total or 0)
    out = _stdout()
    if not bad:
        out.print(f"{total} rows verified in {escape(str(cat.root))}: all intact")
        return
    out.print(f"{len(bad)} of {total} rows are corrupt in {escape(str(cat.root))}:")
    for row_id, _path, problem in bad:
        out.print(Text.assemble("  ", (row_id, "bold red"), "  ", problem), soft_wrap=True)
    raise typer.Exit(1)


@app.command("vacuum")
def vacuum(
    catalog: CatalogArg = None,
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            metavar="SECONDS",
            min=0,
            help="Also remove temporary files this old even if their writer may still live.",
        ),
    ] = 3600.0,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Remove temporary files left in the catalog by writers that crashed.

    A temporary file goes when the process that wrote it is gone, or when it is older than
    `--older-than`. Rows are never touched.

    **Example**

    ```
    $ modelrows vacuum runs/digits
    ```
    """
    cat = _open(catalog, catalog_opt)
    removed = cat.vacuum(older_than=older_than)
    out = _stdout()
    for path in removed:
        out.print(escape(str(path)), soft_wrap=True)
    out.print(f"removed {len(removed)} temporary file{'s' if len(removed) != 1 else ''}")


# -- plot ------------------------------------------------------------------------------------------


def _draw_curves(
    series: Mapping[str, tuple[list[Any], list[Any]]],
    best: tuple[Any, Any, str],
    *,
    x: str,
    y: str,
    by: str | None,
    minimize: bool,
    title: str,
) -> Figure:
    """A figure with one line per series and the best point starred and labelled."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 5), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    colors: dict[str, Any] = {}
    for label, (xs, ys) in series.items():
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
        colors[label] = line.get_color()
    if all(isinstance(v, int) for xs, _ in series.values() for v in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bx, bvalue, blabel = best
    ax.plot(
        [bx],
        [bvalue],
        marker="*",
        markersize=16,
        color=colors.get(blabel, "black"),
        markeredgecolor="black",
        linestyle="none",
        zorder=5,
        label="_best",
    )
    ax.get_xlim()  # settle the limits, so the label can stay inside the axes
    px, _ = ax.transAxes.inverted().transform(
        ax.transData.transform((ax.convert_xunits(bx), bvalue))  # type: ignore[no-untyped-call]
    )
    ha = "right" if px > 0.67 else "left" if px < 0.33 else "center"
    where = f"{by} {blabel}, " if by else ""
    ax.annotate(
        f"best: {where}{x} {_short(bx)}, {y} {_short(bvalue)}",
        xy=(bx, bvalue),
        xytext=({"right": 6, "left": -6, "center": 0}[ha], 14 if minimize else -14),
        textcoords="offset points",
        ha=ha,
        va="bottom" if minimize else "top",
        fontsize=9,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6", "alpha": 0.9},
        zorder=6,
    )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if by and 1 < len(series) <= 12:
        ax.legend(title=by, fontsize=8, loc="best")
    return fig


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("plot")
def plot(
    catalog: CatalogArg = None,
    x: Annotated[
        str,
        typer.Option(
            "--x", "-x", metavar="COL", help="The column on the x axis.", show_default=False
        ),
    ] = "epoch",
    y: Annotated[
        str,
        typer.Option(
            "--y", "-y", metavar="COL", help="The column on the y axis.", show_default=False
        ),
    ] = "accuracy",
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="COL",
            help="One line per value of this column (default: the first partition key).",
            show_default=False,
        ),
    ] = None,
    minimize: Annotated[
        bool, typer.Option("--min", help="Mark the lowest y as best (a loss).")
    ] = False,
    where: WhereOpt = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="FILE", help="The image to write (.png, .svg, .pdf)."
        ),
    ] = Path("curves.png"),
    title: Annotated[
        str | None, typer.Option("--title", help="The plot's title.", show_default=False)
    ] = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Plot learning curves: one line per run, the best point starred.

    Needs matplotlib (`pip install 'modelrows[plot]'`). Rows without an x or y value are left
    out; exits with status 1 when none is left.

    **Example**

    ```
    $ modelrows plot --x epoch --y accuracy --by run -o curves.png
    $ modelrows plot runs/digits --y loss --min --where "epoch > 0" -o loss.svg
    ```
    """
    try:
        import matplotlib
    except ImportError:
        raise CommandLineError(
            "plot needs matplotlib, which is not installed; install it with: "
            "pip install 'modelrows[plot]'"
        ) from None
    matplotlib.use("Agg")
    cat = _open(catalog, catalog_opt)
    group = by if by is not None else (cat.partition_by[0] if cat.partition_by else None)
    qx, qy = _check_column(cat, x, use="plot"), _check_column(cat, y, use="plot")
    qg = _check_column(cat, group, use="group by") if group else "NULL"
    cond = f"{qx} IS NOT NULL AND {qy} IS NOT NULL" + (f" AND ({where})" if where else "")
    table = _query(
        cat,
        f"SELECT {qg} AS g, {qx} AS x, {qy} AS y FROM models WHERE {cond} ORDER BY g, x, row_id",
    )
    assert table is not None
    if not _is_number(table.schema.field("y").type):
        raise CommandLineError(
            f"cannot plot {y!r}: it is {table.schema.field('y').type}, not a number"
        )
    series: dict[str, tuple[list[Any], list[Any]]] = {}
    for g, xv, yv in zip(*(table.column(c).to_pylist() for c in ("g", "x", "y")), strict=True):
        xs, ys = series.setdefault(y if group is None else str(g), ([], []))
        xs.append(xv)
        ys.append(yv)
    top = cat.best(y, descending=not minimize, where=cond)
    if top is None:
        _fail(
            f"nothing to plot: no row of {cat.root} has both {x} and {y}"
            + (f" where {where}" if where else ""),
            code=1,
        )
    label = y if group is None else str(getattr(top, group))
    fig = _draw_curves(
        series,
        (getattr(top, x), getattr(top, y), label),
        x=x,
        y=y,
        by=group,
        minimize=minimize,
        title=title or f"{y} by {x}: {cat.root.name}",
    )
    try:
        fig.savefig(output)
    except (OSError, ValueError) as exc:
        raise CommandLineError(f"cannot write {output}: {exc}") from exc
    points = sum(len(xs) for xs, _ in series.values())
    _stdout().print(
        f"wrote {escape(str(output))}: {len(series)} line{'s' if len(series) != 1 else ''}, "
        f"{points} points; best {y} {_short(getattr(top, y))} (row {_row_id(top)})",
        soft_wrap=True,
    )


# -- export, import ---------------------------------------------------------------------------------


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise CommandLineError(
            "export and import need safetensors, which is not installed; install it with: "
            "pip install 'modelrows[cli]'"
        ) from None
    return safetensors


def _weights_column(names: Sequence[str], chosen: str | None, *, where: str) -> str:
    if chosen is not None:
        if chosen not in names:
            raise CommandLineError(
                f"{where} has no weights column {chosen!r} (weights columns: "
                f"{', '.join(names) or 'none'})"
            )
        return chosen
    if len(names) != 1:
        raise CommandLineError(
            f"{where} has {len(names)} weights columns ({', '.join(names) or 'none'}); "
            "choose one with --column"
        )
    return names[0]


ColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--column",
        metavar="NAME",
        help="The weights column, when a row has more than one.",
        show_default=False,
    ),
]


@app.command("export")
def export(
    first: CatalogOfTwoArg = None,
    second: Annotated[
        str | None,
        typer.Argument(
            metavar="ROW_ID",
            help="The row to export (alone: a row id of the default catalog, or a row file).",
            show_default=False,
        ),
    ] = None,
    *,
    to: Annotated[
        Path,
        typer.Option("--to", "-o", metavar="FILE", help="The safetensors file to write."),
    ],
    column: ColumnOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Write a row's weights to a safetensors file, checksum verified first.

    With one argument it is a row id of the default catalog (or a row file); with two, the
    catalog then the row id. The file's metadata records the schema, row id, fingerprint and
    checksum. safetensors cannot share storage, so a tensor tied to another is written as a copy,
    and the ties are listed in the metadata (`modelrows.ties`) so that `import` re-ties them.

    **Examples**

    ```
    $ modelrows export 01JD2ZK7T9X3V6QW8M4N5P0R1S --to model.safetensors
    $ modelrows export runs/digits "$(modelrows best runs/digits -f json | jq -r .row_id)" --to best.safetensors
    ```
    """
    st = _safetensors()
    if second is None and first is not None and catalog_opt is None and _names_a_file(first):
        row, where = read_model_row(first, verify=True), first
    else:
        cat, row_id = _catalog_and(
            first,
            second,
            catalog_opt,
            what="ROW_ID",
            usage="modelrows export [CATALOG] ROW_ID --to FILE",
        )
        row, where = cat.get(row_id, verify=True), f"row {row_id}"
    values = row.to_dict()
    names = [n for n, v in values.items() if isinstance(v, Weights)]
    name = _weights_column(names, column, where=where)
    weights: Weights = values[name]
    ties = weights.ties
    tensors = {k: (t.clone() if k in ties else t) for k, t in weights.items()}
    metadata = {
        "format": "pt",
        "modelrows.schema": row.declared_schema,
        "modelrows.column": name,
        "modelrows.fingerprint": weights.fingerprint,
        "modelrows.checksum": weights.stored_checksum or weights.checksum,
        "modelrows.names": json.dumps(list(weights)),
    }
    stored_id = _row_id(row)
    if stored_id is not None:
        metadata["modelrows.row_id"] = stored_id
    if ties:
        metadata["modelrows.ties"] = json.dumps(ties)
    try:
        st.torch.save_file(tensors, str(to), metadata=metadata)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CommandLineError(f"cannot write {to}: {exc}") from exc
    _stdout().print(
        f"wrote {escape(str(to))}: {len(tensors)} tensors, {weights.nbytes:,} bytes from {where}",
        soft_wrap=True,
    )


def _parse_sets(
    pairs: Sequence[str], row_class: type[Row], weights: Sequence[str]
) -> dict[str, Any]:
    """``--set key=value`` strings converted to the types of ``row_class``'s fields."""
    fields = row_class.__row_fields__
    settable = [n for n in fields if n not in weights]
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CommandLineError(f"--set {pair!r}: expected NAME=VALUE, e.g. --set epoch=3")
        if key in values:
            raise CommandLineError(f"--set {key} is given twice")
        field = fields.get(key)
        if field is None or key in weights:
            raise CommandLineError(
                f"--set {key}: {row_class.__name__} has no such field "
                f"(fields you can set: {', '.join(settable)})"
            )
        values[key] = _convert(key, text, field.type.arrow_type, field.type.signature())
    missing = [n for n in settable if fields[n].required and n not in values]
    if missing:
        raise CommandLineError(
            f"{row_class.__name__} needs {', '.join(missing)}: pass "
            + " ".join(f"--set {n}=..." for n in missing)
        )
    return values


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(key: str, text: str, arrow_type: pa.DataType, signature: str) -> Any:
    try:
        if pa.types.is_boolean(arrow_type):
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError("expected true or false")
        if pa.types.is_integer(arrow_type):
            return int(text)
        if pa.types.is_floating(arrow_type):
            return float(text)
        if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
            return text
    except ValueError:
        raise CommandLineError(f"--set {key}={text}: {key} is {signature}, not {text!r}") from None
    kind = "a nested row" if pa.types.is_struct(arrow_type) else "not a plain value"
    raise CommandLineError(
        f"--set {key}: {key} is {signature}, {kind}; the command line sets only int, float, str "
        "and bool fields (use the Python API for the others)"
    )


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    st = _safetensors()
    if not path.is_file():
        raise CommandLineError(f"{path}: no such file")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = st.torch.load_file(str(path))
    except Exception as exc:
        raise CommandLineError(f"{path}: not a readable safetensors file: {exc}") from exc
    return tensors, metadata


def _restore(
    tensors: dict[str, torch.Tensor], metadata: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Undo what safetensors cannot keep of an ``export``: state_dict order and tied tensors."""
    import torch

    def listed(key: str, kind: type) -> Any:
        try:
            value = json.loads(metadata.get(key, "null"))
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, kind) else None

    out = dict(tensors)
    names = listed("modelrows.names", list)
    if names is not None and sorted(names) == sorted(out):
        out = {name: out[name] for name in names}
    for name, owner in (listed("modelrows.ties", dict) or {}).items():
        a, b = out.get(name), out.get(owner)
        if a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b):
            out[name] = b
    return out


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="The safetensors file to read.", show_default=False),
    ],
    catalog: CatalogArg = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="NAME=VALUE",
            help="A field of the new row (repeat for several); int, float, str and bool fields.",
            show_default=False,
        ),
    ] = None,
    module: ModuleOpt = None,
    column: ColumnOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Append a safetensors file's tensors to the catalog as a new row; print its row id.

    The new row must have the catalog's exact schema, so its row class has to be declared in
    this process: name the module that declares it with `--module` (or `$MODELROWS_IMPORT`). The
    current directory is searched first. `--set` fills the other fields, converted to their
    declared types. Tensors that `modelrows export` untied are tied again.

    **Example**

    ```
    $ modelrows import model.safetensors runs/digits --module digits_rows \\
          --set run=finetune --set epoch=0 --set commit_sha=$(git rev-parse HEAD)
    ```
    """
    _declare_rows(module or [])
    tensors, metadata = _load_safetensors(file)
    cat = _open(catalog, catalog_opt)
    row_class = cat.row_class
    if row_class.__qualified__ != cat.schema:
        missing = [c["schema"] for c in _chain(cat.schema) if not c["declared_by"]]
        raise CommandLineError(
            f"{cat.root} holds {cat.schema} rows, but {', '.join(missing)} is not declared in this "
            f"process; name the module that declares it: --module my_pkg.rows (or set {ENV_IMPORT})"
        )
    fields = row_class.__row_fields__
    weights_fields = [n for n, f in fields.items() if f.type.arrow_type == WEIGHTS_ARROW_TYPE]
    name = _weights_column(weights_fields, column, where=row_class.__name__)
    values = _parse_sets(sets or [], row_class, weights_fields)
    values[name] = fetch_weights(_restore(tensors, metadata))
    row_id = cat.append(row_class(**values))
    _stderr().print(
        f"imported {len(tensors)} tensors from {escape(str(file))} into {escape(str(cat.root))}",
        soft_wrap=True,
    )
    sys.stdout.write(row_id + "\n")


# -- entry point ---------------------------------------------------------------------------------


def main() -> None:
    """The ``modelrows`` console script."""
    try:
        app(prog_name="modelrows")
    except BrokenPipeError:  # e.g. `modelrows ls | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
