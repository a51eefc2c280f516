"""Hostile and broken files: a corpus of crafted files, each refused with its exact error naming
the file, read in a subprocess under a timeout while allocation is metered; and corrupt or
foreign files inside a catalog, which fail queries by name or are skipped with a warning.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch

import hostile
from modelrows import (
    Catalog,
    CatalogError,
    CorruptRowError,
    CorruptRowWarning,
    ModelV1,
    NotArrowFileError,
    UnsupportedFeatureError,
    fetch_weights,
)
from modelrows._catalog import CorruptRow

CONTROL_DECLARES = 64 << 20  # what the unguarded control read must be seen allocating


def child_env() -> dict[str, str]:
    """The environment for a Python subprocess that imports what this one imports."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.mark.fuzz
def test_every_crafted_file_raises_its_exact_error_without_crash_hang_or_big_allocation(
    tmp_path: Path,
) -> None:
    built = hostile.build(tmp_path, control_declares=CONTROL_DECLARES)
    assert len(built) >= 20
    proc = subprocess.run(
        [sys.executable, hostile.__file__, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    last = next((x["reading"] for x in reversed(lines) if "reading" in x), None)
    assert proc.returncode == 0, (
        f"the reader died (rc {proc.returncode}) reading {last}:\n{proc.stderr}"
    )
    results = {x["file"]: x for x in lines if "file" in x}
    problems = []
    for case, path in built:
        got = results[path.name]
        if got["error"] != case.error or not got["ours"]:
            problems.append(f"{case.name}: raised {got['error']}: {got['message']}")
        elif not case.pattern(path).fullmatch(got["message"]):
            problems.append(f"{case.name}: message {got['message']!r}\n  expected {case.message!r}")
        size = path.stat().st_size if path.is_file() else 0
        bound = hostile.RELATIVE_PEAK * size + hostile.ABSOLUTE_PEAK
        if got["arrow_peak"] > bound or got["python_peak"] > bound:
            problems.append(f"{case.name}: allocated {got['arrow_peak']} + {got['python_peak']} B")
    assert problems == []
    controls = lines[-1]
    assert controls["marker_untouched"]  # nothing deserialized the hostile extension types ...
    assert controls["control_marker"]  # ... which unguarded pyarrow does deserialize
    assert controls["control_zstd_peak"] >= CONTROL_DECLARES  # and the meter sees allocations
    worst = max(results.values(), key=lambda r: r["arrow_peak"] + r["python_peak"])
    slowest = max(r["seconds"] for r in results.values())
    print(f"\n{len(built)} crafted files; worst peak {worst['arrow_peak']} + "
          f"{worst['python_peak']} B ({worst['file']}); slowest read {slowest * 1000:.1f} ms")  # fmt: skip


# -- a corrupt file inside a catalog ------------------------------------------------------------


class CatRowV1(ModelV1, schema="reliability.cat", version=1):
    run: str
    accuracy: float | None = None


def catalog_of_four(tmp_path: Path) -> tuple[Catalog, list[str]]:
    catalog = Catalog.create(tmp_path / "c", CatRowV1, partition_by=["run"])
    ids = [
        catalog.append(
            CatRowV1(weights=fetch_weights({"w": torch.randn(64)}), run=run, accuracy=acc)
        )
        for run, acc in [("a", 0.5), ("a", 0.9), ("b", 0.7), ("b", 0.6)]
    ]
    return catalog, ids


def test_a_corrupt_file_fails_every_load_by_name_or_is_skipped_with_a_warning(
    tmp_path: Path,
) -> None:
    catalog, ids = catalog_of_four(tmp_path)
    bad = catalog.path_of(ids[1])  # the best row
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])
    message = (
        f"{bad}: not an Arrow IPC file (the ARROW1 magic is missing at the end); is it "
        "truncated, or another format?"
    )
    # metadata queries read the index, never the row files: they see all four rows
    assert catalog.scan().collect().height == 4
    assert catalog.sql("SELECT count(*) FROM models").fetchall() == [(4,)]
    loads = {
        "get": lambda **kw: catalog.get(ids[1]).accuracy,
        "best": lambda **kw: catalog.best("accuracy", **kw).accuracy,
        "rows": lambda **kw: len(list(catalog.rows(**kw))),
    }
    for name, load in loads.items():
        with pytest.raises(NotArrowFileError) as info:
            load()
        assert str(info.value) == message, name
        assert info.value.path == str(bad)
    skipped = {}
    for name in ("best", "rows"):
        with pytest.warns(CorruptRowWarning) as warned:
            skipped[name] = loads[name](on_corrupt="skip")
        assert [str(w.message) for w in warned] == [f"skipping a corrupt row file: {message}"]
    assert skipped == {"best": 0.7, "rows": 3}
    assert catalog.verify() == [CorruptRow(ids[1], bad, message)]

    os.replace(_copy(tmp_path, good_bytes), bad)  # repaired
    assert catalog.best("accuracy").accuracy == 0.9 and catalog.verify() == []
    with pytest.raises(CatalogError, match="on_corrupt is 'raise' or 'skip', not 'ignore'"):
        catalog.best("accuracy", on_corrupt="ignore")  # type: ignore[arg-type]


