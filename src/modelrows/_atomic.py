"""Atomic file writes: temporary name, flush, fsync, rename or link, directory fsync.

Every file modelrows writes goes through here, row files and catalog files alike:

- :class:`PendingFile` writes under a temporary name in the destination's directory (one no
  reader takes for a row, see ``_format.temp_name``), then :meth:`PendingFile.commit` moves it into
  place by ``rename`` (replacing) or hard ``link`` (refusing to replace), and fsyncs the
  directory.
- :func:`write_atomic` is both in one call.
- :func:`create_exclusive` creates a small file only if its path is free (``O_CREAT|O_EXCL``),
  the local counterpart of an object store's create-if-absent.

A failure raises :class:`~modelrows.StorageError` naming the path and the step that failed, and
whether the destination already shows the new file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ._errors import StorageError
from ._format import temp_name

__all__ = ["PendingFile", "create_exclusive", "fsync_dir", "write_atomic"]


class PendingFile:
    """A file written and flushed under a temporary name, not yet visible at its final path.

    The temporary name is ``.<final name>.<pid>-<random>.tmp`` (``_format.temp_name``): it starts
    with ``.`` and ends with ``.tmp``, so no reader takes it for a row, and ``vacuum`` can tell
    whether its writer lives.
    """

    def __init__(self, path: Path, write: Callable[[IO[bytes]], None], *, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.visible = False  # whether the file is at its final path (commit moved it there)
        self.tmp = path.with_name(temp_name(path.name))
        self._step("create", self._write, write)

    def _write(self, write: Callable[[IO[bytes]], None]) -> None:
        with open(self.tmp, "xb") as f:
            self.step = "write"
            write(f)
            self.step = "flush"
            f.flush()
            if self.fsync:
                self.step = "fsync"
                os.fsync(f.fileno())

    def commit(self, *, replace: bool = True, sync_dir: bool = True) -> None:
        """Move into place (``replace=False``: hard link, refusing to overwrite), then fsync the
        directory unless the caller syncs it later."""
        self._step("rename" if replace else "link", self._commit, replace, sync_dir)

    def _commit(self, replace: bool, sync_dir: bool) -> None:
        if replace:
            os.replace(self.tmp, self.path)
            self.visible = True
        else:
            os.link(self.tmp, self.path)
            self.visible = True
            self.step = "unlink"
            os.unlink(self.tmp)
        if self.fsync and sync_dir:
            self.step = "directory fsync"
            fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Remove the temporary file (if still there); the final path is left as it is."""
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def _step(self, first: str, fn: Callable[..., None], *args: Any) -> None:
        self.step = first
        try:
            fn(*args)
        except OSError as exc:
            self.abort()
            raise StorageError(
                f"writing {self.path} failed at step {self.step!r}: {exc}. "
                + (
                    "The new file is in place but may not be durable yet."
                    if self.visible
                    else "Nothing was written there; the previous content (if any) is intact."
                ),
                path=str(self.path),
                step=self.step,
                visible=self.visible,
            ) from exc
        except BaseException:
            self.abort()
            raise


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that a rename or a new entry in it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, write: Callable[[IO[bytes]], None], *, fsync: bool = True, replace: bool = True
) -> None:
    """Write ``path`` through a temporary file so it is never seen half-written."""
    PendingFile(path, write, fsync=fsync).commit(replace=replace)


def create_exclusive(path: Path, data: bytes, *, fsync: bool) -> bool:
    """Create ``path`` holding ``data`` if no file is there; False (and nothing written) if one is.

    The file is created with ``O_CREAT | O_EXCL``, so of several processes creating the same path
    exactly one gets True. It is written directly, not through a temporary name: a reader racing
    the creator may see it empty or short for an instant, so keep ``data`` small and let readers
    treat a short file as not yet written. With ``fsync``, the file and its directory are fsynced
    before this returns. Any other failure raises StorageError; a file this call created and
    could not finish writing is removed first (``visible`` False), unless only the directory
    fsync failed (the file is complete, ``visible`` True).
    """
    step = "create"
    fd: int | None = None
    created = False
    complete = False
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            return False
        created = True
        step = "write"
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            step = "fsync"
            os.fsync(fd)
        step = "close"
        os.close(fd)
        fd = None
        complete = True
        if fsync:
            step = "directory fsync"
            fsync_dir(path.parent)
        return True
    except OSError as exc:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if created and not complete:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise StorageError(
            f"creating {path} failed at step {step!r}: {exc}. "
            + (
                "The file is in place but may not be durable yet."
                if complete
                else "Nothing was left there; retry, or check the directory's permissions and "
                "free space."
            ),
            path=str(path),
            step=step,
            visible=complete,
        ) from exc
    except BaseException:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if created and not complete:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
