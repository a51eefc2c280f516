"""modelrows.ray on a local Ray cluster (2 CPUs): metadata as a Ray dataset, a function mapped over
checkpoints on workers with results appended to a second catalog, one failing row reported in its
result, and the example that evaluates every digits checkpoint.

Ray workers import this file as the module ``test_ray`` (the cluster's PYTHONPATH holds tests/),
so the row classes and functions below reach them by name.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("ray", reason="needs the ray extra: pip install 'modelrows[ray]'")

import ray

import modelrows.ray as mr
from modelrows import Catalog, CatalogError, ModelV1, Row, fetch_weights, load_weights

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MARK = 1234.5  # a weight value whose bytes the corrupting test finds in a row file


class LinRowV1(ModelV1, schema="raytest.linear", version=1):
    run: str
    step: int


class LinEvalV1(mr.EvaluationV1, schema="raytest.linear-eval", version=1):
    out: float | None = None
    builds: int | None = None


BUILDS: collections.Counter[int | None] = collections.Counter()  # models built, per key, here


def build_linear(row: Row) -> nn.Module:
    """Version 1 maps 2 -> 2 features, version 2 maps 2 -> 3."""
    BUILDS[row.architecture_version] += 1
    return nn.Linear(2, 2 if row.architecture_version == 1 else 3)


def linear_sum(model: nn.Module, row: Row) -> dict[str, Any]:
    with torch.no_grad():
        out = model(torch.linspace(-1.0, 1.0, 2).unsqueeze(0)).sum()
    return {"out": float(out), "builds": BUILDS[row.architecture_version]}


def returns_a_tensor(model: nn.Module, row: Row) -> dict[str, Any]:
    return {"out": model.weight.sum()}  # not a plain value: that row's error says so


def sequential(catalog: Catalog, ids: list[str]) -> dict[str, dict[str, Any]]:
    """linear_sum over rows in this process, without Ray: the reference the workers must match."""
    out = {}
    for row_id in ids:
        row = catalog.get(row_id)
        model = build_linear(row)
        load_weights(model, row.weights)
        out[row_id] = linear_sum(model, row)
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs whose workers import modelrows and this file."""
    path = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", path)  # the workers' environment is the cluster's, made here
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def linear_row(
    run: str, step: int, *, shape: tuple[int, int] = (2, 2), version: int = 1, mark: bool = False
) -> LinRowV1:
    torch.manual_seed(step)
    model = nn.Linear(*shape)
    if mark:
        with torch.no_grad():
            model.weight[0, 0] = MARK
    return LinRowV1(weights=fetch_weights(model), architecture_version=version, run=run, step=step)


def corrupt_tensor_byte(catalog: Catalog, row_id: str) -> None:
    """Change the MARK weight's bytes in the row file: it stays readable, its checksum fails."""
    path = catalog.path_of(row_id)
    data = bytearray(path.read_bytes())
    at = data.find(np.float32(MARK).tobytes())
    assert at > 0
    data[at : at + 4] = np.float32(MARK + 1).tobytes()
    path.write_bytes(bytes(data))


def test_map_checkpoints_appends_one_result_per_row_and_reports_the_rows_that_fail(
    tmp_path: Path, cluster: None
) -> None:
    models = Catalog.create(tmp_path / "models", LinRowV1, partition_by=["run"])
    good = [
        models.append(linear_row("a", 1)),
        models.append(linear_row("a", 2)),
        models.append(linear_row("b", 4, shape=(2, 3), version=2)),  # another architecture
        models.append(linear_row("b", 5)),
    ]
    corrupt = models.append(linear_row("a", 3, mark=True))
    unfit = models.append(linear_row("b", 6, shape=(3, 2)))  # no longer fits version 1
    truncated = models.append(linear_row("b", 7))
    expected = sequential(models, good)
    corrupt_tensor_byte(models, corrupt)
    path = models.path_of(truncated)
    path.write_bytes(path.read_bytes()[:300])  # its index entry stays: only a worker finds out
    everything = sorted([*good, corrupt, unfit, truncated])

    meta = mr.read_catalog(models)
    assert "weights" not in meta.columns()
    assert {"row_id", "run", "step", "architecture_version"} <= set(meta.columns())
    assert sorted(r["row_id"] for r in meta.take_all()) == everything
    assert mr.read_catalog(models, where="run = 'b' AND step > 4").count() == 3

    results = Catalog.create(tmp_path / "evals", LinEvalV1)
    done = mr.map_checkpoints(
        models,
        linear_sum,
        model_factory=build_linear,
        key="architecture_version",
        results=results,
        concurrency=2,
        num_cpus=1,
    )

    frame = results.scan().collect()
    assert sorted(frame["model_row_id"].to_list()) == everything  # once each
    stored = {r.model_row_id: r for r in results.rows()}
    returned = {r["row_id"]: r for r in done.take_all()}
    assert returned.keys() == stored.keys()
    for row_id in good:
        assert stored[row_id].error is None
        assert stored[row_id].out == expected[row_id]["out"]  # what one process computes
        assert stored[row_id].builds == 1  # one model per architecture per worker, reused
        assert returned[row_id] == {"row_id": row_id, "out": stored[row_id].out, "builds": 1,
                                    "error": None}  # fmt: skip
    assert stored[corrupt].out is None
    assert stored[corrupt].error.startswith("CorruptRowError: ")
    assert "checksum mismatch in column 'weights'" in stored[corrupt].error
    assert f"{corrupt}.raytest.linear.arrow" in stored[corrupt].error  # names the file
    assert stored[unfit].error.startswith("WeightsMismatchError: ")
    assert returned[unfit]["error"] == stored[unfit].error
    assert stored[truncated].error.startswith("NotArrowFileError: ")
    assert str(models.path_of(truncated)) in stored[truncated].error