def _copy(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "repaired.arrow"
    path.write_bytes(data)
    return path


def test_corrupt_tensor_bytes_fail_verified_loads_by_name_or_are_skipped(tmp_path: Path) -> None:
    catalog, ids = catalog_of_four(tmp_path)
    bad = catalog.path_of(ids[1])
    row = catalog.get(ids[1])
    offset = row.weights["w"].data_ptr() - row.weights._storage.data_ptr()
    data = bytearray(bad.read_bytes())
    data[offset + 5] ^= 0x10
    bad.write_bytes(bytes(data))
    assert catalog.scan().collect().height == 4  # the structure is intact: queries see the row
    assert catalog.best("accuracy").accuracy == 0.9  # and load it when not asked to verify
    checksum = re.escape(f"{bad}: checksum mismatch in column 'weights'")
    with pytest.raises(CorruptRowError, match=checksum):
        catalog.best("accuracy", verify=True)
    with pytest.raises(CorruptRowError, match=checksum):
        list(catalog.rows(verify=True))
    with pytest.warns(CorruptRowWarning, match=checksum):
        assert catalog.best("accuracy", verify=True, on_corrupt="skip").accuracy == 0.7
    with pytest.warns(CorruptRowWarning, match=checksum):
        assert len(list(catalog.rows(verify=True, on_corrupt="skip"))) == 3
    [(row_id, path, problem)] = catalog.verify()
    assert (row_id, path) == (ids[1], bad) and re.match(checksum, problem)


@pytest.mark.parametrize("kind", ["compressed", "foreign-schema", "renamed", "extension"])
def test_files_that_do_not_belong_are_refused_before_any_reader_sees_them(
    tmp_path: Path, kind: str
) -> None:
    catalog, ids = catalog_of_four(tmp_path)
    path = catalog.path_of(ids[0])
    table = ipc.open_file(path).read_all()
    if kind == "compressed":
        hostile_bytes = hostile.Corpus.ipc_bytes(table, compression="zstd")
        expected = (UnsupportedFeatureError, f"{path}: the record batch is compressed (ZSTD)")
    elif kind == "foreign-schema":
        hostile_bytes = hostile.Corpus.ipc_bytes(table.drop_columns(["accuracy"]))
        expected = (CorruptRowError, f"{path}: its columns are not the catalog's (missing "
                    f"accuracy); the file does not belong in {catalog.root}")  # fmt: skip
    elif kind == "renamed":
        hostile_bytes = catalog.path_of(ids[1]).read_bytes()
        expected = (CorruptRowError, f"{path}: its name says row {ids[0]} but it holds row "
                    f"{ids[1]!r}; was it renamed or copied by hand?")  # fmt: skip
    else:
        evil = pa.field("evil", pa.int64(), metadata={"ARROW:extension:name": "x.y"})
        hostile_bytes = hostile.Corpus.ipc_bytes(table.append_column(evil, pa.array([1])))
        expected = (UnsupportedFeatureError, f"{path}: column 'evil' declares the Arrow "
                    "extension type 'x.y'")  # fmt: skip
    path.write_bytes(hostile_bytes)
    kind_of_error, message = expected
    with pytest.raises(kind_of_error, match=re.escape(message)):
        catalog.get(ids[0])
    with pytest.raises(kind_of_error, match=re.escape(message)):
        catalog.best("accuracy", descending=False)  # ids[0] is the worst row
    with pytest.warns(CorruptRowWarning, match=re.escape(message)):
        assert len(list(catalog.rows(on_corrupt="skip"))) == 3
    assert [bad.row_id for bad in catalog.verify()] == [ids[0]]
    catalog.reindex()  # the file that does not belong is left out of the rebuilt index
    assert len(catalog) == 3 and ids[0] not in catalog.scan().collect()["row_id"].to_list()


def test_a_catalog_description_naming_an_extension_type_is_refused_unread(tmp_path: Path) -> None:
    catalog, _ = catalog_of_four(tmp_path)
    marker = tmp_path / "deserialized"

    class Recording(hostile.RecordingType):
        pass

    Recording.marker = marker
    pa.register_extension_type(Recording())
    try:
        description = catalog.root / "_modelrows_catalog.json"
        meta = json.loads(description.read_text())
        schema = catalog.arrow_schema.append(pa.field("evil", Recording()))
        meta["arrow_schema"] = base64.b64encode(schema.serialize().to_pybytes()).decode()
        description.write_text(json.dumps(meta))
        with pytest.raises(CatalogError) as info:
            Catalog.open(catalog.root)
        assert not marker.exists()
    finally:
        pa.unregister_extension_type(hostile.RECORDING_TYPE)
    assert str(info.value) == (
        f"{description} is not a valid catalog description: 'arrow_schema' cannot be read "
        f"({description} ('arrow_schema'): column 'evil' declares the Arrow extension type "
        f"{hostile.RECORDING_TYPE!r}; row files never use extension types, and reading one can "
        "run code (a pickled type), so the file is refused unread). It is not what "
        "Catalog.create wrote; restore it, or create the catalog again in an empty directory."
    )
