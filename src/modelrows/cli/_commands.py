"""The commands. Each imports the library, pyarrow and rich when it runs, never at import time.

The commands use the public API only (``from modelrows import ...``).
"""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .._errors import CatalogError, CommandLineError
from .._location import is_url
from ._app import (
    ENV_IMPORT,
    CatalogArg,
    CatalogOfTwoArg,
    CatalogOpt,
    ColumnOpt,
    FormatOpt,
    ModuleOpt,
    RawOpt,
    ShowFormat,
    SqlError,
    WhereOpt,
    app,
    catalog_and,
    catalog_path,
    declare_rows,
    fail,
    names_a_catalog,
    names_a_row_url,
    open_catalog,
    stderr,
    stdout,
    suggest,
    unknown,
)
from ._plot import PARENT

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.text import Text

    from .. import Catalog, Row, Weights


# -- helpers: columns and queries -----------------------------------------------------------------


def weights_type(catalog: Catalog) -> pa.DataType:
    """The Arrow type of a weights column: that of ``weights``, which every model row has."""
    return catalog.arrow_schema.field("weights").type


def columns(catalog: Catalog) -> list[str]:
    """The catalog's columns but its weights, in stored order (``row_id`` and ``written_at``
    first, as ``catalog.scan()`` has them)."""
    wt = weights_type(catalog)
    return [f.name for f in catalog.arrow_schema if f.type != wt]


def check_column(catalog: Catalog, name: str, *, use: str) -> str:
    """``name`` quoted for SQL, or an error suggesting the nearest columns."""
    names = columns(catalog)
    if name not in names:
        raise unknown(f"cannot {use}", name, names, where=catalog.url)
    return quote(name)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def query(catalog: Catalog, sql: str) -> pa.Table | None:
    """Run DuckDB SQL over the catalog; None for a statement that returns no rows.

    DuckDB's errors keep their lines: a syntax error's caret points at a column of the line
    above it."""
    import duckdb

    try:
        relation = catalog.sql(sql)
        if relation is None:  # a statement without results, though Catalog.sql's hint omits it
            return None  # type: ignore[unreachable]
        # newer DuckDB: to_arrow_table() (arrow() became a batch reader); older: arrow() is it
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
        table: pa.Table = fetch()
    except duckdb.Error as exc:  # found while running, after the query was accepted
        raise SqlError(f"SQL error: {exc}") from exc
    except CatalogError as exc:
        if isinstance(exc.__cause__, duckdb.Error):  # the catalog's wrapping flattens the lines
            raise SqlError(f"SQL error: {exc.__cause__}") from exc
        raise
    return table


def select(
    catalog: Catalog,
    what: str,
    *,
    where: str | None = None,
    conditions: Sequence[str] = (),
    order: str | None = None,
    limit: int | None = None,
) -> pa.Table:
    """``SELECT what FROM models`` of the rows matching the user's ``where`` (parsed as one
    expression, so it cannot end the statement or start another) and our own ``conditions``."""
    import duckdb

    try:
        relation = catalog.sql("SELECT * FROM models")
        if where is not None:
            relation = relation.filter(where)
        for condition in conditions:
            relation = relation.filter(condition)
        relation = relation.project(what)
        if order is not None:
            relation = relation.order(order)
        if limit is not None:
            relation = relation.limit(limit)
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
        table: pa.Table = fetch()
    except duckdb.Error as exc:
        raise SqlError(f"SQL error: {exc}") from exc
    except CatalogError as exc:
        if isinstance(exc.__cause__, duckdb.Error):
            raise SqlError(f"SQL error: {exc.__cause__}") from exc
        raise
    return table


def _pathlike(arg: str) -> bool:
    return "/" in arg or os.sep in arg or "." in arg


def lone_catalog(arg: str, option: str | None) -> Catalog | None:
    """The catalog a lone row argument belongs to, or None when it is an existing row file.

    A row is named by id or alias (``run=r1/best``), so only an existing file is taken for one;
    an argument that looks like a path is said to be missing when there is no catalog either."""
    if option is None and (Path(arg).is_file() or names_a_row_url(arg)):
        return None
    default = catalog_path(None, None)
    if option is None and _pathlike(arg) and isinstance(default, Path) and not default.exists():
        raise CommandLineError(f"{arg}: no such file")
    return open_catalog(None, option)


