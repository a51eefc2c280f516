"""Catalog storage on Amazon S3 and S3-compatible object stores (MinIO, Ceph, R2 ...), on botocore.

:class:`S3Store` implements the catalog's store interface (``_store.Store``) for URLs
``s3://bucket/prefix``: keys are ``/``-separated paths under ``prefix``.

- Writes are create-if-absent: ``PutObject`` and ``CompleteMultipartUpload`` with
  ``If-None-Match: *``. An object appears whole or not at all; a refused condition is ``False``.
  A large object is streamed as a multipart upload, completed conditionally and aborted on any
  failure; an upload whose writer was killed stays invisible until :meth:`cleanup_uploads` aborts
  it.
- A write retried by botocore after its response was lost can meet its own object (the server
  answers 412); the store then compares the object with what it sent and answers ``True``.
- Reads: ranged ``GetObject`` requests in parallel threads, straight into one buffer.
- Configuration is the AWS SDKs' own: environment variables (``AWS_ACCESS_KEY_ID``,
  ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_RETRY_MODE``,
  ``AWS_MAX_ATTEMPTS`` ...), ``~/.aws/config`` and ``~/.aws/credentials``; options given
  explicitly win over them. Transient failures (connection errors, timeouts, 5xx, throttling)
  are retried by botocore's retry modes (``standard`` by default) with backoff.
- A persistent failure is a :class:`~modelrows.StorageError` naming the URL and the step; no
  message carries a secret.

botocore is imported only when a store talks to the server, never by ``import modelrows``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from .._errors import StorageError
from ._transfer import (
    Upload,
    blank,
    check_key,
    check_options,
    check_ranges,
    parallel_read,
    run_upload,
    url_prefix,
)

__all__ = ["S3_OPTIONS", "S3Store", "is_s3_url", "parse_s3_url"]

_MIB = 1 << 20
_MIN_PART = 5 * _MIB  # S3's smallest part (all but the last)
_MAX_PART = 5 * 1024 * _MIB  # and its largest, also the largest single PUT
_MAX_PARTS = 10_000
_COALESCE_GAP = 1 * _MIB  # get_ranges merges ranges this close into one request
_STREAM_ATTEMPTS = 3  # a body cut mid-stream is fetched again from where it stopped, this often

SUPPORTED = (
    "modelrows reads and writes local paths (or file:///path) and S3 or S3-compatible "
    "object stores as s3://bucket/prefix"
)

S3_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "endpoint_url": str,
    "region": str,
    "profile": str,
    "access_key_id": str,
    "secret_access_key": str,
    "session_token": str,
    "retry_mode": str,
    "max_attempts": int,
    "connect_timeout": (int, float),
    "read_timeout": (int, float),
    "max_concurrency": int,
    "part_size": int,
    "read_chunk_size": int,
}
"""Options :meth:`S3Store.from_url` accepts, with their types."""

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,254}", re.IGNORECASE)


def is_s3_url(location: object) -> bool:
    """Whether ``location`` is a string naming an ``s3://`` URL."""
    return isinstance(location, str) and location[:5].lower() == "s3://"


def _redact_url(url: str) -> str:
    """The URL as it may be shown: any ``user:password@`` part replaced."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", url)


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into ``("bucket", "prefix")`` (prefix without end slashes).

    Any other scheme, credentials inside the URL, a query, a fragment or an empty, ``.`` or
    ``..`` path segment is a :class:`~modelrows.StorageError` saying what is supported.

    >>> parse_s3_url("s3://my-bucket/ckpts/digits/")
    ('my-bucket', 'ckpts/digits')
    """
    shown = _redact_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise StorageError(f"{shown!r} has {scheme}: {SUPPORTED}", path=shown, step="parse url")
    if "@" in parts.netloc:
        raise StorageError(
            f"{shown!r} holds credentials: put them in the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE) or in the store options, never in the URL",
            path=shown,
            step="parse url",
        )
    if parts.query or parts.fragment:
        raise StorageError(
            f"{shown!r} has a query or fragment; an S3 location is s3://bucket/prefix",
            path=shown,
            step="parse url",
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket):
        raise StorageError(
            f"{shown!r} names no valid bucket; an S3 location is s3://bucket/prefix",
            path=shown,
            step="parse url",
        )
    return bucket, url_prefix(shown, "s3", parts.path)


