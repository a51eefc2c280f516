"""The typer application, its shared options, and how a command finds its catalog and fails.

Nothing here imports the library beyond its errors, nor pyarrow, DuckDB, Polars or torch: the
commands import what they need when they run, so ``--help`` and ``--version`` start at once.
"""

from __future__ import annotations

import difflib
import enum
import importlib
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from .._errors import CatalogError, CommandLineError, ModelRowsError
from .._format import ROW_FILE_SUFFIX
from .._location import is_url, local_path

try:
    import typer
    from typer.core import TyperGroup
except ImportError as _missing:  # pragma: no cover - depends on the installation
    sys.stderr.write(
        f"modelrows: error: the command line needs the cli extra ({_missing}); "
        "install it with: pip install 'modelrows[cli]'\n"
    )
    raise SystemExit(2) from None

if TYPE_CHECKING:
    from rich.console import Console

    from .. import Catalog

ENV_CATALOG = "MODELROWS_CATALOG"
ENV_IMPORT = "MODELROWS_IMPORT"
DEFAULT_CATALOG = "catalog"


class Format(str, enum.Enum):
    """How a command prints rows."""

    table = "table"
    csv = "csv"
    json = "json"


class ShowFormat(str, enum.Enum):
    """How ``show`` prints a row."""

    table = "table"
    json = "json"


class SqlError(CatalogError):
    """A query DuckDB refused; its message keeps DuckDB's lines (the caret under the error)."""


class _Commands(TyperGroup):
    """The command group: a ModelRowsError becomes a message on stderr and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SqlError as exc:
            fail(str(exc), code=2, lines=True)
        except ModelRowsError as exc:
            fail(str(exc), code=2)


app = typer.Typer(
    name="modelrows",
    cls=_Commands,
    help=(
        "Look at a catalog of PyTorch model rows: list, query, inspect, compare, verify, plot, "
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
RawOpt = Annotated[
    bool,
    typer.Option(
        "--raw",
        help="Print bytes columns in full (base64) instead of `<bytes: N>` in tables and CSV.",
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
ColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--column",
        metavar="NAME",
        help="The weights column (default: `weights`, or the row's only one).",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

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


# -- consoles and failure -------------------------------------------------------------------------


def stdout() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def fail(message: str, *, code: int, lines: bool = False) -> NoReturn:
    """Print ``modelrows: error: message`` (status 2) or ``modelrows: message`` (status 1) on
    stderr and exit. One line, unless ``lines`` keeps the message's own (SQL errors, whose caret
    points at a column of the line above it)."""
    from rich.text import Text

    if not lines:
        message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    prefix = "modelrows: error: " if code == 2 else "modelrows: "
    stderr().print(
        Text.assemble((prefix, "bold red" if code == 2 else "bold"), message.rstrip("\n")),
        soft_wrap=True,
    )
    raise typer.Exit(code)


def suggest(name: str, choices: Sequence[str]) -> str:
    """``; did you mean 'val_loss'?`` for the nearest of ``choices``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def unknown(what: str, name: str, choices: Sequence[str], *, where: str) -> CommandLineError:
    """The error for a name that is not among ``choices``, with the nearest ones suggested."""
    return CommandLineError(
        f"{what} {name!r}: not a column of {where}{suggest(name, choices)} "
        f"(columns: {', '.join(choices)})"
    )


# -- catalogs and arguments -----------------------------------------------------------------------

_SQL_START = re.compile(
    r"^\s*(SELECT|WITH|FROM|DESCRIBE|SUMMARIZE|PRAGMA|SHOW|EXPLAIN|VALUES|TABLE|PIVOT)\b",
    re.IGNORECASE,
)
_SQL_USAGE = 'modelrows sql [CATALOG] "SELECT ... FROM models"'
_CONDITION = re.compile(r"[=<>]|\b(AND|OR|NOT|IS|IN|LIKE|BETWEEN)\b", re.IGNORECASE)


def _misplaced(text: str) -> str | None:
    """What a catalog argument that names no directory looks like instead, if anything."""
    if _SQL_START.match(text):
        return "a query"
    if _CONDITION.search(text) and os.sep not in text and "/" not in text:
        return "a SQL condition"
    return None


def catalog_path(positional: str | None, option: str | None) -> Path | str:
    """The catalog's directory, or its URL (a string) on object storage (``s3://``)."""
    if positional is not None and option is not None:
        raise CommandLineError(
            f"two catalogs given ({positional!r} and --catalog {option!r}); give one"
        )
    given = positional or option or os.environ.get(ENV_CATALOG) or DEFAULT_CATALOG
    if is_url(given) and not given.lower().startswith("file://"):
        return given  # Catalog.open says what it makes of it
    return local_path(given, what="a catalog")