def get_row(catalog: Catalog, spec: str, *, lone: bool) -> Row:
    """``catalog.get(spec)``; a lone argument that looks like a path is also said not a file."""
    from .. import RowNotFoundError

    try:
        return catalog.get(spec)
    except RowNotFoundError:
        if lone and _pathlike(spec):
            raise CommandLineError(
                f"{spec}: no such file, nor a row of the catalog at {catalog.url}"
            ) from None
        raise


def _row_id(row: Row) -> str | None:
    value = row.extras.get("row_id")
    return value if isinstance(value, str) else None


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
    raw: RawOpt = False,
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
    from ._render import emit_table

    cat = open_catalog(catalog, catalog_opt)
    order = check_column(cat, sort, use="sort by") if sort else "row_id"
    table = select(
        cat,
        ", ".join(quote(c) for c in columns(cat)),
        where=where,
        order=f"{order} {'DESC' if desc else 'ASC'}" + (", row_id" if sort else ""),
        limit=limit,
    )
    total = len(cat)
    caption = f"{table.num_rows} of {total} rows" if table.num_rows != total else f"{total} rows"
    emit_table(table, fmt, caption=caption, raw=raw)


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
    raw: RawOpt = False,
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
    from ._render import emit_table

    cat, text = catalog_and(
        first, second, catalog_opt, what="QUERY", usage='modelrows sql [CATALOG] "SELECT ..."'
    )
    table = query(cat, text)
    if table is not None:
        emit_table(table, fmt, raw=raw, weights_type=weights_type(cat))


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
    raw: RawOpt = False,
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
    import pyarrow as pa

    from ._render import emit_record

    cat = open_catalog(catalog, catalog_opt)
    q = check_column(cat, by, use="rank by")
    # Catalog.best's ranking (nulls and NaN never rank, ties to the earliest row) as one query:
    # the record printed has no weights, so no row file is opened and torch is never imported
    conditions = [f"{q} IS NOT NULL"]
    if pa.types.is_floating(cat.arrow_schema.field(by).type):
        conditions.append(f"NOT isnan({q})")
    table = select(
        cat,
        ", ".join(quote(c) for c in columns(cat)),
        where=where,
        conditions=conditions,
        order=f"{q} {'ASC' if minimize else 'DESC'}, row_id",
        limit=1,
    )
    if table.num_rows == 0:
        fail(
            f"no row of {cat.url} has a value for {by!r}" + (f" where {where}" if where else ""),
            code=1,
        )
    emit_record(table.to_pylist()[0], fmt, raw=raw)


# -- show ----------------------------------------------------------------------------------------


def _chain(qualified: str, read_as: type[Row] | None) -> list[dict[str, Any]]:
    """Each schema of a qualified identifier, and the class declaring it here (if any): the
    class a row is read as and its ancestors are the declared ones."""
    declared: dict[str, str] = {}
    cls = read_as
    while cls is not None and cls.__identifier__:
        declared[cls.__identifier__] = f"{cls.__module__}.{cls.__qualname__}"
        cls = cls.__row_parent__
    return [{"schema": s, "declared_by": declared.get(s)} for s in qualified.split(">")]


def _chain_text(chain: Sequence[Mapping[str, Any]]) -> Text:
    from rich.text import Text

    text = Text()
    for i, link in enumerate(chain):
        if i:
            text.append(" > ", style="dim")
        text.append(link["schema"], style="bold" if link["declared_by"] else "")
    return text


def _weights_facts(weights: Weights) -> dict[str, Any]:
    ties = weights.ties
    return {
        "tensors": [
            {
                "name": e.name,
                "dtype": e.dtype,
                "shape": list(e.shape),
                "nbytes": e.nbytes,
                "tied_to": ties.get(e.name),
            }
            for e in weights.entries
        ],
        "nbytes": weights.nbytes,
        "fingerprint": weights.fingerprint,
        "stored_checksum": weights.stored_checksum,
        "checksum": weights.checksum,
        "intact": weights.verify(),
    }


def _row_facts(row: Row, *, path: Path | str | None, types: Mapping[str, str]) -> dict[str, Any]:
    """Everything ``show`` prints about a row, as plain data."""
    from .. import Weights

    fields = type(row).__row_fields__
    head = {"row_id": _row_id(row), "written_at": row.extras.get("written_at")}
    out_fields = []
    weights = {}
    for name, value in row.to_dict().items():  # Weights stay Weights, nested rows become dicts
        if name in head and name not in fields:
            continue  # shown at the top
        field = fields.get(name)
        if isinstance(value, Weights):
            weights[name] = _weights_facts(value)
            value = {k: weights[name][k] for k in ("fingerprint", "checksum")}
            value = {"tensors": len(weights[name]["tensors"]), **value}
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
        **head,
        "schema": row.declared_schema,
        "chain": _chain(row.declared_schema, type(row)),
        "read_as": type(row).__qualified__,
        "fields": out_fields,
        "weights": weights,
    }


