"""The ``modelrows`` command line.

Commands run in this process through typer's runner (``invoke``): the same ``app`` the console
script runs, without a new interpreter. A few tests run the real console script as a subprocess
(``run``), where only a fresh process proves the point: the exit status the shell sees, output to
a pipe, a row class that is not declared in the process. The tests share one catalog.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cli_rows import (
    CkptV1,
    DigitsConfigV1,
    DigitsRowV1,
    TeacherStudentV1,
    TiedNet,
    TwoWeightsV1,
    assert_user_error,
    invoke,
    plain,
    run,
)
from modelrows import Catalog, ModelV1, Weights, fetch_weights, write_model_row

COMMANDS = ["ls", "sql", "best", "show", "verify", "vacuum", "plot", "export", "import", "diff"]
ACCURACY = {"a": [0.5, 0.6, 0.7, 0.8], "b": [0.55, 0.62, 0.79, None]}


@dataclass
class Fixture:
    root: Path
    ids: dict[tuple[str, int], str]
    weights: dict[str, Weights]  # by row id


@pytest.fixture(scope="module")
def cat(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """Two runs of four epochs; run b's last epoch has no accuracy."""
    root = tmp_path_factory.mktemp("cli") / "catalog"
    catalog = Catalog.create(root, DigitsRowV1, partition_by=["run"])
    ids: dict[tuple[str, int], str] = {}
    weights: dict[str, Weights] = {}
    for run_name, accuracies in ACCURACY.items():
        for epoch, accuracy in enumerate(accuracies):
            torch.manual_seed(len(ids))
            w = fetch_weights(TiedNet())
            row = DigitsRowV1(
                weights=w,
                run=run_name,
                epoch=epoch,
                accuracy=accuracy,
                commit_sha="a1b2c3d",
                config=DigitsConfigV1(seed=epoch, dropout_rate=0.1),
            )
            row_id = catalog.append(row, fsync=False)
            ids[(run_name, epoch)] = row_id
            weights[row_id] = w
    return Fixture(root, ids, weights)


def copy_of(cat: Fixture, tmp_path: Path, name: str = "copy") -> Path:
    """A private copy of the shared catalog, for commands that change it."""
    return Path(shutil.copytree(cat.root, tmp_path / name))


# -- help ------------------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.code == 0
    for command in COMMANDS:
        assert f" {command} " in result.out
    assert "MODELROWS_CATALOG" in result.out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.code == 0
    assert "Example" in result.out
    assert f"$ modelrows {command}" in result.out


# -- ls, sql, best ---------------------------------------------------------------------------------


def test_ls_csv_when_piped_and_json_on_request(cat: Fixture, tmp_path: Path) -> None:
    (tmp_path / "catalog").symlink_to(cat.root)  # the default: ./catalog
    query = ["-c", cat.root, "--where", "run = 'a'", "--sort", "accuracy", "--desc", "-n", "2"]
    piped = run("ls", cwd=tmp_path)
    as_json = invoke("ls", *query, "--format", "json")
    assert piped.code == 0, piped
    rows = list(csv.reader(io.StringIO(piped.out)))
    assert rows[0] == [
        "row_id", "written_at", "architecture_version", "run", "epoch", "accuracy",
        "commit_sha", "config",
    ]  # fmt: skip
    assert [r[0] for r in rows[1:]] == sorted(cat.ids.values())
    assert rows[1][3:] == ["a", "0", "0.5", "a1b2c3d", '{"seed": 0, "dropout_rate": 0.1}']
    assert rows[-1][3:6] == ["b", "3", ""]

    assert as_json.code == 0, as_json
    found = json.loads(as_json.out)
    assert [(r["row_id"], r["accuracy"]) for r in found] == [
        (cat.ids[("a", 3)], 0.8),
        (cat.ids[("a", 2)], 0.7),
    ]
    assert dt.datetime.fromisoformat(found[0]["written_at"]).tzinfo is not None
    assert found[0]["config"] == {"seed": 3, "dropout_rate": 0.1}
    assert "weights" not in found[0]


