"""_atomic: files appear whole or not at all, under temporary names no reader takes for rows.

(The fault-injection suite, tests/test_reliability_faults.py, fails each filesystem call of a
row write in turn; these tests pin the module's own contract.)
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from modelrows import StorageError
from modelrows._atomic import PendingFile, create_exclusive, fsync_dir, write_atomic

TEMP = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-(?P<hex>[0-9a-f]{12})\.tmp$"
)


def writer(data: bytes) -> Callable[[IO[bytes]], None]:
    def write(f: IO[bytes]) -> None:
        f.write(data)

    return write


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    write_atomic(path, writer(b"old"))
    write_atomic(path, writer(b"new"))
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_write_atomic_without_replace_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"first")
    with pytest.raises(StorageError) as info:
        write_atomic(path, writer(b"second"), replace=False)
    assert info.value.step == "link" and info.value.visible is False
    assert "Nothing was written there" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def failing(f: IO[bytes]) -> None:
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError) as info:
        write_atomic(path, failing)
    assert info.value.step == "write" and info.value.visible is False
    assert info.value.path == str(path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_an_exception_that_is_not_an_os_error_passes_through_and_cleans_up(
    tmp_path: Path,
) -> None:
    def failing(f: IO[bytes]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "f.bin", failing)
    assert list(tmp_path.iterdir()) == []


def test_pending_file_is_invisible_until_commit_and_abort_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    pending = PendingFile(path, writer(b"data"), fsync=False)
    assert not path.exists() and not pending.visible
    assert pending.tmp.parent == tmp_path and TEMP.match(pending.tmp.name)
    assert pending.tmp.read_bytes() == b"data"
    pending.commit(replace=False, sync_dir=False)
    assert pending.visible and path.read_bytes() == b"data" and not pending.tmp.exists()

    other = PendingFile(tmp_path / "g.bin", writer(b"x"), fsync=True)
    other.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_missing_directory_fails_at_create(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        write_atomic(tmp_path / "no" / "f.bin", writer(b"x"))
    assert info.value.step == "create" and info.value.visible is False


def test_fsync_dir_accepts_a_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)  # no error: the call durable appends rely on
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


# -- create_exclusive ------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", [True, False])
def test_create_exclusive_creates_once(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "00001.json"
    assert create_exclusive(path, b'{"n": 1}', fsync=fsync) is True
    assert create_exclusive(path, b'{"n": 2}', fsync=fsync) is False
    assert path.read_bytes() == b'{"n": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["00001.json"]


def test_create_exclusive_writes_empty_and_large_data(tmp_path: Path) -> None:
    assert create_exclusive(tmp_path / "empty", b"", fsync=True)
    assert (tmp_path / "empty").read_bytes() == b""
    data = os.urandom(3 << 20)
    assert create_exclusive(tmp_path / "big", data, fsync=False)
    assert (tmp_path / "big").read_bytes() == data


def test_create_exclusive_raises_storage_error_on_other_failures(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        create_exclusive(tmp_path / "missing" / "f", b"x", fsync=True)
    assert info.value.step == "create" and info.value.visible is False
    assert str(tmp_path / "missing" / "f") in str(info.value)


def test_create_exclusive_removes_a_file_it_could_not_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(StorageError) as info:
        create_exclusive(tmp_path / "f", b"data", fsync=True)
    assert info.value.step == "write" and info.value.visible is False
    assert "No space left" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_of_racing_processes_exactly_one_creates(tmp_path: Path) -> None:
    path = tmp_path / "commit-00000001.json"
    code = (
        "import sys; from pathlib import Path\n"
        "from modelrows._atomic import create_exclusive\n"
        "sys.stdin.read()\n"  # all start, then all race
        "print(create_exclusive(Path(sys.argv[1]), sys.argv[2].encode(), fsync=True))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), f"writer {i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        for i in range(6)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
    results = []
    for p in procs:
        assert p.stdout is not None
        results.append(p.stdout.read().decode().strip())
        assert p.wait() == 0
    assert sorted(results) == ["False"] * 5 + ["True"]
    winner = results.index("True")
    assert path.read_bytes() == f"writer {winner}".encode()
