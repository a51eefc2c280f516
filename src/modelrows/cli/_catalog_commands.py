"""The commands that change a catalog's index: ``delete``, ``compact``, ``reindex``, and
``retain`` and ``alias`` (whose work is in ``_training_commands``).

Like every command, they import the library when they run and use its public API only.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._app import (
    CatalogArg,
    CatalogOpt,
    Format,
    FormatOpt,
    WhereOpt,
    app,
    fail,
    open_catalog,
    stderr,
    stdout,
)
from ._training_commands import CommandResult, alias_command, retain_command


@app.command("delete")
def delete(
    catalog: CatalogArg = None,
    row_ids: Annotated[
        list[str] | None,
        typer.Option("--id", metavar="ROW_ID", help="A row to delete (repeat for several)."),
    ] = None,
    where: WhereOpt = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Delete without asking (needed when not on a terminal)."),
    ] = False,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Delete rows by id (`--id`, repeatable) or by a SQL condition (`--where`).

    One atomic step: from then on no query sees them; their files are removed afterwards.
    Asks for confirmation on a terminal; `--yes` skips the question (and is required when
    standard input is not a terminal).

    **Example**

    ```
    $ modelrows delete runs/digits --where "run = 'smoke-test'" --yes
    ```
    """
    if bool(row_ids) == (where is not None):
        fail("delete takes --id ROW_ID (one or more) or --where CONDITION, one of the two", code=2)
    cat = open_catalog(catalog, catalog_opt)
    if where is not None:
        import duckdb

        try:
            relation = cat.sql("SELECT * FROM models").filter(where).order("row_id")
            chosen = [r[0] for r in relation.project("row_id").fetchall()]
        except duckdb.Error as exc:
            fail(f"bad --where condition {where!r}: {exc}", code=2, lines=True)
    else:
        chosen = sorted(set(row_ids or []))
    if not chosen:
        stdout().print("no row matches; nothing deleted")
        return
    if not yes:
        if not sys.stdin.isatty():
            fail(
                f"refusing to delete {len(chosen)} row{'s' if len(chosen) != 1 else ''} without "
                "confirmation: pass --yes",
                code=2,
            )
        shown = ", ".join(chosen[:5]) + (" ..." if len(chosen) > 5 else "")
        if not typer.confirm(f"delete {len(chosen)} row(s) of {cat.url} ({shown})?"):
            stderr().print("nothing deleted")
            raise typer.Exit(1)
    deleted = cat.delete(chosen)
    stdout().print(f"deleted {len(deleted)} row{'s' if len(deleted) != 1 else ''}")


@app.command("compact")
def compact(catalog: CatalogArg = None, catalog_opt: CatalogOpt = None) -> None:
    """Fold the index's recent entries into one Parquet file and drop deleted rows from it.

    Safe while others append, query or delete. Appends compact now and then by themselves.

    **Example**

    ```
    $ modelrows compact runs/digits
    ```
    """
    cat = open_catalog(catalog, catalog_opt)
    changed = cat.compact()
    files = cat.index_files()
    stdout().print(
        f"{'compacted' if changed else 'already compact'}: {len(cat)} rows in "
        f"{len(files)} index file{'s' if len(files) != 1 else ''}"
    )


@app.command("reindex")
def reindex(catalog: CatalogArg = None, catalog_opt: CatalogOpt = None) -> None:
    """Rebuild the catalog's index from its row files (the truth), with a progress bar.

    Use it when the index was lost or damaged, or after row files were removed or copied by
    hand. Deletes the index still records are kept.

    **Example**

    ```
    $ modelrows reindex runs/digits
    ```
    """
    cat = open_catalog(catalog, catalog_opt)
    n = cat.reindex(progress=None)
    stdout().print(f"indexed {n} row{'s' if n != 1 else ''}")


def _emit(result: CommandResult, fmt: Format | None) -> None:
    """Print a retain/alias result: its table (if any) as tables are printed, its line on stderr."""
    from ._render import emit_table

    if result.table is not None:
        emit_table(result.table, fmt)
    stderr().print(result.message, soft_wrap=True)


@app.command("retain")
def retain(
    catalog: CatalogArg = None,
    by: Annotated[str | None, typer.Option("--by", help="The metric column to rank by.")] = None,
    lowest: Annotated[bool, typer.Option("--min", help="The lowest value is best.")] = False,
    keep_top_k: Annotated[int | None, typer.Option("--keep-top-k", min=0)] = None,
    keep_last: Annotated[int | None, typer.Option("--keep-last", min=0)] = None,
    per: Annotated[list[str] | None, typer.Option("--per", help="Group by (repeat).")] = None,
    everything: Annotated[
        bool, typer.Option("--all-one-group", help="Rank all rows as one group.")
    ] = False,
    where: WhereOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go; delete nothing.")
    ] = False,
    fmt: FormatOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """Keep the best k rows per group by a metric, the latest n, and every aliased row; delete
    the rest (one atomic delete).

    **Example**

    ```
    $ modelrows retain runs/digits --by val_loss --min --keep-top-k 3 --keep-last 1 --dry-run
    ```
    """
    result = retain_command(
        open_catalog(catalog, catalog_opt),
        by=by,
        mode="min" if lowest else "max",
        keep_top_k=keep_top_k,
        keep_last=keep_last,
        per=[] if everything else per,
        where=where,
        dry_run=dry_run,
    )
    _emit(result, fmt)


@app.command("alias")
def alias(
    name: Annotated[str | None, typer.Argument(help="The alias (e.g. production).")] = None,
    row: Annotated[str | None, typer.Argument(help="A row id or another alias.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias.")] = False,
    history: Annotated[bool, typer.Option("--history", help="Every version of it.")] = False,
    expected: Annotated[
        str | None, typer.Option("--expected", help="Move it only if it points here now.")
    ] = None,
    fmt: FormatOpt = None,
    catalog_opt: CatalogOpt = None,
) -> None:
    """List the aliases, show one (`--history`: every version), set one to a row, or remove it.

    The catalog comes from `--catalog`, `$MODELROWS_CATALOG` or `./catalog`.

    **Example**

    ```
    $ modelrows alias production 01JD3ZK6Q8V2W4T7N9B5C1X0AA --catalog runs/digits
    ```
    """
    result = alias_command(
        open_catalog(None, catalog_opt),
        name,
        row,
        remove=remove,
        history=history,
        expected=expected,
    )
    _emit(result, fmt)
