"""Metadata queries read no weight bytes: the same queries over a catalog of 4 MB rows and one of
4 KB rows read the same few bytes per row, and ``get`` maps a row without touching its weights.

Bytes read are this process's ``rchar`` (/proc/self/io): every byte that read(2)-like calls
returned. pyarrow reads dataset files with pread (no memory map), so a query that read the weights
would read 4 MB per row here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import torch

from modelrows import Catalog, ModelV1

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/io and /proc/self/smaps"
)

ROWS = 12
SMALL, LARGE = 4 * 1024, 4 * 1024 * 1024


class IoRowV1(ModelV1, schema="test.io", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def bytes_read(query: Callable[[], object]) -> int:
    query()  # first run: connections, caches
    before = rchar()
    query()
    return rchar() - before


def build(root: Path, weights_bytes: int) -> Catalog:
    catalog = Catalog.create(root, IoRowV1, partition_by=["run"])
    base = torch.randn(weights_bytes // 4)
    for i in range(ROWS):
        base[0] = i
        row = IoRowV1(weights={"w": base}, run=f"r{i % 3}", epoch=i, accuracy=i / ROWS)
        catalog.append(row, fsync=False)
    return catalog


QUERIES: dict[str, Callable[[Catalog], object]] = {
    "scan": lambda c: c.scan().collect(),
    "polars best": lambda c: c.scan().sort("accuracy", descending=True).head(1).collect(),
    "polars filter": lambda c: (
        c.scan().filter((pl.col("run") == "r1") & (pl.col("epoch") > 3)).collect()
    ),
    "sql best": lambda c: c.sql(
        "SELECT row_id, accuracy FROM models ORDER BY accuracy DESC LIMIT 1"
    ).fetchall(),
    "sql filter": lambda c: c.sql("SELECT row_id, run FROM models WHERE epoch = 5").fetchall(),
    "best": lambda c: c.best("accuracy"),
    "dataset projection": lambda c: c.dataset().to_table(columns=["row_id", "epoch"]),
}


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Catalog]:
    root = tmp_path_factory.mktemp("io")
    return {size: build(root / str(size), size) for size in (SMALL, LARGE)}


@pytest.mark.parametrize("name", list(QUERIES))
def test_metadata_queries_read_the_same_few_bytes_whatever_the_weights(
    name: str, catalogs: dict[int, Catalog]
) -> None:
    query = QUERIES[name]
    small = bytes_read(lambda: query(catalogs[SMALL]))
    large = bytes_read(lambda: query(catalogs[LARGE]))
    assert small > 0  # the reads go through read(2), so rchar sees them
    # Weights of 4 MB instead of 4 KB per row add nothing (a little slack for page-sized reads);
    # reading the weights would add 4 MB per row.
    assert large <= small + 4096 * ROWS, (name, small, large)
    assert large < 64 * 1024 * ROWS, (name, large)


def test_get_maps_a_row_without_touching_its_weights(tmp_path: Path) -> None:
    # 32 MB of weights: the kernel may map a cached file in 2 MB pages, so touching the header and
    # the footer can map up to 2 MB at each end, but not the weights in between
    weights_bytes = 32 * 1024 * 1024
    catalog = Catalog.create(tmp_path / "c", IoRowV1, partition_by=["run"])
    w = torch.randn(weights_bytes // 4)
    row_id = catalog.append(IoRowV1(weights={"w": w}, run="r", epoch=1), fsync=False)
    row = catalog.get(row_id)
    path = str(catalog.path_of(row_id))
    assert resident_bytes(path) <= 2 * 2 * 1024 * 1024 + 512 * 1024  # the two ends, not 32 MB
    assert torch.equal(row.weights["w"], w)
    assert resident_bytes(path) >= weights_bytes  # touching them maps them: the measure works


def resident_bytes(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):
            inside = line.endswith(path)
        elif inside and first == "Rss:":
            total += int(line.split()[1]) * 1024
    return total
