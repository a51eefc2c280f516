"""The modelrows main job: train digit classifiers, keep every checkpoint in a catalog, query it,
and reload the best model into a freshly built network.

A PyTorch port of LegolasFlux.jl's digits example, on scikit-learn's bundled 8x8 digits (no
download). Each run trains a small CNN (Conv, BatchNorm, Dropout, and one Linear layer used twice,
so its weights are tied) built from a nested config row, and appends one DigitsRowV1 per epoch.

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

from modelrows import Catalog, ModelV1, Row, fetch_weights, load_weights

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog"
ARCHITECTURE_VERSION = 1


class DigitsConfigV1(Row, schema="digits.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0

    def check(self) -> None:
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate {self.dropout_rate} must be in [0, 1)")


class DigitsRowV1(ModelV1, schema="digits.model", version=1):
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


def train_run(
    catalog: Catalog, run: str, config: DigitsConfigV1, epochs: int, data: tuple[torch.Tensor, ...]
) -> None:
    x_train, y_train, x_test, y_test = data
    model = digits_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    sha = commit_sha()
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(1, epochs + 1), desc=run, unit="epoch", leave=True)
    for epoch in bar:
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        acc = accuracy(model, x_test, y_test)
        bar.set_postfix(accuracy=f"{acc:.3f}")
        catalog.append(
            DigitsRowV1(
                weights=fetch_weights(model),
                architecture_version=ARCHITECTURE_VERSION,
                run=run,
                epoch=epoch,
                accuracy=acc,
                commit_sha=sha,
                config=config,
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG, help="catalog directory")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (default 15)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    torch.set_num_threads(min(2, torch.get_num_threads()))
    catalog = Catalog.create(args.catalog, DigitsRowV1, partition_by=["run"])
    data = load_data()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%m%d-%H%M%S")
    configs = [
        DigitsConfigV1(seed=5, dropout_rate=0.0),
        DigitsConfigV1(seed=7, dropout_rate=0.25),
        DigitsConfigV1(seed=11, dropout_rate=0.5),
    ]
    for config in configs:
        run = f"seed{config.seed}-dropout{config.dropout_rate}-{stamp}"
        train_run(catalog, run, config, args.epochs, data)

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

    best = catalog.best("accuracy")
    assert isinstance(best, DigitsRowV1) and best.config is not None
    fresh = digits_model(best.config)
    load_weights(fresh, best.weights)
    again = accuracy(fresh, data[2], data[3])
    print(
        f"Best: run {best.run}, epoch {best.epoch}, recorded accuracy {best.accuracy:.4f}; "
        f"reloaded into a fresh model: {again:.4f}"
    )
    if again != best.accuracy:
        print("error: the reloaded model does not reproduce the recorded accuracy", file=sys.stderr)
        return 1
    print("The reloaded model reproduces the recorded accuracy exactly.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