def _print_row(facts: Mapping[str, Any]) -> None:
    from rich import box
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from ._render import grid, table_cell

    head: list[tuple[str, str | Text]] = [
        (key, escape(str(facts[key]))) for key in ("row_id", "path") if facts[key]
    ]
    if facts["written_at"] is not None:
        head.append(("written_at", table_cell(facts["written_at"])))
    head.append(("schema", _chain_text(facts["chain"])))
    undeclared = [c["schema"] for c in facts["chain"] if not c["declared_by"]]
    if undeclared:
        note = (
            f"read as {facts['read_as']}; not declared in this process: "
            f"{', '.join(undeclared)} (declare with --module or ${ENV_IMPORT})"
        )
        head.append(("", Text(note, style="dim")))
    fields = Table(box=box.SIMPLE_HEAD, header_style="bold", title="fields", title_justify="left")
    fields.add_column("name")
    fields.add_column("type", style="cyan")
    fields.add_column("value")
    fields.add_column("declared in", style="dim")
    for f in facts["fields"]:
        w = facts["weights"].get(f["name"])
        if w is not None:
            value = Text(f"{len(w['tensors'])} tensors, {w['nbytes']:,} bytes", style="dim")
        else:
            value = table_cell(f["value"])
        fields.add_row(escape(f["name"]), escape(f["type"]), value, f["declared_in"] or "-")
    parts: list[Any] = [grid(head), fields]
    for n, (name, w) in enumerate(facts["weights"].items()):
        if n:  # a blank line between one weights column's checksum and the next one's tensors
            parts.append(Text(""))
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
        if w["stored_checksum"] is None:
            state = Text(f"{w['checksum']} (none stored)", style="yellow")
        elif w["intact"]:
            state = Text.assemble((w["checksum"], ""), ("  intact", "green"))
        else:
            state = Text(
                f"MISMATCH: stored {w['stored_checksum']}, computed {w['checksum']}",
                style="bold red",
            )
        parts.append(grid([("fingerprint", w["fingerprint"]), ("checksum", state)]))
    stdout().print(Group(*parts))


def _describe_catalog(cat: Catalog) -> dict[str, Any]:
    wt = weights_type(cat)
    return {
        "catalog": cat.url,
        "schema": cat.schema,
        "chain": _chain(cat.schema, cat.row_class),
        "partition_by": list(cat.partition_by),
        "rows": len(cat),
        "columns": {f.name: "weights" if f.type == wt else str(f.type) for f in cat.arrow_schema},
    }


