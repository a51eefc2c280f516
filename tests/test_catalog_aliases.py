"""Aliases: named, movable pointers to rows, kept with their history beside the index."""

from __future__ import annotations

import datetime as dt
import doctest
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from modelrows import Catalog, CatalogError, ModelV1, RowNotFoundError, fetch_weights
from modelrows._catalog import Catalog as CatalogClass


class RunRowV1(ModelV1, schema="test.aliases.run", version=1):
    run: str
    accuracy: float | None = None


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.create(tmp_path / "c", RunRowV1, partition_by=["run"])


def add(catalog: Catalog, run: str = "a", accuracy: float | None = None) -> str:
    weights = fetch_weights({"w": torch.tensor([accuracy or 0.0])})
    return catalog.append(RunRowV1(weights=weights, run=run, accuracy=accuracy))


def test_an_alias_points_to_a_row_and_moves(catalog: Catalog) -> None:
    first, second = add(catalog, accuracy=0.5), add(catalog, accuracy=0.9)
    version = catalog.alias("production", first)
    assert (version.name, version.row_id, version.sequence) == ("production", first, 1)
    assert catalog.get("production").row_id == first
    assert catalog.path_of("production") == catalog.path_of(first)
    moved = catalog.alias("production", second)
    assert moved.sequence == 2 and moved.set_at >= version.set_at
    assert catalog.get("production").accuracy == 0.9
    # another process sees the same
    again = Catalog.open(catalog.root)
    assert again.get("production").row_id == second
    assert [(a.name, a.row_id) for a in again.aliases()] == [("production", second)]


def test_history_is_kept_and_a_removal_is_a_version(catalog: Catalog) -> None:
    ids = [add(catalog, accuracy=x) for x in (0.1, 0.2, 0.3)]
    for row_id in ids:
        catalog.alias("staging", row_id)
    catalog.alias("run=a/best", ids[2])
    removed = catalog.unalias("staging")
    assert removed is not None and removed.row_id is None and removed.sequence == 4
    assert catalog.unalias("staging") is None  # removing a removed alias changes nothing
    history = catalog.alias_history("staging")
    assert [(a.sequence, a.row_id) for a in history] == [(1, ids[0]), (2, ids[1]), (3, ids[2]),
                                                          (4, None)]  # fmt: skip
    assert all(isinstance(a.set_at, dt.datetime) and a.set_at.tzinfo for a in history)
    assert [a.set_at for a in history] == sorted(a.set_at for a in history)
    assert [a.name for a in catalog.alias_history()] == ["run=a/best"] + ["staging"] * 4
    assert [a.name for a in catalog.aliases()] == ["run=a/best"]
    with pytest.raises(RowNotFoundError) as info:
        catalog.get("staging")
    assert str(info.value).strip('"') == (
        f"no row 'staging' in the catalog at {catalog.url}, and the alias 'staging' was removed "
        "(aliases: 'run=a/best'); set it again with catalog.alias('staging', row_id)"
    )
    catalog.alias("staging", ids[0])  # set again after a removal: the history goes on
    assert catalog.alias_history("staging")[-1].sequence == 5


def test_compare_and_set(catalog: Catalog) -> None:
    a, b = add(catalog), add(catalog)
    catalog.alias("prod", a, expected=None)  # only if not set
    with pytest.raises(CatalogError) as info:
        catalog.alias("prod", b, expected=None)
    assert str(info.value) == (
        f"alias 'prod' of {catalog.url} points to row {a}; it was expected not to be set, so it "
        "was left as it is (another process moved it?). Read it again and retry"
    )
    with pytest.raises(
        CatalogError, match=f"points to row {a}; it was expected to point to row {b}"
    ):
        catalog.alias("prod", b, expected=b)
    assert catalog.alias("prod", b, expected=a).sequence == 2
    with pytest.raises(CatalogError, match="expected to point to row"):
        catalog.unalias("prod", expected=a)
    assert catalog.unalias("prod", expected=b) is not None
    assert catalog.alias("prod", a, expected=None).sequence == 4  # removed counts as not set


