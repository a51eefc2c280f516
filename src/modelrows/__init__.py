"""modelrows: PyTorch model weights as rows of Apache Arrow tables.

Only numbers are stored (parameters and persistent buffers), never code or pickles. Rows follow
versioned, extensible schemas after Legolas.jl; a catalog keeps one row per checkpoint in a
partitioned Arrow dataset that Polars and DuckDB query.
"""

from .catalog import Catalog
from .errors import (
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
from .legolasflux import LegolasFluxModelV1
from .rowfile import read_model_row, write_model_row
from .schema import FORMAT_VERSION, ModelV1, Row
from .weights import LoadReport, Weights, fetch_weights, load_weights

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "Catalog",
    "CatalogError",
    "CommandLineError",
    "CorruptRowError",
    "CorruptRowWarning",
    "LegolasFluxModelV1",
    "LoadReport",
    "ModelRowsError",
    "ModelV1",
    "NotArrowFileError",
    "Row",
    "RowCountError",
    "RowFileError",
    "RowNotFoundError",
    "RowValidationError",
    "SchemaError",
    "SchemaMismatchError",
    "StorageError",
    "UnknownSchemaError",
    "UnsupportedFeatureError",
    "Weights",
    "WeightsError",
    "WeightsMismatchError",
    "__version__",
    "fetch_weights",
    "load_weights",
    "read_model_row",
    "write_model_row",
]
