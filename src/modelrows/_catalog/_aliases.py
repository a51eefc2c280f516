"""Aliases: named, movable pointers to rows (``production``, ``run=r1/best`` ...).

Layout under the catalog root (docs/format.md, "Aliases")::

    _aliases/<quoted name>/<sequence>.json     one version of the alias, never changed

Each set (or removal) of an alias creates the next version of it, ``sequence`` = the highest
present + 1, with create-if-absent: of two setters racing for the same sequence, one creates it
and the other tries the next one, so every set lands in the history exactly once and the version
with the highest sequence is the alias's target (last writer wins). A set with ``expected=...``
is a compare-and-set: it fails if the alias's target is not the expected one when its version is
created. A removal writes a version whose ``row_id`` is null (a tombstone).

Nothing is renamed, overwritten or locked: the protocol uses the store's create-if-absent, read,
list-a-prefix and delete only, as the index does, and runs unchanged on object storage. A process
killed in the middle of a set leaves the alias as it was (the version object appears whole or
not at all). Versions older than the latest are history; they may be compacted away later
(nothing reads them but :func:`history`).

The quoted name is the name URL-quoted with only ``=`` kept (``run=r1/best`` ->
``run=r1%2Fbest``), one path segment however many ``/`` the name holds; the sequence is written
with 20 digits so that keys sort as numbers do.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .._errors import CatalogError, RowNotFoundError
from ._store import Store

if TYPE_CHECKING:  # pragma: no cover
    from . import Catalog

__all__ = [
    "ALIASES",
    "NO_CHECK",
    "Alias",
    "AliasConflict",
    "check_name",
    "current",
    "current_targets",
    "history",
    "is_row_id",
    "remove",
    "resolve",
    "set_alias",
]

ALIASES = "_aliases/"
ALIAS_FORMAT = "modelrows.alias"
ALIAS_FORMAT_VERSION = 1
MAX_NAME = 200
"""Characters of an alias name."""
_MAX_QUOTED = 240  # bytes of the name's quoted form: one file name (255 at most on most disks)
_MAX_VERSION_BYTES = 64 << 10
_SEQUENCE_DIGITS = 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=/%-]*")
_CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
_VERSION = re.compile(r"([0-9]{20})\.json")
_RETRIES = 1000  # sets of one alias lost to other setters before giving up


class AliasConflict(CatalogError):
    """A compare-and-set of an alias found it pointing elsewhere than expected."""

    def __init__(self, message: str, *, current: Alias | None) -> None:
        super().__init__(message)
        self.current = current


class _NoCheck:
    """The type of :data:`NO_CHECK`."""

    def __repr__(self) -> str:
        return "NO_CHECK"


NO_CHECK = _NoCheck()
"""``expected=NO_CHECK`` (the default): set the alias whatever it points to now."""


class Alias(NamedTuple):
    """One version of an alias: ``name`` pointed to ``row_id`` (None: removed) from ``set_at``
    on; ``sequence`` counts the alias's versions from 1."""

    name: str
    row_id: str | None
    set_at: dt.datetime
    sequence: int


# -- names ------------------------------------------------------------------------------------------


