"""The README's examples run as written, and its test command is what CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)


def test_every_python_snippet_runs_in_order(tmp_path: Path) -> None:
    """The snippets run top to bottom in a fresh interpreter, as a reader would run them."""
    blocks = python_blocks()
    assert len(blocks) >= 6
    script = "\n".join(
        f"# --- README python block {i + 1}\n{block}" for i, block in enumerate(blocks)
    )
    (tmp_path / "readme_snippets.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "readme_snippets.py"], cwd=tmp_path, capture_output=True, text=True,
        env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ModelV1(weights=<Weights: 9 tensors, 336 B>, architecture_version=1)" in proc.stdout
    assert "digits.model@1>modelrows.model@1" in proc.stdout
    assert (tmp_path / "catalog" / "demo" / "_modelrows_catalog.json").exists()


def test_the_two_commands_are_what_ci_runs() -> None:
    run_main, run_tests = bash_blocks()[:2]
    assert run_main.strip().endswith("python examples/digits.py")
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [s.strip() for s in run_tests.strip().split("&&")]
    assert steps[-1] == "python -m pytest"
    for step in steps[2:]:  # after creating and activating a virtualenv, CI runs these steps
        assert step in ci, f"README step {step!r} is not in .ci/run"
