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


def probe(*argv: str) -> tuple[str, dict[str, object]]:
    """Run ``modelrows ARGV`` (or only ``import modelrows``) fresh: its stdout, exit code, and
    which heavy modules it loaded."""
    environ = {k: v for k, v in os.environ.items() if k != "MODELROWS_CATALOG"}
    environ.update(PYTHONPATH=str(SRC), COLUMNS="100", NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}", *argv],
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
