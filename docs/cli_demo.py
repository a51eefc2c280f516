"""Build the small digits catalog that docs/cli.md's session looks at.

Trains a small CNN on scikit-learn's 8x8 digits in three runs and appends one row per epoch::

    python docs/cli_demo.py catalog        # about half a minute on a laptop CPU

Importing this module only declares the row classes, so ``modelrows import --module cli_demo``
(run from ``docs/``, or with ``docs`` on ``PYTHONPATH``) can build rows of this catalog.
Needs the ``examples`` extra (scikit-learn).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

from modelrows import Catalog, ModelV1, Row, fetch_weights


class DigitsConfigV1(Row, schema="digits.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0


class DigitsRowV1(ModelV1, schema="digits.model", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    commit_sha: str | None = None
    config: DigitsConfigV1 | None = None


def build_model(config: DigitsConfigV1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(config.dropout_rate),
        nn.Linear(32 * 4 * 4, 10),
    )


RUNS = {  # run name: (learning rate, config)
    "adam-1e-3": (1e-3, DigitsConfigV1(seed=1, dropout_rate=0.0)),
    "adam-3e-3-dropout": (3e-3, DigitsConfigV1(seed=2, dropout_rate=0.3)),
    "sgd-1e-2": (1e-2, DigitsConfigV1(seed=3, dropout_rate=0.0)),
}
EPOCHS = 12


def commit_sha() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def main(root: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )
    catalog = Catalog.create(root, DigitsRowV1, partition_by=["run"])
    sha = commit_sha()
    for run, (lr, config) in RUNS.items():
        torch.manual_seed(config.seed)
        model = build_model(config)
        optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(model.parameters(), lr=lr)
            if run.startswith("sgd")
            else torch.optim.Adam(model.parameters(), lr=lr)
        )
        for epoch in range(1, EPOCHS + 1):
            model.train()
            for batch in torch.randperm(len(x_train)).split(64):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
            row = DigitsRowV1(
                weights=fetch_weights(model),
                architecture_version=1,
                run=run,
                epoch=epoch,
                accuracy=round(accuracy, 4),
                commit_sha=sha,
                config=config,
            )
            catalog.append(row)
            print(f"{run:>18}  epoch {epoch:2d}  accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "catalog"))
