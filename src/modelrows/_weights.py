"""Weights: a model's numbers, named, typed and shaped exactly; fetch_weights and load_weights.

``Weights`` is an immutable mapping from state_dict name to tensor. Its tensors are views into one
packed byte storage: each tensor starts at a 64-byte-aligned address, so writing a row hands that
storage to Arrow without a copy, and reading a row maps the file and hands out views of it.
Weights read from a foreign layout (LegolasFlux.jl's column-major arrays) hold strided views of
that file instead, and pack into the same layout only when it is needed (checksum, equality, write).

Weights read from a file hold its bytes as a NumPy array until a tensor is asked for: reading a
row, and its weights' names, shapes, fingerprint and checksum, import no torch. The layout,
streaming and decoding of the stored bytes are the codec's (``_blob``).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._blob import (
    TensorEntry,
    as_tensor_bytes,
    check_tensor,
    check_torch_dtypes,
    checksum_of,
    detached,
    discard,
    dtype_name,
    fingerprint_of,
    pack,
    plan_layout,
    stream_packed,
    tensor_views,
    tie_key,
    torch_dtypes,
)
from ._errors import WeightsError, WeightsMismatchError
from ._lazy import lazy_module
from ._linux import MADV_POPULATE_READ, MADVISE

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch", globals())

__all__ = ["LoadReport", "Weights", "fetch_weights", "load_weights"]


class Weights(Mapping[str, "torch.Tensor"]):
    """An immutable mapping from tensor name (state_dict key) to tensor.

    Build one with :func:`fetch_weights`. Tensors keep their exact dtype and shape; tied tensors
    (one tensor under two names) are stored once and come back as the same tensor object.

    >>> import torch.nn as nn
    >>> w = fetch_weights(nn.Linear(3, 2))
    >>> list(w), w.nbytes
    (['weight', 'bias'], 32)
    """

    __slots__ = (
        "_checksum",
        "_entries",
        "_fingerprint",
        "_layout_cache",
        "_live",
        "_owned",
        "_raw",
        "_storage_t",
        "_stored_checksum",
        "_tensors",
        "_where",
        "_written_checksum",
    )

    _storage_t: torch.Tensor | None  # None until packed (_from_tensors) or asked for (_from_file)
    _raw: np.ndarray | None  # a file's bytes (uint8) that ``entries`` point into, for _from_file
    _where: str | None  # the file, for errors
    _owned: bool  # the storage was packed here: zero padding, 64 bytes of slack, nothing else
    _live: bool  # views of tensors someone else may change: never cache a packed copy or checksum
    _layout_cache: tuple[tuple[TensorEntry, ...], list[tuple[int, torch.Tensor]], int] | None
    _entries: tuple[TensorEntry, ...]
    _tensors: dict[str, torch.Tensor] | None  # None: views of the storage not built yet
    _checksum: str | None
    _fingerprint: str | None
    _stored_checksum: str | None
    _written_checksum: str | None

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        storage, entries = pack(tensors or {})
        self._init(storage, entries)
        object.__setattr__(self, "_owned", True)

    def _init(
        self,
        storage: torch.Tensor | None,
        entries: tuple[TensorEntry, ...],
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        object.__setattr__(self, "_storage_t", storage)
        object.__setattr__(self, "_raw", None)
        object.__setattr__(self, "_where", None)
        object.__setattr__(self, "_entries", entries)
        object.__setattr__(self, "_tensors", tensors)
        object.__setattr__(self, "_checksum", None)
        object.__setattr__(self, "_fingerprint", None)
        object.__setattr__(self, "_stored_checksum", None)
        object.__setattr__(self, "_written_checksum", None)
        object.__setattr__(self, "_owned", False)
        object.__setattr__(self, "_live", False)
        object.__setattr__(self, "_layout_cache", None)

    @classmethod
    def _from_file(
        cls,
        raw: np.ndarray,
        entries: tuple[TensorEntry, ...],
        *,
        fingerprint: str,
        stored_checksum: str | None,
        where: str,
    ) -> Weights:
        """Weights lying in the uint8 array ``raw`` (a mapped file) where the checked ``entries``
        say. The storage tensor and the views are built when first asked for (a load copies from
        the storage without views); until then no torch is needed."""
        self = cls.__new__(cls)
        self._init(None, entries)
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_fingerprint", fingerprint)
        object.__setattr__(self, "_stored_checksum", stored_checksum)
        return self

    @property
    def _storage(self) -> torch.Tensor | None:
        """The uint8 storage tensor ``entries`` point into (None for unpacked _from_tensors)."""
        storage = self._storage_t
        if storage is None and self._raw is not None:
            check_torch_dtypes(self._entries, self._where or "weights")
            storage = as_tensor_bytes(self._raw)
            object.__setattr__(self, "_storage_t", storage)
        return storage

    @classmethod
    def _from_tensors(cls, tensors: Mapping[str, torch.Tensor], *, live: bool = False) -> Weights:
        """Weights over existing tensors kept as they are (e.g. strided views of a mapped foreign
        file): no copy. ``entries``, ``checksum`` and equality describe the packed layout the
        tensors take when written; that packed copy is made only when one of them needs it, and
        kept unless ``live`` (the tensors are a model's own, which training goes on changing)."""
        checked = {name: detached(check_tensor(name, t)) for name, t in tensors.items()}
        plan = plan_layout(checked)
        self = cls.__new__(cls)
        self._init(None, plan[0], checked)
        object.__setattr__(self, "_live", live)
        object.__setattr__(self, "_layout_cache", plan)
        return self

    def _packed(self) -> torch.Tensor:
        """The packed uint8 storage that ``entries`` point into (packed now if not yet)."""
        storage = self._storage
        if storage is None:
            storage, entries = pack(self._tensor_map())
            assert entries == self._entries, "packing must follow the planned layout"
            if not self._live:
                object.__setattr__(self, "_storage_t", storage)
                object.__setattr__(self, "_owned", True)
        return storage

    def _layout(self) -> tuple[tuple[TensorEntry, ...], list[tuple[int, torch.Tensor]], int]:
        """How a write lays these weights out (see ``_blob.plan_layout``): the entries, the (offset,
        tensor) sources in offset order, and the size. Packed weights are their own sources;
        views of a file or a model are planned afresh, so padding is zero and nothing but their
        tensors goes to the file. Copies nothing."""
        storage = self._storage_t
        if self._owned and storage is not None:
            sources = [
                (e.offset, storage[e.offset : e.offset + e.nbytes])
                for e in self._distinct()
                if e.nbytes
            ]
            return self._entries, sources, storage.numel()
        if self._layout_cache is None:
            object.__setattr__(self, "_layout_cache", plan_layout(self._tensor_map()))
        assert self._layout_cache is not None
        return self._layout_cache

    def _wrote(self, checksum: str) -> None:
        """Remember the checksum a write computed over these weights' bytes (as their checksum
        unless live; as the last write's in any case, which the catalog index records)."""
        object.__setattr__(self, "_written_checksum", checksum)
        if not self._live:
            object.__setattr__(self, "_checksum", checksum)

    def _last_written_checksum(self) -> str:
        """The checksum the last write of these weights stored (computed now if none)."""
        return self._written_checksum or self.checksum

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Weights are immutable; build new ones with fetch_weights()")

    def _tensor_map(self) -> dict[str, torch.Tensor]:
        """Name -> tensor, building the storage's views on first use (tied names: one object)."""
        tensors = self._tensors
        if tensors is None:
            storage = self._storage
            assert storage is not None
            tensors = tensor_views(storage, self._entries)
            object.__setattr__(self, "_tensors", tensors)
        return tensors

    def _tensor(self, entry: TensorEntry) -> torch.Tensor:
        """The tensor of one of these entries, without building the views of all the others."""
        if self._tensors is not None:
            return self._tensors[entry.name]
        storage = self._storage
        assert storage is not None
        return tensor_views(storage, (entry,))[entry.name]

    # -- Mapping ---------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensor_map()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors) if self._tensors is not None else (e.name for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # -- facts -----------------------------------------------------------------------------------
    @property
    def entries(self) -> tuple[TensorEntry, ...]:
        """One entry per name: dtype name, shape, and where its bytes lie in the packed storage
        (for weights read from a foreign layout, where they lie once packed)."""
        return self._entries

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data, tied tensors counted once."""
        return sum(e.nbytes for e in self._distinct())

    @property
    def ties(self) -> dict[str, str]:
        """Each tied name mapped to the first name that holds the same tensor."""
        first: dict[tuple[int, int], str] = {}
        ties: dict[str, str] = {}
        for e in self._entries:
            if e.nbytes == 0:
                continue
            owner = first.setdefault((e.offset, e.nbytes), e.name)
            if owner != e.name:
                ties[e.name] = owner
        return ties

    @property
    def fingerprint(self) -> str:
        """The architecture fingerprint: a hash of every (name, dtype, shape), order-free."""
        if self._fingerprint is None:
            object.__setattr__(self, "_fingerprint", fingerprint_of(self._entries))
        assert self._fingerprint is not None
        return self._fingerprint

    @property
    def checksum(self) -> str:
        """``xxh3-64:<hex>`` over every distinct tensor's bytes in stored order (docs/format.md)."""
        if self._checksum is not None:
            return self._checksum
        if self._raw is not None:  # read from a file: hash its bytes, no tensors needed
            checksum = checksum_of(self._raw, self._entries)
        else:
            _entries, sources, _size = self._layout()
            end = max((offset + t.nbytes for offset, t in sources if t.nbytes), default=0)
            checksum = stream_packed(sources, 0, end, discard)  # hashes without packing a copy
        self._wrote(checksum)
        return checksum

    @property
    def stored_checksum(self) -> str | None:
        """The checksum recorded in the file these weights were read from (None if not read)."""
        return self._stored_checksum

    def verify(self) -> bool:
        """Whether the bytes still match the checksum stored with them (True if none stored)."""
        return self._stored_checksum is None or self.checksum == self._stored_checksum

    def _distinct(self) -> list[TensorEntry]:
        seen: set[tuple[int, int]] = set()
        out = []
        for e in self._entries:
            key = (e.offset, e.nbytes)
            if e.nbytes and key in seen:
                continue
            seen.add(key)
            out.append(e)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A plain dict of the tensors (views, no copy), for ``model.load_state_dict``."""
        return dict(self._tensor_map())

    # -- value semantics -------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Weights):
            return NotImplemented
        if self is other:
            return True
        mine = [(e.name, e.dtype, e.shape) for e in self._entries]
        theirs = [(e.name, e.dtype, e.shape) for e in other._entries]
        if mine != theirs or self.ties != other.ties:
            return False
        return all(
            torch.equal(self._bytes(e), other._bytes(o))
            for e, o in zip(self._entries, other._entries, strict=True)
        )

    def __hash__(self) -> int:
        return hash((self.fingerprint, self.checksum))

    def _bytes(self, e: TensorEntry) -> torch.Tensor:
        return self._packed()[e.offset : e.offset + e.nbytes]

    def __repr__(self) -> str:
        return f"<Weights: {len(self)} tensors, {_human_bytes(self.nbytes)}>"

    def __reduce__(self) -> Any:
        raise TypeError("Weights are never pickled; store them with write_model_row or a Catalog")


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


PREFAULT_FROM = 8 << 20
"""Loads from a mapped file of at least this many bytes map its pages on a second thread."""

_MADVISE = MADVISE  # a test swaps it


@contextlib.contextmanager
def _prefaulting(spans_in: list[tuple[int, int]]) -> Iterator[None]:
    """Map the pages of ``spans_in`` ((address, nbytes) in a mapped file) on a second thread, in
    order, while the caller copies them: the page faults of a first touch (about 1 ms per 100 MB
    in 4 KB pages) are taken off the copying thread. MADV_POPULATE_READ maps file pages read-only,
    copying nothing; where it is missing (not Linux, kernels before 5.14) nothing happens. ctypes
    releases the GIL."""
    spans: list[list[int]] = []  # [start, end) in copy order, neighbours merged
    total = 0
    for start, n in spans_in:
        if n <= 0 or start < 0:
            continue
        total += n
        if spans and 0 <= start - spans[-1][1] < mmap.PAGESIZE:
            spans[-1][1] = max(spans[-1][1], start + n)
        else:
            spans.append([start, start + n])
    if _MADVISE is None or total < PREFAULT_FROM:
        yield
        return
    madvise = _MADVISE

    def populate() -> None:
        for start, end in spans:
            page = start & ~(mmap.PAGESIZE - 1)
            if madvise(page, end - page, MADV_POPULATE_READ) != 0:
                return  # EINVAL (an older kernel) or EFAULT: the copy faults the pages itself

    thread = threading.Thread(target=populate, name="modelrows-prefault", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def fetch_weights(
    model: torch.nn.Module | Mapping[str, torch.Tensor], *, copy: bool = True
) -> Weights:
    """Copy every parameter and persistent buffer of ``model`` to CPU, as :class:`Weights`.

    Names and order are the model's ``state_dict()``; dtypes and shapes are kept exactly.
    Non-persistent buffers are left out (they are not in the state_dict), as are non-tensor
    extra states. A plain state_dict mapping is accepted too.

    ``copy=False`` copies nothing: the weights view the model's own tensors (on whatever device
    they are), and a write stores what those tensors hold while it runs, streaming them to the
    file as ``safetensors.torch.save_file`` does. Use it to write a checkpoint straight away
    (``catalog.append(Row(weights=fetch_weights(model, copy=False), ...))``) when no training
    step runs during the write; keep the default snapshot to hold weights while training goes
    on. Their checksum and comparisons read the tensors anew each time.

    >>> import torch.nn as nn
    >>> w = fetch_weights(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    >>> [name for name in w]  # doctest: +NORMALIZE_WHITESPACE
    ['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var',
     '1.num_batches_tracked']
    """
    if isinstance(model, Weights):
        return model
    if isinstance(model, torch.nn.Module):
        state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    elif isinstance(model, Mapping):
        state = dict(model)
    else:
        raise WeightsError(
            f"fetch_weights expects a torch.nn.Module or a state_dict mapping, "
            f"got {type(model).__name__}"
        )
    return Weights(state) if copy else Weights._from_tensors(state, live=True)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did: tensors loaded, and what it skipped (``strict=False``)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    retied: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every tensor of the model was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)


def _fmt_shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _owner_module(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = name.split(".")
    module = model.get_submodule(".".join(path)) if path else model
    return module, leaf


class _Source(NamedTuple):
    """What load_weights checks of one source tensor, without building it."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    tie: Any  # equal for the tensors stored once under two names; None for empty ones
    address: int  # of its bytes in a CPU storage of packed Weights; -1 when elsewhere
    entry: TensorEntry | None  # its entry, for Weights


def _describe(weights: Mapping[str, torch.Tensor], names: dict[str, str]) -> dict[str, _Source]:
    """Each loadable name's dtype, shape and tie. Weights describe their tensors from their
    entries (checked when they were built) and give the address of bytes held in CPU memory;
    any other mapping's tensors are checked here."""
    if isinstance(weights, Weights):
        storage = weights._storage
        base = storage.data_ptr() if storage is not None and storage.is_cpu else -1
        entries = {e.name: e for e in weights._entries}
        dtypes = torch_dtypes()
        out = {}
        for name, key in names.items():
            e = entries[key]
            out[name] = _Source(
                dtypes[e.dtype],
                e.shape,
                e.nbytes,
                (e.offset, e.nbytes) if e.nbytes else None,
                base + e.offset if base >= 0 else -1,
                e,
            )
        return out
    out = {}
    for name, key in names.items():
        t = check_tensor(key, weights[key])
        tie = tie_key(t) if t.numel() else None
        out[name] = _Source(t.dtype, tuple(t.shape), t.nbytes, tie, -1, None)
    return out


COPY_DIRECT_BELOW = 1 << 20
"""Tensors below this size are copied from a packed storage into a plain CPU tensor of the model
with one ``memmove`` (~0.5 us) instead of a view and ``copy_`` (~5 us): a BatchNorm-heavy model
has hundreds. Larger ones go through ``copy_``, whose copy loop beats glibc's ``memmove`` on
large blocks."""


class _Copy(NamedTuple):
    """One distinct target of a load: its name, the tensor, and whether one memmove fills it."""

    name: str
    target: torch.Tensor
    direct: bool


def _plan_copy(
    model: torch.nn.Module,
    targets: dict[str, torch.Tensor],
    to_load: list[str],
    source: dict[str, _Source],
) -> list[_Copy]:
    """The copies that load ``to_load`` into ``targets`` (each distinct target once), after
    raising now what a copy would raise half-way, after earlier tensors were written: a target
    torch refuses to write (an expanded view, whose elements share memory; an inference tensor
    outside inference mode; a sparse one), and each distinct conversion (source dtype to target
    dtype and device), tried on one element of scratch memory, so that a warning the caller
    made an error (complex to real discards the imaginary part) is raised before any byte of the
    model changes. Each target is queried once, here; the copy loop reuses what it learnt."""
    seen: set[int] = set()
    plan: list[_Copy] = []
    conversions: dict[tuple[torch.dtype, torch.dtype, torch.device], str] = {}
    inference_mode = torch.is_inference_mode_enabled()
    plain = (torch.Tensor, torch.nn.Parameter)
    for name in to_load:
        target = targets[name]
        if id(target) in seen:
            continue
        seen.add(id(target))
        problem = advice = None
        contiguous = False
        if target.layout != torch.strided:
            problem = f"is a {target.layout} tensor in the model, which dense weights cannot fill"
            advice = "Load into a model with dense tensors, then convert."
        elif not (contiguous := target.is_contiguous()) and any(
            size > 1 and stride == 0
            for size, stride in zip(target.shape, target.stride(), strict=True)
        ):
            problem = (
                "is an expanded view in the model (stride 0 in a dimension of size > 1: several "
                "of its elements share one memory location), which nothing can be copied into"
            )
            advice = (
                "Give the model a tensor of its own there (e.g. register the buffer as .clone() "
                "of the expanded one)."
            )
        elif not inference_mode and target.is_inference():
            problem = (
                "is an inference tensor (made under torch.inference_mode()), which cannot be "
                "changed outside inference mode"
            )
            advice = "Load inside torch.inference_mode(), or build the model outside it."
        if problem is not None:
            raise WeightsError(
                f"cannot load weights into {type(model).__name__}: {name} {problem}; the model "
                f"was not changed. {advice}"
            )
        src = source[name]
        same_dtype = target.dtype == src.dtype
        if not same_dtype:
            conversions.setdefault((src.dtype, target.dtype, target.device), name)
        direct = (
            contiguous
            and same_dtype
            and src.address >= 0
            and src.nbytes < COPY_DIRECT_BELOW
            and type(target) in plain
            and target.is_cpu
        )
        plan.append(_Copy(name, target, direct))
    with torch.no_grad():
        for (src_dtype, dtype, device), name in conversions.items():
            try:
                torch.empty(1, dtype=dtype, device=device).copy_(torch.zeros(1, dtype=src_dtype))
            except RuntimeError as exc:  # (a warning made an error propagates as it is)
                raise WeightsError(
                    f"cannot load weights into {type(model).__name__}: {name} cannot be cast "
                    f"from {dtype_name(src_dtype, tensor=name)} to "
                    f"{dtype_name(dtype, tensor=name)} on {device} ({exc}); the model was not "
                    "changed"
                ) from exc
    return plan


def _copy_into(
    plan: list[_Copy],
    weights: Mapping[str, torch.Tensor],
    names: dict[str, str],
    source: dict[str, _Source],
) -> None:
    """Copy each source into its (checked) target: the copies of :func:`_plan_copy`."""
    direct: list[torch.Tensor] = []  # targets written by memmove: their versions are bumped
    storage = weights._storage if isinstance(weights, Weights) and not weights._owned else None
    mapped = storage is not None and storage.numel() >= PREFAULT_FROM  # (the whole file)
    spans = [(source[c.name].address, source[c.name].nbytes) for c in plan] if mapped else []
    with torch.no_grad(), _prefaulting(spans):
        for name, target, is_direct in plan:
            src = source[name]
            if is_direct:
                ctypes.memmove(target.data_ptr(), src.address, src.nbytes)
                direct.append(target)
            else:  # into a plain tensor: no Parameter dispatch
                if isinstance(weights, Weights) and src.entry is not None:
                    target.detach().copy_(weights._tensor(src.entry))
                else:
                    target.detach().copy_(weights[names[name]])
    if direct:  # as copy_ would: autograd must see that these tensors changed
        try:
            torch.autograd.graph.increment_version(direct)
        except TypeError:  # an older torch takes one tensor at a time
            for t in direct:
                torch.autograd.graph.increment_version(t)


def load_weights(
    model: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    prefix: str | None = None,
    cast: bool = False,
) -> LoadReport:
    """Copy ``weights`` into ``model`` in place, onto the model's own devices.

    Everything is checked before anything is copied: missing, unexpected, mis-shaped and
    mis-typed tensors are reported together in one :class:`WeightsMismatchError`; what only a
    copy would find (a target torch cannot write, such as an expanded buffer; a cast that fails,
    or warns where warnings are errors) is tried first on scratch memory. A failed load leaves
    the model bit-for-bit unchanged. ``strict=False`` loads what matches and reports
    the rest. ``prefix="backbone."`` loads the tensors under that prefix into a sub-module.
    ``cast=True`` converts dtypes that differ (otherwise an error: no silent lossy cast).
    Tensors tied in the weights but not in the model are tied again in the model.

    >>> import torch.nn as nn
    >>> src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    >>> load_weights(dst, fetch_weights(src)).loaded
    ['weight', 'bias']
    >>> bool((dst.weight == src.weight).all())
    True
    """
    if not isinstance(model, torch.nn.Module):
        raise WeightsError(f"load_weights expects a torch.nn.Module, got {type(model).__name__}")
    # name -> the name in ``weights`` (differs under a prefix), and what the checks need of it
    names = {k: k for k in weights}
    if prefix:
        dotted = prefix if prefix.endswith(".") else prefix + "."
        names = {k[len(dotted) :]: k for k in names if k.startswith(dotted)}
        if not names:
            heads = sorted({k.split(".")[0] + "." for k in weights})
            raise WeightsMismatchError(
                f"no tensor name starts with prefix {dotted!r}; "
                f"prefixes present: {', '.join(heads) or '(none)'}"
            )
    source = _describe(weights, names)
    targets = {
        k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)
    }
    missing = [k for k in targets if k not in source]
    unexpected = [k for k in source if k not in targets]
    mismatched: list[str] = []
    problems: list[str] = []
    for name in missing:
        problems.append(f"missing from the weights: {name}")
    for name in unexpected:
        problems.append(f"unexpected in the weights: {name}")
    for name, target in targets.items():
        src = source.get(name)
        if src is None:
            continue
        if src.shape != target.shape:
            mismatched.append(name)
            problems.append(
                f"shape mismatch: {name} is {_fmt_shape(src.shape)} in the weights, "
                f"{_fmt_shape(target.shape)} in the model"
            )
        elif src.dtype != target.dtype and not cast:
            mismatched.append(name)
            problems.append(
                f"dtype mismatch: {name} is {dtype_name(src.dtype, tensor=name)} in the weights, "
                f"{dtype_name(target.dtype, tensor=name)} in the model (pass cast=True to convert)"
            )
    if strict and problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise WeightsMismatchError(
            f"cannot load weights into {type(model).__name__}: {len(problems)} "
            f"problem{'s' if len(problems) != 1 else ''}; the model was not changed\n  "
            + "\n  ".join(shown)
            + "\nPass strict=False to load what matches, or prefix=... to load a sub-module.",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    skip = set(missing) | set(unexpected) | set(mismatched)
    to_load = [k for k in targets if k not in skip]

    # Re-tie: tensors stored once under two names must be one parameter in the model too.
    retied: list[tuple[str, str]] = []
    first_of: dict[Any, str] = {}
    for name in to_load:
        tie = source[name].tie
        if tie is None:
            continue
        owner = first_of.setdefault(tie, name)
        if owner == name or targets[name] is targets[owner]:
            continue
        if isinstance(targets[owner], torch.nn.Parameter) and isinstance(
            targets[name], torch.nn.Parameter
        ):
            retied.append((name, owner))
    final = dict(targets)
    for name, owner in retied:
        final[name] = targets[owner]

    # What only the copy would find out: checked here, before the model changes at all.
    plan = _plan_copy(model, final, to_load, source)
    for name, owner in retied:
        module, leaf = _owner_module(model, name)
        setattr(module, leaf, targets[owner])

    _copy_into(plan, weights, names, source)
    return LoadReport(
        loaded=to_load,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        retied=retied,
    )