def _print_catalog(facts: Mapping[str, Any]) -> None:
    from rich import box
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    from ._render import grid

    head = grid(
        [
            ("catalog", escape(facts["catalog"])),
            ("schema", _chain_text(facts["chain"])),
            ("partitioned by", ", ".join(facts["partition_by"]) or "-"),
            ("rows", str(facts["rows"])),
        ]
    )
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", title="columns", title_justify="left")
    table.add_column("name")
    table.add_column("arrow type", style="cyan")
    for name, kind in facts["columns"].items():
        table.add_row(escape(name), escape(kind))
    stdout().print(Group(head, table))


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
    from ._render import jsonable

    declare_rows(module or [])
    catalog: Catalog | None = None
    if second is not None:
        catalog, target = catalog_and(
            first, second, catalog_opt, what="ROW_ID", usage="modelrows show CATALOG ROW_ID"
        )
    elif first is None or (catalog_opt is None and names_a_catalog(first)):
        described = _describe_catalog(open_catalog(first, catalog_opt))
        if fmt is ShowFormat.json:
            sys.stdout.write(json.dumps(described, indent=2) + "\n")
        else:
            _print_catalog(described)
        return
    else:
        catalog, target = lone_catalog(first, catalog_opt), first
    if catalog is not None:
        row = get_row(catalog, target, lone=second is None)
        path: Path | str | None = catalog.path_of(_row_id(row) or target)
        types = {f.name: str(f.type) for f in catalog.arrow_schema}
    else:
        from .. import read_model_row

        row, path, types = read_model_row(target), target if is_url(target) else Path(target), {}
    facts = _row_facts(row, path=path, types=types)
    if fmt is ShowFormat.json:
        sys.stdout.write(json.dumps(jsonable(facts), indent=2) + "\n")
    else:
        _print_row(facts)
    if not all(w["intact"] for w in facts["weights"].values()):
        raise typer.Exit(1)


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
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    cat = open_catalog(catalog, catalog_opt)
    err = stderr()
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
    out = stdout()
    if not bad:
        out.print(f"{total} rows verified in {escape(cat.url)}: all intact")
        return
    out.print(f"{len(bad)} of {total} rows are corrupt in {escape(cat.url)}:")
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

    A temporary file goes when the process that wrote it on this machine is gone, or when it
    is older than `--older-than` (the only test for a file another machine is writing, on a
    file system shared between machines). Rows are never touched.

    **Example**

    ```
    $ modelrows vacuum runs/digits
    ```
    """
    from rich.markup import escape

    cat = open_catalog(catalog, catalog_opt)
    removed = cat.vacuum(older_than=older_than)
    out = stdout()
    for path in removed:
        out.print(escape(str(path)), soft_wrap=True)
    out.print(f"removed {len(removed)} temporary file{'s' if len(removed) != 1 else ''}")


# -- plot ------------------------------------------------------------------------------------------


class PlotFormat(str, enum.Enum):
    """The image formats ``plot`` writes."""

    png = "png"
    svg = "svg"
    pdf = "pdf"


def _default_x(names: Sequence[str]) -> str:
    return next((c for c in ("epoch", "step", "global_step") if c in names), "written_at")


def _default_y(cat: Catalog, skip: set[str]) -> str | None:
    """The first float column that is not bookkeeping, a partition key or skipped; else the
    first integer one."""
    import pyarrow as pa

    from .. import ModelV1

    skip = skip | set(cat.partition_by) | set(ModelV1.__row_fields__) | {"row_id", PARENT}
    wt = weights_type(cat)
    fields = [f for f in cat.arrow_schema if f.name not in skip and f.type != wt]
    for test in (pa.types.is_floating, pa.types.is_integer):
        found: str | None = next((f.name for f in fields if test(f.type)), None)
        if found is not None:
            return found
    return None


@app.command("plot")
def plot(
    catalog: CatalogArg = None,
    y: Annotated[
        list[str] | None,
        typer.Option(
            "--y",
            "-y",
            metavar="COL",
            help="A column to plot (repeat for several, one panel each; default: the first "
            "numeric column that is not a partition key).",
            show_default=False,
        ),
    ] = None,
    x: Annotated[
        str | None,
        typer.Option(
            "--x",
            "-x",
            metavar="COL",
            help="The column on the x axis (default: epoch, else step, else written_at).",
            show_default=False,
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="COL",
            help="One line per value of this column (default: the first partition key).",
            show_default=False,
        ),
    ] = None,
    log_y: Annotated[bool, typer.Option("--log-y", help="A logarithmic y axis.")] = False,
    minimize: Annotated[
        bool | None,
        typer.Option(
            "--min/--max",
            help="Whether the best point is the lowest or the highest y (default: the lowest "
            "for names like loss or error, else the highest).",
            show_default=False,
        ),
    ] = None,
    where: WhereOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="The image to write (default: curves.png, or curves.FORMAT).",
            show_default=False,
        ),
    ] = None,
    image_format: Annotated[
        PlotFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="png, svg or pdf (default: from the --output suffix, else png).",
            show_default=False,
        ),
    ] = None,
    title: Annotated[
        str | None, typer.Option("--title", help="The plot's title.", show_default=False)
    ] = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Plot learning curves: a line per run, a panel per y column, the best points marked.

    Each run's best point is marked, the best of all starred and labelled. A run resumed from
    another row continues from that row's point (dashed) when the catalog records the row it
    resumed from in a `parent_row_id` column. Rows without an x or y value are left out; exits
    with status 1 when none is left. Needs matplotlib (`pip install 'modelrows[plot]'`).

    **Examples**

    ```
    $ modelrows plot -o curves.png
    $ modelrows plot runs/cnn --y val_loss --y accuracy --log-y --where "epoch > 0" -o cnn.svg
    ```
    """
    from rich.markup import escape

    from ._plot import Panel, best_points, draw, lines, lower_is_better, short

    try:
        import matplotlib
    except ImportError:
        raise CommandLineError(
            "plot needs matplotlib, which is not installed; install it with: "
            "pip install 'modelrows[plot]'"
        ) from None
    matplotlib.use("Agg")
    kind, path = _image_target(output, image_format)
    cat = open_catalog(catalog, catalog_opt)
    names = columns(cat)
    x = x or _default_x(names)
    group = by if by is not None else (cat.partition_by[0] if cat.partition_by else None)
    notes = []
    if not y:
        found = _default_y(cat, {x} | ({group} if group else set()))
        if found is None:
            raise CommandLineError(
                f"{cat.url} has no numeric column to plot besides {x}; name one with --y "
                f"(columns: {', '.join(names)})"
            )
        y = [found]
        notes.append(f"plotting {found}, the first numeric column; choose with --y")
    qx = check_column(cat, x, use="plot")
    qys = [check_column(cat, c, use="plot") for c in y]
    qg = check_column(cat, group, use="group by") if group else "NULL"
    parent = quote(PARENT) if PARENT in names else "NULL"
    selected = ", ".join(f"{q} AS y{i}" for i, q in enumerate(qys))
    table = select(
        cat,
        f"row_id, CAST({qg} AS VARCHAR) AS g, {qx} AS x, {selected}, "
        f"CAST({parent} AS VARCHAR) AS parent",
        where=where,
        conditions=[f"{qx} IS NOT NULL", " OR ".join(f"{q} IS NOT NULL" for q in qys)],
        order="row_id",
    )
    from ._render import is_number

    for i, column in enumerate(y):
        if not is_number(table.schema.field(f"y{i}").type):
            raise CommandLineError(
                f"cannot plot {column!r}: it is {table.schema.field(f'y{i}').type}, not a number"
            )
    xtype = table.schema.field("x").type
    if not (is_number(xtype) or "timestamp" in str(xtype) or "date" in str(xtype)):
        raise CommandLineError(f"cannot plot against {x!r}: it is {xtype}, not a number or time")
    rows = table.to_pylist()
    panels = []
    for i, column in enumerate(y):
        points = [
            {**r, "g": r["g"] if group else column, "y": r[f"y{i}"]}
            for r in rows
            if r[f"y{i}"] is not None
        ]
        lowest = lower_is_better(column) if minimize is None else minimize
        segments = lines(points)
        best, overall = best_points(segments, minimize=lowest)
        if overall is not None:
            panels.append(Panel(column, segments, lowest, best, overall))
    if not panels:
        fail(
            f"nothing to plot: no row of {cat.url} has both {x} and {' or '.join(y)}"
            + (f" where {where}" if where else ""),
            code=1,
        )
    groups = sorted({g for panel in panels for g in panel.best})
    fig = draw(
        panels,
        groups,
        x=x,
        by=group,
        log_y=log_y,
        title=title or f"{', '.join(y)} by {x}: {cat.url.rstrip('/').rsplit('/', 1)[-1]}",
    )
    try:
        fig.savefig(path, format=kind)
    except (OSError, ValueError) as exc:
        raise CommandLineError(f"cannot write {path}: {exc}") from exc
    for note in notes:
        stderr().print(f"modelrows: {note}", soft_wrap=True)
    n_groups = len({s.group for panel in panels for s in panel.segments})
    n_points = len({p.row_id for panel in panels for s in panel.segments for p in s.points})
    what = "run" if group else "line"
    summary = [
        f"wrote {escape(str(path))}: {n_groups} {what}{'s' if n_groups != 1 else ''}, "
        f"{n_points} point{'s' if n_points != 1 else ''}"
    ]
    for panel in panels:
        top = panel.overall
        where_best = f"{group} {top.group}, " if group else ""
        summary.append(
            f"{'lowest' if panel.minimize else 'highest'} {panel.y} {short(top.y)} "
            f"({where_best}{x} {short(top.x)}, row {top.row_id})"
        )
    stdout().print("; ".join(summary), soft_wrap=True)


