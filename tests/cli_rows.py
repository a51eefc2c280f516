"""Row classes for the command-line tests, importable by name (``--module cli_rows``).

Their schema names differ from the ``digits.*`` classes other test modules declare, so that
both can live in one test process.
"""

from __future__ import annotations

import torch.nn as nn

from modelrows import ModelV1, Row


class DigitsConfigV1(Row, schema="clitest.digits.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0


class DigitsRowV1(ModelV1, schema="clitest.digits.model", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    commit_sha: str | None = None
    config: DigitsConfigV1 | None = None


class TiedNet(nn.Module):
    """A small model with a tied weight and BatchNorm buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.decode = nn.Linear(6, 6)
        self.decode.weight = self.encode.weight
