"""The commands that change a catalog's index: delete, compact, reindex (in-process)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch.nn as nn
from typer.testing import CliRunner

from cli_rows import DigitsRowV1
from modelrows import Catalog, fetch_weights
from modelrows.cli import app


def invoke(*args: str | Path, stdin: str | None = None) -> tuple[int, str, str]:
    done = CliRunner().invoke(
        app, list(map(str, args)), input=stdin, env={"COLUMNS": "160", "NO_COLOR": "1"}
    )
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done.exit_code, done.stdout, done.stderr


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog.create(tmp_path / "c", DigitsRowV1, partition_by=["run"])
    weights = fetch_weights(nn.Linear(2, 2))
    for run in ("a", "b"):
        for epoch in range(3):
            cat.append(DigitsRowV1(weights=weights, run=run, epoch=epoch, accuracy=epoch / 4))
    return cat


def test_delete_by_condition_and_by_id(catalog: Catalog) -> None:
    code, out, _ = invoke("delete", catalog.root, "--where", "run = 'a' AND epoch < 2", "--yes")
    assert (code, out) == (0, "deleted 2 rows\n")
    assert sorted(catalog.sql("SELECT run, epoch FROM models").fetchall()) == [
        ("a", 2), ("b", 0), ("b", 1), ("b", 2)
    ]  # fmt: skip
    [(first,)] = catalog.sql("SELECT row_id FROM models WHERE run = 'b' AND epoch = 0").fetchall()
    assert invoke("delete", catalog.root, "--id", first, "--yes")[:2] == (0, "deleted 1 row\n")
    assert len(Catalog.open(catalog.root)) == 3
    code, _, err = invoke("delete", catalog.root, "--id", first, "--yes")
    assert code == 2 and "nothing was deleted" in err and err.count("\n") == 1


def test_delete_asks_first_and_needs_yes_without_a_terminal(catalog: Catalog) -> None:
    code, _, err = invoke("delete", catalog.root, "--where", "run = 'a'")
    assert code == 2
    assert err == "modelrows: error: refusing to delete 3 rows without confirmation: pass --yes\n"
    assert len(catalog) == 6
    code, _, err = invoke("delete", catalog.root, "--where", "run = 'a'", "--id", "x")
    assert code == 2 and "one of the two" in err
    code, _, err = invoke("delete", catalog.root, "--where", "1=1); DROP TABLE models; --", "--yes")
    assert code == 2 and len(catalog) == 6


def test_compact_then_reindex_a_lost_index(catalog: Catalog) -> None:
    code, out, _ = invoke("compact", catalog.root)
    assert (code, out) == (0, "compacted: 6 rows in 1 index file\n")
    assert invoke("compact", catalog.root)[1] == "already compact: 6 rows in 1 index file\n"
    shutil.rmtree(catalog.root / "_index")
    code, out, _ = invoke("reindex", catalog.root)
    assert (code, out) == (0, "indexed 6 rows\n")
    assert sorted(Catalog.open(catalog.root).scan().collect()["epoch"].to_list()) == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]


def test_retain_and_alias_commands(catalog: Catalog) -> None:
    [(worst,)] = catalog.sql("SELECT row_id FROM models WHERE run = 'a' AND epoch = 0").fetchall()
    code, _, err = invoke("alias", "production", worst, "--catalog", catalog.root)
    assert code == 0 and "production" in err
    code, out, _ = invoke(
        "retain", catalog.root, "--by", "accuracy", "--keep-top-k", "1", "--dry-run"
    )
    assert code == 0 and out.count("\n") >= 4  # the rows that would go, listed
    assert len(Catalog.open(catalog.root)) == 6  # a dry run deletes nothing
    code, _, err = invoke("retain", catalog.root, "--by", "accuracy", "--keep-top-k", "1")
    assert code == 0 and "deleted 3 rows" in err
    kept = sorted(Catalog.open(catalog.root).sql("SELECT run, epoch FROM models").fetchall())
    assert kept == [("a", 0), ("a", 2), ("b", 2)]  # the best per run, and the aliased row
