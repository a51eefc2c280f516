"""Training state without pickle, and a checkpointer for plain training loops.

The state of a training run beyond the model's weights — the optimizer's (per-parameter tensors
and per-group settings), the LR scheduler's, the AMP grad scaler's, and the random number
generators' (python ``random``, numpy, torch CPU and CUDA, and any generator the loop owns, such
as a DataLoader's) — is stored as typed data in two columns of :class:`TrainingStateV1`:

``training_tensors``
    a weights-typed column: every tensor of the state by name (``optimizer.state.0.exp_avg``,
    ``rng.torch`` ...), dtype and shape exact;
``training_state``
    a JSON document: the structure, every scalar and setting, and references to those tensors.

The JSON is strict (no ``NaN`` tokens; see :data:`STATE_FORMAT`). Values JSON has no word for are
tagged objects: ``{"$tensor": name}``, ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}``
(keys that are not strings), ``{"$counter": ...}``, ``{"$ordereddict": ...}``,
``{"$float": "nan" | "inf" | "-inf"}``, ``{"$int": "<digits>"}`` (beyond +-2**53),
``{"$bytes": "<base64>"}``, ``{"$ndarray": name, "dtype": "<u4"}`` and
``{"$numpy": "float32", "value": ...}``. Anything else — a function, a lambda, an arbitrary
object — is refused with a :class:`TrainingStateError` naming where it sits: state is data, never
code, and the code that builds the optimizer or scheduler lives in the user's repository, as the
model's does.
"""

from __future__ import annotations

import base64
import collections
import functools
import json
import math
import random
import types
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ._errors import CatalogError, ModelRowsError, RowNotFoundError
from ._schema import ModelV1, Row
from ._weights import Weights, fetch_weights, load_weights

if TYPE_CHECKING:  # pragma: no cover
    from ._catalog import Catalog

__all__ = [
    "STATE_FORMAT",
    "Checkpointer",
    "Generator",
    "TrainingStateError",
    "TrainingStateV1",
    "read_training_state",
    "restore_training_state",
    "training_state",
]

STATE_FORMAT = "modelrows.training-state"
"""The ``format`` of the JSON document in the ``training_state`` column (version 1)."""
_STATE_VERSION = 1
_JSON_SAFE_INT = 2**53  # integers beyond this are strings: JSON readers other than Python's
_SECTIONS = ("optimizer", "scheduler", "scaler", "rng", "generators", "extra")
"""The document's sections; ``extra`` is optional (absent when nothing extra was stored)."""

Generator = torch.Generator | np.random.Generator | np.random.RandomState | random.Random
"""What ``generators={"name": ...}`` takes: a generator the training loop owns (a DataLoader's
``torch.Generator``, a numpy ``Generator`` or ``RandomState``, a ``random.Random``)."""


class TrainingStateError(ModelRowsError, ValueError):
    """A training state cannot be stored (a value that is not data) or restored (the row's state
    does not fit the optimizer, scheduler, scaler or generator it is restored into)."""


TrainingStateError.__module__ = "modelrows"


class TrainingStateV1(ModelV1, schema="modelrows.training", version=1):
    """``modelrows.training@1``: a model row with the state to resume training exactly.

    Fill both columns with :func:`training_state`; extend the class with the run's own columns.

    >>> import torch, torch.nn as nn
    >>> from modelrows import fetch_weights
    >>> class CheckpointV1(TrainingStateV1, schema="doc.checkpoint", version=1):
    ...     epoch: int
    ...     val_loss: float | None = None
    >>> model = nn.Linear(2, 2)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> row = CheckpointV1(weights=fetch_weights(model), epoch=0,
    ...                    **training_state(optimizer=optimizer))
    >>> CheckpointV1.__qualified__
    'doc.checkpoint@1>modelrows.training@1>modelrows.model@1'
    """

    training_tensors: Weights
    training_state: str

    def check(self) -> None:
        _parse_document(self.training_state, self.training_tensors)


# -- encoding: Python state trees -> strict JSON + named tensors -----------------------------------


