"""The weights column's codec: the tensor table, the packed layout, streaming, decoding to views.

A weights value (docs/format.md, section 4) is a tensor table (name, dtype, shape, offset, nbytes
per tensor), one blob of tensor bytes, a fingerprint and a checksum. This module owns every step
between tensors and that value:

- **layout**: :func:`plan_layout` places tensors in a packed byte layout (each at a 64-byte
  boundary, ties stored once) without copying; :func:`pack` copies them into it.
- **writing**: :func:`weights_array` builds the Arrow value. Written to a file, the blob is a
  :func:`placeholder` that costs nothing, and a :class:`BlobStream` hands the tensors' own bytes
  to the file in its place (:class:`BlobSink` recognises the placeholder by address), hashing
  them as they pass (:func:`stream_packed`): no packed copy is ever built.
- **reading**: :func:`decode_weights` checks a stored value's tensor table against its blob with
  bounded work and returns where each tensor lies in the file's bytes; :func:`tensor_views`
  turns those into zero-copy tensors.

Nothing here imports torch until a function that builds or reads tensors runs: checking and
decoding a tensor table needs only the format's item sizes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import mmap
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import xxhash

from ._errors import CorruptRowError, WeightsError
from ._format import (
    ALIGNMENT,
    CHECKSUM_PREFIX,
    DTYPE_ITEMSIZE,
    FORMAT_DTYPES,
    MAX_NDIM,
    WEIGHTS_FIELDS,
    is_weights_type,
)
from ._lazy import lazy_module

if TYPE_CHECKING:
    import torch

    DTYPE_NAMES: dict[str, torch.dtype]
    """The format's dtype names mapped to this torch's dtypes (built on first use)."""
else:
    torch = lazy_module("torch", globals())

__all__ = [
    "WEIGHTS_ARROW_TYPE",
    "BlobPlan",
    "BlobSink",
    "BlobStream",
    "DecodeContext",
    "DecodedWeights",
    "TensorEntry",
    "decode_entries",
    "decode_weights",
    "fingerprint_of",
    "plan_layout",
    "stream_packed",
    "tensor_views",
    "weights_array",
]


# -- the tensor table ------------------------------------------------------------------------------


class TensorEntry(NamedTuple):
    """Where one tensor lives in a packed storage. Tied tensors share offset and nbytes.

    An immutable named tuple: cheap to build, which matters when a file lists thousands."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


