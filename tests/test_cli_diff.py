"""``modelrows diff``: two rows' weights compared tensor by tensor, by id or by file."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

from cli_rows import DigitsRowV1, assert_user_error, invoke, plain
from modelrows import Catalog, fetch_weights, write_model_row


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Row A and row B: B moved one tensor, grew one, dropped one, added one, cast one."""
    root = tmp_path_factory.mktemp("diff") / "catalog"
    catalog = Catalog.create(root, DigitsRowV1, partition_by=["run"])
    a = {
        "embed.weight": torch.ones(4, 4),
        "head.weight": torch.full((2, 4), 2.0),
        "head.bias": torch.zeros(2),
        "old.weight": torch.ones(3),
        "steps": torch.tensor(10),
        "norm.weight": torch.ones(4),
    }
    b = dict(a)
    b["head.weight"] = torch.full((2, 4), 3.0)  # moved by 1.0 per element: 50% of its size
    b["embed.weight"] = torch.ones(4, 4) * 1.01  # 1%
    b["head.bias"] = torch.zeros(3)  # grown
    del b["old.weight"]
    b["new.weight"] = torch.ones(2)
    b["steps"] = torch.tensor(20)  # an integer counter: listed, not ranked
    b["norm.weight"] = torch.ones(4).bfloat16()
    ids = [
        catalog.append(DigitsRowV1(weights=fetch_weights(w), run="r", epoch=i), fsync=False)
        for i, w in enumerate((a, b))
    ]
    return root, ids[0], ids[1]


def test_diff_table_lists_every_tensor_and_the_overall_change(rows: tuple[Path, str, str]) -> None:
    root, a, b = rows
    done = invoke("diff", root, a, b, "-f", "table")
    assert done.code == 0, done
    text = plain(done.out)
    lines = {line.split()[0]: " ".join(line.split()) for line in text.splitlines() if line.strip()}
    assert lines["A"] == f"A {a} (run r, epoch 0)" and lines["B"] == f"B {b} (run r, epoch 1)"
    assert lines["tensors"] == "tensors 7: 4 changed, 1 shape, 1 only in A, 1 only in B"
    assert lines["head.weight"] == "head.weight (2, 4) float32 changed 2.828 50% 1 1.000000"
    assert lines["embed.weight"] == "embed.weight (4, 4) float32 changed 0.04 1% 0.01 1.000000"
    assert lines["head.bias"] == "head.bias (2,) -> (3,) float32 shape - - - -"
    assert lines["old.weight"] == "old.weight (3,) float32 only in A - - - -"
    assert lines["new.weight"] == "new.weight (2,) float32 only in B - - - -"
    # a cast that changed no value: changed (the dtype), by 0
    assert lines["norm.weight"] == "norm.weight (4,) float32 -> bfloat16 changed 0 0% 0 1.000000"
    assert lines["steps"] == "steps () int64 changed 10 100% 10 1.000000"
    # over the floating-point tensors A and B share: ||B-A|| and ||A||
    moved = math.sqrt(8 * 1.0 + 16 * 0.01**2)
    size = math.sqrt(16 + 8 * 4.0 + 4)
    assert lines["overall"] == (
        f"overall ||B-A|| {moved:.4g}, {100 * moved / size:.3g}% of ||A|| (floating-point tensors)"
    )


def test_diff_top_json_csv_and_files(rows: tuple[Path, str, str], tmp_path: Path) -> None:
    root, a, b = rows
    top = invoke("diff", a, b, "--top", "1", "-f", "table", env={"MODELROWS_CATALOG": str(root)})
    assert top.code == 0, top
    listed = [line.split()[0] for line in plain(top.out).splitlines()[6:] if line.strip()]
    assert "the 1 floating-point tensors that changed most" in " ".join(plain(top.out).split())
    assert listed[-1] == "head.weight" and "embed.weight" not in listed and "steps" not in listed

    as_json = json.loads(invoke("diff", "-c", root, a, b, "-f", "json").out)
    assert (as_json["a"], as_json["b"], as_json["summary"]["changed"]) == (a, b, 4)
    head = next(t for t in as_json["tensors"] if t["name"] == "head.weight")
    assert head == {
        "name": "head.weight", "status": "changed", "dtype_a": "float32", "dtype_b": "float32",
        "shape_a": [2, 4], "shape_b": [2, 4], "l2": math.sqrt(8), "relative": 0.5,
        "max_abs": 1.0, "cosine": head["cosine"], "norm_a": math.sqrt(32),
        "norm_b": math.sqrt(72),
    }  # fmt: skip
    assert head["cosine"] == pytest.approx(1.0, abs=1e-12)  # parallel: only the scale changed
    grown = next(t for t in as_json["tensors"] if t["name"] == "head.bias")
    assert (grown["status"], grown["l2"], grown["shape_b"]) == ("shape", None, [3])

    table = list(csv.DictReader(io.StringIO(invoke("diff", root, a, b).out)))  # piped: CSV
    assert [r["name"] for r in table][:2] == ["embed.weight", "head.weight"]
    assert table[1]["shape_a"] == "(2, 4)" and float(table[1]["relative"]) == 0.5

    row_a, row_b = tmp_path / "a.model.arrow", tmp_path / "b.model.arrow"
    catalog = Catalog.open(root)
    write_model_row(row_a, catalog.get(a))
    write_model_row(row_b, catalog.get(b))
    files = json.loads(invoke("diff", row_a, row_b, "-f", "json").out)  # no catalog needed
    assert files["tensors"] == as_json["tensors"]


def test_diff_errors(rows: tuple[Path, str, str]) -> None:
    root, a, _b = rows
    assert_user_error(
        invoke("diff", root, a),
        "diff needs two rows after the catalog; usage: modelrows diff [CATALOG] A B",
    )
    assert_user_error(
        invoke("diff", root, a, "01NOSUCHROW"), f"no row '01NOSUCHROW' in the catalog at {root}"
    )
    assert_user_error(invoke("diff", a), "diff needs two rows; usage: modelrows diff [CATALOG] A B")
    assert_user_error(
        invoke("diff", root, a, a, "--column", "wieghts"),
        f"row {a} has no weights column 'wieghts'; did you mean 'weights'? (weights columns: weights)",
    )


def test_diff_top_of_a_row_with_itself_says_nothing_changed(rows: tuple[Path, str, str]) -> None:
    root, a, _ = rows
    same = invoke("diff", root, a, a, "--top", "3", "-f", "table")
    assert same.code == 0, same
    text = " ".join(plain(same.out).split())
    assert "no floating-point tensor changed" in text and "changed most" not in text
    assert "||B-A|| 0" in text
