"""Retention: keep the best rows by a metric, the latest ones and every aliased one; delete the
rest in one atomic delete.

:func:`retain` reads one snapshot of the index, ranks the rows ``where`` selects within each group
(``per``: the partition columns by default), and keeps, in each group, the ``keep_top_k`` best by
``by`` (highest with ``mode="max"``; rows whose value is null or NaN rank after all others, ties
go to the earlier row) and the ``keep_last`` latest (by row id, which orders rows by the time they were
written); every row an alias points to is kept too. The others are deleted by one
``catalog.delete`` call: one index entry, so a crash deletes all of them or none.

Under concurrency (docs/training.md, "Retention and aliases under concurrency"): rows appended
after the snapshot are not considered (the next retention considers them); several retentions
running at once each delete a subset of what they would alone, so a row among the ``keep_top_k``
best of every row ever written is never deleted. The aliases are read again just before the
delete: an alias set to a row after that second read and before the delete entry is published
(a window of one object write) can point to a deleted row; ``catalog.get`` then says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from .._errors import CatalogError
from . import _aliases

if TYPE_CHECKING:  # pragma: no cover
    from . import Catalog

__all__ = ["retain"]

Mode = Literal["max", "min"]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CatalogError(f"{what} is a whole number >= 0 or None, not {value!r}")
    return value


def _column(catalog: Catalog, name: object, *, use: str) -> str:
    columns = [f.name for f in catalog.arrow_schema if f.name not in catalog._weights]
    if not isinstance(name, str) or name not in columns:
        raise CatalogError(
            f"cannot {use} {name!r}: not a column of {catalog.schema} "
            f"(columns: {', '.join(columns)})"
        )
    t = catalog.arrow_schema.field(name).type
    if isinstance(t, pa.StructType | pa.ListType | pa.LargeListType | pa.MapType):
        raise CatalogError(f"cannot {use} {name!r}: it is a {t}, not a number, string or date")
    return name


def _rankable(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def plan(
    catalog: Catalog,
    *,
    by: str | None,
    mode: Mode,
    keep_top_k: int | None,
    per: Sequence[str] | None,
    keep_last: int | None,
    where: str | None,
) -> tuple[list[str], set[str]]:
    """(the ids ``where`` selects, the ids kept by rank or recency), from one index snapshot."""
    if mode not in ("max", "min"):
        raise CatalogError(f"mode is 'max' or 'min', not {mode!r}")
    top = _count(keep_top_k, "keep_top_k")
    last = _count(keep_last, "keep_last")
    if top is None and last is None:
        raise CatalogError(
            "retain keeps the keep_top_k best rows, the keep_last latest, or both: give at least "
            "one (to delete rows outright, use catalog.delete)"
        )
    if top is not None:
        if by is None:
            raise CatalogError("keep_top_k ranks rows by a column: give by='<column>'")
        _column(catalog, by, use="rank by")
    elif by is not None:
        _column(catalog, by, use="rank by")
    if isinstance(per, str):
        raise CatalogError(f"per takes a list of column names, e.g. per=[{per!r}]")
    groups = list(catalog.partition_by if per is None else per)
    for key in groups:
        _column(catalog, key, use="group by")
    wanted = ["row_id", *groups] + ([by] if by is not None else [])
    rel = catalog._where(catalog.sql("SELECT * FROM models"), where)
    rows = rel.project(", ".join(_quote(c) for c in dict.fromkeys(wanted))).fetchall()
    names = list(dict.fromkeys(wanted))
    at = {c: i for i, c in enumerate(names)}
    grouped: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for row in sorted(rows, key=lambda r: str(r[0])):  # by row id: earliest first
        grouped.setdefault(tuple(row[at[k]] for k in groups), []).append(row)
    keep: set[str] = set()
    for members in grouped.values():
        if last:
            keep.update(str(r[0]) for r in members[-last:])
        if top and by is not None:
            ranked = [r for r in members if _rankable(r[at[by]])]
            ranked.sort(key=lambda r: r[at[by]], reverse=mode == "max")  # stable: ties earliest
            ranked += [r for r in members if not _rankable(r[at[by]])]  # null and NaN: last
            keep.update(str(r[0]) for r in ranked[:top])
    return [str(r[0]) for r in rows], keep


def retain(
    catalog: Catalog,
    *,
    by: str | None,
    mode: Mode = "max",
    keep_top_k: int | None = None,
    per: Sequence[str] | None = None,
    keep_last: int | None = None,
    where: str | None = None,
    dry_run: bool = False,
    fsync: bool = True,
) -> list[str]:
    """Delete what retention does not keep (see the module docstring); return the ids deleted
    (with ``dry_run=True``: that would be, and nothing is deleted), sorted."""
    selected, keep = plan(
        catalog, by=by, mode=mode, keep_top_k=keep_top_k, per=per, keep_last=keep_last, where=where
    )
    aliased = {a.row_id for a in _aliases.current_targets(catalog.store).values()}
    victims = set(selected) - keep - aliased
    if dry_run or not victims:
        return sorted(victims)
    # the aliases again, just before the delete: one set meanwhile protects its row
    victims -= {a.row_id for a in _aliases.current_targets(catalog.store).values()}
    if not victims:
        return []
    listed = ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(victims))
    # rows another retention deleted meanwhile are not live any more: where= skips them
    return catalog.delete(where=f"row_id IN ({listed})", fsync=fsync)