_LOGGED_BY_BOTOCORE = (
    "botocore.auth",
    "botocore.client",
    "botocore.credentials",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
)
_redacted: tuple[str, ...] = ()
_redacted_lock = threading.Lock()


class _Redact(logging.Filter):
    """Blanks the secrets of this process's S3 stores out of botocore's log records: at DEBUG
    level botocore logs each request's headers and canonical form, the session token among
    them. Records without a secret pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _redacted
        if secrets:
            message = record.getMessage()
            if any(s in message for s in secrets):
                record.msg, record.args = blank(message, secrets), None
        return True


_REDACT = _Redact()


def _guard_logs(secrets: Sequence[str]) -> None:
    """Keeps ``secrets`` out of botocore's logs from now on (see :class:`_Redact`)."""
    global _redacted
    with _redacted_lock:
        _redacted = tuple(sorted(set(_redacted) | set(secrets), key=len, reverse=True))
        for name in _LOGGED_BY_BOTOCORE:
            logger = logging.getLogger(name)
            if _REDACT not in logger.filters:
                logger.addFilter(_REDACT)


_loader: list[Any] = []  # botocore's data loader, shared by every store's session
_loader_lock = threading.Lock()


def _share_loader(session: Any) -> None:
    """Gives ``session`` the loader of the first store's session: it holds the S3 service model
    once parsed, which makes each further client ~10 ms to create instead of ~200 ms (a catalog
    opened again, another catalog). Sessions keep their own credentials and configuration."""
    with _loader_lock:
        if _loader:
            session.register_component("data_loader", _loader[0])
        else:
            _loader.append(session.get_component("data_loader"))


