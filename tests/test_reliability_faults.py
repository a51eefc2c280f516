"""Every filesystem step of a write fails in turn (SQLite's fault injection): the write raises a
StorageError naming the file and the step, and the destination holds the whole new row or
nothing; a rewritten file keeps its old bytes until the new ones are complete.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from faults import Faults
from modelrows import Catalog, ModelV1, StorageError, fetch_weights, read_model_row, write_model_row


class FaultRowV1(ModelV1, schema="reliability.fault", version=1):
    run: str
    epoch: int


STEPS = {"mkdir", "directory fsync", "create", "write", "flush", "fsync", "link", "unlink"}


def row(run: str, epoch: int = 0) -> FaultRowV1:
    # 5 MB: the file goes to the kernel in two writes (up to the 4 MiB boundary, then the rest),
    # so a write fails with the file half written, and pyarrow still writes its footer after it
    weights = fetch_weights({"w": torch.randn(1_300_000), "b": torch.ones(3)})
    return FaultRowV1(weights=weights, run=run, epoch=epoch)


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".*.tmp"))


def expected_message(catalog: Catalog, err: StorageError, kind: str, n: int, rows: int = 1) -> str:
    cause = f"[Errno 5] injected failure of {kind} (call {n})"
    if rows == 1:
        tail = (
            "The row is in place but may not be durable yet."
            if err.visible
            else "The row was not added."
        )
    else:
        tail = (
            "The rows are in place but may not be durable yet."
            if err.visible
            else "None of the rows was added."
        )
    return (
        f"appending {rows} row{'s' if rows > 1 else ''} to {catalog.root} failed at step "
        f"{kind!r} of {err.path}: {cause}. {tail}"
    )


def expected_rewrite_message(err: StorageError, kind: str, n: int) -> str:
    cause = f"[Errno 5] injected failure of {kind} (call {n})"
    tail = (
        "The new file is in place but may not be durable yet."
        if err.visible
        else "Nothing was written there; the previous content (if any) is intact."
    )
    return f"writing {err.path} failed at step {kind!r}: {cause}. {tail}"


def check_append_outcome(
    catalog: Catalog, err: StorageError, sent: FaultRowV1, before: int, *, sticky: bool
) -> None:
    fresh = Catalog.open(catalog.root)  # the catalog opens; what does it hold?
    mine = fresh.sql(f"SELECT row_id FROM models WHERE run = '{sent.run}'").fetchall()
    if err.visible:  # the whole row, exactly as sent
        assert len(fresh) == before + 1 and len(mine) == 1
        new = fresh.get(mine[0][0], verify=True)
        assert (new.run, new.epoch, new.weights) == (sent.run, sent.epoch, sent.weights)
    else:  # nothing, and no file of it left behind
        assert len(fresh) == before and mine == []
        if sticky:  # a failing disk may fail the clean-up too: vacuum finishes it
            catalog.vacuum(older_than=0)
        assert not list(catalog.root.glob(f"run={sent.run}/*/*.arrow"))


@pytest.mark.parametrize("sticky", [False, True], ids=["one-failure", "failing-from-then-on"])
def test_each_step_of_an_append_fails_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sticky: bool
) -> None:
    catalog = Catalog.create(tmp_path / "c", FaultRowV1, partition_by=["run", "epoch"])
    catalog.append(row("warm-up"))  # the index's log directory exists from the first append on
    faults = Faults(monkeypatch)
    with faults.armed() as trace:
        catalog.append(row("clean"))
    assert set(trace) == STEPS  # two partition levels: mkdir and directory fsync each
    for n, kind in enumerate(trace, 1):
        before = len(catalog)
        sent = row(f"n{n}", epoch=n)
        with pytest.raises(StorageError) as info, faults.armed(fail_at=n, sticky=sticky):
            catalog.append(sent)
        err = info.value
        assert err.step == kind, (n, kind, str(err))
        call = int(str(err).split("(call ")[1].split(")")[0])
        assert call == n or (sticky and call > n)  # a failing disk fails the cleanup too
        assert str(err) == expected_message(catalog, err, kind, call)
        # the index entry's link publishes the row: only its tmp unlink and dir fsync come after
        assert err.visible == (n > len(trace) - 2)
        check_append_outcome(catalog, err, sent, before, sticky=sticky)
        if not sticky:
            assert temp_files(catalog.root) == []  # the failed append cleaned up after itself
        else:  # a failing disk may leave a temporary file, which no reader sees
            catalog.vacuum(older_than=0)
            assert temp_files(catalog.root) == []
        catalog.append(row(f"after{n}"))  # the catalog takes appends again
    assert len(list(catalog.rows(verify=True))) == len(catalog) and catalog.verify() == []
    print(f"\nappend: {len(trace)} injection points {dict(Counter(trace))}")


def test_append_many_is_all_or_nothing_under_each_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog.create(tmp_path / "c", FaultRowV1, partition_by=["run"])
    catalog.append(row("warm-up"))  # the index's log directory exists from the first append on
    faults = Faults(monkeypatch)
    with faults.armed() as trace:
        catalog.append_many([row("a"), row("b")])
    for n, kind in enumerate(trace, 1):
        before = len(catalog)
        batch = [row(f"x{n}"), row(f"y{n}")]
        with pytest.raises(StorageError) as info, faults.armed(fail_at=n):
            catalog.append_many(batch)
        assert info.value.step == kind
        expected = before + 2 if info.value.visible else before
        assert len(Catalog.open(catalog.root)) == expected, (n, kind, str(info.value))
        err = info.value
        assert str(err) == expected_message(catalog, err, kind, n, rows=2)
        # the index entry's link publishes the rows: only its tmp unlink and dir fsync come after
        assert err.visible == (n > len(trace) - 2)
        assert temp_files(catalog.root) == []
    assert catalog.verify() == []
    print(f"\nappend_many of 2 rows: {len(trace)} injection points {dict(Counter(trace))}")


@pytest.mark.parametrize("sticky", [False, True], ids=["one-failure", "failing-from-then-on"])
def test_rewriting_a_row_file_keeps_the_old_one_until_the_new_one_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sticky: bool
) -> None:
    path = tmp_path / "m.model.arrow"
    old = ModelV1(weights=fetch_weights({"w": torch.randn(1000)}), architecture_version=1)
    write_model_row(path, old)
    old_bytes = path.read_bytes()
    faults = Faults(monkeypatch)
    with faults.armed() as trace:
        write_model_row(path, old)
    assert set(trace) == {"create", "write", "flush", "fsync", "rename", "directory fsync"}
    for n, kind in enumerate(trace, 1):
        new = ModelV1(weights=fetch_weights({"w": torch.randn(1000)}), architecture_version=n)
        with pytest.raises(StorageError) as info, faults.armed(fail_at=n, sticky=sticky):
            write_model_row(path, new)
        err = info.value
        call = int(str(err).split("(call ")[1].split(")")[0])
        assert call == n or (sticky and call > n)
        assert err.step == kind and str(err) == expected_rewrite_message(err, kind, call)
        if err.visible:  # failed after the rename: the new file, whole
            assert read_model_row(path, verify=True) == new
            assert kind == "directory fsync"
        else:
            assert path.read_bytes() == old_bytes
        leftovers = [p for p in tmp_path.iterdir() if p != path]
        assert leftovers == [] or (sticky and all(p.name.endswith(".tmp") for p in leftovers))
        for p in leftovers:
            p.unlink()
        write_model_row(path, old)  # back to the old content for the next step
    print(f"\nwrite_model_row: {len(trace)} injection points {dict(Counter(trace))}")
