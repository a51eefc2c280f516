"""Every filesystem step of a compaction and of a delete fails in turn (SQLite's fault
injection, as tests/test_reliability_faults.py does for appends): once, and "from then on" (a
disk that stays broken). The error is a StorageError naming the file and the step; the catalog
answers every query exactly as before a failed compaction; a delete happened whole or not at all;
and doing it again succeeds.

Each run starts from a copy of the same catalog (same file names, so the same steps).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from faults import Faults
from modelrows import Catalog, ModelV1, RowNotFoundError, StorageError, fetch_weights
from modelrows._catalog import _index
from modelrows._catalog._index import LOG, SEGMENTS


class FaultIndexRowV1(ModelV1, schema="index.fault", version=1):
    run: str
    epoch: int
    accuracy: float


def row(epoch: int, run: str) -> FaultIndexRowV1:
    weights = fetch_weights({"w": torch.full((16,), float(epoch))})
    return FaultIndexRowV1(weights=weights, run=run, epoch=epoch, accuracy=(epoch * 7 % 11) / 10)


@pytest.fixture(autouse=True)
def _no_automatic_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends and deletes compact now and then, at random: not here (the steps must repeat)."""
    monkeypatch.setattr(_index, "CHECK_EVERY", 1 << 62)


def template(tmp_path: Path) -> tuple[Path, list[str]]:
    """A catalog with a segment, deletes recorded in it and in the log, and appends in the log."""
    root = tmp_path / "template"
    catalog = Catalog.create(root, FaultIndexRowV1, partition_by=["run"])
    ids = [catalog.append(row(e, "a" if e % 2 else "b"), fsync=False) for e in range(8)]
    catalog.delete([ids[0]], fsync=False)
    catalog.compact(full=False, fsync=False)
    ids += [catalog.append(row(e, "c"), fsync=False) for e in range(8, 12)]
    catalog.delete([ids[1], ids[9]], fsync=False)  # one row in the segment, one in the log
    return root, ids


def answers(root: Path) -> dict[str, Any]:
    catalog = Catalog.open(root)
    table = catalog.index_table()
    ids = sorted(table.column("row_id").to_pylist())
    best = catalog.best("accuracy")
    return {
        "index": sorted(tuple(sorted(r.items())) for r in table.to_pylist()),
        "len": len(catalog),
        "scan": sorted(catalog.scan().select("row_id").collect()["row_id"].to_list()),
        "sql": catalog.sql(
            "SELECT run, count(*), sum(epoch) FROM models GROUP BY ALL ORDER BY 1"
        ).fetchall(),
        "best": best.epoch if best is not None else None,  # type: ignore[attr-defined]
        "rows": [r.epoch for r in catalog.rows()],  # type: ignore[attr-defined]
        "get": [catalog.get(i).epoch for i in ids],  # type: ignore[attr-defined]
    }


def garbage(root: Path) -> list[str]:
    """What vacuum(older_than=0) must have removed: temporary files, segments no manifest names,
    row files the index does not list."""
    catalog = Catalog.open(root)
    manifest = catalog._index.latest()
    assert manifest is not None
    left = [str(p.relative_to(root)) for p in root.rglob(".*.tmp")]
    left += [
        k
        for k in (SEGMENTS + p.name for p in (root / SEGMENTS).glob("*"))
        if k not in manifest.segments
    ]
    listed = set(catalog.index_table().column("_path").to_pylist())
    left += [k for k in catalog._row_files().values() if k not in listed]
    return left


def check_error(err: BaseException, kind: str, n: int, root: Path, *, sticky: bool) -> int:
    """The failure is a StorageError naming the file and the step; returns the failed call."""
    assert isinstance(err, StorageError), repr(err)
    call = int(str(err).split("(call ")[1].split(")")[0])
    assert call == n or (sticky and call > n)
    if call == n:
        assert err.step == kind, (n, kind, str(err))
    assert err.path is not None and err.path.startswith(str(root)) and err.path in str(err)
    return call


def run_each_step(
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    action: Callable[[Catalog], object],
    check: Callable[[Path, BaseException | None, dict[str, Any]], None],
    *,
    sticky: bool,
) -> tuple[list[str], Counter[str]]:
    """Run ``action`` on a fresh copy of ``source`` once clean, then once per step with that
    step failing; ``check(root, error_or_None, answers_before)`` judges each outcome."""
    before = answers(source)
    faults = Faults(monkeypatch)
    clean = tmp_path / "clean"
    shutil.copytree(source, clean)
    catalog = Catalog.open(clean)
    len(catalog)  # the index is read (and its files cached) before the faults, as in a process
    with faults.armed() as trace:
        action(catalog)
    trace = list(trace)
    outcomes: Counter[str] = Counter()
    for n in range(1, len(trace) + 1):
        root = tmp_path / f"n{n}"
        shutil.copytree(source, root)
        catalog = Catalog.open(root)
        len(catalog)
        error: BaseException | None = None
        try:
            with faults.armed(fail_at=n, sticky=sticky):
                action(catalog)
        except Exception as exc:  # judged by check()
            error = exc
            check_error(exc, trace[n - 1], n, root, sticky=sticky)
            outcomes["error, visible" if getattr(exc, "visible", False) else "error"] += 1
        else:
            outcomes["returned"] += 1
        check(root, error, before)
        shutil.rmtree(root)
    return trace, outcomes


