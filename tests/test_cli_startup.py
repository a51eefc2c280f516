"""Start-up: ``import modelrows`` and ``modelrows --help`` load none of the heavy libraries.

Each check runs in a fresh interpreter, which is the only place where what an import loads can
be seen (this test process has imported everything already).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ["torch", "polars", "duckdb", "pyarrow", "pyarrow.dataset", "numpy", "matplotlib"]
HEAVY += ["safetensors"]

PROBE = """
import json, sys
argv = sys.argv[1:]
if argv:
    sys.argv = ["modelrows", *argv]
    from modelrows.cli import main
    try:
        main()
    except SystemExit as exc:
        code = exc.code
else:
    import modelrows
    code = 0
sys.stdout.flush()
sys.stderr.write(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
"""


def probe(*argv: str, heavy: list[str] = HEAVY) -> tuple[str, dict[str, object]]:
    """Run ``modelrows ARGV`` (or only ``import modelrows``) fresh: its stdout, exit code, and
    which heavy modules it loaded."""
    environ = {k: v for k, v in os.environ.items() if k != "MODELROWS_CATALOG"}
    environ.update(PYTHONPATH=str(SRC), COLUMNS="100", NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {heavy!r}\n{PROBE}", *argv],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout, json.loads(done.stderr.splitlines()[-1])


def test_import_modelrows_loads_no_heavy_library() -> None:
    _, facts = probe()
    assert facts == {"code": 0, "loaded": []}


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["ls", "--help"], ["plot", "-h"]])
def test_help_and_version_load_no_heavy_library(argv: list[str]) -> None:
    out, facts = probe(*argv)
    assert facts == {"code": 0, "loaded": []}
    assert ("Usage: modelrows" in out) if argv != ["--version"] else out.startswith("modelrows ")


def test_metadata_commands_load_neither_torch_nor_polars_nor_pandas(tmp_path: Path) -> None:
    """ls, sql and best read the catalog's index: no tensor is built, and pyarrow is kept from
    importing pandas (which it does, where installed, on its first conversion)."""
    import torch.nn as nn

    from cli_rows import DigitsRowV1
    from modelrows import Catalog, fetch_weights

    cat = Catalog.create(tmp_path / "c", DigitsRowV1, partition_by=["run"])
    w = fetch_weights(nn.Linear(2, 2))
    cat.append_many([DigitsRowV1(weights=w, run="a", epoch=i, accuracy=i / 4) for i in range(4)])
    heavy = ["torch", "polars", "pandas", "matplotlib", "safetensors", "pyarrow.dataset"]
    for argv in (["ls", str(cat.root)], ["best", str(cat.root), "--by", "accuracy"],
                 ["sql", str(cat.root), "SELECT count(*) FROM models"]):  # fmt: skip
        out, facts = probe(*argv, heavy=heavy)
        assert facts == {"code": 0, "loaded": []}, argv
        assert out