def test_map_checkpoints_without_results_returns_columns_and_errors(
    tmp_path: Path, cluster: None
) -> None:
    models = Catalog.create(tmp_path / "models", LinRowV1)
    ids = [models.append(linear_row("a", step)) for step in (1, 2)]
    done = mr.map_checkpoints(
        models, returns_a_tensor, model_factory=build_linear, where=f"row_id = '{ids[1]}'"
    )
    (row,) = done.take_all()
    assert row["row_id"] == ids[1]
    assert row["error"] == (
        "TypeError: fn returned a torch.Tensor for column 'out'; return plain values "
        "(e.g. float(tensor) or tensor.tolist())"
    )
    assert len(models) == 2  # nothing was written anywhere


class MetricsV1(Row, schema="raytest.metrics", version=1):
    out: float | None = None


class StrictEvalV1(mr.EvaluationV1, schema="raytest.strict-eval", version=1):
    out: float


def test_results_must_be_evaluation_rows_that_can_hold_an_error(tmp_path: Path) -> None:
    models = Catalog.create(tmp_path / "models", LinRowV1)
    with pytest.raises(CatalogError, match=r"rows extending modelrows.ray.EvaluationV1"):
        mr.map_checkpoints(
            models, linear_sum, model_factory=build_linear,
            results=Catalog.create(tmp_path / "plain", MetricsV1),
        )  # fmt: skip
    with pytest.raises(CatalogError, match=r"StrictEvalV1: give 'out' a default"):
        mr.map_checkpoints(
            models, linear_sum, model_factory=build_linear,
            results=Catalog.create(tmp_path / "strict", StrictEvalV1),
        )  # fmt: skip


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=400
    )


@pytest.mark.slow
def test_example_evaluates_every_digits_checkpoint_once_as_one_process_would(
    tmp_path: Path,
) -> None:
    cat, evals = tmp_path / "digits", tmp_path / "noisy"
    trained = run_example(str(EXAMPLES / "digits.py"), "--catalog", str(cat), "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    args = [str(EXAMPLES / "evaluate_all.py"), "--catalog", str(cat), "--results", str(evals)]
    proc = run_example(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"3 checkpoints in {cat}; 3 to evaluate on 2 workers" in proc.stdout
    assert "Top checkpoints on noisy digits, with DuckDB SQL over both catalogs:" in proc.stdout
    assert "The Ray result equals a single-process evaluation of the same row." in proc.stdout

    models, results = Catalog.open(cat), Catalog.open(evals)
    evaluated = results.scan().collect()
    assert sorted(evaluated["model_row_id"]) == sorted(models.scan().collect()["row_id"])
    assert evaluated["error"].null_count() == len(evaluated)

    sys.path.insert(0, str(EXAMPLES))
    threads = torch.get_num_threads()
    try:
        import evaluate_all

        torch.set_num_threads(1)  # as the workers ran
        by_id = {r.model_row_id: r for r in results.rows()}
        for row_id, result in by_id.items():
            here = evaluate_all.evaluate_here(models, row_id)
            assert (result.noisy_accuracy, result.noisy_loss) == (
                here["noisy_accuracy"], here["noisy_loss"],
            )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(EXAMPLES))
        for name in ("evaluate_all", "digits"):
            sys.modules.pop(name, None)

    again = run_example(*args)  # a second run evaluates only what is new: nothing
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"3 checkpoints in {cat}; 0 to evaluate on 2 workers" in again.stdout
    assert len(results) == 3
