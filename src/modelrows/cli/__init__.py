"""The ``modelrows`` command: look at a catalog of model rows from a terminal.

::

    modelrows ls                                  the rows, without weights
    modelrows sql "SELECT ... FROM models"        DuckDB SQL over the catalog
    modelrows best --by accuracy                  the best row
    modelrows show [PATH|CATALOG] [ROW_ID]        one row: schema, fields, tensors, checksum
    modelrows verify                              re-check every row's bytes
    modelrows diff ROW_A ROW_B --top 5            which tensors moved between two rows, how far
    modelrows plot --y val_loss --log-y           learning curves, a line per run
    modelrows export ROW_ID --to m.safetensors    weights out to safetensors ...
    modelrows import m.safetensors --set run=a    ... and back in as a new row
    modelrows vacuum                              remove temporary files of crashed writers

CATALOG defaults to ``$MODELROWS_CATALOG``, else ``catalog/`` in the current directory.

Exit status: 0 on success; 1 when the command ran and found corrupt rows (``verify``, ``show``)
or nothing (``best``, ``plot``); 2 when it could not do what was asked (no catalog, bad SQL,
unknown row id, bad arguments), reported as one line on stderr without a traceback.

Only the console script loads this package. It needs the ``cli`` extra (typer, rich,
safetensors); ``plot`` needs the ``plot`` extra (matplotlib), imported only when it runs.

Layout: ``_app`` (the typer app, shared options, catalog arguments, errors), ``_commands`` (the
commands, which import the library when they run, so ``--help`` loads neither torch, pyarrow,
Polars nor DuckDB), ``_render`` (tables, CSV, JSON) and ``_plot`` (matplotlib). Commands use the
public API of ``modelrows`` only.
"""

from __future__ import annotations

from .._errors import CommandLineError
from . import _catalog_commands, _commands  # noqa: F401  (registers the commands)
from ._app import app, main, script

__all__ = ["CommandLineError", "app", "main", "script"]
