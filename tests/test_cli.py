"""The ``modelrows`` command line.

Commands run in this process through typer's runner (``invoke``): the same ``app`` the console
script runs, without a new interpreter. A few tests run the real console script as a subprocess
(``run``), where only a fresh process proves the point: the exit status the shell sees, output to
a pipe, a row class that is not declared in the process. The tests share one catalog.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli_rows import DigitsConfigV1, DigitsRowV1, TiedNet
from modelrows import Catalog, ModelV1, Weights, fetch_weights, write_model_row
from modelrows.cli import app

SCRIPT = Path(sys.executable).parent / "modelrows"
SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
COMMANDS = ["ls", "sql", "best", "show", "verify", "vacuum", "plot", "export", "import"]
ACCURACY = {"a": [0.5, 0.6, 0.7, 0.8], "b": [0.55, 0.62, 0.79, None]}
CLEARED = ("TTY_COMPATIBLE", "FORCE_COLOR", "MODELROWS_CATALOG", "MODELROWS_IMPORT")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run the console script next to this interpreter, with this checkout's code."""
    environ = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environ.update(PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]), COLUMNS="160", NO_COLOR="1")
    environ.update(env or {})
    done = subprocess.run(
        [str(SCRIPT), *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run the command's app in this process (for variants of what ``run`` already covers)."""
    environ: dict[str, str | None] = {k: None for k in CLEARED}
    environ.update({"COLUMNS": "160", "NO_COLOR": "1", **(env or {})})
    done = CliRunner().invoke(app, list(map(str, args)), env=environ, prog_name="modelrows")
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return Result(done.exit_code, done.stdout, done.stderr)


def plain(text: str) -> str:
    """Text without terminal escapes (NO_COLOR still leaves bold on a terminal)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def assert_user_error(result: Result, message: str) -> None:
    """Status 2, nothing on stdout, and exactly one line on stderr: the message."""
    assert (result.code, result.out) == (2, ""), result
    assert result.err == f"modelrows: error: {message}\n"


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


# -- plot ------------------------------------------------------------------------------------------


def test_plot_draws_learning_curves(cat: Fixture, tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    curves = ["--x", "epoch", "--y", "accuracy", "--by", "run", "-o", png]
    drawn = invoke("plot", cat.root, *curves)
    assert drawn.code == 0, drawn
    assert drawn.out == (
        f"wrote {png}: 2 lines, 7 points; best accuracy 0.8 (row {cat.ids[('a', 3)]})\n"
    )
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 750)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # lines, text, antialiasing
        white = max(count for count, rgb in colors if rgb == (255, 255, 255))
        assert white < 0.97 * image.size[0] * image.size[1]  # not blank


def test_plot_without_matplotlib(
    cat: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    missing = invoke("plot", cat.root, "-o", tmp_path / "never.png")
    assert_user_error(
        missing,
        "plot needs matplotlib, which is not installed; install it with: "
        "pip install 'modelrows[plot]'",
    )
    assert not (tmp_path / "never.png").exists()


def test_plot_with_nothing_to_plot(cat: Fixture, tmp_path: Path) -> None:
    empty = invoke("plot", cat.root, "--where", "epoch > 10", "-o", tmp_path / "x.png")
    assert (empty.code, empty.out) == (1, ""), empty
    assert empty.err == (
        f"modelrows: nothing to plot: no row of {cat.root} has both epoch and accuracy "
        "where epoch > 10\n"
    )
    assert not (tmp_path / "x.png").exists()


# -- export, import --------------------------------------------------------------------------------


def test_export_then_import_round_trips_the_weights(cat: Fixture, tmp_path: Path) -> None:
    root = copy_of(cat, tmp_path)
    row_id = cat.ids[("a", 3)]
    out = tmp_path / "a3.safetensors"
    exported = invoke("export", row_id, "--to", out, env={"MODELROWS_CATALOG": str(root)})
    assert exported.code == 0, exported
    nbytes = cat.weights[row_id].nbytes  # the tied tensor counted once
    assert exported.out == f"wrote {out}: 9 tensors, {nbytes:,} bytes from row {row_id}\n"
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
        "sets only int, float, str and bool fields (use the Python API for the others)",
    )
    missing = invoke("import", st, cat.root, env={"MODELROWS_IMPORT": "cli_rows"})
    assert_user_error(missing, "DigitsRowV1 needs run: pass --set run=...")
    unknown_field = invoke("import", st, cat.root, *module, "--set", "lr=0.1")
    assert_user_error(
        unknown_field,
        "--set lr: DigitsRowV1 has no such field (fields you can set: architecture_version, "
        "run, epoch, accuracy, commit_sha, config)",
    )
    assert len(Catalog.open(cat.root)) == 8


# -- user errors -----------------------------------------------------------------------------------


def test_user_errors_are_one_line_and_status_2(cat: Fixture, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
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
    assert bad_sql.err.count("\n") == 1 and "Traceback" not in bad_sql.err
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
        invoke("ls", cat.root, "-c", cat.root),
        f"two catalogs given ({str(cat.root)!r} and --catalog {str(cat.root)!r}); give one",
    )