def test_ls_table_on_a_terminal(cat: Fixture) -> None:
    result = invoke("ls", env={"MODELROWS_CATALOG": str(cat.root), "TTY_COMPATIBLE": "1"})
    assert result.code == 0, result
    assert "─" in result.out and "8 rows" in result.out
    assert all(row_id in result.out for row_id in cat.ids.values())
    narrow = invoke("ls", cat.root, env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    assert narrow.code == 0, narrow
    assert all(len(line) <= 80 for line in plain(narrow.out).splitlines())
    assert all(row_id in narrow.out for row_id in cat.ids.values())  # never cut short
    caption = " ".join(plain(narrow.out).split())  # the caption may wrap
    # bookkeeping columns give way before the user's own, then the widest
    assert "hidden to fit the terminal: written_at, architecture_version, config" in caption


def test_ls_on_a_narrow_terminal_shortens_a_long_run_name_before_hiding_it(
    tmp_path: Path,
) -> None:
    """What gives way on a narrow terminal: the bookkeeping columns and the nested ones (config,
    shown as JSON) are hidden; then the long text columns are shortened with an ellipsis, all to
    one width (the caption says so) rather than hidden; columns go from the last one on only
    once the text columns are as short as they get; row ids are never cut."""
    root = tmp_path / "long"
    catalog = Catalog.create(root, DigitsRowV1, partition_by=["run"])
    name, sha = "resnet50-lr0.001-wd1e-4-cosine-warmup5-seed1234", "3f2a9c1d7e" * 4
    ids = [
        catalog.append(
            DigitsRowV1(
                weights=fetch_weights(torch.nn.Linear(2, 2)),
                run=name,
                epoch=e,
                accuracy=0.5 + e / 10,
                commit_sha=sha,
                config=DigitsConfigV1(seed=e),
            ),
            fsync=False,
        )
        for e in range(2)
    ]
    wide = plain(invoke("ls", root, env={"TTY_COMPATIBLE": "1", "COLUMNS": "100"}).out)
    narrow = plain(invoke("ls", root, env={"TTY_COMPATIBLE": "1", "COLUMNS": "60"}).out)
    for out, width in ((wide, 100), (narrow, 60)):
        assert all(len(line) <= width for line in out.splitlines()), out
        assert all(row_id in out for row_id in ids), out
        assert name not in out and "resnet50-lr" in out, out
        caption = " ".join(out.split("rows;")[-1].split())
        assert "hidden to fit the terminal: written_at, architecture_version, config" in caption
    row = next(line.split() for line in wide.splitlines() if ids[0] in line)
    assert row[1].endswith("…") and row[-1].endswith("…") and len(row[1]) == len(row[-1]), row
    assert row[2:4] == ["0", "0.5"]  # shortening made room for every plain value
    assert "shortened to fit: run, commit_sha;" in " ".join(wide.split())
    assert "shortened to fit: run;" in " ".join(narrow.split())  # commit_sha went: the last
    assert "commit_sha, accuracy" in " ".join(narrow.split())


def test_sql_with_one_or_two_arguments(cat: Fixture, tmp_path: Path) -> None:
    grouped = "SELECT run, max(accuracy) AS best FROM models GROUP BY run ORDER BY run"
    first_row = "SELECT row_id, epoch FROM models ORDER BY row_id LIMIT 1"
    one = invoke("sql", grouped, env={"MODELROWS_CATALOG": str(cat.root)})
    two = invoke("sql", cat.root, first_row, "--format", "json")
    assert (one.code, one.out) == (0, "run,best\na,0.8\nb,0.79\n"), one
    assert two.code == 0, two
    first = cat.ids[("a", 0)]
    assert json.loads(two.out) == [{"row_id": first, "epoch": 0}]


def test_best_and_nothing_found(cat: Fixture, tmp_path: Path) -> None:
    top = invoke("best", cat.root, "--by", "accuracy", "--format", "json")
    none = invoke("best", cat.root, "--by", "accuracy", "--where", "epoch > 10")
    assert top.code == 0, top
    best = json.loads(top.out)
    assert best["row_id"] == cat.ids[("a", 3)]
    assert (best["run"], best["epoch"], best["accuracy"]) == ("a", 3, 0.8)
    assert "weights" not in best
    assert (none.code, none.out) == (1, ""), none
    assert none.err == (
        f"modelrows: no row of {cat.root} has a value for 'accuracy' where epoch > 10\n"
    )


def test_best_min_as_csv_and_as_a_table(cat: Fixture) -> None:
    lowest = invoke("best", "-c", cat.root, "--min", "--where", "run = 'b'", "-f", "csv")
    assert lowest.code == 0, lowest
    (row,) = csv.DictReader(io.StringIO(lowest.out))
    assert (row["row_id"], row["accuracy"]) == (cat.ids[("b", 0)], "0.55")
    table = invoke("best", cat.root, "--by", "epoch", "-f", "table")
    assert table.code == 0, table
    assert re.search(rf"row_id\s+{cat.ids[('a', 3)]}", table.out)  # ties: the earliest row
    assert re.search(r"accuracy\s+0\.8\b", table.out)


# -- show ------------------------------------------------------------------------------------------


def test_show_a_row_of_a_catalog(cat: Fixture, tmp_path: Path) -> None:
    row_id = cat.ids[("a", 3)]
    weights = cat.weights[row_id]
    declared = {"MODELROWS_IMPORT": "cli_rows"}
    table = run("show", cat.root, row_id, cwd=tmp_path)  # a process where it is undeclared
    as_json = invoke("show", row_id, "-c", cat.root, "-f", "json", env=declared)
    assert table.code == 0, table
    for text in [
        row_id,
        "clitest.digits.model@1 > modelrows.model@1",
        "not declared in this process: clitest.digits.model@1",
        "encode.weight", "float32", "(6, 6)", "tied to encode.weight", "norm.num_batches_tracked",
        weights.fingerprint, f"{weights.checksum}  intact",
    ]:  # fmt: skip
        assert text in table.out, text

    assert as_json.code == 0, as_json
    facts = json.loads(as_json.out)
    assert facts["read_as"] == facts["schema"] == "clitest.digits.model@1>modelrows.model@1"
    assert [c["declared_by"] for c in facts["chain"]] == [
        "cli_rows.DigitsRowV1",
        "modelrows.ModelV1",
    ]
    fields = {f["name"]: f for f in facts["fields"]}
    assert fields["config"]["value"] == {"seed": 3, "dropout_rate": 0.1}
    assert fields["epoch"]["type"] == "int | None"
    tensors = facts["weights"]["weights"]
    assert [t["name"] for t in tensors["tensors"]] == list(weights)
    assert tensors["tensors"][-2] == {
        "name": "decode.weight",
        "dtype": "float32",
        "shape": [6, 6],
        "nbytes": 144,
        "tied_to": "encode.weight",
    }
    assert (tensors["intact"], tensors["nbytes"]) == (True, weights.nbytes)


def test_show_a_row_file_and_a_catalog(cat: Fixture, tmp_path: Path) -> None:
    single = tmp_path / "single.model.arrow"
    linear = fetch_weights(torch.nn.Linear(3, 2))
    write_model_row(single, ModelV1(weights=linear, architecture_version=7))
    from_file = invoke("show", single)
    assert from_file.code == 0, from_file
    assert str(single) in from_file.out and "modelrows.model@1" in from_file.out
    assert re.search(r"architecture_version\s+int \| None\s+7", from_file.out)
    assert f"{linear.checksum}  intact" in from_file.out
    described = invoke("show", cat.root)
    assert described.code == 0, described
    for text in ["partitioned by  run", "rows            8", "accuracy", "weights"]:
        assert text in described.out, text


# -- verify, vacuum --------------------------------------------------------------------------------


def test_verify_lists_corrupt_rows(cat: Fixture, tmp_path: Path) -> None:
    bad = copy_of(cat, tmp_path, "bad")
    flipped, truncated = cat.ids[("a", 1)], cat.ids[("b", 0)]
    (flipped_path,) = bad.glob(f"run=a/{flipped}.*")
    data = bytearray(flipped_path.read_bytes())
    at = data.find(cat.weights[flipped]["encode.bias"].numpy().tobytes())
    assert at > 0
    data[at] ^= 0x40
    flipped_path.write_bytes(bytes(data))
    (truncated_path,) = bad.glob(f"run=b/{truncated}.*")
    truncated_path.write_bytes(truncated_path.read_bytes()[:100])

    corrupt = run("verify", "-c", bad, cwd=tmp_path, env={"TTY_COMPATIBLE": "1"})
    assert corrupt.code == 1, corrupt
    lines = plain(corrupt.out).splitlines()
    assert lines[0] == f"2 of 8 rows are corrupt in {bad}:"
    assert lines[1].startswith(f"  {flipped}  {flipped_path}: checksum mismatch in column")
    assert lines[2].startswith(f"  {truncated}  {truncated_path}: not an Arrow IPC file")
    assert "verifying" in corrupt.err  # the progress bar, on a terminal

    ok = invoke("verify", cat.root)
    assert (ok.code, ok.out) == (0, f"8 rows verified in {cat.root}: all intact\n"), ok
    shown = invoke("show", bad, flipped)
    assert shown.code == 1, shown
    assert "MISMATCH: stored" in shown.out


def test_vacuum_removes_leftover_temporary_files(cat: Fixture, tmp_path: Path) -> None:
    root = copy_of(cat, tmp_path)
    leftover = root / "run=a" / f".{cat.ids[('a', 0)]}.x.arrow.4194303-0a1b2c.tmp"
    leftover.write_bytes(b"half a row")
    os.utime(leftover, (0, 0))  # old enough, whoever wrote it
    gone = {"MODELROWS_CATALOG": str(tmp_path / "gone")}
    vacuumed = invoke("vacuum", root)
    missing = invoke("vacuum", env=gone)
    assert (vacuumed.code, vacuumed.out) == (0, f"{leftover}\nremoved 1 temporary file\n")
    assert not leftover.exists()
    assert len(Catalog.open(root)) == 8
    assert_user_error(
        missing,
        f"no catalog at {tmp_path / 'gone'} ($MODELROWS_CATALOG); pass the catalog directory, "
        "use --catalog DIR, or set MODELROWS_CATALOG",
    )


# -- export, import --------------------------------------------------------------------------------


def test_export_then_import_round_trips_the_weights(cat: Fixture, tmp_path: Path) -> None:
    root = copy_of(cat, tmp_path)
    row_id = cat.ids[("a", 3)]
    out = tmp_path / "a3.safetensors"
    exported = invoke("export", row_id, "--to", out, env={"MODELROWS_CATALOG": str(root)})
    assert exported.code == 0, exported
    nbytes = cat.weights[row_id].nbytes  # the tied tensor counted once
    assert exported.out == f"exported row {row_id} to {out}: 9 tensors, {nbytes:,} bytes\n"
    with safe_open(str(out), framework="pt") as f:
        meta: dict[str, Any] = f.metadata()
        assert set(f.keys()) == set(cat.weights[row_id])
    assert meta["format"] == "pt"
    assert meta["modelrows.schema"] == "clitest.digits.model@1>modelrows.model@1"
    assert meta["modelrows.row_id"] == row_id
    assert json.loads(meta["modelrows.ties"]) == {"decode.weight": "encode.weight"}

    fields = ["--set", "run=imported", "--set", "epoch=9", "--set", "accuracy=0.25"]
    imported = invoke("import", out, root, "--module", "cli_rows", *fields)
    assert imported.code == 0, imported
    new_id = imported.out.strip()
    assert (
        imported.err == f"imported {out} to {root} as row {new_id}: 9 tensors, {nbytes:,} bytes\n"
    )
    row = Catalog.open(root).get(new_id, verify=True)
    assert isinstance(row, DigitsRowV1)
    assert (row.run, row.epoch, row.accuracy, row.config) == ("imported", 9, 0.25, None)
    assert row.weights == cat.weights[row_id]  # names, order, dtypes, bytes and the tie
    assert row.weights.checksum == cat.weights[row_id].checksum


def test_export_and_import_errors(cat: Fixture, tmp_path: Path) -> None:
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(st))
    module = ["--module", "cli_rows"]
    unknown = invoke("export", cat.root, "01NOSUCHROW", "--to", tmp_path / "x")
    undeclared = run("import", st, cat.root, "--set", "run=x", cwd=tmp_path)
    assert_user_error(unknown, f"no row '01NOSUCHROW' in the catalog at {cat.root}")
    assert not (tmp_path / "x").exists()
    assert_user_error(
        undeclared,
        f"{cat.root} holds clitest.digits.model@1>modelrows.model@1 rows, but "
        "clitest.digits.model@1 is not declared in this process; name the module that declares "
        "it: --module my_pkg.rows (or set MODELROWS_IMPORT)",
    )
    bad_int = invoke("import", st, cat.root, *module, "--set", "run=x", "--set", "epoch=three")
    assert_user_error(bad_int, "--set epoch=three: epoch is int | None, not 'three'")

    nested = invoke("import", st, cat.root, *module, "--set", "run=x", "--set", "config=1")
    assert_user_error(
        nested,
        "--set config: config is clitest.digits.config@1 | None, a nested row; the command line "
        "sets only int, float, str and bool fields (use the Python API for the others: "
        "modelrows.import_safetensors)",
    )
    missing = invoke("import", st, cat.root, env={"MODELROWS_IMPORT": "cli_rows"})
    assert_user_error(missing, "DigitsRowV1 needs run: pass --set run=...")
    unknown_field = invoke("import", st, cat.root, *module, "--set", "epohc=1")
    assert_user_error(
        unknown_field,
        "--set epohc: DigitsRowV1 has no such field; did you mean 'epoch'? (fields you can set: "
        "architecture_version, run, epoch, accuracy, commit_sha, config)",
    )
    assert len(Catalog.open(cat.root)) == 8