def _image_target(output: Path | None, kind: PlotFormat | None) -> tuple[str, Path]:
    """The image format and file: ``--format`` and the ``--output`` suffix must agree."""
    suffix = output.suffix.lower().lstrip(".") if output is not None else ""
    known = {f.value for f in PlotFormat}
    if kind is not None and suffix in known and suffix != kind.value:
        raise CommandLineError(
            f"--format {kind.value} but --output {output} ends in .{suffix}; make them agree"
        )
    if output is not None and kind is None and suffix not in known:
        raise CommandLineError(
            f"--output {output}: cannot tell the image format from its suffix; end it in .png, "
            ".svg or .pdf, or pass --format"
        )
    chosen = kind.value if kind is not None else (suffix or "png")
    return chosen, output if output is not None else Path(f"curves.{chosen}")


# -- export, import ---------------------------------------------------------------------------------


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
    from rich.markup import escape

    from .. import export_safetensors, read_model_row

    usage = "modelrows export [CATALOG] ROW_ID --to FILE"
    if second is None and first is not None:
        cat, row_id = lone_catalog(first, catalog_opt), first
    else:
        cat, row_id = catalog_and(first, second, catalog_opt, what="ROW_ID", usage=usage)
    if cat is None:
        row, where = read_model_row(row_id), row_id
    else:
        row = get_row(cat, row_id, lone=second is None)
        where = f"row {_row_id(row) or row_id}"
    metadata = export_safetensors(row, to, column=column)
    weights = row.to_dict()[metadata["modelrows.column"]]
    stdout().print(
        f"exported {where} to {escape(str(to))}: {len(weights)} tensors, {weights.nbytes:,} bytes"
        + (f" (column {metadata['modelrows.column']})" if column else ""),
        soft_wrap=True,
    )


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _plain_type(arrow_type: pa.DataType) -> bool:
    """Whether ``--set`` can give a value of this type: bool, int, float or str."""
    import pyarrow as pa

    t = pa.types
    return bool(
        t.is_boolean(arrow_type)
        or t.is_integer(arrow_type)
        or t.is_floating(arrow_type)
        or t.is_string(arrow_type)
        or t.is_large_string(arrow_type)
    )


