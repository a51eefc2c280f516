"""Retention and aliases with real processes: several checkpointers saving into one run at once,
processes racing to set one alias, and processes SIGKILLed in the middle of a retention or an
alias move. Afterwards the catalog holds what it promised, and nothing else.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

import training_workers as tw
from modelrows import Catalog, fetch_weights, training_state
from training_workers import RUN, StressCheckpointV1

K = 3  # keep_top_k of the concurrent savers
ALIASES = (f"run={RUN}/best", f"run={RUN}/last")


def reported(path: Path) -> dict[str, float]:
    """row id -> loss of every save that returned, from a report file."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith(("kill", "done")):
            continue
        row_id, value = line.split()
        out[row_id] = float(value)
    return out


def live(catalog: Catalog) -> dict[str, float]:
    return dict(catalog.sql("SELECT row_id, val_loss FROM models").fetchall())


def top(rows: dict[str, float], k: int) -> set[str]:
    """The k lowest losses, ties to the earlier row (as retention ranks them)."""
    return set(sorted(rows, key=lambda r: (rows[r], r))[:k])


def check_consistent(catalog: Catalog) -> None:
    """Opens, queries agree, every indexed row reads back, every alias names a live row."""
    n = len(catalog)
    assert catalog.sql("SELECT count(*) FROM models").fetchall() == [(n,)]
    assert catalog.scan().collect().height == n
    assert catalog.verify() == []
    for alias in catalog.aliases():
        assert catalog.get(alias.name).row_id == alias.row_id