# -- user errors -----------------------------------------------------------------------------------


def test_user_errors_are_one_line_and_status_2(
    cat: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)  # no ./catalog here
    no_catalog = run("ls", cwd=empty)  # the status the shell sees
    bad_sql = invoke("sql", cat.root, "SELECT nope FROM models")
    unknown = invoke("show", cat.root, "01NOSUCHROW")
    assert_user_error(
        no_catalog,
        "no catalog at catalog (the default); pass the catalog directory, use --catalog DIR, "
        "or set MODELROWS_CATALOG",
    )
    assert (bad_sql.code, bad_sql.out) == (2, "")
    assert bad_sql.err.startswith("modelrows: error: SQL error: Binder Error: ")
    assert "Traceback" not in bad_sql.err
    assert_user_error(unknown, f"no row '01NOSUCHROW' in the catalog at {cat.root}")

    bad_sort = invoke("ls", cat.root, "--sort", "nope")
    assert_user_error(
        bad_sort,
        f"cannot sort by 'nope': not a column of {cat.root} (columns: row_id, written_at, "
        "architecture_version, run, epoch, accuracy, commit_sha, config)",
    )
    assert_user_error(invoke("sql"), 'missing QUERY; usage: modelrows sql [CATALOG] "SELECT ..."')
    typo = tmp_path / "typo.model.arrow"  # a path, not a row id of the default catalog
    assert_user_error(invoke("show", typo), f"{typo}: no such file")
    assert_user_error(
        invoke("show", typo, "-c", cat.root),
        f"{typo}: no such file, nor a row of the catalog at {cat.root}",
    )
    assert_user_error(
        invoke("ls", cat.root, "-c", cat.root),
        f"two catalogs given ({str(cat.root)!r} and --catalog {str(cat.root)!r}); give one",
    )