def _parse_sets(
    pairs: Sequence[str], row_class: type[Row], column: str | None = None
) -> dict[str, Any]:
    """``--set key=value`` strings converted to the types of ``row_class``'s fields; the
    weights column ``column`` (default ``weights``) is the one the file fills."""
    fields = row_class.__row_fields__
    schema = row_class.arrow_schema()
    wt = schema.field("weights").type
    settable = [f.name for f in schema if f.type != wt]
    other_weights = [
        f.name
        for f in schema
        if f.type == wt and f.name != (column or "weights") and fields[f.name].required
    ]
    if other_weights:
        raise CommandLineError(
            f"{row_class.__name__} also needs the weights column"
            f"{'s' if len(other_weights) > 1 else ''} {', '.join(other_weights)}, which a "
            "safetensors file of one model's tensors cannot fill and the command line cannot "
            "set; build the row in Python (modelrows.import_safetensors(path, row_class, "
            "values={...}) with the other columns in values) and append it"
        )
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CommandLineError(f"--set {pair!r}: expected NAME=VALUE, e.g. --set epoch=3")
        if key in values:
            raise CommandLineError(f"--set {key} is given twice")
        if key not in settable:
            raise CommandLineError(
                f"--set {key}: {row_class.__name__} has no such field{suggest(key, settable)} "
                f"(fields you can set: {', '.join(settable)})"
            )
        values[key] = _convert(key, text, schema.field(key).type, fields[key].type.signature())
    missing = [n for n in settable if fields[n].required and n not in values]
    unsettable = [n for n in missing if not _plain_type(schema.field(n).type)]
    if unsettable:
        kinds = ", ".join(f"{n} ({fields[n].type.signature()})" for n in unsettable)
        raise CommandLineError(
            f"{row_class.__name__} needs {kinds}, which the command line cannot set (it sets "
            "int, float, str and bool fields); import with the Python API: "
            "modelrows.import_safetensors(path, row_class, values={...})"
        )
    if missing:
        raise CommandLineError(
            f"{row_class.__name__} needs {', '.join(missing)}: pass "
            + " ".join(f"--set {n}=..." for n in missing)
        )
    return values


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(key: str, text: str, arrow_type: pa.DataType, signature: str) -> Any:
    import pyarrow as pa

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
        "and bool fields (use the Python API for the others: modelrows.import_safetensors)"
    )


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
    from rich.markup import escape

    from .. import Weights, import_safetensors

    declare_rows(module or [])
    cat = open_catalog(catalog, catalog_opt)
    row_class = cat.row_class
    if row_class.__qualified__ != cat.schema:
        missing = [c["schema"] for c in _chain(cat.schema, row_class) if not c["declared_by"]]
        raise CommandLineError(
            f"{cat.url} holds {cat.schema} rows, but {', '.join(missing)} is not declared in this "
            f"process; name the module that declares it: --module my_pkg.rows (or set {ENV_IMPORT})"
        )
    values = _parse_sets(sets or [], row_class, column)
    row = import_safetensors(file, row_class, values=values, column=column)
    row_id = cat.append(row)
    (weights,) = [v for v in row.to_dict().values() if isinstance(v, Weights)]  # others unset
    stderr().print(
        f"imported {escape(str(file))} to {escape(cat.url)} as row {row_id}: "
        f"{len(weights)} tensors, {weights.nbytes:,} bytes",
        soft_wrap=True,
    )
    sys.stdout.write(row_id + "\n")