def open_catalog(positional: str | None, option: str | None, *, usage: str = "") -> Catalog:
    """The catalog named by the argument, the option, ``$MODELROWS_CATALOG`` or the default."""
    root = catalog_path(positional, option)
    if isinstance(root, Path) and not root.exists():
        given = positional or option
        looks = _misplaced(given) if given else None
        if looks == "a query":
            raise CommandLineError(
                f"{given!r} looks like a query, not a catalog directory; "
                + (f"the catalog comes first: {usage}" if usage else "run it with: " + _SQL_USAGE)
            )
        if looks == "a SQL condition":
            raise CommandLineError(
                f"{given!r} looks like a SQL condition, not a catalog directory; "
                "give it with --where"
            )
        where = (
            "the argument"
            if given
            else f"${ENV_CATALOG}"
            if os.environ.get(ENV_CATALOG)
            else "the default"
        )
        raise CatalogError(
            f"no catalog at {root} ({where}); pass the catalog directory, use --catalog DIR, "
            f"or set {ENV_CATALOG}"
        )
    from .. import Catalog

    pyarrow_without_pandas()
    return Catalog.open(root)


class _NoPandas:
    """An import hook that says pandas is not installed (used for one moment, see below)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def pyarrow_without_pandas() -> None:
    """Tell pyarrow, in this command's process, that pandas is absent.

    pyarrow imports pandas (when installed) on its first conversion of Python values, to check
    for pandas objects: a second or more of start-up, for a command that never makes or takes a
    pandas object. pyarrow asks once and remembers the answer, so the hook is in place only for
    that question; `import pandas` still works afterwards (in a module given with --import)."""
    if "pandas" in sys.modules:
        return  # loaded already (pyarrow asked already, or a --import module): nothing to save
    hook = _NoPandas()
    sys.meta_path.insert(0, hook)
    try:
        import pyarrow as pa

        pa.lib._pandas_api.have_pandas  # noqa: B018  (asks now, with the hook in place)
    finally:
        sys.meta_path.remove(hook)


def catalog_and(
    first: str | None,
    second: str | None,
    option: str | None,
    *,
    what: str,
    usage: str,
) -> tuple[Catalog, str]:
    """Resolve ``[CATALOG] VALUE``: one argument is the value, two are catalog then value."""
    if second is not None and option is not None:
        raise CommandLineError(
            f"two catalogs given ({first!r} and --catalog {option!r}); usage: {usage}"
        )
    if first is None:
        raise CommandLineError(f"missing {what}; usage: {usage}")
    if second is not None and not Path(first).exists() and _misplaced(first) == "a query":
        command = usage.split()[1]
        raise CommandLineError(
            f"{first!r} looks like a query, not a catalog directory; the catalog comes first: "
            f"modelrows {command} {shlex.quote(second)} {shlex.quote(first)}"
        )
    if second is None:
        return open_catalog(None, option, usage=usage), first
    return open_catalog(first, None, usage=usage), second


def names_a_row_url(arg: str) -> bool:
    """Whether a lone argument is a row file on object storage (``s3://.../x.model.arrow``)."""
    return is_url(arg) and not arg.lower().startswith("file://") and arg.endswith(ROW_FILE_SUFFIX)


def names_a_catalog(arg: str) -> bool:
    """Whether a lone argument is a catalog: a directory, or a URL of anything but a row file
    (``s3://bucket/ckpts``, not ``s3://bucket/best.model.arrow``)."""
    if is_url(arg) and not arg.lower().startswith("file://"):
        return not arg.endswith(ROW_FILE_SUFFIX)
    try:
        return local_path(arg, what="a catalog").is_dir()
    except ModelRowsError:
        return False


def declare_rows(modules: Sequence[str] = ()) -> None:
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


def main() -> None:
    """The ``modelrows`` command (in this process: raises SystemExit, as typer does)."""
    try:
        app(prog_name="modelrows")
    except BrokenPipeError:  # e.g. `modelrows ls | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


def script() -> None:
    """The ``modelrows`` console script: :func:`main`, then leave without the interpreter's
    teardown. The command's work is done and its output flushed; what is left is destroying the
    C++ thread pools of the libraries it loaded (pyarrow, DuckDB), which aborted a process now and
    then ("terminate called without an active exception") after a command had succeeded."""
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code or 0)
