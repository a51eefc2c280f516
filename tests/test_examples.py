"""The main job, examples/digits.py, runs end to end (with fewer epochs) into a temp catalog."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modelrows import Catalog

ROOT = Path(__file__).resolve().parent.parent


def test_digits_example_trains_queries_and_reloads_the_best_model(tmp_path: Path) -> None:
    cat = tmp_path / "catalog"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py"), "--catalog", str(cat), "--epochs", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "The reloaded model reproduces the recorded accuracy exactly." in proc.stdout
    assert "Per run, with Polars:" in proc.stdout
    assert "Top 3 checkpoints, with DuckDB SQL:" in proc.stdout

    catalog = Catalog.open(cat)
    assert len(catalog) == 6  # three runs x two epochs
    frame = catalog.scan().collect()
    assert sorted(frame["epoch"].to_list()) == [1, 1, 1, 2, 2, 2]
    assert frame["run"].n_unique() == 3
    assert frame["config"].struct.field("seed").unique().sort().to_list() == [5, 7, 11]
    best = catalog.best("accuracy")
    assert best is not None
    assert best.weights.ties  # the Linear layer used twice is stored once
    assert f"epoch {best.epoch}, recorded accuracy {best.accuracy:.4f}" in proc.stdout


def test_digits_example_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py"), "--epochs", "0", "--catalog",
         str(tmp_path / "c")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--epochs must be at least 1" in proc.stderr
