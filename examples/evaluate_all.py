"""Evaluate every checkpoint the digits main job wrote, on held-out digits with added noise, on a
local Ray cluster; the results go to a second catalog, and a DuckDB join ranks the checkpoints.

Trains nothing: it reads the catalog examples/digits.py wrote (run that first). Each Ray worker
builds the network once per config, loads each checkpoint's weights from the catalog
(memory-mapped) and measures accuracy and loss on the test split with Gaussian noise added; one
row per checkpoint is appended to the evaluation catalog by the workers themselves.

    python examples/digits.py --catalog /tmp/digits --epochs 3
    python examples/evaluate_all.py --catalog /tmp/digits --results /tmp/digits-noisy
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import duckdb
import torch
import torch.nn as nn
from digits import DEFAULT_CATALOG, digits_model, load_data

import modelrows.ray as mr
from modelrows import Catalog, Row, load_weights

NOISE_STD = 0.3  # standard deviation of the noise added to pixels scaled to [0, 1]
NOISE_SEED = 1234


class DigitsNoisyEvalV1(mr.EvaluationV1, schema="digits.noisy-eval", version=1):
    """One checkpoint's result on the noisy test split (``model_row_id`` names the checkpoint)."""

    noise_std: float | None = None
    noisy_accuracy: float | None = None
    noisy_loss: float | None = None


@functools.cache
def noisy_test_set(std: float = NOISE_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out split of examples/digits.py with fixed Gaussian noise: the same on every worker
    (built once per worker process)."""
    _, _, x_test, y_test = load_data()
    noise = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(NOISE_SEED))
    return (x_test + std * noise).clamp(0.0, 1.0), y_test


def build_model(row: Row) -> nn.Module:
    """The network a checkpoint's weights fit, from the row's config (one per config per worker)."""
    return digits_model(row.config)


def evaluate(model: nn.Module, row: Row) -> dict[str, float]:
    """Accuracy and mean cross-entropy of one checkpoint on the noisy test split."""
    x, y = noisy_test_set()
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return {
        "noise_std": NOISE_STD,
        "noisy_accuracy": float((logits.argmax(dim=1) == y).float().mean()),
        "noisy_loss": float(nn.functional.cross_entropy(logits, y)),
    }


def evaluate_here(models: Catalog, row_id: str) -> dict[str, float]:
    """The same evaluation of one row in this process, without Ray."""
    row = models.get(row_id, verify=True)
    model = build_model(row)
    load_weights(model, row.weights)
    return evaluate(model, row)


TOP_QUERY = """
SELECT m.run, m.epoch, round(m.accuracy, 4) AS clean_accuracy,
       round(e.noisy_accuracy, 4) AS noisy_accuracy, round(e.noisy_loss, 4) AS noisy_loss,
       m.row_id
FROM evaluations AS e JOIN models AS m ON m.row_id = e.model_row_id
WHERE e.error IS NULL
ORDER BY e.noisy_accuracy DESC, e.noisy_loss, m.row_id
LIMIT 5
"""


def evaluate_on_ray(
    models: Catalog, evaluations: Catalog, *, where: str | None, workers: int
) -> list[dict[str, object]]:
    """Every checkpoint matching ``where`` evaluated on a local Ray cluster of ``workers`` CPUs,
    one result row each appended to ``evaluations`` by the workers; returns the failures."""
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        done = mr.map_checkpoints(
            models,
            evaluate,
            model_factory=build_model,
            key="config",  # one network per config per worker; each row's weights go into it
            where=where,
            results=evaluations,
            concurrency=workers,
            num_cpus=1,
        )
        return [r for r in done.take_all() if r["error"] is not None]
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--catalog", type=Path, default=DEFAULT_CATALOG, help="the digits catalog to evaluate"
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="evaluation catalog (default: <catalog>-noisy)"
    )
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    results_root = args.results or args.catalog.with_name(args.catalog.name + "-noisy")

    models = Catalog.open(args.catalog)
    evaluations = Catalog.create(results_root, DigitsNoisyEvalV1)
    # a second run evaluates only the checkpoints written since the first
    seen = evaluations.scan().select("model_row_id").collect().to_series().to_list()
    where = f"row_id NOT IN ({', '.join(repr(i) for i in seen)})" if seen else None
    [(todo,)] = models.sql(f"SELECT count(*) FROM models WHERE {where or 'true'}").fetchall()
    print(
        f"{len(models)} checkpoints in {models.root}; {todo} to evaluate on {args.workers} workers"
    )
    failed = evaluate_on_ray(models, evaluations, where=where, workers=args.workers) if todo else []
    print(f"{len(evaluations)} evaluations in {evaluations.root} ({len(failed)} failed now)")
    for bad in failed:
        print(f"  {bad['row_id']}: {bad['error']}")

    print("\nTop checkpoints on noisy digits, with DuckDB SQL over both catalogs:")
    con = duckdb.connect()
    con.register("models", models.scan().collect().to_arrow())
    con.register("evaluations", evaluations.scan().collect().to_arrow())
    top = con.sql(TOP_QUERY)
    top.show()
    best = top.fetchall()
    if not best:
        print("error: no checkpoint was evaluated", file=sys.stderr)
        return 1

    row_id = best[0][-1]
    torch.set_num_threads(1)  # as each Ray worker runs (one CPU each): the same float sums
    here = evaluate_here(models, row_id)
    (there,) = evaluations.rows(where=f"model_row_id = '{row_id}'")
    print(
        f"Best on noisy digits: {row_id}: Ray worker {there.noisy_accuracy:.4f} / "
        f"{there.noisy_loss:.4f}, this process {here['noisy_accuracy']:.4f} / "
        f"{here['noisy_loss']:.4f} (accuracy / loss)"
    )
    if (there.noisy_accuracy, there.noisy_loss) != (here["noisy_accuracy"], here["noisy_loss"]):
        print("error: the Ray result differs from a single-process evaluation", file=sys.stderr)
        return 1
    print("The Ray result equals a single-process evaluation of the same row.")
    return 1 if failed else 0


if __name__ == "__main__":
    # Ray workers import this file as the module `evaluate_all` (the script's directory is on
    # their path), so run it as that module: the row class and the functions the workers need
    # are then found there by name rather than copied from __main__, where they cannot live.
    import evaluate_all

    sys.exit(evaluate_all.main())
