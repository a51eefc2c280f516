"""PyTorch Lightning: CatalogCheckpoint writes a real training run's checkpoints as rows, and
trainer.fit(ckpt_path=<alias>) resumes from one bit for bit, loops and callbacks included."""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402

from modelrows import Catalog, CatalogError, TrainingStateError, read_training_state  # noqa: E402
from modelrows.lightning import (  # noqa: E402
    CatalogCheckpoint,
    CatalogCheckpointIO,
    LightningCheckpointV1,
    lightning_checkpoint,
)

EPOCHS, STOP_AFTER = 4, 2


class LitRowV1(LightningCheckpointV1, schema="test.lightning.run", version=1):
    run: str
    val_loss: float | None = None
    train_loss: float | None = None


class Net(pl.LightningModule):
    """Dropout and BatchNorm, Adam with a step schedule; logs every training loss."""

    def __init__(self, lr: float = 0.02, extra: Any = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(16, 2))  # fmt: skip
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 4, generator=g), torch.randint(0, 2, (96,), generator=g)
    # shuffled from the global torch RNG: exact resume needs the RNG states restored
    return (DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True),
            DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32))  # fmt: skip


def trainer(callback: CatalogCheckpoint, epochs: int, **kwargs: Any) -> Any:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, EarlyStopping("val_loss", patience=100)],
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
        yield


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.create(tmp_path / "lightning", LitRowV1, partition_by=["run"])


def fit(catalog: Catalog, run: str, epochs: int, *, seed: int = 0, ckpt_path: str | None = None
        ) -> tuple[Net, Any, CatalogCheckpoint]:  # fmt: skip
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = Net()
    callback = CatalogCheckpoint(catalog, monitor="val_loss", save_top_k=2, save_last=True,
                                 columns={"run": run})  # fmt: skip
    t = trainer(callback, epochs)
    train, val = loaders()
    t.fit(model, train, val, ckpt_path=ckpt_path)
    return model, t, callback


def test_resume_from_a_catalog_row_matches_an_uninterrupted_run(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.save/torch.load (pickle) was called")

    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    straight, straight_trainer, straight_cb = fit(catalog, "straight", EPOCHS)
    fit(catalog, "resumed", STOP_AFTER)  # the interrupted run ...
    # ... resumed by a fresh trainer and model, from another seed: every state from the row
    resumed, resumed_trainer, resumed_cb = fit(
        catalog, "resumed", EPOCHS, seed=1234, ckpt_path="run=resumed/last"
    )
    steps = len(straight.losses) // EPOCHS
    assert resumed.losses == straight.losses[STOP_AFTER * steps :]  # every loss, exactly
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    opt_a = straight_trainer.optimizers[0].state_dict()
    opt_b = resumed_trainer.optimizers[0].state_dict()
    for key in opt_a["state"]:
        for name, value in opt_a["state"][key].items():
            assert torch.equal(opt_b["state"][key][name], value), (key, name)
    assert resumed_trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == (
        straight_trainer.lr_scheduler_configs[0].scheduler.get_last_lr()
    )
    # loops and callbacks came back: the step count, and EarlyStopping's bookkeeping
    assert resumed_trainer.global_step == straight_trainer.global_step == EPOCHS * steps
    stop_a, stop_b = (
        straight_trainer.early_stopping_callback,
        resumed_trainer.early_stopping_callback,
    )
    assert stop_b.state_dict() == stop_a.state_dict()
    assert resumed_cb.best_model_score == straight_cb.best_model_score

    # the rows: the same checkpoints kept in both runs, queryable
    def kept(run: str) -> list[tuple[int, int, float]]:
        return catalog.sql(
            f"SELECT epoch, global_step, val_loss FROM models WHERE run = '{run}' ORDER BY epoch"
        ).fetchall()

    assert kept("resumed") == kept("straight")
    assert 2 <= len(kept("straight")) <= 3  # the best 2 and the last
    last = catalog.get("run=straight/last")
    assert last.epoch == EPOCHS - 1 and last.global_step == EPOCHS * steps
    assert catalog.get("run=resumed/last").weights == last.weights
    best = catalog.get("run=straight/best")
    assert best.val_loss == min(v for _, _, v in kept("straight"))
    assert straight_cb.best_model_path == best.row_id
    # Lightning's state is plain data in the row: the loops' progress by SQL
    steps_done = catalog.sql(
        'SELECT json_extract(training_state, \'$.extra.loops.fit_loop."epoch_loop.state_dict".'
        "_batches_that_stepped')::INT FROM models WHERE row_id = '" + last.row_id + "'"
    ).fetchall()
    assert steps_done == [(EPOCHS * steps,)]
    checkpoint = lightning_checkpoint(last)
    assert set(checkpoint) >= {"epoch", "global_step", "loops", "callbacks", "optimizer_states",
                               "lr_schedulers", "state_dict", "hyper_parameters"}  # fmt: skip
    assert checkpoint["hyper_parameters"] == {"lr": 0.02, "extra": None}
    assert read_training_state(last)["rng"] is not None

    # trainer.validate(ckpt_path="best") loads the best row through the callback
    result = straight_trainer.validate(straight, loaders()[1], ckpt_path="best", verbose=False)
    assert result[0]["val_loss"] == pytest.approx(best.val_loss)


def test_what_cannot_be_stored_is_named(catalog: Catalog) -> None:
    model = Net(extra=nn.Linear(1, 1))  # a module among the hyper-parameters is code, not data
    callback = CatalogCheckpoint(catalog, monitor="val_loss", columns={"run": "bad"})
    with pytest.raises(TrainingStateError) as info:
        trainer(callback, 1).fit(model, *loaders())
    assert "checkpoint.hyper_parameters.extra is torch.nn.modules.linear.Linear" in str(info.value)
    assert len(catalog) == 0


def test_top_k_without_last_and_refusals(catalog: Catalog, tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = CatalogCheckpoint(catalog, monitor="val_loss", save_top_k=1, columns={"run": "k"})
    trainer(callback, 3).fit(Net(), *loaders())
    rows = catalog.sql("SELECT row_id, val_loss FROM models").fetchall()
    assert len(rows) == 1 and callback.best_model_path == rows[0][0]
    assert [a.name for a in catalog.aliases()] == ["run=k/best"]
    with pytest.raises(CatalogError, match="cannot monitor 'val/acc': .* has no column for it"):
        CatalogCheckpoint(catalog, monitor="val/acc", columns={"run": "k"})
    # Lightning's own ModelCheckpoint cannot write through the catalog's I/O
    io = CatalogCheckpointIO(catalog)
    plain = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                       enable_model_summary=False, plugins=[io],
                       callbacks=[ModelCheckpoint(dirpath=tmp_path / "files")])  # fmt: skip
    with pytest.raises(CatalogError, match="asked to write the checkpoint file"):
        plain.fit(Net(), *loaders())