# -- diff ------------------------------------------------------------------------------------------


def _resolve_row(catalog: Catalog | None, spec: str, *, lone: bool) -> tuple[Row, str, str]:
    """A row given by id (anything ``catalog.get`` accepts) or, without a catalog, a row file;
    its id (or path), and a label: the id, partition values and epoch or step."""
    if catalog is None:
        from .. import read_model_row

        return read_model_row(spec), spec, spec
    row = get_row(catalog, spec, lone=lone)
    values = row.to_dict()
    row_id = _row_id(row)
    facts = [f"{k} {values[k]}" for k in catalog.partition_by if values.get(k) is not None]
    facts += [f"{c} {values[c]}" for c in ("epoch", "step") if values.get(c) is not None][:1]
    name = spec if row_id in (None, spec) else f"{spec} = {row_id}"
    return row, row_id or spec, name + (f" ({', '.join(facts)})" if facts else "")


def _fmt_shape(shape: Sequence[int] | None) -> str:
    return (
        "-"
        if shape is None
        else "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    )


def _change(a: Any, b: Any, render: Callable[[Any], str]) -> str:
    """A value, or ``a -> b`` when it changed (one side only: that side's)."""
    if a is None or b is None:
        return render(a if b is None else b)
    return render(a) if a == b else f"{render(a)} -> {render(b)}"


def _floating(d: Any) -> bool:
    return all(t.startswith(("float", "bfloat", "complex")) for t in (d.dtype_a, d.dtype_b))


def _percent(v: float | None) -> str:
    if v is None:
        return "-"
    p = 100 * v
    return f"{p:.3g}%" if p < 1000 else f"{p:,.0f}%"


_STATUS = {"same": "same", "changed": "changed", "shape": "shape", "only_a": "only in A",
           "only_b": "only in B"}  # fmt: skip


@app.command("diff")
def diff(
    first: Annotated[
        str | None,
        typer.Argument(
            metavar="[CATALOG] A",
            help="The row before: a row id (with two arguments, of the default catalog) or a "
            "row file.",
            show_default=False,
        ),
    ] = None,
    second: Annotated[
        str | None,
        typer.Argument(metavar="B", help="The row after.", show_default=False),
    ] = None,
    third: Annotated[
        str | None,
        typer.Argument(metavar="", help="With three arguments: CATALOG A B.", show_default=False),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            "-n",
            min=1,
            metavar="N",
            help="Only the N tensors that changed most (by relative change).",
            show_default=False,
        ),
    ] = None,
    column: ColumnOpt = None,
    fmt: FormatOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Compare two rows' weights tensor by tensor: which layers moved, and how far.

    For each tensor: shape and dtype (and their changes), the L2 distance `||B - A||`, the
    relative change `||B - A|| / ||A||`, the largest absolute difference of one element, and the
    cosine similarity of A and B; tensors only in one row are listed. Computed in bounded memory
    from the mapped row files, a chunk at a time. `--top N` shows the N floating-point tensors that changed most, relative to their size.

    With two arguments they are rows of the default catalog (or of `--catalog`), or row files;
    with three, the catalog then the two rows.

    **Examples**

    ```
    $ modelrows diff 01JD2ZK7T9X3V6QW8M4N5P0R1S 01JD2ZMA0C7J4B5R8T1V6W2X3Y --top 5
    $ modelrows diff runs/digits "$(modelrows best runs/digits -f json | jq -r .row_id)" 01JD2ZMA0C7J4B5R8T1V6W2X3Y -f json
    ```
    """
    import math

    from .. import diff_weights
    from ._app import Format
    from ._render import emit_table, jsonable, resolve_format

    usage = "modelrows diff [CATALOG] A B"
    given = [a for a in (first, second, third) if a is not None]
    if len(given) < 2:
        raise CommandLineError(f"diff needs two rows; usage: {usage}")
    if len(given) == 3:
        catalog, _ = catalog_and(given[0], given[1], catalog_opt, what="A", usage=usage)
        (row_a, id_a, name_a), (row_b, id_b, name_b) = (
            _resolve_row(catalog, spec, lone=False) for spec in given[1:]
        )
    elif Path(given[0]).is_dir():
        raise CommandLineError(f"diff needs two rows after the catalog; usage: {usage}")
    else:
        opened: list[Catalog] = []  # one catalog for both rows

        def catalog_of(spec: str) -> Catalog | None:
            if opened:
                return None if catalog_opt is None and Path(spec).is_file() else opened[0]
            found = lone_catalog(spec, catalog_opt)
            opened.extend([found] if found is not None else [])
            return found

        (row_a, id_a, name_a), (row_b, id_b, name_b) = (
            _resolve_row(catalog_of(spec), spec, lone=True) for spec in given
        )
    diffs = diff_weights(row_a, row_b, column=column)

    # integer and bool tensors (step counters, masks) are listed but neither summed nor ranked
    compared = [d for d in diffs if d.status in ("same", "changed") and _floating(d)]
    d2 = sum((d.l2 or 0.0) ** 2 for d in compared)
    a2 = sum((d.norm_a or 0.0) ** 2 for d in compared)
    counts = {s: sum(d.status == s for d in diffs) for s in _STATUS}
    summary = {
        "tensors": len(diffs),
        **counts,
        "l2": math.sqrt(d2),
        "relative": math.sqrt(d2 / a2) if a2 > 0 else None,
    }
    shown = diffs
    if top is not None:
        moved = [d for d in compared if d.status == "changed"]
        moved.sort(
            key=lambda d: (-(d.relative if d.relative is not None else math.inf), -(d.l2 or 0))
        )
        shown = moved[:top]

    fmt = resolve_format(fmt)
    if fmt is Format.json:
        out = {
            "a": id_a,
            "b": id_b,
            "summary": summary,
            "tensors": [d._asdict() for d in shown],
        }
        sys.stdout.write(json.dumps(jsonable(out), indent=2) + "\n")
        return
    if fmt is Format.csv:
        import pyarrow as pa

        rows = [
            {**d._asdict(), "shape_a": _fmt_shape(d.shape_a), "shape_b": _fmt_shape(d.shape_b)}
            for d in shown
        ]
        names = list(diffs[0]._asdict()) if diffs else ["name"]
        emit_table(pa.Table.from_pylist(rows) if rows else pa.table({n: [] for n in names}), fmt)
        return
    _print_diff(shown, summary, name_a, name_b, top=top)


def _print_diff(
    shown: Sequence[Any], summary: Mapping[str, Any], name_a: str, name_b: str, *, top: int | None
) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from ._render import grid

    def num(v: float | None, spec: str = ".4g") -> Text:
        return Text("-", style="dim") if v is None else Text(format(v, spec))

    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for name, right in [("tensor", False), ("shape", False), ("dtype", False), ("status", False),
                        ("||B-A||", True), ("relative", True), ("max |B-A|", True),
                        ("cosine", True)]:  # fmt: skip
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    for d in shown:
        style = {"same": "dim", "shape": "yellow", "only_a": "yellow", "only_b": "yellow"}.get(
            d.status, ""
        )
        table.add_row(
            escape(d.name),
            _change(d.shape_a, d.shape_b, _fmt_shape),
            _change(d.dtype_a, d.dtype_b, str),
            Text(_STATUS[d.status], style=style),
            num(d.l2),
            Text(_percent(d.relative), style="dim" if d.relative is None else ""),
            num(d.max_abs),
            num(d.cosine, ".6f"),
        )
    counts = ", ".join(f"{summary[s]} {_STATUS[s]}" for s in _STATUS if summary[s])
    overall = summary["relative"]
    head = grid(
        [
            ("A", escape(name_a)),
            ("B", escape(name_b)),
            ("tensors", f"{summary['tensors']}: {counts}"),
            ("overall", f"||B-A|| {summary['l2']:.4g}"
             + ("" if overall is None else f", {_percent(overall)} of ||A|| (floating-point tensors)")),
        ]
    )  # fmt: skip
    console = stdout()
    console.print(head)
    if top is not None and not shown:
        console.print(Text("\nno floating-point tensor changed", style="bold"))
        return
    if top is not None:
        console.print(
            Text(
                f"\nthe {len(shown)} floating-point tensors that changed most (relative change)",
                style="bold",
            )
        )
    console.print(table)
