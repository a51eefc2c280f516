"""Hypothesis mutates valid row files (bit flips, overwritten lengths, truncations, insertions,
spliced ranges), aimed at every section of the file: each read either returns a row whose
checksum holds or raises a specific ModelRowsError naming the file, and allocates at most a small
multiple of the file's size. Crashes would kill the run; the deadline catches slow reads.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hostile import ABSOLUTE_PEAK, RELATIVE_PEAK, measured
from modelrows import (
    Catalog,
    ModelRowsError,
    ModelV1,
    Row,
    fetch_weights,
    read_model_row,
    write_model_row,
)
from modelrows._ipcguard import FlatTable

EXAMPLES = int(os.environ.get("MODELROWS_FUZZ_EXAMPLES", "500"))


class FuzzConfigV1(Row, schema="reliability.fuzz-config", version=1):
    seed: int = 5
    tags: list[str] = ()  # type: ignore[assignment]


class FuzzRowV1(ModelV1, schema="reliability.fuzz", version=1):
    run: str
    epoch: int | None = None
    accuracy: float | None = None
    config: FuzzConfigV1 | None = None


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(0.5, dtype=torch.bfloat16))
        self.register_buffer("empty", torch.zeros(0, 3))


class Base:
    """A valid file and the byte ranges of its sections, which mutations aim at."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        size = len(self.data)
        footer_start = size - 10 - struct.unpack_from("<i", self.data, size - 10)[0]
        footer = FlatTable.root(memoryview(self.data)[footer_start : size - 10])
        start, _ = footer.vector(3, 24)
        batch, header_len, _ = struct.unpack_from("<qi4xq", footer.buf, start)
        self.sections = {
            "anywhere": (0, size),
            "schema": (8, batch),
            "header": (batch, batch + header_len),
            "body": (batch + header_len, footer_start),
            "footer": (footer_start, size),
        }


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> list[Base]:
    d = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    paths = [d / "plain.arrow", d / "nested.arrow", d / "tied.arrow"]
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    write_model_row(paths[0], ModelV1(weights=fetch_weights(mlp), architecture_version=1))
    config = FuzzConfigV1(seed=3, tags=["a", "bc"])
    write_model_row(paths[1], FuzzRowV1(weights=fetch_weights(mlp), run="r", epoch=2,
                                        accuracy=0.5, config=config))  # fmt: skip
    write_model_row(paths[2], ModelV1(weights=fetch_weights(Tied())))
    catalog = Catalog.create(d / "catalog", FuzzRowV1, partition_by=["run"])
    row_id = catalog.append(FuzzRowV1(weights=fetch_weights(Tied()), run="c", epoch=1))
    paths.append(catalog.path_of(row_id))
    return [Base(p) for p in paths]


INTERESTING = [0, 1, -1, 2**31 - 1, -(2**31), 2**32, 2**40, 2**62, 2**63 - 1, -(2**63)]
position = st.tuples(st.sampled_from(["anywhere", "schema", "header", "body", "footer"]),
                     st.integers(0, 2**31))  # fmt: skip
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("int"), position, st.sampled_from(["<i", "<q", "<I", "<H"]),
              st.sampled_from(INTERESTING)),
    st.tuples(st.just("byte"), position, st.integers(0, 255)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("splice"), position, position, st.integers(1, 64)),
)  # fmt: skip


def _pos(base: Base, where: tuple[str, int], size: int) -> int:
    lo, hi = base.sections[where[0]]
    return min(lo + where[1] % max(hi - lo, 1), max(size - 1, 0))


def mutate(base: Base, mutations: list[Any]) -> bytes:
    data = bytearray(base.data)
    for kind, where, *args in mutations:
        if not data:
            break
        pos = _pos(base, where, len(data))
        if kind == "flip":
            data[pos] ^= 1 << args[0]
        elif kind == "byte":
            data[pos] = args[0]
        elif kind == "int":
            fmt, value = args
            size = struct.calcsize(fmt)
            raw = (value % (1 << (8 * size))).to_bytes(size, "little")
            data[pos : pos + size] = raw[: len(data) - pos]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = args[0]
        elif kind == "delete":
            del data[pos : pos + args[0]]
        else:  # splice: copy a range over another place
            source = _pos(base, args[0], len(data))
            data[pos : pos + args[1]] = data[source : source + args[1]]
    return bytes(data)


