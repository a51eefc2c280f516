"""Row classes and helpers for the command-line tests (``tests/test_cli*.py``).

The row classes are importable by name (``--module cli_rows``); their schema names differ from
the ``digits.*`` classes other test modules declare, so that both can live in one test process.

``invoke`` runs a command in this process through typer's runner (the ``app`` the console script
runs); ``run`` runs the real console script in a fresh process, for what only that proves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from typer.testing import CliRunner

from modelrows import ModelV1, Row, Weights
from modelrows.cli import app


class DigitsConfigV1(Row, schema="clitest.digits.config", version=1):
    seed: int = 5
    dropout_rate: float = 0.0


class DigitsRowV1(ModelV1, schema="clitest.digits.model", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    commit_sha: str | None = None
    config: DigitsConfigV1 | None = None


class TwoWeightsV1(ModelV1, schema="clitest.two", version=1):
    """Two weights columns (``weights`` and an EMA copy) and a bytes column."""

    run: str
    ema: Weights | None = None
    blob: bytes | None = None


class CkptV1(ModelV1, schema="clitest.ckpt", version=1):
    """A required nested field, which the command line cannot set."""

    run: str
    hparams: DigitsConfigV1


class TeacherStudentV1(ModelV1, schema="clitest.teacher", version=1):
    """A required second weights column (as a training checkpoint's optimizer tensors are)."""

    run: str
    teacher: Weights


class CnnRowV1(ModelV1, schema="clitest.cnn", version=1):
    """A training run's rows: losses, and the row a resumed run continued from."""

    run: str
    epoch: int | None = None
    val_loss: float | None = None
    accuracy: float | None = None
    parent_row_id: str | None = None


class TiedNet(nn.Module):
    """A small model with a tied weight and BatchNorm buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.decode = nn.Linear(6, 6)
        self.decode.weight = self.encode.weight


# -- running commands -------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
SCRIPT = Path(sys.executable).parent / "modelrows"
SRC = Path(__file__).resolve().parents[1] / "src"
CLEARED = ("TTY_COMPATIBLE", "FORCE_COLOR", "MODELROWS_CATALOG", "MODELROWS_IMPORT")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run the console script next to this interpreter, with this checkout's code."""
    environ = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environ.update(PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]), COLUMNS="160", NO_COLOR="1")
    environ.update(env or {})
    done = subprocess.run(
        [str(SCRIPT), *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run the command's app in this process (for variants of what ``run`` already covers)."""
    environ: dict[str, str | None] = {k: None for k in CLEARED}
    environ.update({"COLUMNS": "160", "NO_COLOR": "1", **(env or {})})
    done = CliRunner().invoke(app, list(map(str, args)), env=environ, prog_name="modelrows")
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return Result(done.exit_code, done.stdout, done.stderr)


def plain(text: str) -> str:
    """Text without terminal escapes (NO_COLOR still leaves bold on a terminal)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def assert_user_error(result: Result, message: str) -> None:
    """Status 2, nothing on stdout, and exactly one line on stderr: the message."""
    assert (result.code, result.out) == (2, ""), result
    assert result.err == f"modelrows: error: {message}\n"
