"""Hostile and broken files: a corpus of crafted files, each refused with its exact error naming
the file, read in a subprocess under a timeout while allocation is metered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hostile

CONTROL_DECLARES = 64 << 20  # what the unguarded control read must be seen allocating


def child_env() -> dict[str, str]:
    """The environment for a Python subprocess that imports what this one imports."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.mark.fuzz
def test_every_crafted_file_raises_its_exact_error_without_crash_hang_or_big_allocation(
    tmp_path: Path,
) -> None:
    built = hostile.build(tmp_path, control_declares=CONTROL_DECLARES)
    assert len(built) >= 20
    proc = subprocess.run(
        [sys.executable, hostile.__file__, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    last = next((x["reading"] for x in reversed(lines) if "reading" in x), None)
    assert proc.returncode == 0, (
        f"the reader died (rc {proc.returncode}) reading {last}:\n{proc.stderr}"
    )
    results = {x["file"]: x for x in lines if "file" in x}
    problems = []
    for case, path in built:
        got = results[path.name]
        if got["error"] != case.error or not got["ours"]:
            problems.append(f"{case.name}: raised {got['error']}: {got['message']}")
        elif not case.pattern(path).fullmatch(got["message"]):
            problems.append(f"{case.name}: message {got['message']!r}\n  expected {case.message!r}")
        size = path.stat().st_size if path.is_file() else 0
        bound = hostile.RELATIVE_PEAK * size + hostile.ABSOLUTE_PEAK
        if got["arrow_peak"] > bound or got["python_peak"] > bound:
            problems.append(f"{case.name}: allocated {got['arrow_peak']} + {got['python_peak']} B")
    assert problems == []
    controls = lines[-1]
    assert controls["marker_untouched"]  # nothing deserialized the hostile extension types ...
    assert controls["control_marker"]  # ... which unguarded pyarrow does deserialize
    assert controls["control_zstd_peak"] >= CONTROL_DECLARES  # and the meter sees allocations
    worst = max(results.values(), key=lambda r: r["arrow_peak"] + r["python_peak"])
    slowest = max(r["seconds"] for r in results.values())
    print(f"\n{len(built)} crafted files; worst peak {worst['arrow_peak']} + "
          f"{worst['python_peak']} B ({worst['file']}); slowest read {slowest * 1000:.1f} ms")  # fmt: skip
