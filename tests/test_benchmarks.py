"""The benchmark suite still runs: its quickest mode, end to end, in a subprocess.

Benchmarks are not timed tests: nothing here looks at a time or a ratio, only at the shape of
what the suite reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelrows

pytest.importorskip("safetensors")

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("save", "load", "peak", "query", "append")


@pytest.mark.slow
def test_quick_benchmarks_run_and_report_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    src = str(Path(modelrows.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    script = str(ROOT / "benchmarks" / "run.py")
    done = subprocess.run(
        [sys.executable, script, "--quick", "--json", str(out), "--dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| section" in done.stdout and "targets met:" in done.stdout
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    sections = {r["section"].split()[0].rstrip(",") for r in report["results"]}
    assert sections == set(SECTIONS)
    for r in report["results"]:
        assert r["value"] >= 0, r
        for label, met in r["targets"]:
            assert isinstance(label, str) and isinstance(met, bool)
    assert not list(tmp_path.glob("modelrows-bench-*")), "benchmark data was left behind"
