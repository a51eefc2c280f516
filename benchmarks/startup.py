"""Start-up of the library and the command line, in fresh processes.

Each command runs ``--repeat`` times (10 by default), every run paired with a bare interpreter
(``python -c pass``) started just before it, so both see the same machine load. The report gives
the medians, the median of the paired differences (what the command costs above Python itself),
and each figure against its target (issue 12):

- ``python -c "import modelrows"``: under 0.25 s above a bare interpreter;
- ``modelrows --help``: under 0.35 s;
- ``modelrows ls`` and ``modelrows best --by accuracy`` on a digits-like catalog: under 1.0 s
  end to end.

The catalog (``--rows``, 300 by default: 20 runs of 15 epochs of the digits example's network,
15 tensors, 26 KB each) is written to a temporary directory and removed afterwards.

    python benchmarks/startup.py
    python benchmarks/startup.py --rows 1000 --repeat 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SCRIPT = Path(sys.executable).parent / "modelrows"


def make_catalog(root: Path, rows: int) -> None:
    """A catalog like the digits example's: runs of 15 epochs, the digits network's weights."""
    import torch
    import torch.nn as nn

    from modelrows import Catalog, ModelV1, Row, fetch_weights

    class ConfigV1(Row, schema="startup.config", version=1):
        seed: int = 5
        dropout_rate: float = 0.0

    class DigitsRowV1(ModelV1, schema="startup.digits", version=1):
        run: str
        epoch: int | None = None
        accuracy: float | None = None
        commit_sha: str | None = None
        config: ConfigV1 | None = None

    shared = nn.Linear(10, 10)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10),
        shared, shared,
    )  # fmt: skip
    catalog = Catalog.create(root, DigitsRowV1, partition_by=["run"])
    batch = []
    for i in range(rows):
        run, epoch = divmod(i, 15)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        batch.append(
            DigitsRowV1(
                weights=fetch_weights(model),
                architecture_version=1,
                run=f"seed{run}-dropout0.{run % 5}",
                epoch=epoch + 1,
                accuracy=0.5 + 0.03 * epoch - 0.001 * run,
                commit_sha="ac849c8cc642c111eb4e2a0cac81046e51b49acb",
                config=ConfigV1(seed=run, dropout_rate=0.1 * (run % 5)),
            )
        )
        if len(batch) == 50:
            catalog.append_many(batch, fsync=False)
            batch = []
    if batch:
        catalog.append_many(batch, fsync=False)


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300, help="rows of the catalog (300)")
    parser.add_argument("--repeat", type=int, default=10, help="fresh processes per command (10)")
    args = parser.parse_args()

    env = {
        k: v for k, v in os.environ.items() if k not in ("MODELROWS_CATALOG", "MODELROWS_IMPORT")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SRC), env.get("PYTHONPATH", "")] if p)
    bare = [sys.executable, "-c", "pass"]
    with tempfile.TemporaryDirectory(prefix="modelrows-startup-") as tmp:
        root = Path(tmp) / "catalog"
        make_catalog(root, args.rows)
        # (label, argv, target in seconds, whether the target is above a bare interpreter)
        cases = [
            (
                'python -c "import modelrows"',
                [sys.executable, "-c", "import modelrows"],
                0.25,
                True,
            ),
            ("modelrows --help", [str(SCRIPT), "--help"], 0.35, False),
            (f"modelrows ls ({args.rows} rows)", [str(SCRIPT), "ls", str(root)], 1.0, False),
            (
                f"modelrows best --by accuracy ({args.rows} rows)",
                [str(SCRIPT), "best", str(root), "--by", "accuracy"],
                1.0,
                False,
            ),
        ]
        print(
            f"median of {args.repeat} fresh processes each, every one paired with `python -c pass`"
            f" run just before it; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
        )
        header = f"| {'command':<40} | {'median':>8} | {'bare':>8} | {'above bare':>10} | {'target':>14} | {'ratio':>6} | met |"
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        met_all = True
        for label, argv, target, above in cases:
            timed(argv, env)  # warm the page cache, not counted
            pairs = [(timed(bare, env), timed(argv, env)) for _ in range(args.repeat)]
            cmd = statistics.median(c for _, c in pairs)
            base = statistics.median(b for b, _ in pairs)
            diff = statistics.median(c - b for b, c in pairs)
            value = diff if above else cmd
            ratio = value / target
            met_all &= ratio < 1
            what = f"< {target:.2f} s {'above' if above else 'total'}"
            print(
                f"| {label:<40} | {cmd:>7.3f}s | {base:>7.3f}s | {diff:>9.3f}s | {what:>14} "
                f"| {ratio:>6.2f} | {'yes' if ratio < 1 else 'NO':>3} |"
            )
        print("\nratio: the figure the target bounds, over the target (under 1 meets it)")
        print(f"targets met: {'all' if met_all else 'not all'}")


if __name__ == "__main__":
    main()
