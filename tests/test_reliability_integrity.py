"""Integrity: every row stores a checksum of its weight bytes, loading verifies it on request,
and Catalog.verify() re-checks every row, with progress, reporting corrupt rows by id and path.
Also: no module of the package can unpickle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pyarrow.ipc as ipc
import pytest
import torch
import torch.nn as nn
import xxhash

import modelrows
from modelrows import Catalog, CorruptRowError, ModelV1, fetch_weights, read_model_row
from modelrows._catalog import CorruptRow


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(2.0, dtype=torch.bfloat16))


def test_the_stored_checksum_is_xxh3_of_the_weight_bytes(tmp_path: Path) -> None:
    catalog = Catalog.create(tmp_path / "c", ModelV1)
    model = Tied()
    row_id = catalog.append(ModelV1(weights=fetch_weights(model)))
    table = ipc.open_file(catalog.path_of(row_id)).read_all()
    stored = table.column("weights")[0]["checksum"].as_py()
    h = xxhash.xxh3_64()  # each distinct tensor's bytes, in state_dict order; ties once
    seen = set()
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert len(seen) == 2  # scale, embed.weight (= head.weight)
    assert stored == f"xxh3-64:{h.hexdigest()}"


def corrupt_tensor_byte(path: Path, name: str) -> None:
    row = read_model_row(path)
    offset = row.weights[name].data_ptr() - row.weights._storage.data_ptr()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x80
    path.write_bytes(bytes(data))


def test_loading_verifies_on_request(tmp_path: Path) -> None:
    catalog = Catalog.create(tmp_path / "c", ModelV1)
    row_id = catalog.append(ModelV1(weights=fetch_weights(Tied())))
    path = catalog.path_of(row_id)
    corrupt_tensor_byte(path, "scale")
    catalog.get(row_id)  # not asked: the structure is fine, no tensor byte is read
    read_model_row(path)
    message = f"{path}: checksum mismatch in column 'weights'"
    for load in [lambda: catalog.get(row_id, verify=True),
                 lambda: read_model_row(path, verify=True),
                 lambda: list(catalog.rows(verify=True))]:  # fmt: skip
        with pytest.raises(CorruptRowError, match=message):
            load()


@pytest.fixture
def five_rows(tmp_path: Path) -> tuple[Catalog, list[str]]:
    catalog = Catalog.create(tmp_path / "c", ModelV1)
    ids = [catalog.append(ModelV1(weights=fetch_weights(Tied()))) for _ in range(5)]
    return catalog, ids


def test_verify_reports_each_corrupt_row_by_id_and_path(
    five_rows: tuple[Catalog, list[str]],
) -> None:
    catalog, ids = five_rows
    assert catalog.verify() == []
    bytes_bad, cut_bad = catalog.path_of(ids[1]), catalog.path_of(ids[3])
    corrupt_tensor_byte(bytes_bad, "embed.weight")
    cut_bad.write_bytes(cut_bad.read_bytes()[:-20])
    report = catalog.verify()
    assert [(r.row_id, r.path) for r in report] == [(ids[1], bytes_bad), (ids[3], cut_bad)]
    assert report[0].problem.startswith(f"{bytes_bad}: checksum mismatch in column 'weights'")
    assert report[1] == CorruptRow(ids[3], cut_bad, (
        f"{cut_bad}: not an Arrow IPC file (the ARROW1 magic is missing at the end); is it "
        "truncated, or another format?"))  # fmt: skip


def test_verify_reports_progress(
    five_rows: tuple[Catalog, list[str]], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    catalog, _ = five_rows
    calls: list[tuple[int, int]] = []
    catalog.verify(progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]

    catalog.verify()  # by default, no bar for a short catalog
    catalog.verify(progress=False)
    assert capsys.readouterr().err == ""

    catalog.verify(progress=True)  # a tqdm bar on stderr
    err = capsys.readouterr().err
    assert f"verifying {catalog.root}" in err and "5/5" in err

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # no tqdm: plain lines
    catalog.verify(progress=True)
    assert capsys.readouterr().err.splitlines() == [
        f"verifying {catalog.root}: {i}/5 rows" for i in range(1, 6)
    ]


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                     "joblib"}  # fmt: skip


def unpickling_sites(source: str) -> list[str]:
    """Imports of pickle-like modules and calls of torch.load in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + (
                [f"{node.module}.{a.name}" for a in node.names] if node.module == "torch" else []
            )
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and (isinstance(func.value, ast.Name) and func.value.id == "torch")
            ):
                names = ["torch.load"]
            elif (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            ):
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]  # type: ignore[misc]
        for name in names:
            if name.split(".")[0] in FORBIDDEN_MODULES or name == "torch.load":
                found.append((node.lineno, name))  # type: ignore[attr-defined]
    return [f"line {line}: {name}" for line, name in sorted(found)]


def test_the_scanner_finds_what_it_looks_for() -> None:
    planted = ("import pickle\nfrom marshal import loads\nimport torch\nx = torch.load('m.pt')\n"
               "from torch import load\nimportlib.import_module('dill')\n__import__('shelve')\n")  # fmt: skip
    assert unpickling_sites(planted) == [
        "line 1: pickle", "line 2: marshal", "line 4: torch.load", "line 5: torch.load",
        "line 6: dill", "line 7: shelve",
    ]  # fmt: skip


def test_no_module_of_the_package_imports_pickle_or_calls_torch_load() -> None:
    package = Path(modelrows.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) >= 8
    found = {str(m.relative_to(package)): unpickling_sites(m.read_text()) for m in modules}
    assert {m: sites for m, sites in found.items() if sites} == {}
