"""Every error modelrows raises, under one base class.

The tree::

    ModelRowsError
    ├── SchemaError            a row class declaration is invalid, or conflicts with the registry
    ├── RowValidationError     a value does not fit its field, or a row-level check failed (ValueError)
    ├── SchemaMismatchError    an Arrow schema does not satisfy a row class (lists every violation)
    ├── UnknownSchemaError     a schema identifier is missing, malformed or declared nowhere
    ├── WeightsError           a tensor cannot be stored (sparse, meta, unsupported dtype ...)
    │   └── WeightsMismatchError   load_weights found missing, unexpected, mis-shaped or mis-typed tensors
    ├── RowFileError           a row file cannot be read
    │   ├── NotArrowFileError      not an Arrow IPC file at all (magic, footer, truncation)
    │   ├── RowCountError          an Arrow file that does not hold exactly one row
    │   ├── UnsupportedFeatureError  an Arrow feature row files never use (compression,
    │   │                            dictionaries, extension types), refused before reading
    │   └── CorruptRowError        an Arrow file whose row is inconsistent (bounds, checksum, layout)
    ├── StorageError           the filesystem failed during a write; nothing partial is visible
    ├── CatalogError           a catalog is missing, mismatched, or refuses an append
    │   └── RowNotFoundError       no row with that id (KeyError)
    └── CommandLineError       the `modelrows` command was given arguments it cannot use

    CorruptRowWarning          a query skipped a corrupt row file (on_corrupt="skip"); a UserWarning

Every message says what was wrong, where (file, column, tensor) and what to do.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "CommandLineError",
    "CorruptRowError",
    "CorruptRowWarning",
    "ModelRowsError",
    "NotArrowFileError",
    "RowCountError",
    "RowFileError",
    "RowNotFoundError",
    "RowValidationError",
    "SchemaError",
    "SchemaMismatchError",
    "StorageError",
    "UnknownSchemaError",
    "UnsupportedFeatureError",
    "WeightsError",
    "WeightsMismatchError",
]


class ModelRowsError(Exception):
    """The base of every error raised by modelrows."""


class SchemaError(ModelRowsError, TypeError):
    """A row class declaration is invalid, or conflicts with an existing declaration."""


class RowValidationError(ModelRowsError, ValueError):
    """A value does not fit its field, or a row-level check failed."""


class SchemaMismatchError(ModelRowsError):
    """An Arrow schema does not satisfy a row class.

    ``problems`` lists every violation found, not only the first.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems or [])


class UnknownSchemaError(ModelRowsError):
    """A schema identifier is missing, malformed, or names no declared row class."""


class WeightsError(ModelRowsError):
    """A tensor cannot be stored or restored."""


class WeightsMismatchError(WeightsError):
    """``load_weights`` found tensors that do not fit the model.

    The lists name every problem found; the model was left unchanged.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing: list[str] = list(missing or [])
        self.unexpected: list[str] = list(unexpected or [])
        self.mismatched: list[str] = list(mismatched or [])


class RowFileError(ModelRowsError):
    """A row file cannot be read. ``path`` names it."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class NotArrowFileError(RowFileError):
    """The file is not an Arrow IPC file (wrong magic, truncated, unreadable footer)."""


class RowCountError(RowFileError):
    """The Arrow file does not hold exactly one row."""


class UnsupportedFeatureError(RowFileError):
    """The file uses an Arrow feature row files never use (compressed bodies, dictionaries,
    extension types); it is refused before pyarrow reads it, so nothing it declares is allocated
    or deserialized."""


class CorruptRowError(RowFileError):
    """The file is Arrow, but its row is inconsistent: bounds, dtype, layout or checksum."""


class StorageError(ModelRowsError):
    """The filesystem failed while writing; the destination holds the whole old state or the new one.

    ``path`` is the file being written and ``step`` the step that failed (``"write"``,
    ``"fsync"``, ``"link"`` ...). ``visible`` tells which state the destination holds: False, the
    old one (nothing was written there); True, the new file is in place but may not be durable.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        step: str | None = None,
        visible: bool = False,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.step = step
        self.visible = visible


class CatalogError(ModelRowsError):
    """A catalog is missing, does not match, or refuses an append."""


class RowNotFoundError(CatalogError, KeyError):
    """No row with that id in the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CommandLineError(ModelRowsError):
    """A command was given arguments it cannot use; the command exits with status 2."""


class CorruptRowWarning(UserWarning):
    """A query skipped a row file it could not read, because the caller passed
    ``on_corrupt="skip"``; the message names the file and says why."""


for _name in __all__:  # users import these from modelrows: say so in reprs and tracebacks
    globals()[_name].__module__ = "modelrows"
