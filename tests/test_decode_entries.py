"""The tensor table of a weights column is checked fast when it is well formed, carefully when not.

``decode_entries`` first tries whole-column checks (``_well_formed_entries``) and falls back to
the entry-by-entry pass (``_checked_entries``) that names the exact problem. The two must agree:
whatever the fast pass accepts, the careful pass accepts identically, and whatever the careful
pass refuses, the fast pass refuses too (returns None).
"""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from modelrows._arrowtypes import _TENSOR_STRUCT, _checked_entries, _well_formed_entries
from modelrows._errors import CorruptRowError

DTYPES = ["float32", "bfloat16", "int8", "complex128", "bool", "float64", "nonsense", ""]


NULLABLE = pa.struct(  # the file's type, but as a hostile file may hold it: nulls anywhere
    [
        pa.field("name", pa.string()),
        pa.field("dtype", pa.string()),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("offset", pa.int64()),
        pa.field("nbytes", pa.int64()),
    ]
)


def bad(msg: str) -> CorruptRowError:
    return CorruptRowError(f"t.arrow: {msg}", path="t.arrow")


entry = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b", "c", "d", ""]) | st.none(),
        "dtype": st.sampled_from(DTYPES),
        "shape": st.lists(st.integers(-2, 5) | st.none(), max_size=4)
        | st.lists(st.just(1), min_size=65, max_size=66)
        | st.none(),
        "offset": st.sampled_from([0, 1, 8, 64, 128, 1 << 40]) | st.integers(-8, 300) | st.none(),
        "nbytes": st.integers(-4, 200) | st.none(),
    }
)


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(entry, max_size=5), st.integers(0, 400), st.integers(0, 3), st.integers(0, 64))
def test_the_fast_and_careful_passes_agree(
    rows: list[dict[str, object]], blob_len: int, skip: int, base: int
) -> None:
    pad = [{"name": "pad", "dtype": "int8", "shape": [], "offset": 0, "nbytes": 1}] * skip
    table = pa.array(pad + rows, type=NULLABLE)
    table = table.slice(skip)  # a slice of a longer table, as in a multi-row file
    try:
        careful = _checked_entries(table, blob_len, base, "t.arrow", bad)
    except CorruptRowError:
        careful = None
    fast = _well_formed_entries(table, blob_len, base)
    if careful is None:
        assert fast is None
    elif fast is not None:
        assert fast == careful


def test_a_well_formed_table_takes_the_fast_pass() -> None:
    rows = [
        {"name": "w", "dtype": "float32", "shape": [2, 3], "offset": 64, "nbytes": 24},
        {"name": "tied", "dtype": "float32", "shape": [2, 3], "offset": 64, "nbytes": 24},
        {"name": "b", "dtype": "bfloat16", "shape": [], "offset": 128, "nbytes": 2},
        {"name": "e", "dtype": "int8", "shape": [0, 4], "offset": 100, "nbytes": 0},
    ]
    table = pa.array(rows, type=_TENSOR_STRUCT)
    fast = _well_formed_entries(table, 130, 8)
    assert fast is not None
    assert fast == _checked_entries(table, 130, 8, "t.arrow", bad)
    assert [e.offset for e in fast] == [72, 72, 136, 0]  # shifted by base; empty at 0
