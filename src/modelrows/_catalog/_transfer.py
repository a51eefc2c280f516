"""Transfer logic shared by the catalog's remote stores (``_s3.S3Store``, ``_objstore.ObjStore``).

What is the same whatever the client library: the checks of the transfer options, blanking
secrets out of messages, the checks of store keys and byte ranges, the parallel ranged read of a
whole object into one buffer, and the file object a multipart upload's writer writes to
(buffering parts, single PUT for a small object, abort on any failure). The stores supply their
client's calls as callables or methods; this module imports neither of them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, cast

from .._errors import StorageError


def check_options(
    url: str,
    *,
    max_concurrency: int,
    part_size: int,
    read_chunk_size: int,
    part_ok: bool,
    part_rule: str,
) -> None:
    """StorageError (step ``configure``) unless the transfer options of the store at ``url``
    are valid: ``part_ok`` says whether ``part_size`` is, ``part_rule`` how it is not (``is
    below ...``); ``max_concurrency`` and ``read_chunk_size`` must be positive."""
    if not part_ok:
        raise StorageError(
            f"part_size={part_size} for {url} {part_rule}", path=url, step="configure"
        )
    if max_concurrency < 1 or read_chunk_size < 1:
        raise StorageError(
            f"max_concurrency and read_chunk_size for {url} must be positive",
            path=url,
            step="configure",
        )


def blank(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***`` (the longest first, so that
    no part of a secret that holds another is left)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_key(url: str, key: str) -> str:
    """``key``, checked to be a ``/``-separated relative path without empty, ``.`` or ``..``
    segments (StorageError otherwise)."""
    if not key or key.startswith("/") or any(s in ("", ".", "..") for s in key.split("/")):
        raise StorageError(
            f"invalid key {key!r} under {url}: keys are '/'-separated relative paths "
            "without empty, '.' or '..' segments",
            path=url,
            step="key",
        )
    return key


def url_prefix(shown: str, scheme: str, path: str) -> str:
    """The prefix of a store URL from its path (``shown`` is the URL as it may be shown): end
    slashes stripped, and checked to have no empty, ``.`` or ``..`` segment (StorageError)."""
    prefix = path.strip("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise StorageError(
            f"{shown!r} has an empty, '.' or '..' segment in its prefix; write the prefix as a "
            f"plain path such as {scheme}://bucket/team/ckpts",
            path=shown,
            step="parse url",
        )
    return prefix


def check_ranges(where: str, ranges: Sequence[tuple[int, int]]) -> None:
    """StorageError unless each range ``(start, end)`` has ``0 <= start <= end``."""
    for start, end in ranges:
        if not 0 <= start <= end:
            raise StorageError(
                f"invalid byte range ({start}, {end}) for {where}", path=where, step="read"
            )


def parallel_read(
    total: int,
    head: int,
    fill_head: Callable[[memoryview], None],
    fill: Callable[[int, memoryview], None],
    *,
    chunk: int,
    max_concurrency: int,
) -> bytearray:
    """An object of ``total`` bytes read into one buffer: ``fill_head`` fills its first
    ``head`` bytes (from the request that learned the size), ``fill(start, into)`` each further
    ``chunk`` bytes from ``start`` (the last one shorter), ``max_concurrency`` at a time.

    The first failure is raised once the requests under way have ended; the ones not started
    are cancelled.
    """
    buffer = bytearray(total)
    view = memoryview(buffer)
    starts = range(head, total, chunk)
    if not starts:
        fill_head(view[:head])
        return buffer
    with ThreadPoolExecutor(min(max_concurrency, len(starts) + 1)) as pool:
        futures = [
            pool.submit(fill, start, view[start : min(start + chunk, total)]) for start in starts
        ]
        futures.append(pool.submit(fill_head, view[:head]))
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()
    return buffer


class KeyExists(Exception):
    """Raised by an upload's store-specific step when the key exists already: the upload is
    aborted and :func:`run_upload` answers False."""


class Upload(io.RawIOBase):
    """The file object a multipart upload's writer writes to (sequential ``write``, ``tell``).

    It buffers a part (:meth:`_part_limit` bytes) and hands each full one to :meth:`_send_part`,
    which starts the upload on the first part. ``eager``: a full part is sent at once; else
    only once more bytes come, so that an object of exactly one part is one PUT. An object
    never sent a part is one PUT at :meth:`finish`: :meth:`_put` when replacing, else
    :meth:`_create` (create-if-absent). Subclasses give those calls, :meth:`_complete` and
    :meth:`_abort`.
    """

    eager = False

    def __init__(self, part_size: int, *, replace: bool) -> None:
        super().__init__()
        self._base_part = part_size
        self._replace = replace
        self._buffer = bytearray()
        self._written = 0
        self._sent = 0  # parts handed to _send_part
        self._finished = False

    # io API
    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: Any) -> int:
        if self._finished:
            raise ValueError("write to a finished upload")
        view = memoryview(data).cast("B")
        size = len(view)
        while len(view):
            limit = self._part_limit(self._sent + 1)
            if len(self._buffer) >= limit:  # a full part, and more bytes come
                self._send_buffer()
                continue
            room = limit - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if self.eager and len(self._buffer) >= limit:
                self._send_buffer()
        self._written += size
        return size

    def _send_buffer(self) -> None:
        body = bytes(self._buffer)
        self._buffer = bytearray()
        self._sent += 1
        self._send_part(self._sent, body)

    def finish(self) -> bool:
        """Completes the object: one PUT (conditional unless replacing) if no part was sent,
        else the rest sent as the last part and the upload completed. True if created."""
        self._finished = True
        body = bytes(self._buffer)
        self._buffer = bytearray()
        if not self._sent:
            if self._replace:
                self._put(body)
                return True
            return self._create(body)
        if body:
            self._sent += 1
            self._send_part(self._sent, body)
        return self._complete()

    def abort(self) -> None:
        """Abandons the upload (no object appears); a no-op once none is under way."""
        self._finished = True
        self._abort()

    # the store's calls
    def _part_limit(self, number: int) -> int:
        """The size of part ``number`` (from 1)."""
        return self._base_part

    def _send_part(self, number: int, body: bytes) -> None:
        raise NotImplementedError

    def _put(self, body: bytes) -> None:
        raise NotImplementedError

    def _create(self, body: bytes) -> bool:
        raise NotImplementedError

    def _complete(self) -> bool:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


def run_upload(upload: Upload, write: Callable[[IO[bytes]], None]) -> bool:
    """``write(upload)`` then ``upload.finish()``; on any failure the upload is aborted and the
    failure raised unchanged, except :class:`KeyExists`, which is False."""
    try:
        write(cast(IO[bytes], upload))
        return upload.finish()
    except KeyExists:
        upload.abort()
        return False
    except BaseException:
        upload.abort()
        raise