def test_an_alias_names_an_existing_row(catalog: Catalog) -> None:
    row_id = add(catalog)
    with pytest.raises(RowNotFoundError) as info:
        catalog.alias("prod", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert str(info.value).strip('"') == (
        f"cannot point alias 'prod' to '01ARZ3NDEKTSV4RRFFQ69G5FAV': no such row in the catalog "
        f"at {catalog.url}; an alias points to an existing row"
    )
    catalog.alias("run=a/best", row_id)
    promoted = catalog.alias("production", "run=a/best")  # another alias: its row, now
    assert promoted.row_id == row_id
    with pytest.raises(RowNotFoundError, match="cannot point alias 'x' to 'nothing'"):
        catalog.alias("x", "nothing")
    assert catalog.alias_history("x") == []


def test_a_deleted_rows_alias_says_so(catalog: Catalog) -> None:
    row_id = add(catalog)
    catalog.alias("prod", row_id)
    catalog.delete(row_id)
    with pytest.raises(RowNotFoundError) as info:
        catalog.get("prod")
    assert str(info.value).strip('"') == (
        f"alias 'prod' points to row {row_id}, which is not in the catalog at {catalog.url} "
        "(it was deleted); point it to another row with catalog.alias('prod', row_id)"
    )
    with pytest.raises(RowNotFoundError, match=f"^no row {row_id!r} in the catalog"):
        catalog.get(row_id)  # a row id is still a row id
    with pytest.raises(RowNotFoundError) as info:
        catalog.get("nope")  # neither a row nor an alias
    assert str(info.value).strip('"') == f"no row 'nope' in the catalog at {catalog.url}"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "an alias name is not empty"),
        ("-x", "is not valid: it starts with a letter or digit"),
        ("a b", "is not valid"),
        ("a\\b", "is not valid"),
        ("../x", "is not valid"),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "looks like a row id"),
        ("01arz3ndektsv4rrffq69g5fav", "looks like a row id"),
        ("x" * 201, "is 201 characters long, more than 200"),
        ("/" * 1 + "a", "is not valid"),
        ("a" + "/" * 100, "is too long once quoted"),
    ],
)
def test_alias_names_are_checked(catalog: Catalog, name: str, problem: str) -> None:
    row_id = add(catalog)
    with pytest.raises(CatalogError, match=problem.replace("(", r"\(")):
        catalog.alias(name, row_id)


def test_names_with_slashes_and_percents_stay_apart(catalog: Catalog) -> None:
    ids = [add(catalog) for _ in range(4)]
    names = ["run=a/best", "run=a%2Fbest", "run=a", "x.y_z-1"]
    for name, row_id in zip(names, ids, strict=True):
        catalog.alias(name, row_id)
    for name, row_id in zip(names, ids, strict=True):
        assert catalog.get(name).row_id == row_id
        assert [a.row_id for a in catalog.alias_history(name)] == [row_id]
    stored = sorted(p.name for p in (catalog.root / "_aliases").iterdir())
    assert stored == ["run=a", "run=a%252Fbest", "run=a%2Fbest", "x.y_z-1"]
    assert [p.name for p in (catalog.root / "_aliases" / "run=a").iterdir()] == [
        "00000000000000000001.json"
    ]


def test_what_is_not_a_version_is_ignored_and_a_bad_version_is_named(catalog: Catalog) -> None:
    row_id = add(catalog)
    catalog.alias("prod", row_id)
    folder = catalog.root / "_aliases" / "prod"
    (folder / ".00000000000000000002.json.123-abc.tmp").write_text("{")  # a dead setter's
    (folder / "notes.txt").write_text("hello")
    assert catalog.get("prod").row_id == row_id
    assert catalog.alias("prod", row_id).sequence == 2
    (folder / "00000000000000000003.json").write_text('{"format": "something else"}')
    with pytest.raises(CatalogError) as info:
        catalog.get("prod")
    assert str(info.value) == (
        f"{catalog.url}/_aliases/prod/00000000000000000003.json is not a valid alias version: "
        "'format' is not 'modelrows.alias'. It is not what catalog.alias wrote; remove it (the "
        "alias then points where its previous version does)"
    )
    (folder / "00000000000000000003.json").unlink()
    assert catalog.get("prod").row_id == row_id


def test_aliases_are_not_rows(catalog: Catalog) -> None:
    row_id = add(catalog)
    catalog.alias("prod", row_id)
    assert catalog.reindex() == 1
    assert catalog.verify() == []
    assert catalog.vacuum(older_than=0.0) == []
    assert catalog.get("prod").row_id == row_id
    assert len(catalog) == 1


def test_docstring_examples_run() -> None:
    for method in (CatalogClass.alias, CatalogClass.retain):
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in doctest.DocTestFinder().find(method, globs={"Catalog": CatalogClass}):
            runner.run(test)
        assert runner.failures == 0 and runner.tries >= 4


def test_an_alias_loads_into_a_model(catalog: Catalog) -> None:
    model = nn.Linear(1, 1)
    row_id = catalog.append(RunRowV1(weights=fetch_weights({"w": model.weight}), run="m"))
    catalog.alias("latest-good", row_id)
    assert torch.equal(catalog.get("latest-good").weights["w"], model.weight.detach())