@pytest.mark.stress
def test_concurrent_savers_keep_the_top_k_the_last_and_the_aliased(tmp_path: Path) -> None:
    writers, saves = 4, 10
    root = tmp_path / "catalog"
    catalog = Catalog.create(root, StressCheckpointV1, partition_by=["run"])
    # a row the user aliased before the run started: a bad loss, but it must survive
    pinned = catalog.append(
        StressCheckpointV1(
            weights=fetch_weights({"w": torch.zeros(2)}), run=RUN, writer=-1, step=0,
            val_loss=99.0, **training_state(),
        )
    )  # fmt: skip
    catalog.alias("production", pinned)
    ctx = tw.context()
    reports = [tmp_path / f"w{i}" for i in range(writers)]
    procs = [
        ctx.Process(target=tw.saver, args=(str(root), i, saves, K, str(reports[i])))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * writers

    saved: dict[str, float] = {}
    for path in reports:
        saved.update(reported(path))
    assert len(saved) == writers * saves  # every save returned its own row
    catalog = Catalog.open(root)
    check_consistent(catalog)
    now = live(catalog)
    everything = {**saved, pinned: 99.0}
    # the k best of every row ever saved were never deleted, nor the aliased row
    assert top(everything, K) <= set(now)
    assert pinned in now
    # best ended at the best row, last at the latest: no concurrent move went backwards
    assert catalog.get(ALIASES[0]).row_id == min(saved, key=lambda r: (saved[r], r))
    assert catalog.get(ALIASES[1]).row_id == max(saved)
    # at most k, plus the latest, plus one row per alias (a retention may have read an alias
    # just before another writer moved it)
    assert len(now) <= K + 1 + len(catalog.aliases())
    # once quiet, one more retention leaves exactly the promised rows
    catalog.retain(by="val_loss", mode="min", keep_top_k=K, keep_last=1, where=f"run = '{RUN}'")
    assert set(live(catalog)) == top(everything, K) | {max(saved), pinned}
    print(f"\n{writers} writers x {saves} saves: {len(now)} rows left before the last retention")


@pytest.mark.stress
def test_concurrent_alias_setters_every_set_once_and_the_last_wins(tmp_path: Path) -> None:
    setters, sets = 4, 15
    root = tmp_path / "catalog"
    catalog = Catalog.create(root, StressCheckpointV1, partition_by=["run"])
    state = training_state(rng=False)
    rows = catalog.append_many(
        StressCheckpointV1(weights=fetch_weights({"w": torch.full((1,), float(i))}), run="r",
                           writer=0, step=i, **state)
        for i in range(12)
    )  # fmt: skip
    catalog.alias("cas", rows[0])
    ctx = tw.context()
    plain = [tmp_path / f"set{i}" for i in range(setters)]
    cas = [tmp_path / f"cas{i}" for i in range(setters)]
    procs = [
        ctx.Process(target=tw.alias_setter, args=(str(root), i, sets, rows, str(plain[i])))
        for i in range(setters)
    ] + [
        ctx.Process(target=tw.alias_swapper, args=(str(root), i, sets, rows, str(cas[i])))
        for i in range(setters)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    catalog = Catalog.open(root)

    # last writer wins: every set is in the history exactly once, under the sequence it got
    history = catalog.alias_history("contested")
    assert [a.sequence for a in history] == list(range(1, setters * sets + 1))
    returned = sorted(
        (int(seq), row_id) for path in plain for seq, row_id in map(str.split, path.read_text().splitlines())
    )  # fmt: skip
    assert returned == [(a.sequence, a.row_id) for a in history]
    assert catalog.get("contested").row_id == history[-1].row_id

    # compare-and-set: every success replaced exactly the version it expected
    history = catalog.alias_history("cas")
    assert [a.sequence for a in history] == list(range(1, setters * sets + 2))
    conflicts = 0
    for path in cas:
        for line in path.read_text().splitlines():
            if line == "conflict":
                conflicts += 1
                continue
            seq, expected, row_id = line.split()
            assert history[int(seq) - 1].row_id == row_id
            assert history[int(seq) - 2].row_id == expected  # no update was lost
    assert catalog.get("cas").row_id == history[-1].row_id
    print(f"\n{setters * sets} compare-and-sets succeeded, {conflicts} were refused and retried")


@pytest.mark.stress
def test_sigkill_during_retention_or_an_alias_move_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog.create(root, StressCheckpointV1, partition_by=["run"])
    ctx = tw.context()
    k = 2
    saved: dict[str, float] = {}
    where_killed: list[str] = []
    for kill_at in range(1, 27):  # every event of a process's first two saves
        out = tmp_path / f"dying{kill_at}"
        proc = ctx.Process(target=tw.dying_saver, args=(str(root), kill_at, kill_at, k, str(out)))
        proc.start()
        proc.join(timeout=120)
        assert proc.exitcode == -signal.SIGKILL
        lines = out.read_text().splitlines()
        assert lines[-1].startswith("kill ")
        where_killed.append(lines[-1])
        saved.update(reported(out))

        catalog = Catalog.open(root)
        check_consistent(catalog)  # no alias points to a deleted row
        now = live(catalog)
        assert top({**saved, **now}, k) <= set(now)  # the k best ever saved are all there
        last = catalog.alias_history(ALIASES[1])
        if saved:  # "last" is the latest save that returned, or a later one
            assert last[-1].row_id is not None and last[-1].row_id >= max(saved)

    kinds = {
        " ".join(line.split()[1:3]) + " " + line.split()[3].split("/")[0] for line in where_killed
    }
    # the kills landed in alias moves and in retentions (before and after their delete entry)
    assert {"before put _aliases", "after put _aliases", "before put _index",
            "after put _index", "before delete run=shared"} <= kinds  # fmt: skip
    catalog = Catalog.open(root)
    catalog.vacuum(older_than=0.0)  # what killed deletes left behind
    check_consistent(catalog)
    on_disk = {p.name.split(".")[0] for p in (root / f"run={RUN}").iterdir()}
    assert on_disk == set(live(catalog))
    tw.checkpointer(str(root), k).save(torch.nn.Linear(2, 2), writer=0, step=0, val_loss=None)
    assert len(Catalog.open(root)) <= k + 2  # the best k, the last (and best is among them)
    print(f"\n{len(where_killed)} kills: {sorted(kinds)}")
