"""Where a row file lives: a local path, a ``file://`` URL, or an object storage URL:
``s3://bucket/key``, ``gs://bucket/key`` (Google Cloud Storage) or ``az://container/key``
(Azure Blob Storage, also ``abfss://``).

``read_model_row`` and ``write_model_row`` take all three; a function that needs a file on this
machine takes the first two (:func:`local_path`) and refuses a URL with a message that says
what works. Any other scheme is refused everywhere, naming what is supported.

Objects on S3 (or an S3-compatible store) are read whole into memory with parallel ranged
requests, and written with one ``PutObject`` or a multipart upload completed at once: readers
see the old object or the whole new one. Credentials and the endpoint come from the standard AWS
environment variables and configuration files (``AWS_ENDPOINT_URL`` for a local server);
on Google Cloud Storage and Azure (through obstore) from the ``GOOGLE_*`` and ``AZURE_*`` ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ._errors import RowFileError, StorageError

if TYPE_CHECKING:  # pragma: no cover
    from ._catalog._objstore import ObjStore
    from ._catalog._s3 import S3Store

__all__ = ["SUPPORTED", "is_url", "local_path", "read_url", "resolve", "write_url"]

SUPPORTED = (
    "a local path, a file:///absolute/path URL, s3://bucket/key on S3 or an S3-compatible store, "
    "gs://bucket/key on Google Cloud Storage or az://container/key on Azure Blob Storage"
)
_OBJSTORE_SCHEMES = ("gs", "az", "azure", "adl", "abfs", "abfss")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: not a drive


def _scheme(location: object) -> str | None:
    """The lower-case scheme of a URL string, or None for anything else (a path)."""
    if not isinstance(location, str):
        return None
    found = _SCHEME.match(location)
    return found.group(1).lower() if found else None


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL string (``scheme://...``) rather than a path."""
    return _scheme(location) is not None


def _shown(location: str) -> str:
    """The URL as it may appear in a message: credentials in it blanked out."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", location)


def _file_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise StorageError(
            f"{_shown(url)!r} is not a local file URL; write file:///absolute/path",
            path=_shown(url),
            step="parse url",
        )
    return Path(unquote(parts.path))


def resolve(location: str | os.PathLike[str]) -> Path | str:
    """A local path (from a path or a ``file://`` URL), or an ``s3://``, ``gs://`` or ``az://``
    URL as given; any other scheme is a :class:`~modelrows.StorageError` naming what is
    supported."""
    scheme = _scheme(location)
    if scheme is None:
        return Path(location)
    assert isinstance(location, str)
    if scheme == "file":
        return _file_path(location)
    if scheme == "s3" or scheme in _OBJSTORE_SCHEMES:
        return location
    raise StorageError(
        f"{_shown(location)!r}: unsupported URL scheme {scheme!r}; a row file is {SUPPORTED}",
        path=_shown(location),
        step="parse url",
    )


def local_path(location: str | os.PathLike[str], *, what: str) -> Path:
    """The local path ``location`` names (a path or a ``file://`` URL); any other URL is a
    :class:`~modelrows.StorageError` saying that ``what`` needs a file on this machine."""
    scheme = _scheme(location)
    if scheme is None:
        return Path(location)
    assert isinstance(location, str)
    if scheme == "file":
        return _file_path(location)
    raise StorageError(
        f"{_shown(location)!r}: {what} needs a file on this machine, a local path or a "
        "file:///absolute/path URL; copy the object here first",
        path=_shown(location),
        step="parse url",
    )


def _object(url: str) -> tuple[S3Store | ObjStore, str]:
    """(store of the bucket, key) of ``s3://bucket/key`` (or ``gs://``, ``az://`` ...)."""
    if _scheme(url) in _OBJSTORE_SCHEMES:
        from ._catalog._objstore import ObjStore

        base, _, key = url.rstrip("/").rpartition("/")
        if base.endswith(":/") or not key:
            raise StorageError(
                f"{_shown(url)!r} names a bucket or container, not an object; a row file there "
                "is scheme://bucket/key",
                path=_shown(url),
                step="parse url",
            )
        return ObjStore.from_url(base), key
    from ._catalog._s3 import S3Store, parse_s3_url

    bucket, key = parse_s3_url(url)
    if not key:
        raise StorageError(
            f"{url!r} names a bucket, not an object; a row file on S3 is s3://bucket/key",
            path=url,
            step="parse url",
        )
    return S3Store(f"s3://{bucket}"), key


def read_url(url: str) -> tuple[bytearray, str]:
    """The whole object ``url`` names, read into memory with parallel ranged requests, and the
    URL to name it by; RowFileError if there is none."""
    store, key = _object(url)
    where = f"{store.url}/{key}"
    try:
        return store.read_all(key), where
    except FileNotFoundError:
        raise RowFileError(f"{where}: no such object", path=where) from None


def write_url(url: str, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace the object ``url`` names with what ``write`` writes, atomically."""
    store, key = _object(url)
    store.put_stream(key, write)