def is_row_id(text: str) -> bool:
    """Whether ``text`` has the shape of a row id (26 Crockford base-32 characters)."""
    return len(text) == 26 and set(text.upper()) <= _CROCKFORD


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be an alias name, or None if it can."""
    if not isinstance(name, str):
        return f"an alias name is a string, not {type(name).__name__}"
    if not name:
        return "an alias name is not empty"
    if len(name) > MAX_NAME:
        return f"alias name {name[:40]!r}... is {len(name)} characters long, more than {MAX_NAME}"
    if not _NAME.fullmatch(name):
        return (
            f"alias name {name!r} is not valid: it starts with a letter or digit and holds only "
            "letters, digits and . _ = / % -"
        )
    if is_row_id(name):
        return (
            f"alias name {name!r} looks like a row id (26 Crockford base-32 characters); "
            "choose a name no row id can have"
        )
    if len(_quote(name).encode()) > _MAX_QUOTED:
        return f"alias name {name!r} is too long once quoted ({len(_quote(name))} bytes)"
    return None


def check_name(name: object) -> str:
    """``name`` if it is a valid alias name, else CatalogError saying why."""
    problem = name_problem(name)
    if problem is not None:
        raise CatalogError(problem)
    assert isinstance(name, str)
    return name


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="=")


def _prefix(name: str) -> str:
    return f"{ALIASES}{_quote(name)}/"


def _key(name: str, sequence: int) -> str:
    return f"{_prefix(name)}{sequence:0{_SEQUENCE_DIGITS}d}.json"


# -- reading versions -------------------------------------------------------------------------------

_cache: dict[tuple[str, str], Alias] = {}  # versions never change: cached by store and key
_cache_lock = threading.Lock()


def _parse(raw: bytes, *, name: str, sequence: int, where: str) -> Alias:
    def bad(problem: str) -> CatalogError:
        return CatalogError(
            f"{where} is not a valid alias version: {problem}. It is not what catalog.alias "
            "wrote; remove it (the alias then points where its previous version does)"
        )

    if len(raw) > _MAX_VERSION_BYTES:
        raise bad(f"{len(raw)} bytes, more than any alias version holds")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != ALIAS_FORMAT:
        raise bad(f"'format' is not {ALIAS_FORMAT!r}")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"'format_version' is {version!r}")
    if version > ALIAS_FORMAT_VERSION:
        raise CatalogError(
            f"{where}: alias format version {version}; this modelrows reads up to "
            f"{ALIAS_FORMAT_VERSION}. Upgrade modelrows."
        )
    if doc.get("name") != name:
        raise bad(f"it names alias {doc.get('name')!r}, but its key says {name!r}")
    if doc.get("sequence") != sequence:
        raise bad(f"its sequence is {doc.get('sequence')!r}, but its key says {sequence}")
    row_id = doc.get("row_id")
    if row_id is not None and not (isinstance(row_id, str) and is_row_id(row_id)):
        raise bad(f"'row_id' is {row_id!r}, neither a row id nor null")
    try:
        set_at = dt.datetime.fromisoformat(str(doc.get("set_at")).replace("Z", "+00:00"))
    except ValueError:
        raise bad(f"'set_at' is {doc.get('set_at')!r}, not an ISO 8601 time") from None
    if set_at.tzinfo is None:
        raise bad("'set_at' has no time zone")
    return Alias(name, row_id, set_at.astimezone(dt.timezone.utc), sequence)


def _read(store: Store, name: str, sequence: int) -> Alias | None:
    """The version ``sequence`` of ``name``; None if it is gone (compacted away)."""
    key = _key(name, sequence)
    with _cache_lock:
        hit = _cache.get((store.url, key))
    if hit is not None:
        return hit
    try:
        raw = store.get(key)
    except FileNotFoundError:
        return None
    version = _parse(raw, name=name, sequence=sequence, where=f"{store.url}/{key}")
    with _cache_lock:
        if len(_cache) > 65536:
            _cache.clear()
        _cache[(store.url, key)] = version
    return version


def _listed(store: Store, prefix: str) -> dict[str, list[int]]:
    """The sequences present of every alias under ``prefix``, ascending, by name. Objects that
    are not versions (a dead setter's temporary file) are ignored."""
    found: dict[str, list[int]] = {}
    for key, _ in store.list(prefix):
        rest = key[len(ALIASES) :]
        quoted, _, last = rest.partition("/")
        match = _VERSION.fullmatch(last)
        if match is None:
            continue
        name = urllib.parse.unquote(quoted)
        if name_problem(name) is not None or _quote(name) != quoted:
            continue
        found.setdefault(name, []).append(int(match.group(1)))
    for sequences in found.values():
        sequences.sort()
    return found


def _latest(store: Store, name: str, sequences: list[int]) -> Alias | None:
    for sequence in reversed(sequences):  # a version compacted away meanwhile: the one before
        version = _read(store, name, sequence)
        if version is not None:
            return version
    return None


def current(store: Store, name: str) -> Alias | None:
    """The latest version of alias ``name`` (a tombstone if it was removed), or None if the
    alias was never set."""
    check_name(name)
    sequences = _listed(store, _prefix(name)).get(name, [])
    return _latest(store, name, sequences)


def current_targets(store: Store) -> dict[str, Alias]:
    """Every alias that points to a row now, by name (removed ones are left out)."""
    out = {}
    for name, sequences in sorted(_listed(store, ALIASES).items()):
        version = _latest(store, name, sequences)
        if version is not None and version.row_id is not None:
            out[name] = version
    return out


def history(store: Store, name: str | None = None) -> list[Alias]:
    """Every version of alias ``name`` (of every alias when None), by name then sequence."""
    prefix = ALIASES if name is None else _prefix(check_name(name))
    out = []
    for alias_name, sequences in sorted(_listed(store, prefix).items()):
        if name is not None and alias_name != name:
            continue
        for sequence in sequences:
            version = _read(store, alias_name, sequence)
            if version is not None:
                out.append(version)
    return out


# -- writing versions -------------------------------------------------------------------------------


def _now() -> str:
    return (
        dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def _write(
    store: Store,
    name: str,
    row_id: str | None,
    *,
    expected: str | _NoCheck | None,
    fsync: bool,
    check_expected: Callable[[Alias | None], None],
) -> Alias:
    """Create the next version of ``name`` pointing to ``row_id`` (None: a tombstone)."""
    latest = current(store, name)
    check_expected(latest)
    sequence = 1 if latest is None else latest.sequence + 1
    for _ in range(_RETRIES):
        doc = {
            "format": ALIAS_FORMAT,
            "format_version": ALIAS_FORMAT_VERSION,
            "name": name,
            "sequence": sequence,
            "row_id": row_id,
            "set_at": _now(),
        }
        raw = json.dumps(doc, indent=1).encode() + b"\n"
        if store.put_if_absent(_key(name, sequence), raw, fsync=fsync):
            return _parse(raw, name=name, sequence=sequence, where=store.url)
        # another setter created this version first
        if isinstance(expected, _NoCheck):
            sequence += 1  # last writer wins: take the next free version
            continue
        latest = current(store, name)
        check_expected(latest)  # a compare-and-set fails once the target is not the expected
        sequence = 1 if latest is None else latest.sequence + 1
    raise CatalogError(
        f"{store.url}: could not set alias {name!r}: {_RETRIES} other sets of it won the race; "
        "are that many processes setting it at once?"
    )


def _expectation(
    name: str, expected: str | _NoCheck | None, where: str
) -> Callable[[Alias | None], None]:
    def check(latest: Alias | None) -> None:
        if isinstance(expected, _NoCheck):
            return
        target = None if latest is None else latest.row_id
        if target != expected:
            now = "is not set" if target is None else f"points to row {target}"
            wanted = "not to be set" if expected is None else f"to point to row {expected}"
            raise AliasConflict(
                f"alias {name!r} of {where} {now}; it was expected {wanted}, so it was left "
                "as it is (another process moved it?). Read it again and retry",
                current=latest,
            )

    return check


def set_alias(
    catalog: Catalog,
    name: str,
    row: str,
    *,
    expected: str | _NoCheck | None = NO_CHECK,
    fsync: bool = True,
) -> Alias:
    """Point alias ``name`` to the live row ``row`` (a row id, or another alias, resolved now)."""
    check_name(name)
    if not isinstance(expected, (str, _NoCheck)) and expected is not None:
        raise CatalogError(f"expected is a row id or None, not {type(expected).__name__}")
    if not isinstance(row, str):
        raise CatalogError(f"an alias points to a row id (a string), not {type(row).__name__}")
    try:
        row_id = str(catalog._entry(row)["row_id"])
    except RowNotFoundError:
        raise RowNotFoundError(
            f"cannot point alias {name!r} to {row!r}: no such row in the catalog at "
            f"{catalog.url}; an alias points to an existing row"
        ) from None
    return _write(
        catalog.store,
        name,
        row_id,
        expected=expected,
        fsync=fsync,
        check_expected=_expectation(name, expected, catalog.url),
    )


def remove(
    catalog: Catalog,
    name: str,
    *,
    expected: str | _NoCheck | None = NO_CHECK,
    fsync: bool = True,
) -> Alias | None:
    """Remove alias ``name`` (write a tombstone version); None if it was not set."""
    check_name(name)
    latest = current(catalog.store, name)
    if latest is None or latest.row_id is None:
        _expectation(name, expected, catalog.url)(latest)
        return None
    return _write(
        catalog.store,
        name,
        None,
        expected=expected,
        fsync=fsync,
        check_expected=_expectation(name, expected, catalog.url),
    )


def resolve(catalog: Catalog, name: str) -> str | None:
    """The row id alias ``name`` points to; None if ``name`` is not an alias (cannot be one, or
    was never set). Raises RowNotFoundError when it was removed."""
    if name_problem(name) is not None:
        return None
    latest = current(catalog.store, name)
    if latest is None:
        return None
    if latest.row_id is None:
        known = sorted(current_targets(catalog.store))
        listed = ", ".join(map(repr, known[:8])) + (" ..." if len(known) > 8 else "")
        raise RowNotFoundError(
            f"no row {name!r} in the catalog at {catalog.url}, and the alias {name!r} was removed "
            f"(aliases: {listed or 'none'}); set it again with catalog.alias({name!r}, row_id)"
        )
    return latest.row_id


def dangling(name: str, row_id: str, url: str) -> RowNotFoundError:
    """The error for an alias whose row is gone."""
    return RowNotFoundError(
        f"alias {name!r} points to row {row_id}, which is not in the catalog at {url} (it was "
        f"deleted); point it to another row with catalog.alias({name!r}, row_id)"
    )