def test_sql_errors_keep_the_caret_under_the_error(cat: Fixture) -> None:
    typo = invoke("sql", cat.root, "SELEC * FROM models")
    assert (typo.code, typo.out) == (2, ""), typo
    assert typo.err == (
        'modelrows: error: SQL error: Parser Error: syntax error at or near "SELEC"\n'
        "\n"
        "LINE 1: SELEC * FROM models\n"
        "        ^^^^^\n"
    )
    where = invoke("ls", cat.root, "--where", "epoch >")
    assert where.code == 2, where
    line, caret = where.err.splitlines()[-2:]
    assert line.startswith("LINE 1: ") and caret.strip() == "^"
    assert line[len(caret) - 1] == ">"  # the caret under the character DuckDB points at
    stacked = invoke("ls", cat.root, "--where", "epoch > 1) ; SELECT 1 --")
    assert stacked.code == 2 and "Parser Error" in stacked.err, stacked  # one expression only
    column = invoke("ls", cat.root, "--where", "acuracy > 0.5")
    assert column.code == 2, column
    assert 'Referenced column "acuracy" not found' in column.err
    assert 'Candidate bindings: "accuracy"' in column.err


def test_a_query_where_the_catalog_goes_is_explained(cat: Fixture, tmp_path: Path) -> None:
    swapped = invoke("sql", "SELECT count(*) FROM models", cat.root)
    assert_user_error(
        swapped,
        "'SELECT count(*) FROM models' looks like a query, not a catalog directory; the catalog "
        f"comes first: modelrows sql {cat.root} 'SELECT count(*) FROM models'",
    )
    lone = invoke("ls", "select * from models")
    assert_user_error(
        lone,
        "'select * from models' looks like a query, not a catalog directory; run it with: "
        'modelrows sql [CATALOG] "SELECT ... FROM models"',
    )
    condition = invoke("best", "epoch > 2")
    assert_user_error(
        condition,
        "'epoch > 2' looks like a SQL condition, not a catalog directory; give it with --where",
    )
    missing = invoke("ls", tmp_path / "nope")
    assert_user_error(
        missing,
        f"no catalog at {tmp_path / 'nope'} (the argument); pass the catalog directory, use "
        "--catalog DIR, or set MODELROWS_CATALOG",
    )


