"""The two Linux system calls modelrows uses for speed, through ctypes: None where unavailable.

``FALLOCATE`` reserves a file's blocks before it is written (rowfile); ``MADVISE`` maps a mapped
file's pages ahead of a copy (weights). Both are optimisations only: without them (not Linux,
not glibc or musl) everything works the same, a little slower.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any, cast

__all__ = ["FALLOCATE", "MADVISE", "MADV_POPULATE_READ"]

MADV_POPULATE_READ = 22
"""madvise(2) advice (Linux 5.14+): map the range's pages readable, reading them in if needed."""


def libc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """libc's ``name`` returning a C int (and setting errno), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # pragma: no cover - not glibc or musl
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return cast("Callable[..., int]", fn)


FALLOCATE = libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
"""fallocate(fd, mode, offset, length): Linux's, never glibc's emulating posix_fallocate."""

MADVISE = libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
"""madvise(address, length, advice)."""
