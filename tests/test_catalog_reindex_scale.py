"""reindex() at scale: every row file is indexed, however many there are.

Found by benchmarks/index.py: the index entries reindex built from row files were views of the
memory-mapped files, so each kept its file open; past the process's open-file limit (20,000 on
the benchmark machine) every further row file "could not be read" and was left out of the index,
silently: a 100,000-row catalog was indexed with 19,994 rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import modelrows
from modelrows import Catalog, ModelV1


class ScaleRowV1(ModelV1, schema="test.scale", version=1):
    run: str
    epoch: int | None = None


def test_reindex_indexes_more_rows_than_the_process_may_open_files(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    cat = Catalog.create(root, ScaleRowV1, partition_by=["run"])
    rows = 300
    weights = torch.arange(16, dtype=torch.float32)
    for start in range(0, rows, 100):
        cat.append_many(
            [ScaleRowV1(weights={"w": weights}, run=f"r{i % 3}", epoch=i) for i in range(start, start + 100)],
            fsync=False,
        )  # fmt: skip
    # a fresh process whose open-file limit is below the number of row files
    script = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
        from modelrows import Catalog
        catalog = Catalog.open(sys.argv[1])
        print(catalog.reindex(progress=False), len(catalog))
        """
    )
    src = str(Path(modelrows.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(rows), str(rows)]
    epochs = Catalog.open(root).scan().select("epoch").collect()["epoch"].to_list()
    assert sorted(epochs) == list(range(rows))
