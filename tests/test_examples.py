"""The main job, examples/digits.py, runs end to end (with fewer epochs) into a temp catalog."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelrows import Catalog

ROOT = Path(__file__).resolve().parent.parent


def test_digits_example_trains_queries_resumes_and_reloads_the_best_model(tmp_path: Path) -> None:
    cat = tmp_path / "catalog"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py"), "--catalog", str(cat), "--epochs", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "The reloaded model reproduces the recorded accuracy exactly." in proc.stdout
    assert "The resumed run matches the uninterrupted one bit for bit" in proc.stdout
    assert "stopped after epoch 1 and resumed from the catalog: at epoch 2" in proc.stdout
    assert "Per run, with Polars:" in proc.stdout
    assert "Top 3 checkpoints, with DuckDB SQL:" in proc.stdout

    catalog = Catalog.open(cat)
    assert len(catalog) == 8  # three runs and the resumed one x two epochs (top 3 + last kept)
    frame = catalog.scan().collect()
    assert sorted(frame["epoch"].to_list()) == [1, 1, 1, 1, 2, 2, 2, 2]
    runs = sorted(frame["run"].unique().to_list())
    assert len(runs) == 4 and sum(r.endswith("-resumed") for r in runs) == 1
    assert frame["config"].struct.field("seed").unique().sort().to_list() == [5, 7, 11]
    best = catalog.best("accuracy")
    assert best is not None
    assert best.weights.ties  # the Linear layer used twice is stored once
    assert f"epoch {best.epoch}, recorded accuracy {best.accuracy:.4f}" in proc.stdout
    assert catalog.get("production").row_id == best.row_id
    aliases = {a.name for a in catalog.aliases()}
    assert aliases == {"production"} | {f"run={r}/{k}" for r in runs for k in ("best", "last")}
    for run in runs:  # each run's last row holds the state to resume it
        last = catalog.get(f"run={run}/last")
        assert last.epoch == 2 and last.training_state.startswith('{"format":')


def test_digits_example_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py"), "--epochs", "0", "--catalog",
         str(tmp_path / "c")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--epochs must be at least 1" in proc.stderr


@pytest.mark.slow
def test_digits_lightning_example_resumes_from_a_row_bit_for_bit(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    cat = tmp_path / "catalog"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits_lightning.py"), "--catalog", str(cat),
         "--epochs", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "The resumed run matches the uninterrupted one bit for bit" in proc.stdout
    assert "loaded into the plain model without Lightning" in proc.stdout
    catalog = Catalog.open(cat)
    rows = catalog.sql("SELECT run, epoch, global_step FROM models ORDER BY run, epoch").fetchall()
    assert [(run, epoch) for run, epoch, _ in rows] == [("resumed", 0), ("resumed", 1),
                                                         ("straight", 0), ("straight", 1)]  # fmt: skip
    assert catalog.get("run=resumed/last").weights == catalog.get("run=straight/last").weights
