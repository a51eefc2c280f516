"""Evaluating every checkpoint of a catalog: one process against Ray with 2 workers, and the Ray
driver's peak memory as the catalog grows from 100 to 1,000 checkpoints.

    python benchmarks/ray_eval.py              # 100-row speed catalog; 100 vs 1,000 rows memory
    python benchmarks/ray_eval.py --quick      # smaller, for a smoke run

Speed: the same evaluation (an MLP of 2.1 MB, a forward pass over a fixed batch) of every row,
sequentially in this process (one thread, as each Ray worker gets one CPU; and with two threads)
and by modelrows.ray.map_checkpoints with 2 workers of 1 CPU each on a local cluster already
started. Ray's time includes starting its workers. Memory: a fresh driver process per catalog
runs map_checkpoints (workers append results to an evaluation catalog) and reports its own peak
RSS (VmHWM); weights never reach the driver, so the peak stays flat while the catalog's weight
bytes grow tenfold. Ratios only; this machine is shared, so times vary between runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn as nn
from common import MB, proc_status

import modelrows.ray as mr
from modelrows import Catalog, ModelV1, Row, fetch_weights, load_weights

WIDTH = 512


class EvalBenchRowV1(ModelV1, schema="bench.ray-model", version=1):
    step: int


class EvalBenchResultV1(mr.EvaluationV1, schema="bench.ray-eval", version=1):
    score: float | None = None


def build_mlp(row: Row | None = None) -> nn.Module:
    return nn.Sequential(
        nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 10)
    )


@functools.cache
def inputs(batch: int) -> torch.Tensor:
    return torch.randn(batch, WIDTH, generator=torch.Generator().manual_seed(0))


def score(model: nn.Module, row: Row, *, batch: int) -> dict[str, float]:
    with torch.no_grad():
        value = float(model(inputs(batch)).mean())
    return {"score": value, "done_at": time.time()}  # when this row was done, on any process


def fill(root: Path, rows: int) -> Catalog:
    catalog = Catalog.create(root, EvalBenchRowV1)
    model = build_mlp()
    for step in range(rows):
        with torch.no_grad():
            model[0].bias.fill_(step / rows)  # a distinct checkpoint per row
        catalog.append(EvalBenchRowV1(weights=fetch_weights(model), step=step), fsync=False)
    return catalog


def sequential(catalog: Catalog, batch: int) -> dict[str, dict[str, float]]:
    """What one process does without Ray: every row read, loaded and evaluated in turn."""
    model = build_mlp()
    out = {}
    for row in catalog.rows(verify=True):
        load_weights(model, row.weights)
        out[row.row_id] = score(model, row, batch=batch)
    return out


def on_ray(catalog: Catalog, batch: int) -> dict[str, dict[str, float]]:
    done = mr.map_checkpoints(
        catalog,
        functools.partial(score, batch=batch),
        model_factory=build_mlp,
        concurrency=2,
        num_cpus=1,
    )
    return {r.pop("row_id"): r for r in done.take_all()}


def per_row(results: dict[str, dict[str, float]]) -> float:
    """Seconds per row once running: from the first row done to the last, over the rows between."""
    done = sorted(r["done_at"] for r in results.values())
    return (done[-1] - done[0]) / max(1, len(done) - 1)


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def speed(root: Path, rows: int, batch: int) -> None:
    import ray

    catalog = fill(root / "speed", rows)
    torch.set_num_threads(1)
    t_seq1, seq = timed(sequential, catalog, batch)
    torch.set_num_threads(2)
    t_seq2, seq2 = timed(sequential, catalog, batch)
    torch.set_num_threads(1)
    t_init, _ = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        t_ray, par = timed(on_ray, catalog, batch)
        t_ray_again, par2 = timed(on_ray, catalog, batch)
    finally:
        ray.shutdown()
    scores = {k: r["score"] for k, r in seq.items()}
    assert {k: r["score"] for k, r in par.items()} == scores, "Ray's results differ"
    print(f"\nSpeed: {rows} checkpoints ({_mb(catalog)}), each a forward pass of {batch} x {WIDTH}")
    print(f"| {'contender':<36} | {'seconds':>7} | {'ratio':>6} | {'ms per row, running':>19} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 8}|{'-' * 21}|")
    for name, t, res in [
        ("one process, 1 thread", t_seq1, seq),
        ("one process, 2 threads", t_seq2, seq2),
        ("Ray, 2 workers x 1 CPU (first job)", t_ray, par),
        ("Ray, 2 workers x 1 CPU (second job)", t_ray_again, par2),
    ]:
        print(f"| {name:<36} | {t:>7.2f} | {t_seq1 / t:>5.2f}x | {per_row(res) * 1000:>19.1f} |")
    print(
        "ratio: one process with 1 thread / contender (higher is faster); ms per row, running: "
        "from the first row done to the last. Not counted: ray.init of the local cluster, "
        f"{t_init:.1f} s. Ray's results equal the sequential ones."
    )


def driver(root: str, results: str, batch: int) -> None:
    """A fresh driver: evaluate every row of ``root`` on Ray, print this process's peak RSS."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        done = mr.map_checkpoints(
            root,
            functools.partial(score, batch=batch),
            model_factory=build_mlp,
            results=results,
            concurrency=2,
            num_cpus=1,
        )
        count = done.count()
    finally:
        ray.shutdown()
    status = proc_status()
    print(json.dumps({"rows": count, "vmhwm": status["VmHWM"], "rss": status["VmRSS"]}))


