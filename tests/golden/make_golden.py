"""Write the golden files that freeze modelrows' on-disk format (docs/format.md).

    PYTHONPATH=src python tests/golden/make_golden.py            # writes tests/golden/v<N>/

Every row is built from fixed values (no randomness), and the writer is deterministic, so
running this again with the same pyarrow rewrites the same bytes. Golden files are written
once per format version and never replaced: a format change bumps ``FORMAT_VERSION`` and adds
``tests/golden/v<N+1>/``, while the old directories stay, and tests/test_format.py keeps reading
them. The script refuses to overwrite an existing file unless given ``--overwrite`` (only for a
format version that has not been released).

tests/test_format.py imports this module for the row classes and row builders below.
"""

import argparse
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from modelrows import FORMAT_VERSION, Catalog, ModelV1, Row, Weights, write_model_row

HERE = Path(__file__).resolve().parent


class GoldenConfigV1(Row, schema="modelrows-golden.config", version=1):
    """A nested (non-model) row: a struct column of the extended golden row."""

    seed: int = 5
    dropout_rate: float = 0.0
    layers: list[int]


class GoldenRowV1(ModelV1, schema="modelrows-golden.model", version=1):
    """An extended model row using every kind of column the format maps."""

    run: str
    epoch: int | None = None
    accuracy: float | None = None
    commit_sha: str | None = None
    tags: list[str]
    config: GoldenConfigV1 | None = None
    created: dt.datetime | None = None
    day: dt.date | None = None
    blob: bytes | None = None
    finished: bool = False
    lr: np.float32 | None = None
    steps: np.int32 | None = None


def _fixed(shape: tuple[int, ...], dtype: torch.dtype, *, scale: float = 0.125) -> torch.Tensor:
    """Exactly representable values: (k - n/2) * scale for k = 0, 1, ..."""
    n = 1
    for d in shape:
        n *= d
    values = (torch.arange(n, dtype=torch.float64) - n // 2) * scale
    return values.reshape(shape).to(dtype)


def model_v1_row() -> Row:
    """``modelrows.model@1``: a Linear(3, 2)'s weights."""
    weights = Weights(
        {
            "weight": _fixed((2, 3), torch.float32),
            "bias": torch.tensor([0.5, -1.5], dtype=torch.float32),
        }
    )
    return ModelV1(weights=weights, architecture_version=1)


def extended_row() -> Row:
    """An extension of ``modelrows.model@1`` with a nested config row and many column types."""
    weights = Weights(
        {
            "conv.weight": _fixed((2, 1, 2, 2), torch.float32),
            "conv.bias": torch.tensor([0.25, -0.25], dtype=torch.float32),
            "bn.weight": torch.ones(2, dtype=torch.float32),
            "bn.bias": torch.zeros(2, dtype=torch.float32),
            "bn.running_mean": torch.tensor([0.5, 1.5], dtype=torch.float32),
            "bn.running_var": torch.tensor([2.0, 4.0], dtype=torch.float32),
            "bn.num_batches_tracked": torch.tensor(12, dtype=torch.int64),
            "head.weight": _fixed((3, 8), torch.float64, scale=0.5),
        }
    )
    return GoldenRowV1(
        weights=weights,
        architecture_version=3,
        run="golden-run",
        epoch=7,
        accuracy=0.875,
        commit_sha=None,
        tags=["baseline", "ünïcödé"],
        config=GoldenConfigV1(seed=5, dropout_rate=0.25, layers=[32, 16]),
        created=dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc),
        day=dt.date(2024, 5, 6),
        blob=b"\x00\x01\xfe\xff",
        finished=True,
        lr=np.float32(0.001),
        steps=np.int32(-42),
    )


def bf16_row() -> Row:
    """bfloat16 weights, with a tied tensor, a 0-d scalar, an empty tensor and other dtypes."""
    embed = _fixed((4, 3), torch.bfloat16, scale=0.25)
    weights = Weights(
        {
            "embed.weight": embed,
            "head.weight": embed,  # tied: stored once
            "scale": torch.tensor(1.5, dtype=torch.bfloat16),
            "empty": torch.zeros((0, 4), dtype=torch.bfloat16),
            "half": _fixed((2, 2), torch.float16),
            "mask": torch.tensor([True, False, True, True, False]),
            "ids": torch.tensor([-3, 0, 2**40], dtype=torch.int64),
            "bytes": torch.tensor([0, 127, 255], dtype=torch.uint8),
        }
    )
    return ModelV1(weights=weights, architecture_version=2)


GOLDEN: dict[str, Callable[[], Row]] = {
    "model_v1.arrow": model_v1_row,
    "extended.arrow": extended_row,
    "bf16.arrow": bf16_row,
}
"""Golden file name -> the row it holds."""

MANIFEST = "MANIFEST.json"
CATALOG = "catalog"  # catalog format 1: row files alone (written before the index)
CATALOG2 = "catalog2"  # catalog format 2: row files and the Parquet index
CATALOG3 = "catalog3"  # catalog format 3: the index's log entries in Arrow IPC
CATALOGS = (CATALOG3,)  # what today's writer writes (the older ones stay as they were)


def catalog_rows() -> list[Row]:
    """The rows of the golden catalog, in append order: two runs, one with an odd name."""
    rows = []
    for run, epochs in [("baseline", [1, 2]), ("odd/run=ü", [1])]:
        for epoch in epochs:
            base = extended_row()
            rows.append(base.replace(run=run, epoch=epoch, accuracy=0.5 + epoch / 8))
    return rows


def write_catalog(root: Path) -> Catalog:
    """The golden catalog: GoldenRowV1 rows partitioned by run (row ids and times vary); the
    first two compacted into a segment (its manifest with the segment's checks), the last one
    in the log."""
    catalog = Catalog.create(root, GoldenRowV1, partition_by=["run"])
    rows = catalog_rows()
    for row in rows[:2]:
        catalog.append(row)
    catalog.compact()
    for row in rows[2:]:
        catalog.append(row)
    return catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / f"v{FORMAT_VERSION}")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    existing = [name for name in [*GOLDEN, MANIFEST] if (out / name).exists()]
    if existing and not args.overwrite:
        print(
            f"{out} already holds {', '.join(existing)}; golden files are never replaced. "
            "A format change bumps FORMAT_VERSION and writes a new directory.",
            file=sys.stderr,
        )
        return 1
    digests = {}
    for name, build in GOLDEN.items():
        write_model_row(out / name, build())
        digests[name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION,
        "written_with": {"pyarrow": pa.__version__, "torch": torch.__version__.split("+")[0]},
        "sha256": digests,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(GOLDEN)} golden files to {out}")
    for name in CATALOGS:
        if not (out / name).exists():
            write_catalog(out / name)
            print(f"wrote the golden catalog to {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
