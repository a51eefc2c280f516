"""The digits model of examples/digits.py, trained with PyTorch Lightning, checkpointed into a
catalog by modelrows.lightning.CatalogCheckpoint, and resumed from a catalog row.

Needs ``pip install 'modelrows[lightning,examples]'``. One run trains straight through; a second,
identical run is stopped half way and resumed by a fresh Trainer with
``trainer.fit(model, ckpt_path="run=<run>/last")`` (an alias in the catalog, no file, no pickle):
it ends bit for bit where the first did. The best row then loads into the plain PyTorch model,
without Lightning.

    python examples/digits_lightning.py                    # a catalog in a temporary directory
    python examples/digits_lightning.py --catalog /tmp/lit --epochs 4
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn
from digits import DigitsConfigV1, accuracy, digits_model, load_data
from torch.utils.data import DataLoader, TensorDataset

from modelrows import Catalog, load_weights
from modelrows.lightning import CatalogCheckpoint, LightningCheckpointV1


class DigitsLightningRowV1(LightningCheckpointV1, schema="digits.lightning", version=1):
    """A Lightning checkpoint of the digits model, with the run's columns and logged metrics."""

    run: str
    config: DigitsConfigV1 | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None


class DigitsModule(pl.LightningModule):
    def __init__(self, seed: int = 5, dropout_rate: float = 0.25, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = digits_model(DigitsConfigV1(seed=seed, dropout_rate=dropout_rate))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def fit(
    catalog: Catalog,
    run: str,
    config: DigitsConfigV1,
    epochs: int,
    data: tuple[torch.Tensor, ...],
    *,
    ckpt_path: str | None = None,
) -> None:
    """Train ``run`` to ``epochs`` epochs (from the row ``ckpt_path`` names, if given)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(config.seed)  # the batch order comes from the global RNG
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    checkpoints = CatalogCheckpoint(
        catalog,
        monitor="val_accuracy",
        mode="max",
        save_top_k=3,
        save_last=True,
        columns={"run": run, "config": config},
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoints],
    )
    module = DigitsModule(seed=config.seed, dropout_rate=config.dropout_rate)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=None, help="catalog directory")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (default 6)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (a run is stopped half way)")
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec).*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    root = args.catalog or Path(tempfile.mkdtemp(prefix="modelrows-lightning-")) / "catalog"
    catalog = Catalog.create(root, DigitsLightningRowV1, partition_by=["run"])
    data = load_data()
    config = DigitsConfigV1(seed=7, dropout_rate=0.25)
    stop = args.epochs // 2
    print(f"Training with Lightning into {catalog.root} ...")
    fit(catalog, "straight", config, args.epochs, data)
    fit(catalog, "resumed", config, stop, data)  # ... the process could end here ...
    fit(catalog, "resumed", config, args.epochs, data, ckpt_path="run=resumed/last")

    print(f"\n{len(catalog)} rows kept (the 3 most accurate of each run, and its last):")
    catalog.sql(
        "SELECT run, epoch, global_step, round(val_accuracy, 4) AS val_accuracy, "
        "round(val_loss, 4) AS val_loss FROM models ORDER BY run, epoch"
    ).show()
    a, b = catalog.get("run=straight/last"), catalog.get("run=resumed/last")
    print(
        f"Run 'resumed' stopped after epoch {stop - 1}, resumed from its row by a fresh Trainer: "
        f"epoch {b.epoch}, val_accuracy {b.val_accuracy:.4f} (straight: {a.val_accuracy:.4f})"
    )
    if not (a.weights == b.weights and a.training_tensors == b.training_tensors):
        print("error: the resumed run does not match the uninterrupted one", file=sys.stderr)
        return 1
    print("The resumed run matches the uninterrupted one bit for bit (weights, optimizer, loops).")

    best = catalog.get("run=straight/best")
    model = digits_model(config)  # plain PyTorch: the LightningModule held it as `net`
    load_weights(model, best.weights, prefix="net.")
    again = accuracy(model, data[2], data[3])
    print(
        f"Best row (epoch {best.epoch}, val_accuracy {best.val_accuracy:.4f}) loaded into the "
        f"plain model without Lightning: accuracy {again:.4f}"
    )
    if abs(again - best.val_accuracy) > 1e-6:
        print("error: the reloaded model does not reproduce the logged accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
