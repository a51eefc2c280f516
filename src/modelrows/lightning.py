"""PyTorch Lightning checkpoints as catalog rows, and resuming from them, without pickle.

``pip install 'modelrows[lightning]'``. Two pieces:

:class:`CatalogCheckpoint`
    a checkpoint callback with :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s familiar
    options (``monitor``, ``mode``, ``save_top_k``, ``save_last``, ``every_n_epochs``,
    ``every_n_train_steps``, ``save_on_train_epoch_end``) that appends one row per checkpoint to
    a catalog: the model's weights, and Lightning's whole checkpoint (loops, callbacks' states,
    optimizers, LR schedulers, precision plugin, hyper-parameters) plus the global RNG states as
    tensors and strict JSON. ``save_top_k`` and ``save_last`` become the catalog's retention and
    the run's ``best``/``last`` aliases (:class:`~modelrows.Checkpointer` semantics).
:class:`CatalogCheckpointIO`
    the ``CheckpointIO`` plugin that reads such a row back into Lightning's checkpoint dict, so
    that ``trainer.fit(model, ckpt_path="run=r1/last")`` resumes from a row id or an alias. The
    callback installs it when the trainer has Lightning's default one; pass it yourself
    (``Trainer(plugins=[CatalogCheckpointIO(catalog)])``) to load rows without the callback.

>>> import tempfile
>>> from modelrows import Catalog
>>> class RunV1(LightningCheckpointV1, schema="doc.lightning-run", version=1):
...     run: str
...     val_loss: float | None = None
>>> catalog = Catalog.create(tempfile.mkdtemp() + "/runs", RunV1, partition_by=["run"])
>>> callback = CatalogCheckpoint(catalog, monitor="val_loss", save_top_k=3, save_last=True,
...                              columns={"run": "r1"})
>>> callback.aliases
{'best': 'run=r1/best', 'last': 'run=r1/last'}

Then ``Trainer(callbacks=[callback]).fit(model)``, and later, in any process,
``Trainer(callbacks=[callback]).fit(model, ckpt_path="run=r1/last")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from ._catalog import Catalog
from ._catalog._aliases import is_row_id, name_problem
from ._errors import CatalogError, ModelRowsError
from ._rowfile import PathLike
from ._schema import Row
from ._training import (
    Checkpointer,
    TrainingStateError,
    TrainingStateV1,
    read_training_state,
    restore_training_state,
    training_state,
)
from ._weights import fetch_weights

if TYPE_CHECKING:  # pragma: no cover
    from lightning.fabric.utilities.types import _PATH

__all__ = [
    "CatalogCheckpoint",
    "CatalogCheckpointIO",
    "LightningCheckpointV1",
    "checkpoint_columns",
    "lightning_checkpoint",
]

_RESERVED = frozenset(
    {"row_id", "written_at", "weights", "architecture_version", "training_tensors",
     "training_state"}
)  # fmt: skip


class LightningCheckpointV1(TrainingStateV1, schema="modelrows.lightning", version=1):
    """``modelrows.lightning@1``: a training-state row with Lightning's epoch and global step.

    Extend it with the run's columns and the metrics to query and rank by (``val_loss`` ...):
    :class:`CatalogCheckpoint` fills every column named like a logged metric (``val/loss``
    fills ``val_loss``)."""

    epoch: int
    global_step: int


# -- Lightning's checkpoint dict <-> a row ------------------------------------------------------------


def checkpoint_columns(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Lightning's checkpoint dict as row columns: ``weights`` (its ``state_dict``), and
    ``training_tensors``/``training_state`` (everything else, and the global RNG states).

    Anything that is not data (an object among the hyper-parameters, a callback state holding a
    function ...) raises :class:`~modelrows.TrainingStateError` naming its place in the dict,
    e.g. ``checkpoint.hyper_parameters.net``."""
    rest = dict(checkpoint)
    state_dict = rest.pop("state_dict", None)
    if not isinstance(state_dict, Mapping):
        raise TrainingStateError(
            "cannot store Lightning's checkpoint: it has no 'state_dict' (the model's weights)"
        )
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TrainingStateError(
                f"cannot store Lightning's checkpoint: checkpoint.state_dict.{name} is a "
                f"{type(value).__qualname__}, not a tensor (a module's get_extra_state()?); "
                "weights are tensors"
            )
    state = training_state(rng=True, extra=rest, _extra_path="checkpoint")
    return {"weights": fetch_weights(state_dict), **state}


