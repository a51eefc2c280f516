"""The modelrows main job: train digit classifiers with checkpoints in a catalog, query it, resume
a run exactly, and reload the best model into a freshly built network.

A PyTorch port of LegolasFlux.jl's digits example, on scikit-learn's bundled 8x8 digits (no
download). Each run trains a small CNN (Conv, BatchNorm, Dropout, and one Linear layer used twice,
so its weights are tied) built from a nested config row. A Checkpointer saves one DigitsRowV2 per
epoch (weights, optimizer and RNG states), keeps the 3 most accurate rows of each run and the last,
and moves the run's `best` and `last` aliases. One run is then trained again, stopped half way and
resumed from the catalog in fresh objects: it ends bit for bit where the uninterrupted run ended.

    python examples/digits.py                      # writes ./catalog at the repository root
    python examples/digits.py --catalog /tmp/cat --epochs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from modelrows import Catalog, CatalogError, Checkpointer, Row, TrainingStateV1, load_weights

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog"
ARCHITECTURE_VERSION = 1


class DigitsConfigV1(Row, schema="digits.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0

    def check(self) -> None:
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate {self.dropout_rate} must be in [0, 1)")


class DigitsRowV2(TrainingStateV1, schema="digits.model", version=2):
    """A checkpoint: the weights, the state to resume training exactly, and the run's columns.

    (Version 1 extended ModelV1: rows without training state.)"""

    run: str
    epoch: int | None = None
    accuracy: float | None = None
    commit_sha: str | None = None
    config: DigitsConfigV1 | None = None

    def check(self) -> None:
        if self.accuracy is not None and not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(f"accuracy {self.accuracy} must be within [0, 1]")


def digits_model(config: DigitsConfigV1) -> nn.Sequential:
    """The network, built from its config row: same config and seed, same initial weights."""
    torch.manual_seed(config.seed)
    p = config.dropout_rate
    shared = nn.Linear(10, 10)  # used twice, like LegolasFlux's `D, D`: stored once, tied
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),  # 8x8 -> 6x6
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> 3x3
        nn.Dropout(p),
        nn.Conv2d(32, 16, 3, padding=1),  # -> 3x3
        nn.ReLU(),
        nn.Dropout(p),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 10),
        shared,
        shared,
    )


def load_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=0.25, random_state=seed, stratify=digits.target
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def commit_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def checkpointer(catalog: Catalog, run: str, config: DigitsConfigV1) -> Checkpointer:
    """The run's checkpointer: keeps its 3 most accurate rows and its last; moves its aliases
    ``run=<run>/best`` and ``run=<run>/last``."""
    return Checkpointer(
        catalog,
        monitor="accuracy",
        mode="max",
        keep_top_k=3,
        keep_last=1,
        columns={"run": run, "config": config, "commit_sha": commit_sha(),
                 "architecture_version": ARCHITECTURE_VERSION},
    )  # fmt: skip


def train_run(
    catalog: Catalog, run: str, config: DigitsConfigV1, epochs: int, data: tuple[torch.Tensor, ...]
) -> None:
    """Train ``run`` up to ``epochs`` epochs, resuming from its last checkpoint if it has one."""
    x_train, y_train, x_test, y_test = data
    model = digits_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)  # the batch order
    checkpoints = checkpointer(catalog, run, config)
    # weights, optimizer, the batch order's generator and the global RNGs (dropout) come back
    last = checkpoints.resume(model, optimizer=optimizer, generators={"shuffle": generator})
    start = 1 if last is None else last.epoch + 1
    bar = tqdm(range(start, epochs + 1), desc=run, unit="epoch", leave=True)
    for epoch in bar:
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        acc = accuracy(model, x_test, y_test)
        bar.set_postfix(accuracy=f"{acc:.3f}")
        checkpoints.save(
            model, optimizer=optimizer, generators={"shuffle": generator}, epoch=epoch, accuracy=acc
        )


def check_resumed(catalog: Catalog, straight: str, resumed: str, stop: int) -> bool:
    """Whether the resumed run ended where the uninterrupted one did, bit for bit."""
    a, b = catalog.get(f"run={straight}/last"), catalog.get(f"run={resumed}/last")
    assert isinstance(a, DigitsRowV2) and isinstance(b, DigitsRowV2)
    same = (a.epoch, a.accuracy) == (b.epoch, b.accuracy) and a.weights == b.weights
    same = same and a.training_tensors == b.training_tensors
    print(
        f"\nRun {resumed} stopped after epoch {stop} and resumed from the catalog: at epoch "
        f"{b.epoch}, accuracy {b.accuracy:.4f} (uninterrupted: {a.accuracy:.4f})"
    )
    if not same:
        print("error: the resumed run does not match the uninterrupted one", file=sys.stderr)
        return False
    print(
        "The resumed run matches the uninterrupted one bit for bit (weights and optimizer state)."
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG, help="catalog directory")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (default 15)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        catalog = Catalog.create(args.catalog, DigitsRowV2, partition_by=["run"])
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)  # e.g. a catalog of an earlier version there
        return 2
    data = load_data()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%m%d-%H%M%S")
    configs = [
        DigitsConfigV1(seed=5, dropout_rate=0.0),
        DigitsConfigV1(seed=7, dropout_rate=0.25),
        DigitsConfigV1(seed=11, dropout_rate=0.5),
    ]
    runs = [f"seed{c.seed}-dropout{c.dropout_rate}-{stamp}" for c in configs]
    for run, config in zip(runs, configs, strict=True):
        train_run(catalog, run, config, args.epochs, data)

    # the second run again: stopped half way, then resumed from the catalog by fresh objects
    straight, config = runs[1], configs[1]
    resumed = f"{straight}-resumed"
    stop = args.epochs // 2  # with --epochs 1 there is no half way: no resume to show
    if stop:
        train_run(catalog, resumed, config, stop, data)  # ... the process could end here ...
        train_run(catalog, resumed, config, args.epochs, data)  # resumes at epoch stop + 1

    import polars as pl

    pl.Config.set_fmt_str_lengths(40)
    print(f"\n{len(catalog)} rows in {catalog.root}\n\nPer run, with Polars:")
    per_run = (
        catalog.scan()
        .group_by("run")
        .agg(pl.len().alias("epochs"), pl.col("accuracy").max().alias("best_accuracy"))
        .sort("run")
    )
    print(per_run.collect())
    print("\nTop 3 checkpoints, with DuckDB SQL:")
    catalog.sql(
        "SELECT row_id, run, epoch, round(accuracy, 4) AS accuracy, config.dropout_rate "
        "FROM models ORDER BY accuracy DESC, row_id LIMIT 3"
    ).show()

    print("Aliases (each run's best and last, moved by its checkpointer):")
    for alias in catalog.aliases():
        print(f"  {alias.name:<52} -> {alias.row_id}")

    if stop and not check_resumed(catalog, straight, resumed, stop):
        return 1

    best = catalog.best("accuracy")
    assert isinstance(best, DigitsRowV2) and best.config is not None
    catalog.alias("production", best.row_id)  # promote it: a name to load it by, anywhere
    production = catalog.get("production")
    assert isinstance(production, DigitsRowV2) and production.config is not None
    fresh = digits_model(production.config)
    load_weights(fresh, production.weights)
    again = accuracy(fresh, data[2], data[3])
    print(
        f"\nBest: run {best.run}, epoch {best.epoch}, recorded accuracy {best.accuracy:.4f}; "
        f"aliased 'production' and reloaded into a fresh model: {again:.4f}"
    )
    if again != best.accuracy:
        print("error: the reloaded model does not reproduce the recorded accuracy", file=sys.stderr)
        return 1
    print("The reloaded model reproduces the recorded accuracy exactly.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