def test_unknown_columns_suggest_the_nearest(cat: Fixture) -> None:
    columns = "row_id, written_at, architecture_version, run, epoch, accuracy, commit_sha, config"
    assert_user_error(
        invoke("ls", cat.root, "--sort", "acuracy"),
        f"cannot sort by 'acuracy': not a column of {cat.root}; did you mean 'accuracy'? "
        f"(columns: {columns})",
    )
    assert_user_error(
        invoke("best", cat.root, "--by", "Epoch"),
        f"cannot rank by 'Epoch': not a column of {cat.root}; did you mean 'epoch'? "
        f"(columns: {columns})",
    )
    assert_user_error(
        invoke("plot", cat.root, "--y", "accuracy", "--by", "rum"),
        f"cannot group by 'rum': not a column of {cat.root}; did you mean 'run'? "
        f"(columns: {columns})",
    )


# -- bytes, two weights columns, nested fields ----------------------------------------------------


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A catalog of TwoWeightsV1 rows: weights and ema, and a 6,716-byte blob."""
    root = tmp_path_factory.mktemp("two") / "catalog"
    catalog = Catalog.create(root, TwoWeightsV1)
    row_id = catalog.append(
        TwoWeightsV1(
            weights=fetch_weights(torch.nn.Linear(3, 2)),
            ema=fetch_weights({"w": torch.ones(5)}),
            run="a",
            blob=bytes(range(256)) * 26 + bytes(60),
        ),
        fsync=False,
    )
    return root, row_id


def test_bytes_are_summarized_in_tables_and_csv_unless_raw(two: tuple[Path, str]) -> None:
    root, _ = two
    blob = bytes(range(256)) * 26 + bytes(60)
    table = invoke("ls", root, "-f", "table")
    assert "<bytes: 6,716>" in table.out and "weights" not in table.out, table
    as_csv = invoke("sql", root, "SELECT run, blob FROM models")
    assert as_csv.out == 'run,blob\na,"<bytes: 6,716>"\n', as_csv
    raw = invoke("sql", root, "SELECT run, blob FROM models", "--raw")
    assert raw.out == f"run,blob\na,{base64.b64encode(blob).decode()}\n"
    as_json = invoke("best", root, "--by", "run", "-f", "json")  # JSON stays lossless
    assert base64.b64decode(json.loads(as_json.out)["blob"]) == blob
    narrow = invoke("sql", root, "SELECT * FROM models", "-f", "table", env={"COLUMNS": "60"})
    caption = " ".join(plain(narrow.out).split())
    assert "hidden to fit the terminal:" in caption and "; hidden" not in caption  # no stray ;


def test_export_picks_the_weights_column_by_default(two: tuple[Path, str], tmp_path: Path) -> None:
    root, row_id = two
    out = tmp_path / "w.safetensors"
    default = invoke("export", root, row_id, "--to", out)
    assert default.out == f"exported row {row_id} to {out}: 2 tensors, 32 bytes\n", default
    with safe_open(str(out), framework="pt") as f:
        assert (f.metadata()["modelrows.column"], sorted(f.keys())) == (
            "weights",
            ["bias", "weight"],
        )
    ema = invoke("export", root, row_id, "--to", out, "--column", "ema")
    assert ema.out == f"exported row {row_id} to {out}: 1 tensors, 20 bytes (column ema)\n", ema
    assert_user_error(
        invoke("export", root, row_id, "--to", out, "--column", "emma"),
        f"row {row_id} has no weights column 'emma'; did you mean 'ema'? (weights columns: "
        "weights, ema)",
    )
    imported = invoke("import", out, root, "--module", "cli_rows", "--set", "run=b")
    assert imported.code == 0, imported
    row = Catalog.open(root).get(imported.out.strip())
    assert (row.run, row.ema, list(row.weights)) == ("b", None, ["w"])  # weights by default


def test_import_names_a_field_it_cannot_set(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    Catalog.create(root, CkptV1)
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(st))
    nested = invoke("import", st, root, "--module", "cli_rows", "--set", "run=a")
    assert_user_error(
        nested,
        "CkptV1 needs hparams (clitest.digits.config@1), which the command line cannot set (it "
        "sets int, float, str and bool fields); import with the Python API: "
        "modelrows.import_safetensors(path, row_class, values={...})",
    )


def test_import_into_rows_needing_another_weights_column_points_to_python(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ts"
    Catalog.create(root, TeacherStudentV1)
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(st))
    assert_user_error(
        invoke("import", st, root, "--module", "cli_rows", "--set", "run=a"),
        "TeacherStudentV1 also needs the weights column teacher, which a safetensors file of one "
        "model's tensors cannot fill and the command line cannot set; build the row in Python "
        "(modelrows.import_safetensors(path, row_class, values={...}) with the other columns in "
        "values) and append it",
    )
    # the file may fill that column instead; then `weights` is the one missing
    assert_user_error(
        invoke("import", st, root, "--module", "cli_rows", "--column", "teacher", "--set", "run=a"),
        "TeacherStudentV1 also needs the weights column weights, which a safetensors file of one "
        "model's tensors cannot fill and the command line cannot set; build the row in Python "
        "(modelrows.import_safetensors(path, row_class, values={...}) with the other columns in "
        "values) and append it",
    )
    assert len(Catalog.open(root)) == 0


# -- user errors of export and import (one line, status 2) -----------------------------------------


def test_export_to_a_missing_directory_is_one_line(cat: Fixture, tmp_path: Path) -> None:
    target = tmp_path / "nonexistent" / "dir" / "x.safetensors"
    row_id = cat.ids[("a", 1)]
    done = run("export", cat.root, row_id, "--to", target, cwd=tmp_path)  # the shell's view
    assert_user_error(
        done,
        f"cannot write {target}: the directory {target.parent} does not exist; create it first",
    )


def test_export_never_replaces_a_link_fifo_or_device(cat: Fixture, tmp_path: Path) -> None:
    row_id = cat.ids[("a", 1)]
    precious = tmp_path / "precious"
    precious.write_text("keep")
    link = tmp_path / "link.safetensors"
    link.symlink_to(precious)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    for target, kind in [
        (link, "a symbolic link"),
        (fifo, "a FIFO"),
        (Path("/dev/null"), "a device"),
    ]:
        assert_user_error(
            invoke("export", cat.root, row_id, "--to", target),
            f"cannot write {target}: it is {kind}, and export replaces only regular files; "
            "remove it or choose another path",
        )
    assert precious.read_text() == "keep" and link.is_symlink() and fifo.is_fifo()


def test_import_of_malformed_metadata_is_one_line(cat: Fixture, tmp_path: Path) -> None:
    st = tmp_path / "deep.safetensors"
    save_file(
        {"w": torch.ones(2)}, str(st), metadata={"modelrows.names": "[" * 50_000 + "]" * 50_000}
    )
    deep = invoke("import", st, cat.root, "--module", "cli_rows", "--set", "run=x")
    assert_user_error(
        deep,
        f"{st}: metadata 'modelrows.names' is not a list of tensor names in JSON; remove the key "
        "(the tensors import without it) or export the file again",
    )
    assert_user_error(
        invoke("import", tmp_path / "none.safetensors", cat.root, "-m", "cli_rows", "-s", "run=x"),
        f"{tmp_path / 'none.safetensors'}: no such file",
    )
    assert len(Catalog.open(cat.root)) == 8


def test_show_separates_the_weights_columns_by_a_blank_line(two: tuple[Path, str]) -> None:
    root, row_id = two
    lines = plain(invoke("show", root, row_id, "-f", "table").out).splitlines()
    ema = next(i for i, line in enumerate(lines) if line.startswith("ema: 1 tensors"))
    checksum = max(i for i, line in enumerate(lines[:ema]) if line.startswith("checksum"))
    assert lines[checksum + 1 : ema] == [""], lines[checksum : ema + 1]
