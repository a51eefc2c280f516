"""The ``modelrows retain`` and ``modelrows alias`` commands, as functions of plain arguments.

Each takes an opened :class:`~modelrows.Catalog` and the command's options, does the work through
the public API, and returns a :class:`CommandResult`: a table to print (``None``: nothing) and
one line saying what happened. Rendering (table, CSV, JSON) and opening the catalog are the
application's; errors are :class:`~modelrows.ModelRowsError` subclasses with their message ready
for the user (CommandLineError for a bad combination of options).

Registration in the typer application (``cli/_app.py`` has ``app``, the option types and the
helpers)::

    @app.command("retain")
    def retain(
        catalog: CatalogArg = None,
        catalog_opt: CatalogOpt = None,
        by: Annotated[str | None, typer.Option("--by", help="The metric column to rank by.")] = None,
        lowest: Annotated[bool, typer.Option("--min", help="The lowest value is best.")] = False,
        keep_top_k: Annotated[int | None, typer.Option("--keep-top-k", min=0)] = None,
        keep_last: Annotated[int | None, typer.Option("--keep-last", min=0)] = None,
        per: Annotated[list[str] | None, typer.Option("--per", help="Group by (repeat).")] = None,
        everything: Annotated[bool, typer.Option("--all-one-group")] = False,
        where: WhereOpt = None,
        dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
        fmt: FormatOpt = None,
    ) -> None:
        result = retain_command(open_catalog(catalog, catalog_opt), by=by,
                                mode="min" if lowest else "max", keep_top_k=keep_top_k,
                                keep_last=keep_last, per=[] if everything else per,
                                where=where, dry_run=dry_run)
        emit(result, fmt)

    @app.command("alias")
    def alias(
        name: Annotated[str | None, typer.Argument()] = None,
        row: Annotated[str | None, typer.Argument(help="A row id or another alias.")] = None,
        catalog_opt: CatalogOpt = None,
        remove: Annotated[bool, typer.Option("--remove")] = False,
        history: Annotated[bool, typer.Option("--history")] = False,
        expected: Annotated[str | None, typer.Option("--expected")] = None,
        fmt: FormatOpt = None,
    ) -> None:
        result = alias_command(open_catalog(None, catalog_opt), name, row, remove=remove,
                               history=history, expected=expected)
        emit(result, fmt)

where ``emit`` prints ``result.table`` (if any) as the other commands print tables, then
``result.message`` on stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from .._errors import CommandLineError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .. import Catalog

__all__ = ["CommandResult", "alias_command", "retain_command"]


class CommandResult(NamedTuple):
    """What a command shows: a table (None: none) and a line saying what happened."""

    table: pa.Table | None
    message: str


def retain_command(
    catalog: Catalog,
    *,
    by: str | None = None,
    mode: Literal["max", "min"] = "max",
    keep_top_k: int | None = None,
    keep_last: int | None = None,
    per: Sequence[str] | None = None,
    where: str | None = None,
    dry_run: bool = False,
) -> CommandResult:
    """``modelrows retain``: apply :meth:`Catalog.retain`; the table lists the rows deleted (with
    ``dry_run``: that would be) with their group columns, ``by`` and ``written_at``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    before = catalog.index_table()
    deleted = catalog.retain(
        by=by,
        mode=mode,
        keep_top_k=keep_top_k,
        keep_last=keep_last,
        per=per,
        where=where,
        dry_run=dry_run,
    )
    groups = list(catalog.partition_by if per is None else per)
    columns = list(dict.fromkeys(["row_id", *groups, *([by] if by else []), "written_at"]))
    table = before.filter(pc.is_in(before.column("row_id"), value_set=pa.array(deleted)))
    table = table.select(columns).sort_by("row_id")
    kept = []
    if keep_top_k is not None:
        per_what = f" per {', '.join(groups)}" if groups else ""
        kept.append(f"the {keep_top_k} {'lowest' if mode == 'min' else 'highest'} {by}{per_what}")
    if keep_last is not None:
        kept.append(f"the latest {keep_last}")
    kept.append("every aliased row")
    n = len(deleted)
    rows = f"{n} row{'' if n == 1 else 's'}"
    if dry_run:
        message = (
            f"would delete {rows} of {catalog.url} (keeping {', '.join(kept)}); nothing was "
            "deleted: run it again without --dry-run to delete them"
        )
    else:
        message = f"deleted {rows} of {catalog.url} (kept {', '.join(kept)}); {len(catalog)} remain"
    return CommandResult(table, message)


def _aliases_table(aliases: Sequence[object]) -> pa.Table:
    import pyarrow as pa

    rows = [a._asdict() for a in aliases]  # type: ignore[attr-defined]
    schema = pa.schema(
        [
            ("name", pa.string()),
            ("row_id", pa.string()),
            ("set_at", pa.timestamp("us", tz="UTC")),
            ("sequence", pa.int64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def alias_command(
    catalog: Catalog,
    name: str | None = None,
    row: str | None = None,
    *,
    remove: bool = False,
    history: bool = False,
    expected: str | None = None,
) -> CommandResult:
    """``modelrows alias``: without a name, list the aliases; with a name, show where it points
    (``history``: every version); with a name and a row (a row id or another alias), point it
    there; ``remove`` removes it. ``expected`` makes a set or removal a compare-and-set: a row id,
    or ``none`` for "only if the alias is not set"."""
    from .._catalog._aliases import NO_CHECK

    if name is None:
        if row is not None or remove or history or expected is not None:
            raise CommandLineError("give the alias name first: modelrows alias NAME [ROW]")
        aliases = catalog.aliases()
        return CommandResult(_aliases_table(aliases), f"{len(aliases)} aliases in {catalog.url}")
    check = NO_CHECK if expected is None else (None if expected.lower() == "none" else expected)
    if remove:
        if row is not None or history:
            raise CommandLineError(
                "--remove takes the alias name alone: modelrows alias NAME --remove"
            )
        removed = catalog.unalias(name, expected=check)
        if removed is None:
            return CommandResult(None, f"alias {name!r} was not set; nothing to remove")
        return CommandResult(
            _aliases_table([removed]), f"removed alias {name!r} (version {removed.sequence})"
        )
    if row is not None:
        if history:
            raise CommandLineError("--history shows an alias; it does not set one")
        version = catalog.alias(name, row, expected=check)
        return CommandResult(
            _aliases_table([version]),
            f"alias {name!r} -> row {version.row_id} (version {version.sequence})",
        )
    if expected is not None:
        raise CommandLineError("--expected goes with a row to set, or with --remove")
    if history:
        versions = catalog.alias_history(name)
        return CommandResult(
            _aliases_table(versions), f"{len(versions)} versions of alias {name!r}"
        )
    catalog.path_of(name)  # raises, naming the alias, if it is not set or its row is gone
    current = [a for a in catalog.aliases() if a.name == name]
    return CommandResult(_aliases_table(current), f"alias {name!r} -> row {current[0].row_id}")
