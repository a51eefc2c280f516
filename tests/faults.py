"""Fault injection in the manner of SQLite's test harness: count every filesystem call a write
makes, then run the write again with the Nth call raising OSError (once, or from then on).

The calls are named after the steps StorageError reports: ``mkdir``, ``create`` (opening the
temporary file), ``write``, ``flush``, ``fsync``, ``rename`` (os.replace), ``link``, ``unlink``
and ``directory fsync`` (an fsync whose descriptor is a directory).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest

from modelrows import _atomic as atomic


class Faults:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.trace: list[str] = []
        self.fail_at: int | None = None
        self.sticky = False

    def _call(self, kind: str, real: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.trace.append(kind)
        n = len(self.trace)
        if self.fail_at is not None and (n == self.fail_at or (self.sticky and n > self.fail_at)):
            raise OSError(errno.EIO, f"injected failure of {kind} (call {n})")
        return real(*args, **kwargs)

    @contextlib.contextmanager
    def armed(self, fail_at: int | None = None, *, sticky: bool = False) -> Iterator[list[str]]:
        """Count (and fail) filesystem calls inside the block; yields the trace."""
        self.trace, self.fail_at, self.sticky = [], fail_at, sticky
        real_fsync, real_open = os.fsync, open

        def fsync(fd: int) -> None:
            kind = "directory fsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync"
            self._call(kind, real_fsync, fd)

        def opener(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if not set(mode) & set("wxa"):
                return real_open(file, mode, *args, **kwargs)
            return _File(self, self._call("create", real_open, file, mode, *args, **kwargs))

        with self.monkeypatch.context() as m:
            m.setattr(os, "fsync", fsync)
            m.setattr(atomic, "open", opener, raising=False)
            for kind, name in [("mkdir", "mkdir"), ("rename", "replace"), ("link", "link"),
                               ("unlink", "unlink"), ("write", "writev")]:  # fmt: skip
                real = getattr(os, name)
                m.setattr(os, name, lambda *a, _k=kind, _r=real, **kw: self._call(_k, _r, *a, **kw))
            yield self.trace
        self.fail_at = None


class _File:
    """A writable file whose write and flush go through the fault counter."""

    def __init__(self, faults: Faults, f: IO[bytes]) -> None:
        self._faults, self._f = faults, f

    def write(self, data: Any) -> int:
        n: int = self._faults._call("write", self._f.write, data)
        return n

    def flush(self) -> None:
        self._faults._call("flush", self._f.flush)

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