def lightning_checkpoint(row: Row) -> dict[str, Any]:
    """The checkpoint dict Lightning saved in ``row``: what ``torch.load`` of a ``.ckpt`` file
    gives, read without pickle (``state_dict`` holds zero-copy views of the row's weights)."""
    extra = read_training_state(row)["extra"]
    if not isinstance(extra, dict) or "pytorch-lightning_version" not in extra:
        where = getattr(row, "row_id", None) or type(row).__name__
        raise TrainingStateError(
            f"row {where} holds no Lightning checkpoint (it was not written by "
            "modelrows.lightning.CatalogCheckpoint); restore it with Checkpointer.resume or "
            "load_weights instead"
        )
    extra["state_dict"] = row.weights.state_dict()
    return extra


class _Save:
    """What :class:`CatalogCheckpoint` passes as ``storage_options`` to have a row written."""

    def __init__(self, callback: CatalogCheckpoint, alias: str | None = None) -> None:
        self.callback = callback
        self.alias = alias
        self.row_id: str | None = None


class CatalogCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O over a catalog: ``load_checkpoint(path)`` reads the row a row
    id or alias names (``trainer.fit(model, ckpt_path="run=r1/last")``); saves go through
    :class:`CatalogCheckpoint`, which writes the rows.

    ``trainer.save_checkpoint(name)`` with a :class:`CatalogCheckpoint` attached writes a row and
    points the alias ``name`` to it. Nothing here reads or writes a pickle."""

    def __init__(self, catalog: Catalog | PathLike | str) -> None:
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)
        self.loaded: Row | None = None
        """The row the last ``load_checkpoint`` read."""
        self._callback: CatalogCheckpoint | None = None

    def __repr__(self) -> str:
        return f"CatalogCheckpointIO({self.catalog.url!r})"

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` as a row (see the class docstring)."""
        request = storage_options
        if not isinstance(request, _Save):
            name = str(path)
            if self._callback is None or name_problem(name) is not None or storage_options:
                raise CatalogError(
                    f"CatalogCheckpointIO was asked to write the checkpoint file {name!r}; it "
                    "writes catalog rows through modelrows.lightning.CatalogCheckpoint. Use "
                    "CatalogCheckpoint instead of ModelCheckpoint (or Trainer(enable_checkpointing="
                    "False)); with it attached, trainer.save_checkpoint('<alias name>') writes a "
                    "row and points the alias to it"
                )
            request = _Save(self._callback, alias=name)
        request.row_id = request.callback._write(checkpoint)
        if request.alias is not None:
            self.catalog.alias(request.alias, request.row_id)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's checkpoint dict from the row ``path`` names (a row id or an alias).

        ``map_location`` and ``weights_only`` have nothing to do: tensors are read on the CPU
        (Lightning moves them where the model and optimizers are), and no code is ever loaded."""
        row = self.catalog.get(str(path))
        self.loaded = row
        return lightning_checkpoint(row)

    def remove_checkpoint(self, path: _PATH) -> None:
        """Delete the row ``path`` names: a row id (never an alias, whose row may be kept)."""
        if not is_row_id(str(path)):
            raise CatalogError(
                f"CatalogCheckpointIO removes rows by id, not {str(path)!r}; rows are removed "
                "by the catalog's retention (CatalogCheckpoint's save_top_k)"
            )
        self.catalog.delete([str(path)])


# -- the callback ---------------------------------------------------------------------------------------


def _column(name: str, fields: Mapping[str, Any]) -> str | None:
    """The column a logged metric fills: its name, or with ``/``, ``.`` and ``-`` as ``_``."""
    for candidate in (name, name.replace("/", "_").replace(".", "_").replace("-", "_")):
        if candidate in fields and candidate not in _RESERVED:
            return candidate
    return None


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else None
    return value


class CatalogCheckpoint(Checkpoint):
    """Checkpoint a Lightning run into a catalog, one row per checkpoint (see the module
    docstring).

    - ``catalog``: a catalog of a row class extending :class:`LightningCheckpointV1` (or any
      :class:`~modelrows.TrainingStateV1`) with the run's columns and the metrics to keep;
    - ``monitor``, ``mode``: the logged metric that ranks checkpoints (its column:
      ``val/loss`` -> ``val_loss``), lowest best with ``"min"``; None keeps the latest;
    - ``save_top_k``: keep the best k rows of the run (-1: every row; 0: none but ``last``);
    - ``save_last``: also save at every save point and keep the latest row, the run's
      ``last`` alias;
    - ``every_n_epochs``, ``every_n_train_steps``, ``save_on_train_epoch_end``: when to save,
      as ModelCheckpoint's;
    - ``columns``: written into every row, naming the run (``{"run": "r1"}``); ``per``: the
      columns that tell runs apart (the catalog's partition columns by default).

    The run's best row is the alias ``<run>/best`` (``run=r1/best``), also
    :attr:`best_model_path`, so ``trainer.test(ckpt_path="best")`` loads it.
    """

    def __init__(
        self,
        catalog: Catalog | PathLike | str,
        *,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        columns: Mapping[str, Any] | None = None,
        per: Sequence[str] | None = None,
    ) -> None:
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise CatalogError(f"save_top_k is -1 (keep all), 0 or more; not {save_top_k!r}")
        for name, value in (("every_n_epochs", every_n_epochs),
                            ("every_n_train_steps", every_n_train_steps)):  # fmt: skip
            if value is not None and (isinstance(value, bool) or value < 0):
                raise CatalogError(f"{name} is a whole number >= 0, not {value!r}")
        self.monitor = monitor
        self.mode: Literal["min", "max"] = mode
        self.save_top_k = save_top_k
        self.save_last = bool(save_last)
        self._every_n_train_steps = every_n_train_steps or 0
        if every_n_epochs is None:
            every_n_epochs = 0 if self._every_n_train_steps else 1
        self._every_n_epochs = every_n_epochs
        self._save_on_train_epoch_end = save_on_train_epoch_end
        row_class = self.catalog.row_class
        fields = getattr(row_class, "__row_fields__", {})
        column = None if monitor is None else _column(monitor, fields)
        if monitor is not None and column is None:
            raise CatalogError(
                f"cannot monitor {monitor!r}: {self.catalog.schema} has no column for it "
                f"(columns: {', '.join(fields)}); add `{monitor.replace('/', '_')}: float | None "
                "= None` to the row class"
            )
        self._checkpointer = Checkpointer(
            self.catalog,
            monitor=column,
            mode=mode,
            keep_top_k=None if save_top_k == -1 else save_top_k,
            keep_last=1 if self.save_last else 0,
            per=per,
            columns=columns,
        )
        self._checkpointer._move_last = self.save_last
        self.best_model_path = ""
        """The run's best row (its id), for ``ckpt_path="best"``; "" until there is one."""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        """The row this callback wrote last."""
        self._last_global_step_saved = -1
        self._deferred = False
        self._trainer: pl.Trainer | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
        )

    @property
    def aliases(self) -> dict[str, str]:
        """The names of the run's ``best`` and ``last`` aliases."""
        return self._checkpointer.aliases

    # -- hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Make sure the trainer reads and writes checkpoints through the catalog."""
        self._trainer = trainer
        strategy = trainer.strategy
        io = strategy.checkpoint_io
        if type(io) is TorchCheckpointIO:  # Lightning's default: read and write the catalog
            io = CatalogCheckpointIO(self.catalog)
            strategy.checkpoint_io = io
        if not isinstance(io, CatalogCheckpointIO):
            raise CatalogError(
                f"the trainer's checkpoint I/O is a {type(io).__qualname__}; CatalogCheckpoint "
                "writes through modelrows.lightning.CatalogCheckpointIO: pass "
                "plugins=[CatalogCheckpointIO(catalog)] to the Trainer instead"
            )
        if io.catalog.url != self.catalog.url:
            raise CatalogError(
                f"the trainer's CatalogCheckpointIO reads {io.catalog.url}, this CatalogCheckpoint "
                f"writes {self.catalog.url}; give both the same catalog"
            )
        io._callback = self

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Restore the global RNG states saved with the row, when fitting resumes from one.

        Now, before the trainer sets up the training data: its first iterator (and the batches
        it prefetches) must draw the random numbers the uninterrupted run drew."""
        io = trainer.strategy.checkpoint_io
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and isinstance(io, CatalogCheckpointIO) and io.loaded is not None:
            restore_training_state(io.loaded, rng=True)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        n = self._every_n_train_steps
        if n < 1 or trainer.global_step % n != 0 or self._skip(trainer):
            return
        if self.monitor is not None and self.monitor not in trainer.callback_metrics:
            self._deferred = True  # not logged yet (a validation metric): save after validation
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            not self._skip(trainer)
            and self._on_train_epoch_end(trainer)
            and self._epoch_due(trainer)
        ):
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer) or self._on_train_epoch_end(trainer):
            return
        if self._deferred or self._epoch_due(trainer):
            self._deferred = False
            self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "last_model_path": self.last_model_path,
            "catalog": self.catalog.url,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_model_score = state_dict.get("best_model_score")
        self.best_model_path = state_dict.get("best_model_path", "")
        self.last_model_path = state_dict.get("last_model_path", "")

    # -- saving -----------------------------------------------------------------------------------------
    def _skip(self, trainer: pl.Trainer) -> bool:
        return (
            bool(getattr(trainer, "fast_dev_run", False))  # set by Trainer.__init__
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        n = self._every_n_epochs
        return n >= 1 and (trainer.current_epoch + 1) % n == 0

    def _on_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        """Whether to save at the end of the training epoch (no validation then), or after
        validation, as ModelCheckpoint decides."""
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if getattr(trainer, "_val_check_time_interval", None) is not None:
            return False
        if trainer.check_val_every_n_epoch != 1:
            return False
        batches = trainer.num_val_batches
        if (sum(batches) if isinstance(batches, list) else batches) == 0:
            return True
        return bool(trainer.val_check_interval == 1.0)

    def _metrics(self, trainer: pl.Trainer) -> dict[str, Any]:
        return {name: _scalar(value) for name, value in deepcopy(trainer.callback_metrics).items()}

    def _worth_saving(self, trainer: pl.Trainer) -> bool:
        """Whether this save point writes a row: for ``last``, or as one of the best k."""
        if self.save_last or self.save_top_k == -1:
            return True
        if self.save_top_k == 0:
            return False
        cp = self._checkpointer
        if self.monitor is None or cp.monitor is None or cp.scope is None:
            return True
        value = self._metrics(trainer).get(self.monitor)
        where = cp._where()
        clause = f"WHERE {where}" if where else ""
        column = '"' + cp.monitor.replace('"', '""') + '"'
        values = [
            v for (v,) in self.catalog.sql(f"SELECT {column} FROM models {clause}").fetchall()
        ]
        as_good = sum(1 for v in values if not cp._better(value, v))
        return as_good < self.save_top_k

    def _save(self, trainer: pl.Trainer) -> None:
        if self.monitor is not None and self.monitor not in trainer.callback_metrics:
            raise CatalogError(
                f"CatalogCheckpoint(monitor={self.monitor!r}) found no such logged metric (logged: "
                f"{', '.join(trainer.callback_metrics) or 'none'}); log it with "
                f"self.log({self.monitor!r}, value) in the LightningModule"
            )
        if not self._worth_saving(trainer):
            self._last_global_step_saved = trainer.global_step
            return
        request = _Save(self)
        trainer.save_checkpoint(
            "modelrows-catalog-row", weights_only=False, storage_options=request
        )
        self._last_global_step_saved = trainer.global_step
        if request.row_id is None:  # another rank wrote it (distributed): nothing to record here
            return
        self.last_model_path = request.row_id
        cp = self._checkpointer
        if cp.monitor is not None:
            try:
                entry = self.catalog._entry(cp.aliases["best"])
            except ModelRowsError:
                return
            self.best_model_path = str(entry["row_id"])
            score = entry.get(cp.monitor)
            self.best_model_score = None if score is None else float(score)
        else:
            self.best_model_path = request.row_id

    def _write(self, checkpoint: dict[str, Any]) -> str:
        """Append ``checkpoint`` as a row of the run (retention and aliases as the
        :class:`~modelrows.Checkpointer` does); return its id."""
        trainer = self._trainer
        if trainer is None:
            raise CatalogError("CatalogCheckpoint writes rows once attached to a Trainer")
        cp = self._checkpointer
        fields = cp.row_class.__row_fields__
        values: dict[str, Any] = {}
        if "epoch" in fields:
            values["epoch"] = int(checkpoint.get("epoch", trainer.current_epoch))
        if "global_step" in fields:
            values["global_step"] = int(checkpoint.get("global_step", trainer.global_step))
        for name, value in self._metrics(trainer).items():
            column = _column(name, fields)
            if column is None or column in values or column in cp.columns:
                continue
            values[column] = value
        values, scope = cp._values(values, action="CatalogCheckpoint")
        row = cp.row_class(**checkpoint_columns(checkpoint), **values)
        return cp._commit(row, scope)
