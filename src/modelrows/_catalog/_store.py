"""Where a catalog's objects live: the few primitives its protocol is built on.

A catalog reads and writes its objects (row files, index entries, index segments, manifests)
through a :class:`Store`, and uses nothing but these primitives, which every object store has:

- create-if-absent of a new object (``put_if_absent``, ``put_stream_if_absent``): here a hard link
  of a fully written temporary file, or ``O_EXCL``; on S3 a conditional PUT (``If-None-Match``);
- read a whole object or byte ranges of it (``get``, ``read_all``, ``get_ranges``);
- list the keys under a prefix (``list``);
- delete an object (``delete``).

No rename over an existing object, no directory mtimes, no locks. Keys are ``/``-separated paths
relative to the catalog's root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Protocol

from .._atomic import PendingFile, fsync_dir
from .._errors import StorageError
from .._format import host_tag, is_temp_name, parse_temp_name


class Store(Protocol):
    """The primitives a catalog runs on (see the module docstring)."""

    url: str
    """Where the store is, for messages (never holds credentials)."""

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` on this machine, or None for a remote store."""

    def put_if_absent(self, key: str, data: bytes, *, fsync: bool = True) -> bool:
        """Create ``key`` holding ``data``, whole or not at all; False if ``key`` exists."""

    def put_stream_if_absent(
        self, key: str, write: Callable[[IO[bytes]], None], *, fsync: bool = True
    ) -> bool:
        """Create ``key`` with what ``write`` writes (sequentially) to a file-like object."""

    def get(self, key: str) -> bytes:
        """The whole object; FileNotFoundError if it is absent."""

    def read_all(self, key: str) -> bytearray:
        """The whole object in a writable buffer of its own (a large one fetched in parallel
        where the store allows); FileNotFoundError if it is absent."""

    def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Byte ranges ``[start, end)`` of ``key``; FileNotFoundError if it is absent."""

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if it is absent."""

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """Every key under ``prefix`` (recursively) with its size, sorted by key, as of one
        moment: a key removed since may still be listed (readers find it gone, and start over)."""

    def delete(self, key: str) -> None:
        """Remove ``key``; an absent key is not an error."""

    def cleanup_uploads(self, older_than: float, prefix: str = "") -> int:
        """Remove what dead writers left behind (temporary files, abandoned uploads) under
        ``prefix`` (a directory key ending in ``/``; "" is the whole store)."""


class LocalStore:
    """A store in a directory of the local file system (or a shared one mounted here)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self._made: set[Path] = set()  # directories known to exist (two stats fewer per put)

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def local_path(self, key: str) -> Path:
        return self.root / key

    def _mkdirs(self, directory: Path, *, fsync: bool) -> None:
        """Create ``directory`` and its missing parents below the root, each made durable."""
        if not self.root.is_dir():
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"creating directory {self.root} failed: {exc}. Nothing was written.",
                    path=str(self.root),
                    step="mkdir",
                ) from exc
        missing = []
        d = directory
        while d != self.root and not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            step = "mkdir"
            try:
                d.mkdir(exist_ok=True)
                if fsync:
                    step = "directory fsync"
                    fsync_dir(d.parent)
            except OSError as exc:
                raise StorageError(
                    f"creating directory {d} failed at step {step!r}: {exc}. Nothing was written.",
                    path=str(d),
                    step=step,
                ) from exc

    def put_if_absent(self, key: str, data: bytes, *, fsync: bool = True) -> bool:
        def write(f: IO[bytes]) -> None:
            f.write(data)

        return self.put_stream_if_absent(key, write, fsync=fsync)

    def put_stream_if_absent(
        self, key: str, write: Callable[[IO[bytes]], None], *, fsync: bool = True
    ) -> bool:
        path = self.root / key
        directory = path.parent
        if directory not in self._made:
            self._mkdirs(directory, fsync=fsync)
        try:
            pending = PendingFile(path, write, fsync=fsync)
        except StorageError as exc:  # the directory was removed since (vacuum, by hand)
            gone = isinstance(exc.__cause__, FileNotFoundError) and exc.step == "create"
            if not gone or directory not in self._made:
                raise
            self._made.discard(directory)
            self._mkdirs(directory, fsync=fsync)
            pending = PendingFile(path, write, fsync=fsync)
        self._made.add(directory)
        try:
            pending.commit(replace=False)
        except StorageError as exc:
            if isinstance(exc.__cause__, FileExistsError):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def read_all(self, key: str) -> bytearray:
        with open(self.root / key, "rb") as f:
            buffer = bytearray(os.fstat(f.fileno()).st_size)
            view = memoryview(buffer)
            done = 0
            while done < len(buffer):
                got = f.readinto(view[done:])
                if not got:  # the file shrank while being read
                    return buffer[:done]
                done += got
        return buffer

    def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        out = []
        with open(self.root / key, "rb") as f:
            for start, end in ranges:
                f.seek(start)
                out.append(f.read(end - start))
        return out

    def size(self, key: str) -> int | None:
        try:
            return (self.root / key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """As of each directory's read, as an object store's listing is as of one instant: a file
        removed between the read and its stat is still listed (size 0). Dropping it instead let a
        reader racing two compactions list no manifest at all, and take the index for gone."""
        base = self.root / prefix
        found: list[tuple[str, int]] = []
        start = len(str(self.root)) + 1

        def walk(directory: str) -> None:
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # removed since the directory was read: listed
                        size = 0  # all the same (a reader finds it gone and starts over)
                    found.append((entry.path[start:], size))

        walk(str(base))
        found.sort()
        return found

    def delete(self, key: str) -> None:
        try:
            (self.root / key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"removing {self.root / key} failed: {exc}",
                path=str(self.root / key),
                step="unlink",
            ) from exc

    def cleanup_uploads(self, older_than: float, prefix: str = "") -> int:
        """Remove temporary files (``.<name>.<pid>-<host>-<hex>.tmp``) under ``prefix`` whose
        writer is gone from this machine, or that are older than ``older_than`` seconds (the
        only test for a file another machine is writing, on a shared file system)."""
        removed = 0
        now = time.time()
        for dirpath, dirnames, filenames in os.walk(self.root / prefix):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not is_temp_name(name):
                    continue
                path = Path(dirpath) / name
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > older_than or not writer_alive(name):
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def writer_alive(tmp_name: str) -> bool:
    """Whether the writer of ``.<name>.<pid>-<host>-<hex>.tmp`` may still be alive: a live
    process on this machine, or any process of another machine (a file system shared between
    machines: its pid says nothing here, so only the file's age tells)."""
    parsed = parse_temp_name(tmp_name)
    if parsed is None:
        return False
    _, pid, host = parsed
    if host is not None and host != host_tag():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