def memory(root: Path, sizes: list[int], batch: int) -> None:
    print(f"\nDriver peak memory (VmHWM of a fresh driver process), {batch}-row forward per row")
    print(
        f"| {'checkpoints':>11} | {'weights on disk':>15} | {'driver peak RSS':>15} | "
        f"{'evaluated':>9} |"
    )
    print(f"|{'-' * 13}|{'-' * 17}|{'-' * 17}|{'-' * 11}|")
    peaks = []
    for rows in sizes:
        catalog = fill(root / f"mem-{rows}", rows)
        results = root / f"mem-{rows}-results"
        Catalog.create(results, EvalBenchResultV1)
        proc = subprocess.run(
            [sys.executable, __file__, "--driver", str(catalog.root), str(results), str(batch)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"driver for {rows} rows failed:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["rows"] == rows == len(Catalog.open(results))
        peaks.append(report["vmhwm"])
        print(
            f"| {rows:>11,} | {_mb(catalog):>15} | {report['vmhwm'] / MB:>12.0f} MB | "
            f"{len(Catalog.open(results)):>9,} |"
        )
    print(f"driver peak, {sizes[-1]:,} vs {sizes[0]:,} rows: {peaks[-1] / peaks[0]:.2f}x")


def _mb(catalog: Catalog) -> str:
    total = sum(p.stat().st_size for p in catalog.root.rglob("*.arrow"))
    return f"{total / MB:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--dir", type=Path, default=None, help="where the catalogs go (a temp dir)")
    parser.add_argument("--driver", nargs=3, metavar=("CATALOG", "RESULTS", "BATCH"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.driver:
        driver(args.driver[0], args.driver[1], int(args.driver[2]))
        return 0
    speed_rows, speed_batch = (20, 512) if args.quick else (100, 4096)
    sizes = [10, 100] if args.quick else [100, 1000]
    root = Path(tempfile.mkdtemp(prefix="modelrows-bench-ray-", dir=args.dir))
    try:
        speed(root, speed_rows, speed_batch)
        memory(root, sizes, batch=64)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    # Ray workers import this file as the module `ray_eval` (the script's directory is on their
    # path), so run it as that module: its row classes and functions are found there by name.
    import ray_eval

    sys.exit(ray_eval.main())
