"""Catalog storage on Google Cloud Storage and Azure Blob Storage, on ``obstore``.

:class:`ObjStore` implements the catalog's store interface (``_store.Store``) over any store of
the `obstore <https://developmentseed.org/obstore/>`_ package (Python bindings of the Rust
``object_store`` crate). URLs:

- ``gs://bucket/prefix`` -- Google Cloud Storage;
- ``az://container/prefix`` (also ``azure://``, ``adl://``, ``abfs://``, ``abfss://`` in the
  forms obstore accepts, ``abfss://container@account.dfs.core.windows.net/prefix`` among them)
  -- Azure Blob Storage.

Another store of that library is configuration there, not code here: the one class serves them
all (the tests run it on S3 too, through obstore's S3 store).

- Small objects (index entries, manifests, the catalog file: everything up to ``part_size``)
  are created with one conditional PUT (obstore ``mode="create"``: GCS
  ``x-goog-if-generation-match: 0``, Azure ``If-None-Match: *``); a refused create is
  ``False``, unless the object holds exactly the bytes sent (a retried PUT meeting the object
  its first attempt created). An object appears whole or not at all.
- A larger object (a row file: its key is a fresh unique id) is streamed as a multipart upload
  (GCS XML multipart upload, Azure block list), ``max_concurrency`` parts at a time, and
  committed at once; obstore aborts the upload on any failure, so a row object is whole or
  absent. Such a commit is not conditional (obstore has no conditional multipart completion):
  the key is checked to be absent first, which suffices because row keys are unique.
- Reads: the first ranged GET learns the size; the rest of a large object comes in parallel
  ranged GETs (each conditional on the first one's ETag) straight into one buffer.
- Configuration is the store's ecosystem's own, read by obstore: the ``GOOGLE_*`` variables
  (``GOOGLE_SERVICE_ACCOUNT``, ``GOOGLE_SERVICE_ACCOUNT_KEY``, ``GOOGLE_APPLICATION_CREDENTIALS``
  or application default credentials, ``GOOGLE_BASE_URL`` ...) and the ``AZURE_*`` ones
  (``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_KEY``,
  ``AZURE_CLIENT_ID`` ..., ``AZURE_STORAGE_USE_EMULATOR``); options given explicitly win.
- Transient failures (connection errors, timeouts, 5xx, throttling) are retried by obstore's
  retry configuration (exponential backoff, 10 retries within 3 minutes by default;
  ``max_retries=`` and ``retry_timeout=`` change it). A persistent failure is a
  :class:`~modelrows.StorageError` naming the URL and the step; no message carries a secret.
- :meth:`ObjStore.cleanup_uploads` is a no-op: obstore cannot list abandoned multipart uploads.
  Azure discards uncommitted blocks itself (after 7 days); on GCS (and S3) a bucket lifecycle
  rule removes incomplete multipart uploads.

obstore is imported only when a store is made, never by ``import modelrows``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit

from .._errors import StorageError
from ._transfer import (
    KeyExists,
    Upload,
    blank,
    check_key,
    check_options,
    check_ranges,
    parallel_read,
    run_upload,
    url_prefix,
)

__all__ = ["OBJSTORE_OPTIONS", "OBJSTORE_SCHEMES", "ObjStore", "is_objstore_url"]

_MIB = 1 << 20
_MIN_PART = 5 * _MIB  # the smallest part GCS's and S3's multipart uploads take (all but the last)

OBJSTORE_SCHEMES: dict[str, str] = {
    "gs": "gcs",
    "az": "azure",
    "azure": "azure",
    "adl": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
"""URL schemes served by :class:`ObjStore`, and the obstore store each names."""

OBJSTORE_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "max_concurrency": int,
    "part_size": int,
    "read_chunk_size": int,
    "max_retries": int,
    "retry_timeout": (int, float),
    "connect_timeout": (int, float),
    "timeout": (int, float),
    "allow_http": bool,
}
"""Options :meth:`ObjStore.from_url` handles itself; any other option is handed to obstore as a
store configuration key (``service_account``, ``account_name``, ``use_emulator``, ...)."""

# Environment variables whose values never appear in a message.
_SECRET_VARIABLES = (
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_FABRIC_SESSION_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
_SECRET_OPTIONS = (
    "service_account_key",
    "bearer_token",
    "account_key",
    "access_key",
    "master_key",
    "client_secret",
    "sas_key",
    "sas_token",
    "token",
    "secret_access_key",
    "session_token",
    "fabric_session_token",
)

_URL_QUERY = re.compile(r"(https?://[^\s?]*)\?\S*")  # a SAS token rides in the query


def is_objstore_url(location: object) -> bool:
    """Whether ``location`` is a string naming a URL :class:`ObjStore` serves (``gs://``,
    ``az://`` ...)."""
    if not isinstance(location, str):
        return False
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in OBJSTORE_SCHEMES


def _redact_url(url: str) -> str:
    """The URL as it may be shown: a ``user:password@`` part replaced."""
    return re.sub(r"(?<=://)[^/@:]*:[^/@]*@", "***@", url)


def _parse(url: str) -> tuple[str, str, str]:
    """(scheme, authority, prefix) of a store URL, checked; StorageError saying what is
    supported otherwise."""
    shown = _redact_url(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in OBJSTORE_SCHEMES:
        raise StorageError(
            f"{shown!r}: unsupported scheme {parts.scheme!r}; object storage through obstore is "
            "gs://bucket/prefix (Google Cloud Storage) or az://container/prefix (Azure Blob "
            "Storage; also abfss://)",
            path=shown,
            step="parse url",
        )
    if ":" in parts.netloc.partition("@")[0] and "@" in parts.netloc:
        raise StorageError(
            f"{shown!r} holds credentials: put them in the environment (GOOGLE_* or AZURE_* "
            "variables) or in the store options, never in the URL",
            path=shown,
            step="parse url",
        )
    if parts.query or parts.fragment:
        raise StorageError(
            f"{shown!r} has a query or fragment; give a SAS token as AZURE_STORAGE_SAS_KEY, not "
            f"in the URL: a location is {scheme}://bucket/prefix",
            path=shown,
            step="parse url",
        )
    if not parts.netloc:
        raise StorageError(
            f"{shown!r} names no bucket or container; write {scheme}://bucket/prefix",
            path=shown,
            step="parse url",
        )
    return scheme, parts.netloc, url_prefix(shown, scheme, parts.path)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """obstore's message, short and safe to show: its first paragraph (not the debug dump),
    URL queries (where SAS tokens ride) and known secrets blanked out."""
    text = text.split("\n\nDebug source", 1)[0].strip()
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return blank(_URL_QUERY.sub(r"\1?***", text), secrets)[:600]


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=float(value))


class ObjStore:
    """A catalog store on an obstore object store, rooted at ``gs://bucket/prefix`` or
    ``az://container/prefix`` (or wrapping a given obstore store).

    >>> store = ObjStore.from_url("gs://my-bucket/ckpts")  # doctest: +SKIP
    >>> store.put_if_absent("a/b.json", b"{}")  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        url: str,
        store: Any,
        *,
        max_concurrency: int = 8,
        part_size: int = 8 * _MIB,
        read_chunk_size: int = 16 * _MIB,
        secrets: Sequence[str] = (),
    ) -> None:
        """Wrap the obstore ``store`` (rooted where ``url`` says; ``url`` names it in
        messages). ``secrets`` are values to blank out of any message."""
        self.url = url.rstrip("/")
        self.store = store
        check_options(
            self.url,
            max_concurrency=max_concurrency,
            part_size=part_size,
            read_chunk_size=read_chunk_size,
            part_ok=part_size >= _MIN_PART,
            part_rule=f"is below the smallest part of a multipart upload ({_MIN_PART} bytes)",
        )
        self.max_concurrency = max_concurrency
        self.part_size = part_size
        self.read_chunk_size = read_chunk_size
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None) -> ObjStore:
        """A store for ``url`` (``gs://bucket/prefix``, ``az://container/prefix`` ...).

        Options named in ``OBJSTORE_OPTIONS`` tune this class and obstore's client and retries;
        any other option is an obstore configuration key of the store (``service_account``,
        ``base_url``, ``account_name``, ``use_emulator`` ...). What they do not give comes from
        the store's environment variables (``GOOGLE_*``, ``AZURE_*``), as obstore reads them.
        """
        scheme, authority, prefix = _parse(url)
        shown = _redact_url(f"{scheme}://{authority}/{prefix}".rstrip("/"))
        own: dict[str, Any] = {}
        config: dict[str, Any] = {}
        for name, value in (options or {}).items():
            kind = OBJSTORE_OPTIONS.get(name)
            if kind is None:
                config[name] = value
                continue
            if value is None:
                continue
            wrong = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
            if wrong:
                what = kind.__name__ if isinstance(kind, type) else "a number"
                raise StorageError(
                    f"option {name!r} for {shown} must be {what}, not {type(value).__name__}",
                    path=shown,
                    step="configure",
                )
            own[name] = value
        try:
            import obstore.store as obs
            from obstore.exceptions import BaseError
        except ImportError as exc:
            raise StorageError(
                f"{shown}: Google Cloud Storage and Azure catalogs need obstore; install it with "
                "pip install 'modelrows[cloud]'",
                path=shown,
                step="import",
            ) from exc
        client: dict[str, Any] = {}
        if "allow_http" in own:
            client["allow_http"] = own.pop("allow_http")
        for name in ("connect_timeout", "timeout"):
            if name in own:
                client[name] = _seconds(own.pop(name))
        retry: dict[str, Any] = {}
        if "max_retries" in own:
            retry["max_retries"] = own.pop("max_retries")
        if "retry_timeout" in own:
            retry["retry_timeout"] = _seconds(own.pop("retry_timeout"))
        if retry:  # obstore wants every field of a retry configuration
            retry.setdefault("max_retries", 10)
            retry.setdefault("retry_timeout", dt.timedelta(minutes=3))
            retry.setdefault(
                "backoff",
                {
                    "init_backoff": dt.timedelta(milliseconds=100),
                    "max_backoff": _seconds(15),
                    "base": 2,
                },
            )
        secrets = [str(config[k]) for k in _SECRET_OPTIONS if isinstance(config.get(k), str)]
        secrets += [os.environ[v] for v in _SECRET_VARIABLES if os.environ.get(v)]
        kind = obs.GCSStore if OBJSTORE_SCHEMES[scheme] == "gcs" else obs.AzureStore
        try:
            store = kind.from_url(
                url.rstrip("/"),
                config=cast(Any, config) or None,
                client_options=cast(Any, client) or None,
                retry_config=cast(Any, retry) or None,
            )
        except (BaseError, ValueError, TypeError) as exc:
            message = _scrub(str(exc), secrets)
            raise StorageError(
                f"could not configure the store for {shown}: {message}; set the "
                + ("GOOGLE_*" if kind is obs.GCSStore else "AZURE_*")
                + " environment variables or give the store options (see obstore's "
                + ("GCSConfig" if kind is obs.GCSStore else "AzureConfig")
                + ")",
                path=shown,
                step="configure",
            ) from None
        return cls(shown, store, secrets=secrets, **own)

    def __repr__(self) -> str:
        return f"ObjStore({self.url!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        """A store key, checked."""
        return check_key(self.url, key)

    def _where(self, key: str | None) -> str:
        return f"{self.url}/{key}" if key else self.url

    def _error(self, step: str, key: str | None, exc: BaseException) -> StorageError:
        """A StorageError naming the URL and the step, with every known secret blanked out."""
        where = self._where(key)
        text = _scrub(str(exc), self._secrets)
        name = type(exc).__name__
        advice = ""
        if name in ("PermissionDeniedError", "UnauthenticatedError"):
            advice = "; check the credentials (GOOGLE_* or AZURE_* variables, or store options)"
        elif any(c in text for c in ("ContainerNotFound", "NoSuchBucket", "bucket does not exist")):
            advice = "; the bucket or container does not exist: create it, or fix the URL"
        elif name == "GenericError" and ("connect" in text or "sending request" in text):
            advice = "; the store could not be reached (retried): check the endpoint and network"
        return StorageError(
            f"could not {step} {where}: {name}: {text}{advice}", path=where, step=step
        )

    def _call(self, step: str, key: str | None, fn: Callable[[], Any]) -> Any:
        """``fn()``, with obstore's errors (but FileNotFoundError) as StorageError."""
        from obstore.exceptions import BaseError

        try:
            return fn()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self._where(key)}: no such object") from None
        except (BaseError, OSError, ValueError) as exc:
            raise self._error(step, key, exc) from None

    # -- the store interface ----------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        """None: objects on object storage have no local path."""
        return None

    def put_if_absent(self, key: str, data: bytes, *, fsync: bool = True) -> bool:
        """Create ``key`` holding ``data`` unless it exists: True if created, False if it did.

        One conditional PUT (obstore ``mode="create"``) up to ``part_size`` bytes, a multipart
        upload above; the object appears whole or not at all. ``fsync`` is accepted for the
        interface: an object is durable once the store acknowledges it.
        """
        name = self._key(key)
        view = memoryview(data).cast("B")
        if len(view) > self.part_size:

            def write(out: IO[bytes]) -> None:
                out.write(view)

            return self.put_stream_if_absent(key, write)
        return self._create(name, bytes(view))

    def _create(self, key: str, body: bytes) -> bool:
        """One conditional PUT. A refusal is False unless the object holds exactly ``body``:
        obstore retries a PUT whose answer was lost, and the retry meets the object the first
        attempt created (obstore does not say whether it retried). The same bytes under the
        same key are the same state whoever wrote them, so True is right either way."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError

        try:
            obstore.put(self.store, key, body, mode="create", use_multipart=False)
            return True
        except (AlreadyExistsError, PreconditionError):
            pass
        except (BaseError, OSError, ValueError) as exc:
            raise self._error("create", key, exc) from None
        try:
            return self.get(key) == body
        except FileNotFoundError:  # deleted since: it existed, the create was refused
            return False

    def put_stream_if_absent(
        self, key: str, write: Callable[[IO[bytes]], None], *, fsync: bool = True
    ) -> bool:
        """Create ``key`` from what ``write`` writes to a file object, unless ``key`` exists.

        Up to ``part_size`` bytes become one conditional PUT (False if the key exists). More
        stream out as a multipart upload, ``max_concurrency`` parts at a time, committed at once
        and aborted on any failure (the writer's own exceptions propagate unchanged): the
        object is whole or absent. That commit is unconditional (obstore offers no conditional
        multipart completion), so the key is checked to be absent first: for keys nobody else
        writes (a row's fresh unique id), which is what the catalog streams.
        """
        self._key(key)
        return run_upload(_Upload(self, key, replace=False), write)

    def put_stream(self, key: str, write: Callable[[IO[bytes]], None]) -> None:
        """Create or replace ``key`` with what ``write`` writes, atomically: readers see the old
        object or the whole new one, never a part."""
        self._key(key)
        run_upload(_Upload(self, key, replace=True), write)

    def get(self, key: str) -> bytes:
        """The whole object (one request); FileNotFoundError if absent."""
        import obstore

        name = self._key(key)
        return bytes(self._call("read", key, lambda: obstore.get(self.store, name).bytes()))

    def _get_range(self, key: str, start: int, end: int, etag: str | None) -> Any:
        import obstore

        options: dict[str, Any] = {"range": (start, end)}
        if etag:
            options["if_match"] = etag
        return self._call(
            "read", key, lambda: obstore.get(self.store, key, options=cast(Any, options))
        )

    def read_all(self, key: str) -> bytearray:
        """The whole object in memory, read with parallel ranged requests (no temporary file).

        The first request fetches ``read_chunk_size`` bytes and learns the size; the rest come
        ``max_concurrency`` ranges at a time, each required to match the first one's ETag (an
        object replaced mid-read is an error, never a mix). FileNotFoundError if absent.
        """
        import obstore

        name = self._key(key)
        chunk = self.read_chunk_size
        try:
            first = self._get_range(name, 0, chunk, None)
        except StorageError as exc:
            if "416" not in str(exc):
                raise
            # no byte range of an empty object exists: ask for the whole (empty) object
            first = self._call("read", key, lambda: obstore.get(self.store, name))
        meta = first.meta
        etag = meta.get("e_tag")

        def fill(start: int, into: memoryview, got: Any = None) -> None:
            end = start + len(into)
            if got is None:
                got = self._get_range(name, start, end, etag)
            data = self._call("read", key, got.bytes)
            if len(data) != end - start:
                raise StorageError(
                    f"could not read {self._where(key)}: bytes {start}-{end} came back "
                    f"{len(data)} long; the object changed while being read, try again",
                    path=self._where(key),
                    step="read",
                )
            into[:] = data

        return parallel_read(
            int(meta["size"]),
            int(first.range[1]) - int(first.range[0]),
            lambda into: fill(0, into, first),
            fill,
            chunk=chunk,
            max_concurrency=self.max_concurrency,
        )

    def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Byte ranges ``[start, end)`` of ``key``, fetched by obstore (close ranges coalesced,
        requests in parallel); a range past the end of the object is cut short there."""
        import obstore

        name = self._key(key)
        check_ranges(self._where(key), ranges)
        wanted = [(s, e) for s, e in ranges if e > s]
        if not wanted:
            if self.size(key) is None:
                raise FileNotFoundError(self._where(key))
            return [b"" for _ in ranges]
        size = self.size(key)
        if size is None:
            raise FileNotFoundError(self._where(key))
        starts = [min(s, size) for s, _ in wanted]
        ends = [min(e, size) for _, e in wanted]
        got = iter(
            self._call(
                "read",
                key,
                lambda: obstore.get_ranges(self.store, name, starts=starts, ends=ends),
            )
        )
        return [bytes(next(got)) if e > s else b"" for s, e in ranges]

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if absent."""
        import obstore

        name = self._key(key)
        try:
            meta = self._call("look up", key, lambda: obstore.head(self.store, name))
        except FileNotFoundError:
            return None
        return int(meta["size"])

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """Every key under the directory ``prefix`` ('' for all), recursively, with its size,
        sorted by key."""
        import obstore

        prefix = prefix.strip("/")
        if prefix:
            self._key(prefix)

        def collect() -> list[tuple[str, int]]:
            found: list[tuple[str, int]] = []
            for batch in obstore.list(self.store, prefix or None, chunk_size=1000):
                found.extend((str(m["path"]), int(m["size"])) for m in batch)
            return found

        try:
            found: list[tuple[str, int]] = self._call("list", prefix or None, collect)
        except FileNotFoundError:  # some stores answer 404 for a missing container
            raise StorageError(
                f"could not list {self._where(prefix)}: the bucket or container does not "
                "exist; create it, or fix the URL",
                path=self._where(prefix),
                step="list",
            ) from None
        found.sort()
        return found

    def delete(self, key: str) -> None:
        """Remove ``key``; an absent key is fine."""
        import obstore

        name = self._key(key)
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", key, lambda: obstore.delete(self.store, name))

    def cleanup_uploads(self, older_than: float, prefix: str = "") -> int:
        """Nothing to do here (returns 0): obstore cannot list abandoned multipart uploads.

        An upload whose writer died is never visible. Azure discards uncommitted blocks itself
        (after 7 days); on Google Cloud Storage (and S3) a bucket lifecycle rule that deletes
        incomplete multipart uploads after a day removes them.
        """
        return 0


_END = object()  # the last item of an upload's queue
_ABORT = object()  # tells the upload thread to fail (and obstore to abort the upload)


class _Aborted(Exception):
    """Raised inside obstore's multipart upload to make it abort."""


class _Upload(Upload):
    """The file object a writer writes to: buffers up to ``part_size`` bytes (one conditional
    PUT at the end); beyond that, hands parts to a thread running obstore's multipart upload,
    which takes them from a queue (bounded: the writer waits while ``max_concurrency`` parts
    are pending)."""

    def __init__(self, store: ObjStore, key: str, *, replace: bool) -> None:
        super().__init__(store.part_size, replace=replace)
        self._store = store
        self._key = key
        self._queue: queue.Queue[object] | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _send_part(self, number: int, body: bytes) -> None:
        if self._thread is None:
            self._start()
        self._send(body)

    def _start(self) -> None:
        """Starts the multipart upload (after checking that the key is absent)."""
        store = self._store
        if not self._replace and store.size(self._key) is not None:
            raise KeyExists
        self._queue = queue.Queue(maxsize=store.max_concurrency)
        self._thread = threading.Thread(target=self._run, name="modelrows-upload", daemon=True)
        self._thread.start()

    def _parts(self) -> Iterator[bytes]:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted
            yield cast(bytes, item)

    def _run(self) -> None:
        import obstore

        store = self._store
        try:
            obstore.put(
                store.store,
                self._key,
                self._parts(),
                use_multipart=True,
                chunk_size=store.part_size,
                max_concurrency=store.max_concurrency,
            )
        except BaseException as exc:  # handed to the writer's thread
            self._failure = exc

    def _send(self, item: object) -> None:
        """Queues ``item`` for the upload thread; raises the upload's failure if it died."""
        assert self._queue is not None and self._thread is not None
        while True:
            if not self._thread.is_alive():
                self._raise_failure()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is None:
            raise StorageError(
                f"could not write {self._store._where(self._key)}: the upload stopped",
                path=self._store._where(self._key),
                step="upload",
            )
        from obstore.exceptions import BaseError

        if isinstance(failure, (BaseError, OSError, ValueError)):
            raise self._store._error("upload", self._key, failure) from None
        raise failure

    def _put(self, body: bytes) -> None:
        import obstore

        store = self._store
        store._call(
            "write",
            self._key,
            lambda: obstore.put(store.store, self._key, body, use_multipart=False),
        )

    def _create(self, body: bytes) -> bool:
        return self._store._create(self._key, body)

    def _complete(self) -> bool:
        """The multipart upload's completion, once every part is queued."""
        assert self._thread is not None
        self._send(_END)
        self._thread.join()
        if self._failure is not None:
            self._raise_failure()
        return True

    def _abort(self) -> None:
        """Makes obstore abort the multipart upload, if one is under way."""
        thread, queue_ = self._thread, self._queue
        if thread is None or queue_ is None or not thread.is_alive():
            return
        while thread.is_alive():
            try:
                queue_.put(_ABORT, timeout=0.5)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):  # make room: unsent parts are dropped
                    queue_.get_nowait()
        thread.join()
