"""modelrows: PyTorch model weights as rows of Apache Arrow tables.

Only numbers are stored (parameters and persistent buffers), never code or pickles. Rows follow
versioned, extensible schemas after Legolas.jl; a catalog keeps one row per checkpoint in a
partitioned Arrow dataset that Polars and DuckDB query.

This module is the one public surface. Its names are imported on first use (PEP 562), so
``import modelrows`` loads neither torch, Polars, DuckDB nor ``pyarrow.dataset``: a command-line
tool or a query that never touches a tensor does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    CatalogError,
    CommandLineError,
    CorruptRowError,
    CorruptRowWarning,
    ModelRowsError,
    NotArrowFileError,
    RowCountError,
    RowFileError,
    RowNotFoundError,
    RowValidationError,
    SchemaError,
    SchemaMismatchError,
    StorageError,
    UnknownSchemaError,
    UnsupportedFeatureError,
    WeightsError,
    WeightsMismatchError,
)

if TYPE_CHECKING:  # pragma: no cover - what the lazy names below resolve to, for type checkers
    from ._blob import TensorEntry
    from ._catalog import Catalog, CorruptRow, OnCorrupt
    from ._catalog._aliases import Alias
    from ._diff import TensorDiff, diff_weights
    from ._format import FORMAT_VERSION
    from ._legolasflux import LegolasFluxModelV1
    from ._rowfile import read_model_row, write_model_row
    from ._safetensors import export_safetensors, import_safetensors
    from ._schema import ModelV1, Row
    from ._training import (
        Checkpointer,
        TrainingStateError,
        TrainingStateV1,
        read_training_state,
        restore_training_state,
        training_state,
    )
    from ._version import __version__
    from ._weights import LoadReport, Weights, fetch_weights, load_weights

# public name -> private module that defines it, imported on first access
_LAZY = {
    "Catalog": "._catalog",
    "CorruptRow": "._catalog",
    "OnCorrupt": "._catalog",
    "Alias": "._catalog._aliases",
    "TensorDiff": "._diff",
    "diff_weights": "._diff",
    "LegolasFluxModelV1": "._legolasflux",
    "read_model_row": "._rowfile",
    "write_model_row": "._rowfile",
    "export_safetensors": "._safetensors",
    "import_safetensors": "._safetensors",
    "FORMAT_VERSION": "._format",
    "ModelV1": "._schema",
    "Row": "._schema",
    "Checkpointer": "._training",
    "TrainingStateError": "._training",
    "TrainingStateV1": "._training",
    "read_training_state": "._training",
    "restore_training_state": "._training",
    "training_state": "._training",
    "LoadReport": "._weights",
    "TensorEntry": "._blob",
    "Weights": "._weights",
    "fetch_weights": "._weights",
    "load_weights": "._weights",
    "__version__": "._version",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelrows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    if isinstance(value, type) and value.__module__.startswith("modelrows._"):
        value.__module__ = "modelrows"  # where users import it from, as repr and docs show
    globals()[name] = value  # the next access is a plain global
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "FORMAT_VERSION",
    "Alias",
    "Catalog",
    "CatalogError",
    "Checkpointer",
    "CommandLineError",
    "CorruptRow",
    "CorruptRowError",
    "CorruptRowWarning",
    "LegolasFluxModelV1",
    "LoadReport",
    "ModelRowsError",
    "ModelV1",
    "NotArrowFileError",
    "OnCorrupt",
    "Row",
    "RowCountError",
    "RowFileError",
    "RowNotFoundError",
    "RowValidationError",
    "SchemaError",
    "SchemaMismatchError",
    "StorageError",
    "TensorDiff",
    "TensorEntry",
    "TrainingStateError",
    "TrainingStateV1",
    "UnknownSchemaError",
    "UnsupportedFeatureError",
    "Weights",
    "WeightsError",
    "WeightsMismatchError",
    "__version__",
    "diff_weights",
    "export_safetensors",
    "fetch_weights",
    "import_safetensors",
    "load_weights",
    "read_model_row",
    "read_training_state",
    "restore_training_state",
    "training_state",
    "write_model_row",
]