def _error_code(exc: BaseException) -> tuple[str, int]:
    """(code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _retry_attempts(exc_or_response: Any) -> int:
    """How often botocore retried the request that gave this response or error."""
    response = getattr(exc_or_response, "response", exc_or_response)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


_ADVICE = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the URL",
    "AccessDenied": "the credentials may not do this: check them and the bucket's policy",
    "AllAccessDisabled": "the credentials may not do this: check them and the bucket's policy",
    "InvalidAccessKeyId": "the access key is unknown to the store: check the credentials",
    "SignatureDoesNotMatch": "the store refused the request signature: check the secret key",
    "ExpiredToken": "the session token expired: refresh the credentials",
    "InvalidToken": "the session token is invalid: refresh the credentials",
    "PermanentRedirect": "the bucket lives in another region: set AWS_REGION or region=",
    "AuthorizationHeaderMalformed": "the region is wrong for this bucket: set AWS_REGION or region=",
}


def _describe(exc: BaseException) -> str:
    """What went wrong, from a botocore exception, in one sentence with advice."""
    code, status = _error_code(exc)
    if code or status:
        message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "") or "")
        text = f"{code or status} (HTTP {status})" + (f": {message}" if message else "")
        advice = _ADVICE.get(code)
        if advice is None and (status >= 500 or code in ("SlowDown", "Throttling")):
            advice = (
                f"the store kept failing after {_retry_attempts(exc) + 1} attempts; try again "
                "later (AWS_MAX_ATTEMPTS or max_attempts= allows more)"
            )
        return f"{text}; {advice}" if advice else text
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            f"{exc}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or pass "
            "access_key_id= and secret_access_key="
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return (
            f"{exc}; the store could not be reached (retried): check the endpoint "
            "(AWS_ENDPOINT_URL or endpoint_url=) and the network, then try again"
        )
    return f"{name}: {exc}"


class S3Store:
    """A catalog store on S3 or an S3-compatible server, rooted at ``s3://bucket/prefix``.

    Options given here override the AWS environment variables and configuration files; what is
    not given comes from them, as for the AWS SDKs.

    >>> store = S3Store("s3://my-bucket/ckpts", endpoint_url="http://127.0.0.1:9000")  # doctest: +SKIP
    >>> store.put_if_absent("a/b.json", b"{}")  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        retry_mode: str | None = None,
        max_attempts: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_concurrency: int = 8,
        part_size: int = 8 * _MIB,
        read_chunk_size: int = 16 * _MIB,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        check_options(
            self.url,
            max_concurrency=max_concurrency,
            part_size=part_size,
            read_chunk_size=read_chunk_size,
            part_ok=_MIN_PART <= part_size <= _MAX_PART,
            part_rule=f"is outside S3's part sizes ({_MIN_PART} to {_MAX_PART} bytes)",
        )
        self.max_concurrency = max_concurrency
        self.part_size = part_size
        self.read_chunk_size = read_chunk_size
        self._endpoint_url = endpoint_url
        self._region = region
        self._profile = profile
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._session_token = session_token
        self._retry_mode = retry_mode
        self._max_attempts = max_attempts
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._client_lock = threading.Lock()
        self._client_obj: Any = None
        self._resolved: list[str | None] = []  # secrets botocore found (profile, files ...)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None) -> S3Store:
        """A store for ``url`` with options from a mapping (``S3_OPTIONS`` names them); what
        they do not give comes from the AWS environment and configuration files."""
        kwargs: dict[str, Any] = {}
        for name, value in (options or {}).items():
            kind = S3_OPTIONS.get(name)
            if kind is None:
                raise StorageError(
                    f"unknown S3 option {name!r} for {_redact_url(url)}; known: "
                    + ", ".join(sorted(S3_OPTIONS)),
                    path=_redact_url(url),
                    step="configure",
                )
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise StorageError(
                    f"S3 option {name!r} for {_redact_url(url)} must be "
                    + (kind.__name__ if isinstance(kind, type) else "a number")
                    + f", not {type(value).__name__}",
                    path=_redact_url(url),
                    step="configure",
                )
            kwargs[name] = value
        return cls(url, **kwargs)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        """The botocore S3 client, made on first use (thread-safe, shared by all threads)."""
        if self._client_obj is None:
            with self._client_lock:
                if self._client_obj is None:
                    self._client_obj = self._make_client()
        return self._client_obj

    def _make_client(self) -> Any:
        try:
            import botocore.session
            from botocore.config import Config
        except ImportError as exc:
            raise StorageError(
                f"{self.url}: S3 storage needs botocore; install it with "
                "pip install 'modelrows[s3]'",
                path=self.url,
                step="import",
            ) from exc
        config: dict[str, Any] = {"max_pool_connections": max(10, 2 * self.max_concurrency)}
        retries: dict[str, Any] = {}
        if self._retry_mode is not None:
            retries["mode"] = self._retry_mode
        if self._max_attempts is not None:
            retries["total_max_attempts"] = self._max_attempts
        if retries:
            config["retries"] = retries
        if self._connect_timeout is not None:
            config["connect_timeout"] = self._connect_timeout
        if self._read_timeout is not None:
            config["read_timeout"] = self._read_timeout
        try:
            session = botocore.session.Session(profile=self._profile)
            _share_loader(session)
            client = session.create_client(
                "s3",
                region_name=self._region,
                endpoint_url=self._endpoint_url,
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret_access_key,
                aws_session_token=self._session_token,
                config=Config(**config),
            )
        except Exception as exc:  # a bad profile, region, endpoint or option value
            raise self._error("configure the client for", None, exc) from None
        if self._access_key_id is None:  # resolved (and cached) by create_client: no lookup
            with contextlib.suppress(Exception):
                found = session.get_credentials()
                if found is not None:
                    frozen = found.get_frozen_credentials()
                    self._resolved = [frozen.secret_key, frozen.token]
        _guard_logs(self._secrets())
        return client

    def _key(self, key: str) -> str:
        """The object key of a store key: checked, under the prefix."""
        check_key(self.url, key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str | None) -> str:
        return f"{self.url}/{key}" if key else self.url

    def _secrets(self) -> list[str]:
        found = [self._secret_access_key, self._session_token, *self._resolved]
        found += [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
        return [s for s in found if s and len(s) >= 4]

    def _error(
        self, step: str, key: str | None, exc: BaseException, *, note: str = ""
    ) -> StorageError:
        """A StorageError naming the URL and the step, with every known secret blanked out."""
        where = self._where(key)
        message = blank(f"could not {step} {where}: {_describe(exc)}{note}", self._secrets())
        return StorageError(message, path=where, step=step)

    @contextlib.contextmanager
    def _failing(self, step: str, key: str | None) -> Iterator[None]:
        """Turns botocore's errors inside the block into StorageError (no chained secrets)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._error(step, key, exc) from None

    # -- the store interface ----------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        """None: objects on S3 have no local path."""
        return None

    def put_if_absent(self, key: str, data: bytes, *, fsync: bool = True) -> bool:
        """Create ``key`` holding ``data`` unless it exists: True if created, False if it existed.

        One conditional ``PutObject`` (a multipart upload above ``part_size`` x 8 bytes); the
        object appears whole or not at all. ``fsync`` is accepted for the interface: an object
        is durable once S3 acknowledges it.
        """
        name = self._key(key)
        view = memoryview(data).cast("B")
        if len(view) > 8 * self.part_size:

            def write(out: IO[bytes]) -> None:
                out.write(view)

            return self.put_stream_if_absent(key, write)
        body = bytes(view)
        from botocore.exceptions import BotoCoreError, ClientError

        for _ in range(3):  # 409: a concurrent conditional write was in flight; ask again
            try:
                self._client.put_object(Bucket=self.bucket, Key=name, Body=body, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code, status = _error_code(exc)
                if status == 412 or code == "PreconditionFailed":
                    if _retry_attempts(exc):  # our own earlier attempt may have landed
                        return self._holds(key, body)
                    return False
                if status != 409:
                    raise self._error("create", key, exc) from None
                conflict = exc
            except BotoCoreError as exc:
                raise self._error("create", key, exc) from None
        raise self._error("create", key, conflict) from None

    def _holds(self, key: str, body: bytes) -> bool:
        """Whether ``key`` holds exactly ``body`` (after a retried conditional put)."""
        with self._failing("check", key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        if int(head["ContentLength"]) != len(body):
            return False
        if str(head.get("ETag", "")).strip('"') == hashlib.md5(body).hexdigest():
            return True
        return self.get(key) == body

    def put_stream_if_absent(
        self, key: str, write: Callable[[IO[bytes]], None], *, fsync: bool = True
    ) -> bool:
        """Create ``key`` from what ``write`` writes to a file object, unless ``key`` exists.

        ``write`` writes sequentially (``write``, ``tell``, ``flush``). Up to ``part_size``
        bytes become one conditional ``PutObject``; more stream out as a multipart upload,
        ``max_concurrency`` parts at a time, completed with ``If-None-Match: *`` and aborted on
        any failure (the writer's own exceptions propagate unchanged). A writer killed
        mid-upload leaves no visible object, only an upload that :meth:`cleanup_uploads`
        aborts. True if created, False if the key existed.
        """
        return run_upload(_Upload(self, key), write)

    def put_stream(self, key: str, write: Callable[[IO[bytes]], None]) -> None:
        """Create or replace ``key`` with what ``write`` writes, atomically: readers see the old
        object or the whole new one, never a part (a plain ``PutObject``, or a multipart upload
        completed unconditionally and aborted on any failure)."""
        run_upload(_Upload(self, key, replace=True), write)

    def get(self, key: str) -> bytes:
        """The whole object (one request); FileNotFoundError if absent."""
        name = self._key(key)
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc)[0] == "NoSuchKey":
                raise self._not_found(key) from None
            raise self._error("read", key, exc) from None
        except Exception as exc:
            raise self._as_storage_error("read", key, exc) from None
        size = int(response["ContentLength"])
        buffer = bytearray(size)
        self._drain(key, response, memoryview(buffer), 0, str(response.get("ETag", "")))
        return bytes(buffer)

    def _not_found(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(2, "no such object", self._where(key))

    def _as_storage_error(self, step: str, key: str | None, exc: BaseException) -> BaseException:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, (BotoCoreError, ClientError)):
            return self._error(step, key, exc)
        return exc

    def _get_range(
        self, key: str, start: int, end: int, etag: str | None, *, past_end: bool = False
    ) -> Any:
        """The response of ``GET`` bytes [start, end) of ``key`` (if-match ``etag`` if given);
        with ``past_end``, None where the range starts past the end of the object."""
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        args["Range"] = f"bytes={start}-{end - 1}"
        if etag:
            args["IfMatch"] = etag
        try:
            return self._client.get_object(**args)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code == "NoSuchKey":
                raise self._not_found(key) from None
            if status == 416 and past_end:
                return None
            if status == 412:
                raise self._error(
                    "read", key, exc, note=" (the object was replaced while being read)"
                ) from None
            raise self._error("read", key, exc) from None
        except Exception as exc:
            raise self._as_storage_error("read", key, exc) from None

    def _drain(self, key: str, response: Any, into: memoryview, start: int, etag: str) -> None:
        """Reads a response body into ``into`` (the bytes from ``start``), refetching the rest
        of the range if the stream breaks, up to ``_STREAM_ATTEMPTS`` times."""
        from botocore.exceptions import BotoCoreError

        done = 0
        attempts = 0
        body = response["Body"]
        while done < len(into):
            try:
                got = body.readinto(into[done:])
                if got == 0:
                    raise StorageError(
                        f"could not read {self._where(key)}: the store sent "
                        f"{done} of {len(into)} bytes",
                        path=self._where(key),
                        step="read",
                    )
                done += got
            except (BotoCoreError, OSError) as exc:
                attempts += 1
                body.close()
                if attempts >= _STREAM_ATTEMPTS:
                    raise self._error("read", key, exc) from None
                more = self._get_range(key, start + done, start + len(into), etag or None)
                body = more["Body"]
        body.close()

    def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes [start, end) of each range, fetched in parallel; ranges within 1 MiB of
        each other share one request. A range past the end of the object is cut short there.
        """
        check_ranges(self._where(key), ranges)
        spans: list[list[int]] = []  # merged [start, end) spans, sorted
        for start, end in sorted((s, e) for s, e in ranges if e > s):
            if spans and start <= spans[-1][1] + _COALESCE_GAP:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])

        def fetch(span: list[int]) -> bytes:
            response = self._get_range(key, span[0], span[1], None, past_end=True)
            if response is None:
                return b""
            buffer = bytearray(int(response["ContentLength"]))
            self._drain(key, response, memoryview(buffer), span[0], str(response.get("ETag", "")))
            return bytes(buffer)

        blobs = self._map(fetch, spans)
        out: list[bytes] = []
        for start, end in ranges:
            if end == start:
                out.append(b"")
                continue
            for (s, e), blob in zip(spans, blobs, strict=True):
                if s <= start and end <= e:
                    out.append(blob[start - s : end - s])
                    break
        return out

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def read_all(self, key: str) -> bytearray:
        """The whole object in memory, read with parallel ranged requests (no temporary file).

        The first request fetches ``read_chunk_size`` bytes and learns the size; the rest come
        ``max_concurrency`` ranges at a time, each required to match the first one's ETag (an
        object replaced mid-read is an error, never a mix). FileNotFoundError if absent.
        """
        chunk = self.read_chunk_size
        first = self._get_range(key, 0, chunk, None, past_end=True)
        if first is None:  # S3 refuses any range of an empty object
            if self.size(key) == 0:
                return bytearray()
            first = self._get_range(key, 0, chunk, None)
        total = int(str(first["ContentRange"]).rsplit("/", 1)[1])
        etag = str(first.get("ETag", ""))

        def fill(start: int, into: memoryview) -> None:
            response = self._get_range(key, start, start + len(into), etag)
            self._drain(key, response, into, start, etag)

        return parallel_read(
            total,
            int(first["ContentLength"]),
            lambda into: self._drain(key, first, into, 0, etag),
            fill,
            chunk=chunk,
            max_concurrency=self.max_concurrency,
        )

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if absent."""
        name = self._key(key)
        from botocore.exceptions import ClientError

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc)[1] == 404:
                return None
            raise self._error("look up", key, exc) from None
        except Exception as exc:
            raise self._as_storage_error("look up", key, exc) from None
        return int(head["ContentLength"])

    def _list_prefix(self, prefix: str) -> str:
        """The S3 prefix of a store prefix: a directory of the store ('' is the root)."""
        prefix = prefix.strip("/")
        if prefix:
            self._key(prefix)  # checks it
        full = "/".join(p for p in (self.prefix, prefix) if p)
        return f"{full}/" if full else ""

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """Every key under the directory ``prefix`` ('' for all), recursively, with its size,
        sorted by key."""
        s3_prefix = self._list_prefix(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        found: list[tuple[str, int]] = []
        with self._failing("list", prefix or None):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=s3_prefix
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    found.append((str(item["Key"])[cut:], int(item["Size"])))
        found.sort()
        return found

    def delete(self, key: str) -> None:
        """Remove ``key``; an absent key is fine."""
        name = self._key(key)
        with self._failing("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=name)

    def cleanup_uploads(self, older_than: float, prefix: str = "") -> int:
        """Abort the multipart uploads under this store's prefix (and ``prefix`` below it)
        started more than ``older_than`` seconds ago (writers that died mid-upload); returns
        how many.

        An upload younger than that may belong to a live writer and is left alone.
        """
        from botocore.exceptions import ClientError

        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than)
        stale: list[tuple[str, str]] = []
        with self._failing("list the uploads under", None):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._list_prefix(prefix)
            )
            for page in pages:
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"] <= cutoff:
                        stale.append((str(upload["Key"]), str(upload["UploadId"])))
        aborted = 0
        for name, upload_id in stale:
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id
                )
                aborted += 1
            except ClientError as exc:
                if _error_code(exc)[0] != "NoSuchUpload":  # finished or aborted meanwhile
                    raise self._error("abort an upload under", None, exc) from None
            except Exception as exc:
                raise self._as_storage_error("abort an upload under", None, exc) from None
        return aborted


class _Upload(Upload):
    """The file object ``put_stream_if_absent`` hands its writer: buffers ``part_size`` bytes,
    then streams parts of a multipart upload (started on the first full part) from a pool."""

    eager = True

    def __init__(self, store: S3Store, key: str, *, replace: bool = False) -> None:
        super().__init__(store.part_size, replace=replace)
        self._store = store
        self._key = key
        self._name = store._key(key)
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(store.max_concurrency)
        self._futures: list[Future[dict[str, Any]]] = []

    def _part_limit(self, number: int) -> int:
        """Parts double in size every 1,000 (S3 allows 10,000), so streams of any size fit."""
        return min(self._store.part_size << ((number - 1) // 1000), _MAX_PART)

    def _send_part(self, number: int, body: bytes) -> None:
        """Hands ``body`` to the pool as part ``number`` (blocks while all slots are busy)."""
        store = self._store
        if self._upload_id is None:
            with store._failing("start an upload of", self._key):
                created = store._client.create_multipart_upload(Bucket=store.bucket, Key=self._name)
            self._upload_id = str(created["UploadId"])
            self._pool = ThreadPoolExecutor(store.max_concurrency)
        if number > _MAX_PARTS:
            raise StorageError(
                f"could not write {store._where(self._key)}: more than {_MAX_PARTS} parts",
                path=store._where(self._key),
                step="upload",
            )
        for future in self._futures:  # fail early: a part that failed dooms the upload
            if future.done() and future.exception() is not None:
                future.result()
        self._slots.acquire()
        assert self._pool is not None
        self._futures.append(self._pool.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        store = self._store
        try:
            with store._failing(f"upload part {number} of", self._key):
                response = store._client.upload_part(
                    Bucket=store.bucket,
                    Key=self._name,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=body,
                )
            part = {"PartNumber": number, "ETag": response["ETag"]}
            for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1"):
                if response.get(name):
                    part[name] = response[name]
            return part
        finally:
            self._slots.release()

    def _put(self, body: bytes) -> None:
        store = self._store
        with store._failing("write", self._key):
            store._client.put_object(Bucket=store.bucket, Key=self._name, Body=body)

    def _create(self, body: bytes) -> bool:
        return self._store.put_if_absent(self._key, body)

    def _complete(self) -> bool:
        """The (conditional) multipart completion, once every part is sent."""
        store = self._store
        parts = [future.result() for future in self._futures]
        self._close_pool()
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {} if self._replace else {"IfNoneMatch": "*"}
        for _ in range(3):
            try:
                store._client.complete_multipart_upload(
                    Bucket=store.bucket,
                    Key=self._name,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                    **condition,
                )
                self._upload_id = None
                return True
            except ClientError as exc:
                code, status = _error_code(exc)
                if status == 412 or code == "PreconditionFailed":
                    mine = bool(_retry_attempts(exc)) and self._landed(parts)
                    if mine:
                        self._upload_id = None
                    else:
                        self.abort()
                    return mine
                if code == "NoSuchUpload" and _retry_attempts(exc) and self._landed(parts):
                    self._upload_id = None  # completed by an attempt whose answer was lost
                    return True
                if status != 409:
                    raise store._error("complete the upload of", self._key, exc) from None
                if not self._replace and store.size(self._key) is not None:  # the other won
                    self.abort()
                    return False
                conflict = exc
            except BotoCoreError as exc:
                raise store._error("complete the upload of", self._key, exc) from None
        raise store._error("complete the upload of", self._key, conflict) from None

    def _landed(self, parts: list[dict[str, Any]]) -> bool:
        """Whether the object now at the key is this upload (by its multipart ETag)."""
        store = self._store
        with store._failing("check", self._key):
            try:
                head = store._client.head_object(Bucket=store.bucket, Key=self._name)
            except Exception as exc:
                if _error_code(exc)[1] == 404:
                    return False
                raise
        etags = [str(p["ETag"]).strip('"') for p in parts]
        if all(re.fullmatch(r"[0-9a-fA-F]{32}", e) for e in etags):
            digest = hashlib.md5(b"".join(bytes.fromhex(e) for e in etags)).hexdigest()
            return str(head.get("ETag", "")).strip('"') == f"{digest}-{len(parts)}"
        return int(head["ContentLength"]) == self._written  # no MD5 ETags (SSE-KMS ...)

    def _abort(self) -> None:
        """Aborts the multipart upload, if any; a failure here is left to cleanup_uploads."""
        for future in self._futures:
            future.cancel()
        self._close_pool()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            store = self._store
            with contextlib.suppress(Exception):
                store._client.abort_multipart_upload(
                    Bucket=store.bucket, Key=self._name, UploadId=upload_id
                )

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