_TENSOR_STRUCT = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.field("item", pa.int64(), nullable=False)), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("nbytes", pa.int64(), nullable=False),
    ]
)
WEIGHTS_ARROW_TYPE = pa.struct(
    [
        pa.field(
            "tensors", pa.list_(pa.field("item", _TENSOR_STRUCT, nullable=False)), nullable=False
        ),
        pa.field("data", pa.large_binary(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("checksum", pa.string(), nullable=False),
    ]
)
"""The Arrow type of a weights column (docs/format.md, "The weights column")."""
assert tuple(f.name for f in WEIGHTS_ARROW_TYPE) == WEIGHTS_FIELDS


def weights_type_problem(t: pa.DataType) -> str | None:
    """Why a column of type ``t`` cannot be decoded as weights, or None (extra fields are
    allowed; the four of the format must have their exact types)."""
    if not pa.types.is_struct(t):
        return f"expected the weights struct, found {t}"
    present = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    for f in WEIGHTS_ARROW_TYPE:
        if f.name not in present:
            return f"the weights struct lacks field {f.name!r}"
        if present[f.name] != f.type:
            return f"weights field {f.name!r} is {present[f.name]}, expected {f.type}"
    return None


def fingerprint_of(entries: tuple[TensorEntry, ...] | list[TensorEntry]) -> str:
    """SHA-256 of sorted ``name\\tdtype\\tdim,dim,...\\n`` lines; first 32 hex digits."""
    shapes: dict[tuple[int, ...], str] = {}  # models repeat their shapes
    lines = []
    for e in entries:
        dims = shapes.get(e.shape)
        if dims is None:
            dims = shapes[e.shape] = ",".join(map(str, e.shape))
        lines.append(f"{e.name}\t{e.dtype}\t{dims}\n")
    lines.sort()
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()[:32]


# -- dtypes: the format's names and this torch's dtypes --------------------------------------------

_TORCH_DTYPES: dict[str, torch.dtype] | None = None
_NAME_OF_DTYPE: dict[torch.dtype, str] = {}


def torch_dtypes() -> dict[str, torch.dtype]:
    """The format's dtype names mapped to the torch dtypes of this install (imports torch)."""
    global _TORCH_DTYPES
    table = _TORCH_DTYPES
    if table is None:
        table = {
            n: getattr(torch, n)
            for n in FORMAT_DTYPES
            if isinstance(getattr(torch, n, None), torch.dtype)
        }
        _NAME_OF_DTYPE.update({v: k for k, v in table.items()})
        _TORCH_DTYPES = table
    return table


def __getattr__(name: str) -> Any:
    if name == "DTYPE_NAMES":  # the same dict as torch_dtypes(), read as a constant
        return torch_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dtype_name(dtype: torch.dtype, *, tensor: str = "?") -> str:
    """The format's name of a torch dtype; WeightsError naming ``tensor`` if it has none."""
    name = _NAME_OF_DTYPE.get(dtype)
    if name is None:
        table = torch_dtypes()  # (fills _NAME_OF_DTYPE on first use)
        name = _NAME_OF_DTYPE.get(dtype)
        if name is None:
            raise WeightsError(
                f"tensor {tensor!r} has dtype {dtype}, which modelrows cannot store; "
                f"supported: {', '.join(table)}"
            )
    return name


def check_torch_dtypes(entries: Iterable[TensorEntry], where: str) -> dict[str, torch.dtype]:
    """The torch dtypes of ``entries``' dtype names; CorruptRowError for a name of the format
    that this torch lacks (a float8 variant in an older torch)."""
    table = torch_dtypes()
    if len(table) == len(FORMAT_DTYPES):  # this torch has them all
        return table
    for e in entries:
        if e.dtype not in table:
            raise CorruptRowError(
                f"{where}: tensor {e.name!r} has dtype {e.dtype!r}, which this torch "
                f"({torch.__version__}) lacks; upgrade torch to read it",
                path=where,
            )
    return table


# -- tensors -> a packed layout --------------------------------------------------------------------


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def check_tensor(name: str, t: object) -> torch.Tensor:
    """``t`` if it is a tensor modelrows can store under ``name``; WeightsError saying why not."""
    if not isinstance(name, str) or not name:
        raise WeightsError(f"tensor names must be non-empty strings, got {name!r}")
    if not isinstance(t, torch.Tensor):
        raise WeightsError(
            f"{name!r} is a {type(t).__name__}, not a torch.Tensor; only tensors are stored "
            "(convert it with torch.as_tensor, or leave it out)"
        )
    if t.layout != torch.strided:
        raise WeightsError(f"tensor {name!r} has layout {t.layout}; convert it with .to_dense()")
    if t.is_quantized:
        raise WeightsError(f"tensor {name!r} is quantized; dequantize it before storing")
    if t.device.type == "meta":
        raise WeightsError(f"tensor {name!r} is on the meta device and has no values to store")
    dtype_name(t.dtype, tensor=name)
    return t


def detached(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself unless it tracks gradients (a model's parameter): then a detached view."""
    return t.detach() if t.requires_grad else t


def tie_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Equal for two tensors that are the same bytes seen the same way (tied parameters)."""
    return (
        t.device,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        t.shape,
        t.stride(),
        t.dtype,
    )


def plan_layout(
    tensors: Mapping[str, torch.Tensor],
) -> tuple[tuple[TensorEntry, ...], list[tuple[int, torch.Tensor]], int]:
    """Where each tensor goes in a packed storage (each at a 64-byte boundary, after 64 bytes of
    slack): the entries, the (offset, tensor) pairs to copy, and the storage size. Copies nothing."""
    entries: list[TensorEntry] = []
    sources: list[tuple[int, torch.Tensor]] = []
    owner: dict[tuple[Any, ...], TensorEntry] = {}
    cursor = ALIGNMENT  # slack in front lets a writer align the first tensor in its file
    for name, value in tensors.items():
        t = check_tensor(name, value).detach()
        nbytes = t.numel() * t.element_size()
        key = tie_key(t)
        tied = owner.get(key) if nbytes else None
        if tied is not None:
            entries.append(TensorEntry(name, tied.dtype, tied.shape, tied.offset, tied.nbytes))
            continue
        offset = _align(cursor)
        entry = TensorEntry(name, dtype_name(t.dtype, tensor=name), tuple(t.shape), offset, nbytes)
        entries.append(entry)
        owner[key] = entry
        sources.append((offset, t))
        cursor = offset + nbytes
    return tuple(entries), sources, _align(cursor)


def pack(tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[TensorEntry, ...]]:
    """Copy tensors into one storage laid out by :func:`plan_layout` (C order); padding is
    zeroed."""
    entries, sources, size = plan_layout(tensors)
    storage = empty_bytes(size)
    raw = storage.numpy()
    end = 0
    for offset, t in sources:
        raw[end:offset] = 0
        nbytes = t.numel() * t.element_size()
        copy_bytes(storage[offset : offset + nbytes], t)
        end = offset + nbytes
    raw[end:] = 0
    return storage, entries


def aligned_bytes(n: int) -> np.ndarray:
    """``n`` uninitialized bytes of memory starting at a 64-byte boundary, backed by transparent
    huge pages where possible.

    NumPy's allocator advises the kernel to use huge pages for large blocks (``MADV_HUGEPAGE``),
    which makes the first write to fresh memory several times faster than torch.empty's 4 KB
    pages (one page fault per 2 MB instead of per 4 KB).
    """
    block = np.empty(n + ALIGNMENT, dtype=np.uint8)
    start = -block.ctypes.data % ALIGNMENT
    return block[start : start + n]


def empty_bytes(n: int) -> torch.Tensor:
    """:func:`aligned_bytes` as a uint8 tensor."""
    return torch.from_numpy(aligned_bytes(n))


def copy_bytes(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` into the uint8 CPU tensor ``dst`` (its exact size), as raw bytes.

    Contiguous CPU sources are copied with one plain memcpy (NumPy), which is as fast as torch's
    copy_ and does not wait on torch's thread pool: on a busy machine each parallel copy_ can stall
    for milliseconds until a second thread is scheduled. Anything else goes through copy_.
    """
    if src.device.type == "cpu" and src.is_contiguous() and not (src.is_conj() or src.is_neg()):
        np.copyto(dst.numpy(), src.reshape(-1).view(torch.uint8).numpy())
    else:
        dst.view(src.dtype).view(src.shape).copy_(src)


def host_bytes(t: torch.Tensor) -> np.ndarray:
    """The bytes of ``t`` (not tracking gradients) in C order as a 1-d uint8 array: a view for a
    contiguous CPU tensor, a copy (of this one tensor) for anything else (strided, on a GPU,
    lazily conjugated)."""
    if t.device.type == "cpu" and t.is_contiguous() and not (t.is_conj() or t.is_neg()):
        return t.reshape(-1).view(torch.uint8).numpy()
    dst = empty_bytes(t.numel() * t.element_size())
    copy_bytes(dst, t)
    return dst.numpy()


# -- streaming a layout and its checksum -----------------------------------------------------------

STREAM_CHUNK = 4 << 20
"""Bytes handed to the file (and to the hash) at a time by :func:`stream_packed`."""

HASH_ON_A_THREAD_FROM = 8 << 20
"""Layouts at least this large are hashed on a second thread while the file is written."""

_new_hasher = xxhash.xxh3_64  # the checksum's hash; a benchmark swaps it to measure its cost

_ZEROS = bytes(ALIGNMENT)


def discard(data: Any) -> None:
    """A ``write`` for :func:`stream_packed` when only the checksum is wanted."""


def stream_packed(
    sources: list[tuple[int, torch.Tensor]], start: int, end: int, write: Callable[[Any], object]
) -> str:
    """Hand bytes ``[start, end)`` of a packed layout to ``write`` without building it: the bytes
    of each source tensor at its offset, zeros between them, in chunks. ``sources`` are (offset,
    tensor) in offset order, as :func:`plan_layout` gives them. Returns the checksum of the very
    bytes written (docs/format.md): XXH3-64 over each distinct tensor's bytes in order, padding
    excluded.

    Large layouts are hashed on a second thread, chunk by chunk in order, while this one writes
    (xxhash and file writes both release the GIL), so the checksum adds little to a write's time.
    """
    h = _new_hasher()
    if end - start < HASH_ON_A_THREAD_FROM:
        _stream(sources, start, end, write, h.update)
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="modelrows-checksum") as pool:
            pending: list[Future[None]] = []
            batch: list[Any] = []  # small tensors go to the thread together: one hand-off each
            batched = 0

            def hash_all(chunks: list[Any]) -> None:
                for chunk in chunks:
                    h.update(chunk)

            def submit() -> None:
                nonlocal batch, batched
                pending.append(pool.submit(hash_all, batch))
                batch, batched = [], 0

            def hash_later(chunk: Any) -> None:
                nonlocal batched
                batch.append(chunk)
                batched += len(chunk)
                if batched >= STREAM_CHUNK:
                    submit()

            try:
                _stream(sources, start, end, write, hash_later)
                if batch:
                    submit()
            except BaseException:
                for job in pending:
                    job.cancel()
                raise
            for job in pending:
                job.result()
    return CHECKSUM_PREFIX + h.hexdigest()


def _stream(
    sources: list[tuple[int, torch.Tensor]],
    start: int,
    end: int,
    write: Callable[[Any], object],
    hash_: Callable[[Any], object],
) -> None:
    pos = start
    for offset, t in sources:
        nbytes = t.numel() * t.element_size()
        if not nbytes:
            continue
        if offset < pos:
            raise AssertionError("sources must be in offset order, each after the last")
        while pos < offset:
            gap = min(offset - pos, ALIGNMENT)
            write(_ZEROS[:gap])
            pos += gap
        raw = host_bytes(t)
        for i in range(0, nbytes, STREAM_CHUNK):
            chunk = raw[i : i + STREAM_CHUNK]
            hash_(chunk)
            write(chunk)
        pos += nbytes
    if pos != end:
        raise AssertionError(f"streamed up to byte {pos} of the layout, expected {end}")


def checksum_of(storage: np.ndarray, entries: Iterable[TensorEntry]) -> str:
    """The checksum (docs/format.md) of tensors lying in a uint8 ``storage`` at their entries'
    offsets: each distinct tensor's bytes in entry order (ties and empty tensors skipped)."""
    h = _new_hasher()
    seen: set[tuple[int, int]] = set()
    for e in entries:
        key = (e.offset, e.nbytes)
        if e.nbytes and key not in seen:
            seen.add(key)
            h.update(storage[e.offset : e.offset + e.nbytes].data)
    return CHECKSUM_PREFIX + h.hexdigest()


# -- writing: the Arrow value, its placeholder, and the stream that replaces it ---------------------

CHECKSUM_PLACEHOLDER = CHECKSUM_PREFIX + "?" * 16
"""Stands in for a checksum a :class:`BlobStream` computes while the blob is written."""


class BlobStream:
    """A weights blob that is not in memory: :func:`weights_array` puts its placeholders in the
    batch (the blob's, ``blob``, an untouched anonymous mapping of the right size, and the
    checksum's, ``checksum_value``), and whoever serializes the batch calls :meth:`write` when the
    blob's turn comes, then :meth:`checksum_bytes` for the checksum (which comes after the blob).
    ``on_checksum`` hears the checksum once the blob is written."""

    def __init__(
        self,
        sources: list[tuple[int, torch.Tensor]],
        start: int,
        end: int,
        on_checksum: Callable[[str], None],
    ) -> None:
        self.sources, self.start, self.end = sources, start, end
        self.on_checksum = on_checksum
        self.checksum: str | None = None
        self.blob = placeholder(end - start)
        self.checksum_value = pa.py_buffer(CHECKSUM_PLACEHOLDER.encode())

    def write(self, write: Callable[[Any], object]) -> None:
        self.checksum = stream_packed(self.sources, self.start, self.end, write)
        self.on_checksum(self.checksum)

    def checksum_bytes(self) -> bytes:
        if self.checksum is None:
            raise AssertionError("the checksum is written after the blob it covers")
        out = self.checksum.encode()
        if len(out) != len(CHECKSUM_PLACEHOLDER):
            raise AssertionError(f"checksum {self.checksum!r} has an unexpected length")
        return out


def placeholder(size: int) -> pa.Buffer:
    """``size`` bytes of zeros that cost nothing: a private read-only anonymous mapping, which
    the kernel neither backs with memory until read nor charges against its commit limit (so a
    blob larger than RAM still gets one; a shared or writable mapping of 100 GB fails here)."""
    if hasattr(mmap, "MAP_PRIVATE"):  # POSIX
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        return pa.py_buffer(mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ))
    return pa.py_buffer(mmap.mmap(-1, size, access=mmap.ACCESS_READ))  # pragma: no cover


@dataclass
class BlobPlan:
    """Where a weights blob will land in its file (chosen by the writer) and, once
    :func:`weights_array` has built the column, the stream that writes the blob in place of its
    placeholder."""

    position: int = 0
    stream: BlobStream | None = None


def weights_array(
    entries: tuple[TensorEntry, ...],
    sources: list[tuple[int, torch.Tensor]],
    fingerprint: str,
    plan: BlobPlan | None,
    *,
    on_checksum: Callable[[str], None],
) -> pa.StructArray:
    """The one-value weights column of a laid-out set of tensors (``entries`` and ``sources`` as
    :func:`plan_layout` gives them). With a ``plan``, the blob is a placeholder and
    ``plan.stream`` writes the tensors in its place, straight from the tensors, placed so every
    tensor lands 64-byte aligned in the file; without a plan the blob is built in memory.
    ``on_checksum`` hears the checksum of the bytes once they are written (or built)."""
    first = min((e.offset for e in entries if e.nbytes), default=None)
    end = max((e.offset + e.nbytes for e in entries if e.nbytes), default=0)
    lead = plan.position % ALIGNMENT if plan is not None and first is not None else 0
    if first is not None and lead > first:
        raise AssertionError("packed weights keep 64 bytes of slack before the first tensor")
    end = max(end, lead)  # the blob is bytes [lead, end) of the layout
    if plan is not None and end > lead:  # the writer streams it in place of a placeholder
        plan.stream = BlobStream(sources, lead, end, on_checksum)
        blob, checksum_value = plan.stream.blob, plan.stream.checksum_value
    else:  # built in memory
        raw = bytearray()
        checksum = stream_packed(sources, lead, end, raw.extend)
        on_checksum(checksum)
        blob, checksum_value = pa.py_buffer(raw), pa.py_buffer(checksum.encode())
    tensors = pa.array(
        [
            {
                "name": e.name,
                "dtype": e.dtype,
                "shape": list(e.shape),
                "offset": e.offset - lead if e.nbytes else 0,
                "nbytes": e.nbytes,
            }
            for e in entries
        ],
        type=_TENSOR_STRUCT,
    )
    tensor_list = pa.ListArray.from_arrays(
        pa.array([0, len(entries)], type=pa.int32()), tensors,
        type=WEIGHTS_ARROW_TYPE.field("tensors").type,
    )  # fmt: skip
    data = pa.Array.from_buffers(
        pa.large_binary(),
        1,
        [None, pa.py_buffer(np.array([0, blob.size], dtype=np.int64)), blob],
    )
    checksum_array = pa.Array.from_buffers(
        pa.string(),
        1,
        [None, pa.py_buffer(np.array([0, checksum_value.size], dtype=np.int32)),
         checksum_value],
    )  # fmt: skip
    return pa.StructArray.from_arrays(
        [tensor_list, data, pa.array([fingerprint]), checksum_array],
        fields=list(WEIGHTS_ARROW_TYPE),
    )


def blob_buffers(batch: pa.RecordBatch) -> dict[str, tuple[int, int]]:
    """Weights columns of ``batch`` -> (address, size) of their blob buffer."""
    out = {}
    for i, f in enumerate(batch.schema):
        if is_weights_type(f.type):
            data = batch.column(i).field("data")
            buf = data.buffers()[2]
            if buf is not None and buf.size:
                out[f.name] = (buf.address, buf.size)
    return out


class Writer(Protocol):
    """Where a :class:`BlobSink` sends bytes."""

    def write(self, data: Any) -> None: ...

    def finish(self) -> None: ...


class BlobSink:
    """A file-like sink for pyarrow that records where each buffer lands (and may write nothing).

    A weights blob that is a :class:`BlobStream`'s placeholder is replaced by the stream's bytes
    (hashed as they pass), and the checksum's placeholder, which comes after it, by the checksum.
    Without ``out`` it writes nothing: a dry run that finds where the buffers would land.
    """

    def __init__(self, out: Writer | None = None, streams: Sequence[BlobStream] = ()) -> None:
        self.out = out
        self.pos = 0
        self.positions: dict[tuple[int, int], int] = {}
        self.closed = False
        self.blobs = {(s.blob.address, s.blob.size): s for s in streams}
        self.checksums = {(s.checksum_value.address, s.checksum_value.size): s for s in streams}

    def write(self, data: Any) -> int:
        n: int
        if isinstance(data, pa.Buffer):
            n = int(data.size)
            key = (data.address, n)
            self.positions.setdefault(key, self.pos)
            if self.out is not None and n:
                if key in self.blobs:
                    self.blobs.pop(key).write(self.out.write)
                elif key in self.checksums:
                    self.out.write(self.checksums.pop(key).checksum_bytes())
                else:
                    self.out.write(data)
        else:
            n = len(memoryview(data))
            if self.out is not None:
                self.out.write(data)
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        """Nothing: :meth:`close` writes what is queued (a flush mid-file would break the runs)."""

    def close(self) -> None:
        if self.out is not None and not self.closed:
            self.out.finish()
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


# -- reading: a stored value -> where its tensors lie, checked -------------------------------------


_INT_DTYPES: dict[pa.DataType, np.dtype[Any]] = {
    pa.int32(): np.dtype(np.int32),
    pa.int64(): np.dtype(np.int64),
}


def int_values(array: pa.Array) -> np.ndarray:
    """The values of an int32 or int64 array without nulls, as a NumPy view. (pyarrow's
    ``to_numpy`` imports pandas on first use: a second or more, and memory, on a first read.)"""
    dtype = _INT_DTYPES.get(array.type)
    if dtype is None or array.null_count:  # pragma: no cover - callers check types and nulls
        return np.asarray(array.to_numpy(zero_copy_only=False))
    buf = array.buffers()[1]
    if buf is None or not len(array):
        return np.empty(0, dtype=dtype)
    return np.frombuffer(buf, dtype=dtype, count=array.offset + len(array))[array.offset :]


def is_null(array: pa.Array, index: int) -> bool:
    """Whether row ``index`` of ``array`` is null, without building a scalar (a struct scalar
    would read every byte of its children, e.g. a whole weights blob)."""
    return bool(array.null_count) and not array.is_valid()[index].as_py()


def as_tensor_bytes(storage: np.ndarray) -> torch.Tensor:
    """A uint8 CPU tensor viewing the uint8 array ``storage`` (no copy). A read-only buffer (an
    in-memory row file held as ``bytes``) is viewed too: the tensors read from it must not be
    written in place, like any tensor read from a file."""
    if storage.flags.writeable:
        return torch.from_numpy(storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(storage)


class DecodeContext:
    """What decoding needs of the file being read: its name and its bytes, if mapped (a uint8
    array of the whole file, starting at ``base_address``)."""

    def __init__(self, where: str, storage: np.ndarray | None = None, base_address: int = 0):
        self.where = where
        self.storage = storage
        self.base_address = base_address
        self._tensor: torch.Tensor | None = None

    def storage_for(
        self, blob_addr: int, blob_len: int, values_buf: pa.Buffer | None, start: int
    ) -> tuple[np.ndarray, int]:
        """(uint8 storage, offset of the blob in it): the mapped file when the blob lies in it,
        else a copy of the blob (bytes ``[start, start + blob_len)`` of ``values_buf``)."""
        if self.storage is not None:
            rel = blob_addr - self.base_address
            if rel >= 0 and rel + blob_len <= self.storage.size:
                return self.storage, rel
        if blob_len == 0 or values_buf is None:
            return np.empty(0, dtype=np.uint8), 0
        raw = np.frombuffer(values_buf, dtype=np.uint8, count=blob_len, offset=start)
        return raw.copy(), 0

    def tensor_for(
        self, blob_addr: int, blob_len: int, values_buf: pa.Buffer | None, start: int
    ) -> tuple[torch.Tensor, int]:
        """:meth:`storage_for` as a uint8 tensor (the file's, one per context)."""
        storage, base = self.storage_for(blob_addr, blob_len, values_buf, start)
        if storage is not self.storage:
            return as_tensor_bytes(storage), base
        if self._tensor is None:
            self._tensor = as_tensor_bytes(storage)
        return self._tensor, base


class DecodedWeights(NamedTuple):
    """A stored weights value, checked: the tensors lie in ``storage`` (uint8, the mapped file
    or a copy of the blob) where ``entries`` say."""

    storage: np.ndarray
    entries: tuple[TensorEntry, ...]
    fingerprint: str
    checksum: str | None


def decode_weights(array: pa.StructArray, index: int, ctx: DecodeContext) -> DecodedWeights | None:
    """The weights value of row ``index`` of a weights column, its tensor table checked against
    its blob and its fingerprint against its table (CorruptRowError naming ``ctx.where``);
    None if null. Reads no tensor byte unless a tensor is misaligned for its dtype (a foreign
    writer's), when the blob is copied into aligned memory."""
    if is_null(array, index):
        return None
    where = ctx.where
    tensors = array.field("tensors")[index].values
    data_arr = array.field("data")
    count = data_arr.offset + len(data_arr) + 1  # the buffer may be longer: read no more
    offs = np.frombuffer(data_arr.buffers()[1], dtype=np.int64, count=count)
    start, stop = int(offs[data_arr.offset + index]), int(offs[data_arr.offset + index + 1])
    values_buf = data_arr.buffers()[2]
    blob_len = stop - start
    blob_addr = (values_buf.address if values_buf is not None else 0) + start
    stored_checksum = array.field("checksum")[index].as_py()
    stored_fingerprint = array.field("fingerprint")[index].as_py()
    storage, base = ctx.storage_for(blob_addr, blob_len, values_buf, start)
    entries = tuple(decode_entries(tensors, blob_len, where, base=base))
    if _misaligned(storage.ctypes.data, entries):
        # a foreign writer left a tensor misaligned for its dtype: copy into aligned memory
        aligned = aligned_bytes(blob_len)
        aligned[:] = storage[base : base + blob_len]
        storage = aligned
        entries = tuple(
            TensorEntry(e.name, e.dtype, e.shape, e.offset - base if e.nbytes else 0, e.nbytes)
            for e in entries
        )
    fingerprint = fingerprint_of(entries)
    if fingerprint != stored_fingerprint:
        raise CorruptRowError(
            f"{where}: the weights' fingerprint {stored_fingerprint!r} does not match their "
            f"names, dtypes and shapes ({fingerprint!r}); the file is corrupt",
            path=where,
        )
    return DecodedWeights(storage, entries, fingerprint, stored_checksum)


def _misaligned(address: int, entries: tuple[TensorEntry, ...]) -> bool:
    """Whether a tensor at ``address + offset`` does not start at a multiple of its item size."""
    n = len(entries)
    offsets = np.fromiter((e.offset for e in entries), np.int64, n)
    sizes = np.fromiter((DTYPE_ITEMSIZE[e.dtype] for e in entries), np.int64, n)
    return bool(((address % 64 + offsets) % sizes).any())  # 64: a multiple of every item size


def decode_entries(
    tensors: pa.StructArray, blob_len: int, where: str, *, base: int = 0
) -> list[TensorEntry]:
    """Validate the tensor table of one weights value against its blob; raise CorruptRowError.

    The entries' offsets are shifted by ``base`` (where the blob starts in its storage)."""

    def bad(msg: str) -> CorruptRowError:
        return CorruptRowError(
            f"{where}: {msg}; the file is corrupt or was not written by modelrows", path=where
        )

    entries = _well_formed_entries(tensors, blob_len, base)
    if entries is None:  # something is off: the careful pass finds it and names it
        entries = _checked_entries(tensors, blob_len, base, where, bad)
    overlap = _first_overlap(entries)
    if overlap is not None:
        raise bad(
            f"tensors overlap at byte {overlap - base}; tensors share bytes only when tied "
            "(identical)"
        )
    return entries


def _first_overlap(entries: list[TensorEntry]) -> int | None:
    """The offset where a tensor starts inside another, or None. Tied tensors (same offset, size,
    dtype and shape) share their bytes; no others may. Offsets and sizes are checked already,
    so their sums do not overflow."""
    live = [e for e in entries if e.nbytes]
    if len(live) < 2:
        return None
    offsets = np.fromiter((e.offset for e in live), np.int64, len(live))
    sizes = np.fromiter((e.nbytes for e in live), np.int64, len(live))
    order = np.lexsort((sizes, offsets))
    starts, lengths = offsets[order], sizes[order]
    # in start order, a tensor overlapping any later one overlaps the next (or is tied to it)
    for i in np.flatnonzero(starts[:-1] + lengths[:-1] > starts[1:]).tolist():
        a, b = live[order[i]], live[order[i + 1]]
        if (a.offset, a.nbytes, a.dtype, a.shape) != (b.offset, b.nbytes, b.dtype, b.shape):
            return int(starts[i + 1])
    return None


def _well_formed_entries(
    tensors: pa.StructArray, blob_len: int, base: int
) -> list[TensorEntry] | None:
    """The entries of a well-formed tensor table, checked with whole-column operations; None at
    the first doubt (a null, a bad value), for the careful pass to name."""
    cols = [tensors.field(k) for k in ("name", "dtype", "shape", "offset", "nbytes")]
    name_col, dtype_col, shape_col, offset_col, nbytes_col = cols
    if tensors.null_count or any(c.null_count for c in cols) or shape_col.values.null_count:
        return None
    names, dtypes = name_col.to_pylist(), dtype_col.to_pylist()
    if len(set(names)) != len(names) or "" in names:
        return None
    try:
        itemsizes = np.array([DTYPE_ITEMSIZE[d] for d in dtypes], dtype=np.int64)
    except KeyError:
        return None
    bounds = int_values(shape_col.offsets)
    first = int(bounds[0]) if len(bounds) else 0
    dims = int_values(shape_col.values)[first : int(bounds[-1]) if len(bounds) else 0]
    rel = bounds - first
    if (len(dims) and dims.min() < 0) or (len(rel) > 1 and np.diff(rel).max() > MAX_NDIM):
        return None
    flat, cuts = dims.tolist(), rel.tolist()
    shapes = [tuple(flat[a:b]) for a, b in itertools.pairwise(cuts)]
    numels = [math.prod(shape) for shape in shapes]
    if numels and max(numels) > _MAX_NUMEL:  # int64 arithmetic below must not overflow
        return None
    offsets = int_values(offset_col)
    sizes = int_values(nbytes_col)
    used = sizes > 0
    if (
        (offsets < 0).any()
        or (sizes != np.array(numels, dtype=np.int64) * itemsizes).any()
        or (offsets > blob_len - sizes).any()
        or (offsets[used] % itemsizes[used]).any()
    ):
        return None
    # an empty tensor has no bytes, so where it says they are does not matter: the start
    starts = np.where(used, offsets + base, 0).tolist()
    return list(map(TensorEntry, names, dtypes, shapes, starts, sizes.tolist()))


_MAX_NUMEL = 1 << 58  # times an itemsize of at most 16: below 2**63


def _checked_entries(
    tensors: pa.StructArray,
    blob_len: int,
    base: int,
    where: str,
    bad: Callable[[str], CorruptRowError],
) -> list[TensorEntry]:
    """The tensor table checked entry by entry, raising at the first problem with its name."""
    names = tensors.field("name").to_pylist()
    dtypes = tensors.field("dtype").to_pylist()
    shapes = tensors.field("shape").to_pylist()
    offsets = tensors.field("offset").to_pylist()
    sizes = tensors.field("nbytes").to_pylist()
    entries: list[TensorEntry] = []
    seen: set[str] = set()
    for name, dtype, shape, offset, nbytes in zip(
        names, dtypes, shapes, offsets, sizes, strict=True
    ):
        if not isinstance(name, str) or not name:
            raise bad(f"a tensor has an empty or missing name ({name!r})")
        if name in seen:
            raise bad(f"tensor {name!r} appears twice")
        seen.add(name)
        if dtype not in DTYPE_ITEMSIZE:
            raise bad(
                f"tensor {name!r} has unknown dtype {dtype!r} (known: {', '.join(FORMAT_DTYPES)})"
            )
        if shape is None or len(shape) > MAX_NDIM or any(d is None or d < 0 for d in shape):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if offset is None or nbytes is None or offset < 0 or nbytes < 0:
            raise bad(f"tensor {name!r} has an invalid offset {offset!r} or size {nbytes!r}")
        itemsize = DTYPE_ITEMSIZE[dtype]
        expected = math.prod(shape) * itemsize
        if expected != nbytes:
            raise bad(
                f"tensor {name!r} is {dtype} {tuple(shape)} = {expected} bytes but declares {nbytes}"
            )
        if nbytes and offset % itemsize:
            raise bad(
                f"tensor {name!r} starts at byte {offset} of the data, not at a multiple of its "
                f"{itemsize}-byte elements"
            )
        if offset + nbytes > blob_len:
            raise bad(
                f"tensor {name!r} needs bytes [{offset}, {offset + nbytes}) but the data holds "
                f"only {blob_len}"
            )
        # an empty tensor has no bytes, so where it says they are does not matter: put it at the
        # (aligned) start of the storage
        entries.append(
            TensorEntry(name, dtype, tuple(shape), offset + base if nbytes else 0, nbytes)
        )
    return entries


# -- reading: checked entries -> tensors -----------------------------------------------------------


def _flat_view(storage: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """The uint8 ``storage`` (starting at its storage's first byte) as one flat ``dtype`` tensor,
    or None where that view is not possible (misaligned start)."""
    size = dtype.itemsize
    if storage.storage_offset() or storage.data_ptr() % size:
        return None
    usable = storage.numel() - storage.numel() % size
    return storage[:usable].view(dtype)


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return tuple(strides)


def tensor_views(
    storage: torch.Tensor, entries: tuple[TensorEntry, ...]
) -> dict[str, torch.Tensor]:
    """Typed views of a packed storage, one per entry; tied entries share one tensor object."""
    dtypes = torch_dtypes()
    views: dict[tuple[int, int], torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    flat: dict[torch.dtype, torch.Tensor | None] = {}  # the storage viewed as each dtype
    strides: dict[tuple[int, ...], tuple[int, ...]] = {}  # models repeat their shapes
    for e in entries:
        key = (e.offset, e.nbytes)
        t = views.get(key) if e.nbytes else None
        if t is None:
            dtype = dtypes[e.dtype]
            size = dtype.itemsize
            if dtype not in flat:
                flat[dtype] = _flat_view(storage, dtype)
            whole = flat[dtype]
            if whole is not None and e.nbytes and e.offset % size == 0:
                stride = strides.get(e.shape)
                if stride is None:
                    stride = strides[e.shape] = _strides(e.shape)
                # one as_strided call instead of slice + view + view: ~3x faster per tensor
                t = whole.as_strided(e.shape, stride, e.offset // size)
            else:
                t = storage[e.offset : e.offset + e.nbytes].view(dtype).view(e.shape)
            views[key] = t
        tensors[e.name] = t
    return tensors
