"""``modelrows plot``: panels, defaults, resumed runs, formats and errors.

The images are checked for what a test can see (format, size, not blank); the pictures
themselves were looked at when the plot changed (docs/curves.png is one).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli_rows import CnnRowV1, assert_user_error, invoke
from modelrows import Catalog, fetch_weights
from modelrows.cli._plot import best_points, lines


def loss(epoch: int, shift: float = 0.0) -> float:
    return 0.64 * math.exp(-0.45 * epoch) + 0.03 + shift


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, int], str]]:
    """Run a: epochs 1-8, then resumed from epoch 5 (epochs 6-10 again); run b fine-tuned
    from a's epoch 3 (epochs 4-8). Rows of a resumed run record the row they resumed from."""
    root = tmp_path_factory.mktemp("plot") / "cnn"
    catalog = Catalog.create(root, CnnRowV1, partition_by=["run"])
    weights = fetch_weights(torch.nn.Linear(2, 2))
    ids: dict[tuple[str, int], str] = {}

    def add(run: str, epoch: int, parent: str | None = None, shift: float = 0.0) -> None:
        value = loss(epoch, shift)
        row = CnnRowV1(weights=weights, run=run, epoch=epoch, val_loss=value,
                       accuracy=1 - value, parent_row_id=parent)  # fmt: skip
        key = (run if parent is None or run != "a" else "a2", epoch)
        ids[key] = catalog.append(row, fsync=False)

    for epoch in range(1, 9):
        add("a", epoch)
    for epoch in range(6, 11):
        add("a", epoch, parent=ids[("a", 5)], shift=-0.005)
    for epoch in range(4, 9):
        add("b", epoch, parent=ids[("a", 3)], shift=0.01 * (epoch - 3))
    return root, ids


def check_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", size)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # lines, text, antialiasing
        white = max(count for count, rgb in colors if rgb == (255, 255, 255))
        assert white < 0.97 * size[0] * size[1]  # not blank


def test_default_y_is_the_first_numeric_column_and_said(
    cnn: tuple[Path, dict], tmp_path: Path
) -> None:
    root, ids = cnn
    png = tmp_path / "curves.png"
    done = invoke("plot", root, "-o", png)
    assert done.code == 0, done
    assert done.err == "modelrows: plotting val_loss, the first numeric column; choose with --y\n"
    assert done.out == (  # a loss: lowest is best
        f"wrote {png}: 2 runs, 18 points; lowest val_loss {loss(10, -0.005):.4g} "
        f"(run a, epoch 10, row {ids['a2', 10]})\n"
    )
    check_png(png, (1200, 750))


def test_several_y_one_panel_each_log_scale_and_formats(
    cnn: tuple[Path, dict], tmp_path: Path
) -> None:
    root, ids = cnn
    png = tmp_path / "two.png"
    both = invoke("plot", root, "--y", "val_loss", "--y", "accuracy", "--log-y", "-o", png)
    assert both.code == 0, both
    assert both.err == ""  # y was given: no note
    assert both.out.endswith(
        f"; highest accuracy {1 - loss(10, -0.005):.4g} (run a, epoch 10, row {ids['a2', 10]})\n"
    )
    check_png(png, (1200, 1170))  # two panels stacked
    svg = invoke("plot", root, "--y", "accuracy", "--format", "svg", "-o", tmp_path / "c.svg")
    assert svg.code == 0, svg
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    pdf = invoke("plot", root, "--y", "accuracy", "-o", tmp_path / "c.pdf")
    assert pdf.code == 0, pdf
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
    maximal = invoke("plot", root, "--y", "val_loss", "--max", "-o", tmp_path / "m.png")
    assert "highest val_loss" in maximal.out and f"row {ids[('a', 1)]}" in maximal.out


def test_a_resumed_run_continues_from_the_row_it_resumed_from(cnn: tuple[Path, dict]) -> None:
    _root, ids = cnn
    rows = []
    for (run, epoch), row_id in ids.items():
        parent = {"a2": ids[("a", 5)], "b": ids[("a", 3)]}.get(run)
        rows.append(
            {
                "row_id": row_id,
                "g": run[0],
                "x": epoch,
                "y": float(epoch),
                "parent": parent,
            }
        )
    segments = lines(rows)
    drawn = [
        (s.group, s.origin.row_id if s.origin else None, [p.row_id for p in s.points])
        for s in segments
    ]
    assert drawn == [
        ("a", None, [ids[("a", e)] for e in range(1, 9)]),  # the first attempt, as it went
        ("a", ids[("a", 5)], [ids[("a2", e)] for e in range(6, 11)]),  # resumed at epoch 5
        ("b", ids[("a", 3)], [ids[("b", e)] for e in range(4, 9)]),  # from a's epoch 3
    ]
    best, overall = best_points(segments, minimize=False)
    assert {g: p.row_id for g, p in best.items()} == {"a": ids[("a2", 10)], "b": ids[("b", 8)]}
    assert overall is not None and overall.row_id == ids[("a2", 10)]

    chained = [  # a parent recorded on every row: still one line
        {"row_id": f"r{i}", "g": "c", "x": i, "y": 1.0, "parent": f"r{i - 1}" if i else None}
        for i in range(5)
    ]
    assert [[p.row_id for p in s.points] for s in lines(chained)] == [[f"r{i}" for i in range(5)]]
    unparented = [  # no parent column: one line per group, sorted by x
        {"row_id": f"r{i}", "g": "d", "x": 4 - i, "y": 1.0, "parent": None} for i in range(5)
    ]
    assert [p.x for p in lines(unparented)[0].points] == [0, 1, 2, 3, 4]
    nan = [{"row_id": "n", "g": "e", "x": 1, "y": math.nan, "parent": None}]
    assert best_points(lines(nan), minimize=True) == ({}, None)


def test_plot_errors(
    cnn: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = cnn
    assert_user_error(
        invoke("plot", root, "--format", "png", "-o", tmp_path / "c.svg"),
        f"--format png but --output {tmp_path / 'c.svg'} ends in .svg; make them agree",
    )
    assert_user_error(
        invoke("plot", root, "-o", tmp_path / "c.txt"),
        f"--output {tmp_path / 'c.txt'}: cannot tell the image format from its suffix; end it in "
        ".png, .svg or .pdf, or pass --format",
    )
    assert_user_error(
        invoke("plot", root, "--y", "run", "-o", tmp_path / "r.png"),
        "cannot plot 'run': it is string, not a number",
    )
    assert_user_error(
        invoke("plot", root, "--x", "run", "--y", "accuracy", "-o", tmp_path / "r.png"),
        "cannot plot against 'run': it is string, not a number or time",
    )
    empty = invoke(
        "plot", root, "--y", "accuracy", "--where", "epoch > 10", "-o", tmp_path / "x.png"
    )
    assert (empty.code, empty.out) == (1, ""), empty
    assert empty.err == (
        f"modelrows: nothing to plot: no row of {root} has both epoch and accuracy where epoch > 10\n"
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert_user_error(
        invoke("plot", root, "-o", tmp_path / "never.png"),
        "plot needs matplotlib, which is not installed; install it with: "
        "pip install 'modelrows[plot]'",
    )
    assert not list(tmp_path.iterdir())