class _Encoder:
    """Turns state trees into JSON values, collecting their tensors under path names."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _name(self, path: str) -> str:
        name, n = path, 1
        while name in self.tensors:
            n += 1
            name = f"{path}#{n}"
        return name

    def tensor(self, value: torch.Tensor, path: str) -> dict[str, Any]:
        name = self._name(path)
        self.tensors[name] = value.detach()
        return {"$tensor": name}

    def encode(self, value: Any, path: str) -> Any:
        kind = type(value)
        if value is None or kind is bool or kind is str:
            return value
        if kind is int:
            return value if abs(value) <= _JSON_SAFE_INT else {"$int": str(value)}
        if kind is float:
            if math.isfinite(value):
                return value
            return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, torch.Tensor) and kind in (torch.Tensor, torch.nn.Parameter):
            return self.tensor(value, path)
        if kind is list:
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if kind is tuple:
            return {"$tuple": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if kind is dict:
            if all(type(k) is str and not k.startswith("$") for k in value):
                return {k: self.encode(v, f"{path}.{k}") for k, v in value.items()}
            return {"$dict": self._pairs(value, path)}
        if kind is collections.Counter:
            return {"$counter": self._pairs(value, path)}
        if kind is collections.OrderedDict:
            return {"$ordereddict": self._pairs(value, path)}
        if kind is bytes:
            return {"$bytes": base64.b64encode(value).decode("ascii")}
        if kind is np.ndarray:
            return self._ndarray(value, path)
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return {"$numpy": value.dtype.name, "value": self.encode(value.item(), path)}
        raise TrainingStateError(_refusal(value, path))

    def _pairs(self, value: Mapping[Any, Any], path: str) -> list[list[Any]]:
        pairs = []
        for k, v in value.items():
            if type(k) not in (str, int, float, bool, tuple) and k is not None:
                raise TrainingStateError(_refusal(k, f"{path} (a key)"))
            pairs.append([self.encode(k, f"{path} (a key)"), self.encode(v, f"{path}.{k}")])
        return pairs

    def _ndarray(self, value: np.ndarray, path: str) -> dict[str, Any]:
        try:
            tensor = torch.from_numpy(
                np.ascontiguousarray(value).astype(value.dtype.newbyteorder("="))
            )
        except TypeError:
            raise TrainingStateError(
                f"cannot store the training state: {path} is a numpy array of dtype "
                f"{value.dtype}, which has no torch dtype; convert it to a supported dtype"
            ) from None
        name = self.tensor(tensor.clone(), path)["$tensor"]
        return {"$ndarray": name, "dtype": value.dtype.str}


_FUNCTIONS = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    functools.partial,
)


def _refusal(value: Any, path: str) -> str:
    kind = type(value)
    what = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, _FUNCTIONS):
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or what
        what = f"a function or callable ({name})"
        hint = (
            "functions are code, and modelrows stores state as data, never code or pickles; "
            "rebuild it in your code and leave it out of the state (torch's own schedulers "
            "already leave plain functions such as LambdaLR's lambdas out)"
        )
    else:
        hint = (
            "only tensors, numpy arrays and scalars, numbers, strings, bytes, bools, None, and "
            "lists, tuples and dicts of them are stored (never code or pickles); convert it to "
            "one of those or leave it out of the state"
        )
    return f"cannot store the training state: {path} is {what}; {hint}"


# -- decoding: strict JSON + tensors -> Python state trees ------------------------------------------


_TAGS = {
    "$tensor": {"$tensor"},
    "$tuple": {"$tuple"},
    "$dict": {"$dict"},
    "$counter": {"$counter"},
    "$ordereddict": {"$ordereddict"},
    "$float": {"$float"},
    "$int": {"$int"},
    "$bytes": {"$bytes"},
    "$ndarray": {"$ndarray", "dtype"},
    "$numpy": {"$numpy", "value"},
}
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _Decoder:
    """The inverse of :class:`_Encoder`; raises ValueError naming the path of anything malformed."""

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None, *, clone: bool = True) -> None:
        self.tensors = tensors  # None: check the references' shape, not their values
        self.clone = clone
        self.names: set[str] = set()

    def decode(self, value: Any, path: str) -> Any:
        if isinstance(value, list):
            return [self.decode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, dict):
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and abs(value) > _JSON_SAFE_INT
            ):
                raise ValueError(f"{path}: integer {value} beyond 2**53 must be written as $int")
            return value
        tags = [k for k in value if k.startswith("$")]
        if not tags:
            return {k: self.decode(v, f"{path}.{k}") for k, v in value.items()}
        tag = tags[0]
        if tag not in _TAGS or set(value) != _TAGS[tag]:
            raise ValueError(f"{path}: unknown tagged value with keys {sorted(value)}")
        body = value[tag]
        if tag == "$tensor":
            return self._tensor(body, path)
        if tag == "$tuple":
            _expect(body, list, path)
            return tuple(self.decode(v, f"{path}[{i}]") for i, v in enumerate(body))
        if tag in ("$dict", "$counter", "$ordereddict"):
            pairs = self._pairs(body, path)
            if tag == "$counter":
                return collections.Counter(dict(pairs))
            if tag == "$ordereddict":
                return collections.OrderedDict(pairs)
            return dict(pairs)
        if tag == "$float":
            if body not in _FLOATS:
                raise ValueError(f"{path}: $float is 'nan', 'inf' or '-inf', not {body!r}")
            return _FLOATS[body]
        if tag == "$int":
            _expect(body, str, path)
            if not body.lstrip("-").isdigit():
                raise ValueError(f"{path}: $int {body!r} is not a whole number")
            return int(body)
        if tag == "$bytes":
            _expect(body, str, path)
            return base64.b64decode(body, validate=True)
        if tag == "$ndarray":
            dtype = np.dtype(_expect(value["dtype"], str, path))
            tensor = self._tensor(body, path)
            if tensor is None:
                return None
            return tensor.numpy().astype(dtype, copy=True)
        # $numpy
        dtype = np.dtype(_expect(body, str, path))
        if dtype.kind not in "biuf":
            raise ValueError(f"{path}: $numpy dtype {body!r} is not a bool, integer or float")
        return dtype.type(self.decode(value["value"], path))

    def _tensor(self, name: Any, path: str) -> Any:
        _expect(name, str, path)
        if name in self.names:
            raise ValueError(f"{path}: tensor {name!r} is referenced twice")
        self.names.add(name)
        if self.tensors is None:
            return None
        if name not in self.tensors:
            raise ValueError(f"{path}: names tensor {name!r}, which training_tensors lacks")
        tensor = self.tensors[name]
        return tensor.clone() if self.clone else tensor

    def _pairs(self, body: Any, path: str) -> list[tuple[Any, Any]]:
        _expect(body, list, path)
        pairs = []
        for i, pair in enumerate(body):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError(f"{path}: entry {i} is not a [key, value] pair")
            key = self.decode(pair[0], f"{path} (key {i})")
            if isinstance(key, (list, dict)):
                raise ValueError(f"{path}: key {i} is not hashable")
            pairs.append((key, self.decode(pair[1], f"{path}.{key}")))
        return pairs


def _expect(value: Any, kind: type, path: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{path}: expected a JSON {kind.__name__}, got {value!r}")
    return value


def _expect_keys(
    value: Any, required: set[str], optional: set[str], path: str, *, null: bool = True
) -> None:
    if value is None and null:
        return
    if not isinstance(value, dict) or not required <= set(value) <= required | optional:
        keys = sorted(value) if isinstance(value, dict) else value
        raise ValueError(
            f"{path}: expected an object with {', '.join(sorted(required))}, got {keys!r}"
        )


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON (non-finite floats are written as $float)")


def _parse_document(text: str, tensors: Weights | None) -> dict[str, Any]:
    """The JSON document of a ``training_state`` column, checked (ValueError on any flaw)."""
    doc = json.loads(text, parse_constant=_refuse_constant)
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ValueError(f"training_state is not a {STATE_FORMAT!r} JSON document")
    if doc.get("version") != _STATE_VERSION:
        raise ValueError(
            f"training_state has version {doc.get('version')!r}; this modelrows reads version "
            f"{_STATE_VERSION}. Upgrade modelrows to read it."
        )
    unknown = set(doc) - {"format", "version", *_SECTIONS}
    if unknown:
        raise ValueError(f"training_state has unknown sections {sorted(unknown)}")
    for section in ("optimizer", "scheduler", "scaler"):
        _expect_keys(doc.get(section), {"class", "state"}, set(), section)
    _expect_keys(doc.get("rng"), {"python", "numpy", "torch"}, {"cuda"}, "rng")
    if isinstance(doc.get("rng"), dict):
        _expect_keys(doc["rng"]["python"], {"version", "state", "gauss_next"}, set(), "rng.python")
    gens = doc.get("generators")
    if not isinstance(gens, dict):
        raise ValueError(f"generators: expected a JSON object, got {gens!r}")
    for name, entry in gens.items():
        _expect_keys(entry, {"kind", "state"}, {"device"}, f"generators.{name}", null=False)
    decoder = _Decoder(None)
    for section in _SECTIONS:  # every tag well formed, every tensor named once
        decoder.decode(doc.get(section), section)
    if tensors is not None:
        missing = decoder.names - set(tensors)
        if missing:
            raise ValueError(
                f"training_state names tensors that training_tensors lacks: {sorted(missing)}"
            )
    return doc


# -- the states of the things a training loop holds ---------------------------------------------------


def _class_name(obj: object) -> str:
    return type(obj).__qualname__


def _python_random(state: tuple[Any, ...], enc: _Encoder, path: str) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {
        "version": version,
        "state": enc.tensor(torch.tensor(internal, dtype=torch.int64), path),
        "gauss_next": enc.encode(gauss_next, f"{path}.gauss_next"),
    }


def _python_random_state(section: Mapping[str, Any]) -> tuple[Any, ...]:
    internal = section["state"]
    if not isinstance(internal, torch.Tensor) or internal.dtype != torch.int64:
        raise TrainingStateError("the python random state is not an int64 tensor")
    return (section["version"], tuple(internal.tolist()), section["gauss_next"])


def _encode_generator(gen: object, enc: _Encoder, path: str) -> dict[str, Any]:
    if isinstance(gen, torch.Generator):
        return {
            "kind": "torch.Generator",
            "device": str(gen.device),
            "state": enc.tensor(gen.get_state(), path),
        }
    if isinstance(gen, np.random.Generator):
        return {
            "kind": "numpy.random.Generator",
            "state": enc.encode(gen.bit_generator.state, path),
        }
    if isinstance(gen, np.random.RandomState):
        return {
            "kind": "numpy.random.RandomState",
            "state": enc.encode(gen.get_state(legacy=False), path),
        }
    if isinstance(gen, random.Random):
        return {"kind": "random.Random", "state": _python_random(gen.getstate(), enc, path)}
    raise TrainingStateError(
        f"cannot store the training state: {path} is a {type(gen).__qualname__}; generators are "
        "torch.Generator, numpy.random.Generator, numpy.random.RandomState or random.Random"
    )


def _generator_kind(gen: object) -> str | None:
    for kind, cls in (
        ("torch.Generator", torch.Generator),
        ("numpy.random.Generator", np.random.Generator),
        ("numpy.random.RandomState", np.random.RandomState),
        ("random.Random", random.Random),
    ):
        if isinstance(gen, cls):
            return kind
    return None


def _restore_generator(name: str, gen: object, section: Mapping[str, Any]) -> None:
    kind = _generator_kind(gen)
    if kind != section.get("kind"):
        raise TrainingStateError(
            f"generator {name!r}: the row holds the state of a {section.get('kind')}, "
            f"not of the given {type(gen).__qualname__}"
        )
    state = section["state"]
    if isinstance(gen, torch.Generator):
        gen.set_state(state)
    elif isinstance(gen, np.random.Generator):
        wanted = state.get("bit_generator") if isinstance(state, dict) else None
        have = type(gen.bit_generator).__name__
        if wanted != have:
            raise TrainingStateError(
                f"generator {name!r}: the row holds a {wanted} bit generator's state; the given "
                f"numpy Generator draws from {have}. Build it with np.random.Generator({wanted}())"
            )
        gen.bit_generator.state = state
    elif isinstance(gen, np.random.RandomState):
        gen.set_state(state)
    else:
        assert isinstance(gen, random.Random)
        gen.setstate(_python_random_state(state))


def _rng_states(enc: _Encoder) -> dict[str, Any]:
    section: dict[str, Any] = {
        "python": _python_random(random.getstate(), enc, "rng.python"),
        "numpy": enc.encode(np.random.get_state(legacy=False), "rng.numpy"),
        "torch": enc.tensor(torch.get_rng_state(), "rng.torch"),
    }
    if torch.cuda.is_available():
        section["cuda"] = [
            enc.tensor(state, f"rng.cuda[{i}]")
            for i, state in enumerate(torch.cuda.get_rng_state_all())
        ]
    return section


def _restore_rng(section: Mapping[str, Any]) -> None:
    random.setstate(_python_random_state(section["python"]))
    np.random.set_state(section["numpy"])
    torch.set_rng_state(section["torch"])
    cuda = section.get("cuda")
    if cuda is None:
        return
    if not torch.cuda.is_available():
        warnings.warn(
            f"the training state holds the RNG states of {len(cuda)} CUDA device(s), and CUDA is "
            "not available here: random numbers drawn on a GPU will differ from the saved run's",
            UserWarning,
            stacklevel=3,
        )
        return
    if len(cuda) != torch.cuda.device_count():
        raise TrainingStateError(
            f"the training state holds the RNG states of {len(cuda)} CUDA device(s); this process "
            f"sees {torch.cuda.device_count()}. Make the same devices visible "
            "(CUDA_VISIBLE_DEVICES), or pass rng=False and seed them yourself"
        )
    torch.cuda.set_rng_state_all(cuda)


# -- public functions ---------------------------------------------------------------------------------


def _stateful(obj: Any, what: str) -> Any:
    """``obj.state_dict()``, with an error naming ``what`` when there is no such method."""
    get = getattr(obj, "state_dict", None)
    if not callable(get):
        raise TrainingStateError(
            f"cannot store the training state: the {what} ({type(obj).__qualname__}) has no "
            "state_dict() method"
        )
    return get()


def training_state(
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    generators: Mapping[str, Generator] | None = None,
    rng: bool = True,
    extra: Mapping[str, Any] | None = None,
    _extra_path: str = "extra",
) -> dict[str, Any]:
    """The state to resume training exactly, as the two columns of :class:`TrainingStateV1`.

    Returns ``{"training_tensors": Weights, "training_state": str}``, a snapshot (copies, not
    views of live tensors), to pass to a row class that extends :class:`TrainingStateV1`.

    - ``optimizer``: any ``torch.optim.Optimizer`` (per-parameter tensors, per-group settings);
    - ``scheduler``: an LR scheduler (anything with ``state_dict``/``load_state_dict``);
    - ``scaler``: an AMP ``torch.amp.GradScaler``;
    - ``generators``: generators the loop owns by name, e.g. ``{"loader": generator}`` for a
      ``DataLoader(..., shuffle=True, generator=generator)``;
    - ``rng=True`` also stores the global RNGs: python ``random``, numpy, torch CPU, and every
      CUDA device's when CUDA is available;
    - ``extra``: any further state of the loop, as data (a dict of tensors, numbers, strings,
      lists, dicts ...), e.g. a framework's checkpoint dict; :func:`read_training_state` returns
      it under ``"extra"``.

    A state holding anything but data (a function, an arbitrary object) raises
    :class:`TrainingStateError` naming it, e.g. ``scheduler.lr_lambdas[0].fn``.

    >>> import torch, torch.nn as nn
    >>> model = nn.Linear(2, 1)
    >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    >>> model(torch.ones(1, 2)).sum().backward(); optimizer.step()
    >>> state = training_state(optimizer=optimizer)
    >>> sorted(name for name in state["training_tensors"] if name.startswith("optimizer."))
    ['optimizer.state.0.exp_avg', 'optimizer.state.0.exp_avg_sq', 'optimizer.state.0.step', \
'optimizer.state.1.exp_avg', 'optimizer.state.1.exp_avg_sq', 'optimizer.state.1.step']
    """
    enc = _Encoder()
    doc: dict[str, Any] = {"format": STATE_FORMAT, "version": _STATE_VERSION}
    for section, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            doc[section] = None
            continue
        doc[section] = {
            "class": _class_name(obj),
            "state": enc.encode(_stateful(obj, section), section),
        }
    doc["rng"] = _rng_states(enc) if rng else None
    gens: dict[str, Any] = {}
    for name, gen in (generators or {}).items():
        if not isinstance(name, str) or not name:
            raise TrainingStateError(f"generator names are non-empty strings, got {name!r}")
        gens[name] = _encode_generator(gen, enc, f"generators.{name}")
    doc["generators"] = gens
    if extra is not None:
        doc["extra"] = enc.encode(_plain(extra), _extra_path)
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return {"training_tensors": Weights(enc.tensors), "training_state": text}


def _plain(value: Any) -> Any:
    """``value`` with every dict subclass but OrderedDict and Counter (such as Lightning's
    ``AttributeDict``) turned into a plain dict, in lists, tuples and dicts."""
    kind = type(value)
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        if kind in (collections.OrderedDict, collections.Counter):
            return kind(items)
        return items
    if kind is list:
        return [_plain(v) for v in value]
    if kind is tuple:
        return tuple(_plain(v) for v in value)
    return value


def _document(row: Row) -> tuple[dict[str, Any], Weights]:
    text = getattr(row, "training_state", None)
    tensors = getattr(row, "training_tensors", None)
    where = f"row {getattr(row, 'row_id', None) or type(row).__name__}"
    if not isinstance(text, str) or not isinstance(tensors, Weights):
        raise TrainingStateError(
            f"{where} holds no training state (columns training_state and training_tensors); "
            "save rows of a class that extends TrainingStateV1, filled with training_state()"
        )
    try:
        return _parse_document(text, tensors), tensors
    except ValueError as exc:
        raise TrainingStateError(f"{where}: column training_state: {exc}") from None


def read_training_state(row: Row) -> dict[str, Any]:
    """The training state of ``row`` as plain data: ``{"optimizer": state_dict | None,
    "scheduler": ..., "scaler": ..., "rng": {...} | None, "generators": {...}, "extra": ...}``
    (``extra``: what ``training_state(extra=...)`` stored, or None).

    The ``optimizer``/``scheduler``/``scaler`` entries are what their ``state_dict()`` returned
    when the row was saved (tensors are fresh copies), to inspect or compare without the objects.
    """
    doc, tensors = _document(row)
    decoder = _Decoder(tensors)
    out: dict[str, Any] = {}
    for section in ("optimizer", "scheduler", "scaler"):
        entry = doc[section]
        out[section] = None if entry is None else decoder.decode(entry["state"], section)
    out["rng"] = None if doc["rng"] is None else decoder.decode(doc["rng"], "rng")
    out["generators"] = {
        name: decoder.decode(entry, f"generators.{name}").get("state")
        for name, entry in doc["generators"].items()
    }
    out["extra"] = decoder.decode(doc.get("extra"), "extra")
    return out


def restore_training_state(
    row: Row,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    generators: Mapping[str, Generator] | None = None,
    rng: bool = True,
) -> None:
    """Restore the training state stored in ``row`` into the given objects (the model's weights
    are restored separately, with :func:`load_weights`).

    Each object given must have been saved in the row, and be of the same class (an ``Adam``'s
    state goes into an ``Adam``, built over the same parameter groups); objects not given are
    left alone. ``rng=True`` restores the global RNGs the row holds. Anything that does not fit
    raises :class:`TrainingStateError` before the global RNGs change.

    >>> import torch, torch.nn as nn
    >>> from modelrows import ModelV1, fetch_weights
    >>> class StepV1(TrainingStateV1, schema="doc.step", version=1):
    ...     step: int
    >>> model = nn.Linear(2, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> row = StepV1(weights=fetch_weights(model), step=0, **training_state(optimizer=optimizer))
    >>> fresh = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    >>> restore_training_state(row, optimizer=fresh)
    >>> fresh.param_groups[0]["lr"]
    0.1
    """
    doc, tensors = _document(row)
    decoder = _Decoder(tensors)
    where = f"row {getattr(row, 'row_id', None) or type(row).__name__}"
    loads = []
    for section, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        entry = doc[section]
        if entry is None:
            raise TrainingStateError(
                f"{where} holds no {section} state; save it with training_state({section}=...), "
                f"or do not pass {section}= to restore"
            )
        if entry["class"] != _class_name(obj):
            raise TrainingStateError(
                f"{where} holds the state of a {entry['class']} {section}; cannot restore it into "
                f"a {_class_name(obj)}. Build the same {section} class as the saved run"
            )
        loads.append((section, obj, decoder.decode(entry["state"], section)))
    gens = []
    for name, gen in (generators or {}).items():
        entry = doc["generators"].get(name)
        if entry is None:
            saved = ", ".join(map(repr, doc["generators"])) or "none"
            raise TrainingStateError(f"{where} holds no generator {name!r} (it holds: {saved})")
        gens.append((name, gen, decoder.decode(entry, f"generators.{name}")))
    rng_state = None
    if rng and doc["rng"] is not None:
        rng_state = decoder.decode(doc["rng"], "rng")
    for section, obj, state in loads:
        try:
            obj.load_state_dict(state)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise TrainingStateError(
                f"{where}: the saved {section} state does not fit the given "
                f"{_class_name(obj)}: {exc}. Build it over the same parameters and groups as "
                "the saved run"
            ) from exc
    for name, gen, section in gens:
        _restore_generator(name, gen, section)
    if rng_state is not None:
        _restore_rng(rng_state)


# -- the checkpointer ------------------------------------------------------------------------------------


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise CatalogError(f"cannot scope a checkpointer by a {type(value).__name__} value {value!r}")


def _rankable(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Checkpointer:
    """Checkpoints of a plain training loop in a catalog: save, keep the best, resume exactly.

    The catalog holds rows of a class that extends :class:`TrainingStateV1` with the run's own
    columns (``run``, ``epoch``, the monitored metric ...). :meth:`save` appends a row (the
    model's weights, the training state, the given columns), moves the run's ``last`` alias to
    it and its ``best`` alias when it has the best ``monitor`` value so far (lowest with
    ``mode="min"``), then applies retention to the run's rows: it keeps the ``keep_top_k`` best
    (``None``: every row), the ``keep_last`` latest and every aliased row, and deletes the rest
    (:meth:`Catalog.retain`; with ``monitor=None`` the ``keep_top_k`` latest are kept).
    :meth:`resume` restores a row into the model, optimizer, scheduler and the RNGs.

    Safe with several processes saving into one run at once: ``last`` only moves to a later
    row and ``best`` only to a better one (a compare-and-set of the alias, retried), and a row
    among the ``keep_top_k`` best ever saved is never deleted.

    Several runs share one catalog: a checkpointer's retention and aliases apply to its own
    run's rows, the rows with the same values in the ``per`` columns (by default the catalog's
    partition keys). Its aliases are named after those values, hive style:
    ``run=r1/best`` and ``run=r1/last`` in a catalog partitioned by ``run`` (``best`` and
    ``last`` when it is not partitioned). ``columns`` are written into every row (e.g.
    ``{"run": "r1"}``) and name the run before the first save, so that :meth:`resume` finds
    its rows in a fresh process.

    >>> import tempfile, torch, torch.nn as nn
    >>> from modelrows import Catalog
    >>> class RunCheckpointV1(TrainingStateV1, schema="doc.run-checkpoint", version=1):
    ...     run: str
    ...     epoch: int
    ...     val_loss: float | None = None
    >>> catalog = Catalog.create(tempfile.mkdtemp() + "/c", RunCheckpointV1, partition_by=["run"])
    >>> model = nn.Linear(2, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> checkpointer = Checkpointer(catalog, monitor="val_loss", columns={"run": "r1"})
    >>> row_id = checkpointer.save(model, optimizer=optimizer, epoch=0, val_loss=0.5)
    >>> checkpointer.resume(model, optimizer=optimizer).epoch
    0
    >>> checkpointer.aliases
    {'best': 'run=r1/best', 'last': 'run=r1/last'}
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        monitor: str | None = "val_loss",
        mode: Literal["min", "max"] = "min",
        keep_top_k: int | None = 3,
        keep_last: int = 1,
        per: Sequence[str] | None = None,
        columns: Mapping[str, Any] | None = None,
    ) -> None:
        self.catalog = catalog
        row_class = catalog.row_class
        if row_class.__qualified__ != catalog.schema:
            raise CatalogError(
                f"{catalog.root} holds {catalog.schema} rows, and their class is not declared in "
                "this process; import the module that declares it before checkpointing"
            )
        if not issubclass(row_class, TrainingStateV1):
            raise CatalogError(
                f"{catalog.root} holds {catalog.schema} rows, which hold no training state; "
                "create the catalog with a row class that extends modelrows.TrainingStateV1"
            )
        self.row_class: type[TrainingStateV1] = row_class
        names = set(catalog.arrow_schema.names)
        if monitor is not None:
            field = row_class.__row_fields__.get(monitor)
            if field is None or monitor in ("weights", "training_tensors", "training_state"):
                raise CatalogError(
                    f"cannot monitor {monitor!r}: not a metric column of {catalog.schema} "
                    f"(columns: {', '.join(sorted(names))})"
                )
        if mode not in ("min", "max"):
            raise CatalogError(f"mode is 'min' or 'max', not {mode!r}")
        if keep_top_k is not None and (isinstance(keep_top_k, bool) or keep_top_k < 0):
            raise CatalogError(f"keep_top_k is a whole number >= 0 or None, not {keep_top_k!r}")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise CatalogError(f"keep_last is a whole number >= 0, not {keep_last!r}")
        self.monitor = monitor
        self.mode: Literal["min", "max"] = mode
        self.keep_top_k = keep_top_k
        self.keep_last = keep_last
        self.per: tuple[str, ...] = tuple(catalog.partition_by if per is None else per)
        for key in self.per:
            if key not in row_class.__row_fields__:
                raise CatalogError(f"per names {key!r}, which is not a column of {catalog.schema}")
        self.columns: dict[str, Any] = dict(columns or {})
        self._scope: dict[str, Any] | None = None
        self._move_last = True  # the Lightning callback turns it off without save_last
        if all(key in self.columns for key in self.per):
            self._scope = {key: self.columns[key] for key in self.per}

    # -- the run this checkpointer keeps ------------------------------------------------------------
    @property
    def scope(self) -> dict[str, Any] | None:
        """The values of the ``per`` columns of this run's rows (None until known)."""
        return None if self._scope is None else dict(self._scope)

    def _known_scope(self, action: str) -> dict[str, Any]:
        if self._scope is None:
            raise CatalogError(
                f"cannot {action}: the checkpointer does not know which run it keeps yet; name "
                f"it with Checkpointer(catalog, columns={{{', '.join(repr(k) + ': ...' for k in self.per)}}}), "
                "or save first"
            )
        return self._scope

    def _where(self) -> str | None:
        scope = self._known_scope("query its rows")
        if not scope:
            return None
        return " AND ".join(
            f"{_sql_ident(k)} IS NULL" if v is None else f"{_sql_ident(k)} = {_sql_literal(v)}"
            for k, v in scope.items()
        )

    @property
    def aliases(self) -> dict[str, str]:
        """The names of this run's ``best`` and ``last`` aliases (``run=r1/best`` ...)."""
        scope = self._known_scope("name its aliases")
        prefix = "".join(f"{k}={urllib.parse.quote(str(v), safe='')}/" for k, v in scope.items())
        return {"best": f"{prefix}best", "last": f"{prefix}last"}

    # -- saving -------------------------------------------------------------------------------------
    def save(
        self,
        model: torch.nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        scaler: Any | None = None,
        generators: Mapping[str, Generator] | None = None,
        **columns: Any,
    ) -> str:
        """Append a checkpoint row; move the ``last`` and ``best`` aliases; apply retention.

        The row holds the model's weights, the training state (optimizer, scheduler, scaler,
        generators and the global RNGs) and ``columns`` (with the checkpointer's own columns).
        Returns the new row's id.
        """
        values, scope = self._values(columns, action="save()")
        state = training_state(
            optimizer=optimizer, scheduler=scheduler, scaler=scaler, generators=generators
        )
        row = self.row_class(weights=fetch_weights(model), **state, **values)
        return self._commit(row, scope)

    def _values(
        self, columns: Mapping[str, Any], *, action: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The columns of a new row (the checkpointer's and ``columns``) and the run they name."""
        for reserved in ("weights", "training_tensors", "training_state"):
            if reserved in columns:
                raise CatalogError(f"{action} fills the {reserved!r} column itself; do not pass it")
        values = {**self.columns, **columns}
        for key, value in self.columns.items():
            if columns.get(key, value) != value:
                raise CatalogError(
                    f"this checkpointer writes {key}={value!r} into every row; {action} was "
                    f"given {key}={columns[key]!r}. Use one Checkpointer per run"
                )
        scope = {key: values.get(key) for key in self.per}
        if self._scope is not None and scope != self._scope:
            raise CatalogError(
                f"this checkpointer keeps the rows of {self._scope}; {action} was given {scope}. "
                "Use one Checkpointer per run"
            )
        return values, scope

    def _commit(self, row: Row, scope: dict[str, Any]) -> str:
        """Append ``row``, move the aliases, apply retention; return the row's id.

        The aliases move before retention runs, so that retention protects the rows they point
        to now (not the ones they pointed to before this save)."""
        row_id = self.catalog.append(row)
        self._scope = scope
        self._move_aliases(row_id, row)
        self._apply_retention()
        return row_id

    # -- retention and aliases ----------------------------------------------------------------------
    def _apply_retention(self) -> None:
        """Retention over this run's rows: the best ``keep_top_k`` (the latest ones when nothing
        is monitored), the latest ``keep_last``, and whatever an alias points to."""
        if self.keep_top_k is None:
            return  # no limit: every checkpoint is kept
        if self.monitor is None:
            keep_top_k, keep_last = None, max(self.keep_top_k, self.keep_last)
        else:
            keep_top_k, keep_last = self.keep_top_k, self.keep_last
        self.catalog.retain(
            by=self.monitor,
            mode="max" if self.mode == "max" else "min",
            keep_top_k=keep_top_k,
            keep_last=keep_last,
            per=list(self.per),
            where=self._where(),
        )

    def _better(self, value: Any, than: Any) -> bool:
        """Whether the monitored ``value`` beats ``than`` (nothing beats a tie: the earlier row
        stays best; a null or NaN never beats anything, and anything beats them)."""
        if not _rankable(value):
            return False
        if not _rankable(than):
            return True
        return bool(value > than if self.mode == "max" else value < than)

    def _advance(self, name: str, row_id: str, replaces: Callable[[dict[str, Any]], bool]) -> None:
        """Point alias ``name`` to ``row_id`` if its current row is gone or ``replaces(entry)``
        says the new row should take its place: a compare-and-set, retried when another process
        moves the alias meanwhile, so that concurrent writers leave it at the right row."""
        from ._catalog import _aliases

        catalog = self.catalog
        for _ in range(1000):
            latest = _aliases.current(catalog.store, name)
            target = None if latest is None else latest.row_id
            if target is not None:
                entry = catalog._index.lookup(target)
                if entry is not None and not replaces(entry):
                    return
            try:
                catalog.alias(name, row_id, expected=target)
            except _aliases.AliasConflict:
                continue  # moved meanwhile: look again
            except RowNotFoundError:
                return  # the new row is gone already (another writer's retention): no move
            return
        raise CatalogError(f"{catalog.url}: alias {name!r} kept moving; could not update it")

    def _move_aliases(self, row_id: str, row: Row) -> None:
        """Move ``last`` to the new row (unless a later row holds it), and ``best`` to it when it
        beats the row ``best`` points to."""
        names = self.aliases
        if self._move_last:
            self._advance(names["last"], row_id, lambda entry: row_id > str(entry["row_id"]))
        if self.monitor is not None:
            value = getattr(row, self.monitor)
            if _rankable(value):
                monitor = self.monitor
                self._advance(
                    names["best"], row_id, lambda entry: self._better(value, entry.get(monitor))
                )

    # -- resuming -----------------------------------------------------------------------------------
    def _resolve(self, row: str) -> Row | None:
        if row in ("best", "last"):
            from ._catalog import _aliases

            self._known_scope(f"resume its run's {row!r} checkpoint")
            name = self.aliases[row]
            latest = _aliases.current(self.catalog.store, name)
            if latest is None or latest.row_id is None:
                return None  # the run has not saved a checkpoint yet
            return self.catalog.get(name)
        return self.catalog.get(row)

    def resume(
        self,
        model: torch.nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        scaler: Any | None = None,
        generators: Mapping[str, Generator] | None = None,
        row: str | Row = "last",
    ) -> Row | None:
        """Restore a checkpoint into the model, the given objects and the global RNGs.

        ``row`` is ``"last"`` or ``"best"`` (this run's), another alias, a row id, or a row.
        Returns the row, to read its columns (``row.epoch`` ...); returns None when ``row`` is
        ``"last"`` or ``"best"`` and the run has no checkpoint yet (a fresh start). An id or
        alias that names no row raises :class:`~modelrows.RowNotFoundError`.
        """
        found = row if isinstance(row, Row) else self._resolve(row)
        if found is None:
            return None
        load_weights(model, found.weights)
        restore_training_state(
            found,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            generators=generators,
        )
        return found

    def rows(self) -> Iterator[Row]:
        """This run's checkpoints, oldest first."""
        return self.catalog.rows(self._where())
