"""The commands that change a catalog's index: ``delete``, ``compact``, ``reindex``.

Like every command, they import the library when they run and use its public API only.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._app import CatalogArg, CatalogOpt, WhereOpt, app, fail, open_catalog, stderr, stdout


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