@pytest.mark.fuzz
def test_mutated_row_files_are_read_or_refused_by_name(bases: list[Base]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="modelrows-fuzz-"))
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=2000, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(st.integers(0, len(bases) - 1), st.lists(mutation, min_size=1, max_size=4))
    @example(
        1, [("flip", ("header", 0), 0), ("flip", ("header", 0), 0), ("byte", ("footer", 320), 128)]
    )
    @example(3, [("int", ("anywhere", 2557137), "<q", 0)])
    @example(3, [("flip", ("header", 131072), 0)])
    @example(0, [("flip", ("body", 200), 0)])
    @example(2, [("flip", ("body", 200), 0)])  # what earlier runs found, kept  # fmt: skip
    def check(which: int, mutations: list[Any]) -> None:
        data = mutate(bases[which], mutations)
        path = directory / "mutant.model.arrow"
        path.write_bytes(data)
        got = measured(lambda: read_model_row(path, verify=True))
        if got.error is not None:  # a specific ModelRowsError subclass, naming the file
            error = got.error
            assert isinstance(error, ModelRowsError) and type(error) is not ModelRowsError, error
            assert str(path) in str(error), repr(error)
        assert got.arrow_peak <= RELATIVE_PEAK * len(data) + ABSOLUTE_PEAK
        outcome = "read" if got.error is None else type(got.error).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    check()
    assert sum(outcomes.values()) >= EXAMPLES
    print(f"\n{sum(outcomes.values())} mutated files: {dict(sorted(outcomes.items()))}")


def _schema_messages() -> dict[str, bytes]:
    """Serialized schemas: a catalog's (nested weights, metadata), one with field metadata and
    shared-looking nesting, one with an extension type's key, one with a dictionary column."""
    import pyarrow as pa

    from modelrows._catalog import _file_schema

    nested = pa.schema(
        [
            pa.field(
                "a",
                pa.struct([("x", pa.list_(pa.int64())), ("y", pa.string())]),
                metadata={"k": "v", "note": "é"},
            ),
            pa.field("b", pa.large_list(pa.struct([("z", pa.float32())]))),
        ],
        metadata={"top": "level"},
    )
    extension = pa.schema(
        [pa.field("e", pa.int32(), metadata={"ARROW:extension:name": "some.type"})]
    )
    dictionary = pa.schema([pa.field("d", pa.dictionary(pa.int8(), pa.string()))])
    return {
        "catalog": _file_schema(FuzzRowV1).serialize().to_pybytes(),
        "nested": nested.serialize().to_pybytes(),
        "extension": extension.serialize().to_pybytes(),
        "dictionary": dictionary.serialize().to_pybytes(),
    }


def test_the_quick_schema_check_never_passes_what_the_full_walk_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_schema_is_plain answers for the full walk of _check_schema on every schema a row file or
    a catalog carries. For every single-byte mutation (XOR 0x01, 0x80, 0xFF) of four schema
    messages, check_schema_message gives the same outcome (passed, or the same error) with the
    quick check as with the full walk alone. The quick check does pass the sound schemas (else
    it would save nothing) and most mutants, and doubts the extension type and the dictionary,
    which the full walk then refuses by name."""
    from modelrows import _ipcguard

    quick = _ipcguard._schema_is_plain
    answers: list[bool] = []

    def counted(buf: memoryview, pos: int) -> bool:
        answers.append(quick(buf, pos))
        return answers[-1]

    def outcome(data: bytes, *, full_walk: bool) -> str:
        with monkeypatch.context() as m:
            m.setattr(_ipcguard, "_schema_is_plain", (lambda b, p: False) if full_walk else counted)
            try:
                _ipcguard.check_schema_message(data, where="schema")
            except ModelRowsError as exc:
                return f"{type(exc).__name__}: {exc}"
        return "passed"

    messages = _schema_messages()
    for name, data in messages.items():
        answers.clear()
        got = outcome(data, full_walk=False)
        assert answers == [name in ("catalog", "nested")], name
        assert (got == "passed") == (name in ("catalog", "nested")), (name, got)
    answers.clear()
    for name, data in messages.items():
        for at in range(len(data)):
            for bits in (0x01, 0x80, 0xFF):
                mutant = bytearray(data)
                mutant[at] ^= bits
                quick_first = outcome(bytes(mutant), full_walk=False)
                assert quick_first == outcome(bytes(mutant), full_walk=True), (name, at, bits)
    assert sum(answers) > 1000 and not all(answers)  # both answers were given, many times