@pytest.mark.parametrize("sticky", [False, True], ids=["one-failure", "failing-from-then-on"])
@pytest.mark.parametrize("full", [True, False], ids=["full", "fold"])
def test_each_step_of_a_compaction_fails_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: bool, sticky: bool
) -> None:
    def compact(catalog: Catalog) -> object:
        return catalog.compact(full=full, fsync=True)

    def check(root: Path, error: BaseException | None, before: dict[str, Any]) -> None:
        if isinstance(error, StorageError):
            message = str(error)
            assert message.startswith(
                f"compacting the index of {root} failed at step {error.step!r} of {error.path}: "
                f"[Errno 5] injected failure of {error.step} (call "
            ), message
            if error.visible:  # failed once the manifest was linked: the new state is live
                assert error.path is not None and "/_index/manifests/" in error.path
                assert message.endswith(
                    "The compacted index is published but may not be durable yet."
                )
            else:
                assert message.endswith(
                    "The index is unchanged; compact again once the cause is fixed."
                )
                if not sticky:  # the attempt took back what it wrote
                    assert garbage(root) == []
        assert answers(root) == before  # whatever failed, every query answers as before
        catalog = Catalog.open(root)
        catalog.compact(full=full, fsync=True)  # again, on a sound disk: it succeeds
        manifest = catalog._index.latest()
        assert manifest is not None and manifest.sequence >= 2
        assert len(manifest.segments) == (1 if full else 2)
        assert answers(root) == before
        catalog.vacuum(older_than=0)
        assert garbage(root) == [] and catalog.verify() == []
        assert answers(root) == before

    source, _ = template(tmp_path)
    trace, outcomes = run_each_step(tmp_path, source, monkeypatch, compact, check, sticky=sticky)
    # a segment, the deleted rows' files, a manifest, then the housekeeping's removals
    assert {"create", "write", "flush", "fsync", "link", "unlink", "directory fsync"} == set(trace)
    assert trace.count("link") == 2 and outcomes["returned"] >= 3  # housekeeping failures
    print(
        f"\ncompact(full={full}), {'sticky' if sticky else 'once'}: {len(trace)} injection "
        f"points {dict(Counter(trace))}; outcomes {dict(outcomes)}"
    )


@pytest.mark.parametrize("sticky", [False, True], ids=["one-failure", "failing-from-then-on"])
def test_each_step_of_a_delete_fails_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sticky: bool
) -> None:
    source, ids = template(tmp_path)
    targets = [ids[2], ids[10]]  # a row in the segment and a row in the log

    def delete(catalog: Catalog) -> object:
        return catalog.delete(targets, fsync=True)

    def check(root: Path, error: BaseException | None, before: dict[str, Any]) -> None:
        if isinstance(error, StorageError):
            message = str(error)
            assert message.startswith(
                f"deleting 2 rows from {root} failed at step {error.step!r} of {error.path}: "
                f"[Errno 5] injected failure of {error.step} (call "
            ), message
            assert message.endswith(
                "The rows are deleted; the deletion may not be durable yet."
                if error.visible
                else "Nothing was deleted."
            ), message
        after = answers(root)
        deleted = after["len"] == before["len"] - 2
        if deleted:  # the whole delete happened ...
            assert after["scan"] == sorted(set(before["scan"]) - set(targets))
            assert error is None or getattr(error, "visible", False), str(error)
        else:  # ... or none of it
            assert after == before
            assert error is not None and not getattr(error, "visible", True)
        catalog = Catalog.open(root)
        if deleted:  # again: the rows are gone already
            with pytest.raises(RowNotFoundError):
                catalog.delete(targets, fsync=True)
        else:
            assert catalog.delete(targets, fsync=True) == sorted(targets)
        catalog.vacuum(older_than=0)
        assert garbage(root) == [] and catalog.verify() == []
        assert not [p for p in root.rglob("*.arrow") if p.name.split(".")[0] in targets]
        assert Catalog.open(root).reindex() == before["len"] - 2  # and reindex agrees

    trace, outcomes = run_each_step(tmp_path, source, monkeypatch, delete, check, sticky=sticky)
    # the delete entry (temporary file, link, directory fsync), then the two row files
    assert trace[-2:] == ["unlink", "unlink"] and trace.count("link") == 1
    assert outcomes["returned"] == 2 and outcomes["error, visible"] == 2
    print(
        f"\ndelete of 2 rows, {'sticky' if sticky else 'once'}: {len(trace)} injection points "
        f"{dict(Counter(trace))}; outcomes {dict(outcomes)}"
    )


def test_a_failed_delete_says_whether_it_happened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, ids = template(tmp_path)
    catalog = Catalog.open(root)
    faults = Faults(monkeypatch)
    with faults.armed() as trace:
        catalog.delete([ids[3]], fsync=True)
    link = trace.index("link") + 1
    for n, happened in [(link, False), (link + 1, True)]:
        catalog = Catalog.open(root)
        target = catalog.index_table().column("row_id").to_pylist()[0]
        with pytest.raises(StorageError) as info, faults.armed(fail_at=n):
            catalog.delete([target], fsync=True)
        message = str(info.value)
        assert message.startswith(f"deleting 1 row from {root} failed at step "), message
        assert info.value.path is not None and info.value.path in message
        if happened:
            assert message.endswith("The row is deleted; the deletion may not be durable yet.")
            assert target not in Catalog.open(root).index_table().column("row_id").to_pylist()
        else:
            assert message.endswith("Nothing was deleted."), message
            assert target in Catalog.open(root).index_table().column("row_id").to_pylist()
    assert not list((root / LOG).glob(".*.tmp"))
