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


QUERY_KINDS = ("best", "len", "scan filter", "sql filter", "get")


@pytest.mark.slow
def test_quick_index_benchmark_runs_and_reports_every_query(tmp_path: Path) -> None:
    """benchmarks/index.py --quick: every query on the real and the fast-path catalog, from a
    fresh open and a warm object, the peers, the command line and the paired appends."""
    out = tmp_path / "index.json"
    src = str(Path(modelrows.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    script = str(ROOT / "benchmarks" / "index.py")
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
    rows, big = report["rows"], report["big_rows"]
    results = report["results"]
    # how each catalog was built is said, fast path included
    assert any("append_many" in line and "compact()" in line for line in report["how"])
    assert any("Index.rebuild" in line for line in report["how"])
    peers = ["modelrows", "parquet"]
    try:
        import lance  # noqa: F401
    except ImportError:
        assert any("Lance: not installed" in line for line in report["how"])
    else:
        peers.append("lance")
    for n in (rows, big):
        for state in ("fresh open", "warm object"):
            section = f"query {n:,} rows, {state}"
            found = {
                (r["extra"]["who"], r["extra"]["kind"]) for r in results if r["section"] == section
            }
            assert found == {(who, kind) for who in peers for kind in QUERY_KINDS}, section
    mine = [r for r in results if r["name"].startswith("modelrows: ") and "fresh" in r["section"]]
    for r in mine:
        assert r["value"] > 0
        expected = {"vs Parquet+DuckDB"} | ({"vs Lance"} if "lance" in peers else set())
        assert set(r["ratios"]) == expected
    # the targets of issue 13: each query at the real size, best at the big size, the CLI, appends
    labelled = {
        (r["section"], r["extra"].get("kind"), label) for r in results for label, _ in r["targets"]
    }
    for kind, limit in (
        ("best", 100),
        ("len", 20),
        ("scan filter", 100),
        ("sql filter", 100),
        ("get", 5),
    ):
        assert (f"query {rows:,} rows, fresh open", kind, f"< {limit} ms") in labelled
    assert (f"query {big:,} rows, fresh open", "best", "< 1000 ms") in labelled
    assert any(r["section"] == f"cli {rows:,} rows" and r["targets"] for r in results)
    # the same queries with appends the index has not compacted yet (log entries read each time)
    uncompacted = [r for r in results if r["section"].startswith(f"query {rows:,} rows + ")]
    assert {r["extra"]["kind"] for r in uncompacted} == set(QUERY_KINDS)
    assert all(r["extra"]["log_entries"] >= 1 for r in uncompacted)
    appends = [r for r in results if r["section"].startswith("append") and r["targets"]]
    assert {r["section"].split(",")[1].strip() for r in appends} == {"fsync=False", "fsync=True"}
    for r in appends:
        assert r["ratios"]["paired vs the file alone"] > 0
    assert not list(tmp_path.glob("modelrows-bench-index-*")), "benchmark data was left behind"
