"""The `modelrows retain` and `modelrows alias` commands, called as the CLI calls them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelrows import (
    Catalog,
    CatalogError,
    CommandLineError,
    ModelV1,
    RowNotFoundError,
    fetch_weights,
)
from modelrows.cli._training_commands import alias_command, retain_command


class EpochV1(ModelV1, schema="test.cli.retain", version=1):
    run: str
    epoch: int
    accuracy: float | None = None


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog.create(tmp_path / "c", EpochV1, partition_by=["run"])
    w = fetch_weights({"w": torch.zeros(1)})
    for run, accs in [("a", [0.1, 0.9, 0.5, 0.2]), ("b", [0.3, 0.4])]:
        catalog.append_many(
            EpochV1(weights=w, run=run, epoch=e, accuracy=x) for e, x in enumerate(accs)
        )
    return catalog


def test_retain_dry_run_then_for_real(catalog: Catalog) -> None:
    result = retain_command(catalog, by="accuracy", keep_top_k=1, keep_last=1, dry_run=True)
    assert result.table is not None
    assert result.table.column_names == ["row_id", "run", "accuracy", "written_at"]
    assert sorted(result.table.column("accuracy").to_pylist()) == [0.1, 0.3, 0.5]
    assert result.message == (
        f"would delete 3 rows of {catalog.url} (keeping the 1 highest accuracy per run, the latest "
        "1, every aliased row); nothing was deleted: run it again without --dry-run to delete them"
    )
    assert len(catalog) == 6
    result = retain_command(catalog, by="accuracy", keep_top_k=1, keep_last=1)
    assert result.message.startswith(f"deleted 3 rows of {catalog.url} (kept the 1 highest")
    assert result.message.endswith("; 3 remain")
    assert len(catalog) == 3
    result = retain_command(catalog, by="accuracy", mode="min", keep_top_k=1, per=[])
    assert result.table is not None and result.table.column_names[:2] == ["row_id", "accuracy"]
    assert sorted(result.table.column("accuracy").to_pylist()) == [0.4, 0.9]
    with pytest.raises(CatalogError, match="give at least one"):
        retain_command(catalog, by="accuracy")


def test_alias_set_show_history_list_remove(catalog: Catalog) -> None:
    [(first,), (second,)] = catalog.sql(
        "SELECT row_id FROM models WHERE run = 'b' ORDER BY epoch"
    ).fetchall()
    result = alias_command(catalog, "production", first)
    assert result.message == f"alias 'production' -> row {first} (version 1)"
    alias_command(catalog, "production", second, expected=first)
    with pytest.raises(CatalogError, match="expected not to be set"):
        alias_command(catalog, "production", first, expected="none")
    shown = alias_command(catalog, "production")
    assert shown.message == f"alias 'production' -> row {second}"
    history = alias_command(catalog, "production", history=True)
    assert history.table is not None
    assert history.table.column("row_id").to_pylist() == [first, second]
    assert history.table.column("sequence").to_pylist() == [1, 2]
    listed = alias_command(catalog)
    assert listed.table is not None and listed.table.column("name").to_pylist() == ["production"]
    assert alias_command(catalog, "production", remove=True).message == (
        "removed alias 'production' (version 3)"
    )
    assert alias_command(catalog, "production", remove=True).message == (
        "alias 'production' was not set; nothing to remove"
    )
    with pytest.raises(RowNotFoundError, match="the alias 'production' was removed"):
        alias_command(catalog, "production")
    with pytest.raises(CommandLineError, match="--remove takes the alias name alone"):
        alias_command(catalog, "production", first, remove=True)
    with pytest.raises(CommandLineError, match="give the alias name first"):
        alias_command(catalog, None, first)
