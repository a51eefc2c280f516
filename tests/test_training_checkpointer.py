"""The Checkpointer: a plain training loop saves into a catalog and resumes exactly in a fresh
process; several runs share one catalog; what it is given wrong is refused with a clear error.

This file is also the worker: ``python test_training_checkpointer.py CATALOG RUN:EPOCHS ...``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from modelrows import (
    Catalog,
    CatalogError,
    Checkpointer,
    ModelV1,
    RowNotFoundError,
    TrainingStateV1,
    read_training_state,
)

EPOCHS = 6
STOP_AFTER = 3  # epochs the interrupted run trains before its process ends


class CheckpointV1(TrainingStateV1, schema="test.training.checkpoint", version=1):
    run: str
    epoch: int
    train_loss: float
    val_loss: float | None = None


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(12, 2))  # fmt: skip


def data() -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(99)
    x, y = torch.randn(56, 4, generator=g), torch.randint(0, 2, (56,), generator=g)
    return TensorDataset(x[:40], y[:40]), (x[40:], y[40:])


def train(catalog_root: Path, run: str, epochs: int) -> None:
    """Train ``run`` up to ``epochs`` epochs, resuming from its last checkpoint if it has one."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    net = model()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.02)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.7)
    loader_generator = torch.Generator().manual_seed(1)
    train_set, (val_x, val_y) = data()
    loader = DataLoader(train_set, batch_size=8, shuffle=True, generator=loader_generator)

    checkpointer = Checkpointer(Catalog.open(catalog_root), columns={"run": run})
    row = checkpointer.resume(
        net, optimizer=optimizer, scheduler=scheduler, generators={"loader": loader_generator}
    )
    start = 0 if row is None else row.epoch + 1
    for epoch in range(start, epochs):
        net.train()
        total = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x + 0.01 * float(np.random.rand())), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        scheduler.step()
        net.eval()
        with torch.no_grad():
            val_loss = nn.functional.cross_entropy(net(val_x), val_y).item()
        checkpointer.save(
            net, optimizer=optimizer, scheduler=scheduler, generators={"loader": loader_generator},
            epoch=epoch, train_loss=total, val_loss=val_loss,
        )  # fmt: skip
        print(run, epoch, repr(total), repr(val_loss), flush=True)


def run_worker(catalog_root: Path, *runs: str) -> list[tuple[str, int, float, float]]:
    """Run the worker in a fresh process; return the (run, epoch, train loss, val loss) of every
    epoch it trained."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, str(catalog_root), *runs],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    return [(run, int(epoch), float(a), float(b)) for run, epoch, a, b in lines]


def test_a_run_resumed_in_a_fresh_process_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    Catalog.create(root, CheckpointV1, partition_by=["run"])
    # the process ends after the interrupted run's epoch STOP_AFTER - 1 ...
    first = run_worker(root, f"straight:{EPOCHS}", f"interrupted:{STOP_AFTER}")
    second = run_worker(root, f"interrupted:{EPOCHS}")  # ... and a fresh one resumes
    epochs = first + second

    def history(run: str) -> list[tuple[int, float, float]]:
        return [(epoch, a, b) for r, epoch, a, b in epochs if r == run]

    assert [epoch for epoch, _, _ in history("straight")] == list(range(EPOCHS))
    assert history("interrupted") == history("straight")  # every loss, exactly

    catalog = Catalog.open(root)

    def kept(run: str) -> list[tuple[int, float, float]]:
        return catalog.sql(
            f"SELECT epoch, train_loss, val_loss FROM models WHERE run = '{run}' ORDER BY epoch"
        ).fetchall()

    # retention kept the 3 best by val_loss and the last, the same epochs in both runs
    best3 = sorted(sorted(history("straight"), key=lambda h: h[2])[:3])
    assert kept("straight") == sorted({*best3, history("straight")[-1]})
    assert kept("interrupted") == kept("straight")
    straight = Checkpointer(catalog, columns={"run": "straight"})
    interrupted = Checkpointer(catalog, columns={"run": "interrupted"})
    last, resumed = straight.resume(model()), interrupted.resume(model())
    assert last is not None and resumed is not None
    assert last.epoch == resumed.epoch == EPOCHS - 1
    assert resumed.weights == last.weights
    assert resumed.training_tensors == last.training_tensors
    assert resumed.training_state == last.training_state
    best = straight.resume(model(), row="best")
    assert best is not None and best.epoch == best3[0][0]
    assert catalog.get("run=interrupted/best").epoch == best.epoch
    # the learning rate the scheduler set is a query away
    lrs = catalog.sql(
        "SELECT epoch, json_extract(training_state, "
        "'$.optimizer.state.param_groups[0].lr')::DOUBLE AS lr FROM models "
        "WHERE run = 'straight' ORDER BY epoch"
    ).fetchall()
    assert [lr for _, lr in lrs] == pytest.approx([0.02 * 0.7 ** ((e + 1) // 2) for e, _ in lrs])


# -- in one process --------------------------------------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.create(tmp_path / "c", CheckpointV1, partition_by=["run"])


def save_losses(checkpointer: Checkpointer, net: nn.Module, losses: list[float]) -> list[str]:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    return [
        checkpointer.save(net, optimizer=optimizer, epoch=i, train_loss=1.0, val_loss=loss)
        for i, loss in enumerate(losses)
    ]


def test_best_and_last_are_the_runs_own(catalog: Catalog) -> None:
    net = model()
    a = Checkpointer(catalog, columns={"run": "a"})
    b = Checkpointer(catalog, monitor="val_loss", mode="max")  # learns its run on the first save
    ids_a = save_losses(a, net, [0.5, 0.2, 0.4])
    ids_b = [b.save(net, run="b", epoch=0, train_loss=1.0, val_loss=0.1)]
    ids_b += [b.save(net, run="b", epoch=1, train_loss=1.0, val_loss=0.3)]
    assert b.scope == {"run": "b"}
    fresh = model()
    best = a.resume(fresh, row="best")
    assert best is not None and best.row_id == ids_a[1]  # run b's 0.1 is not run a's best
    last = a.resume(fresh)
    assert last is not None and last.row_id == ids_a[2]
    best_b = b.resume(fresh, row="best")
    assert best_b is not None and best_b.row_id == ids_b[1]  # mode="max"
    assert a.resume(fresh, row=ids_b[0]).run == "b"  # an explicit id is any row
    assert [r.row_id for r in a.rows()] == ids_a
    assert a.aliases == {"best": "run=a/best", "last": "run=a/last"}
    odd = Checkpointer(catalog, columns={"run": "x y/z"})
    assert odd.aliases["best"] == "run=x%20y%2Fz/best"


def test_save_keeps_the_best_k_and_the_last_and_moves_the_aliases(catalog: Catalog) -> None:
    net = model()
    checkpointer = Checkpointer(catalog, keep_top_k=2, keep_last=1, columns={"run": "a"})
    other = Checkpointer(catalog, keep_top_k=1, columns={"run": "b"})
    ids_b = save_losses(other, net, [0.9, 0.8, 0.7])
    losses = [0.5, 0.3, 0.6, 0.2, 0.7, 0.4, None]
    ids = save_losses(checkpointer, net, losses)  # type: ignore[arg-type]
    kept = [r.row_id for r in checkpointer.rows()]
    assert kept == [ids[1], ids[3], ids[6]]  # 0.3, 0.2 and the last (its loss unknown)
    assert [r.row_id for r in other.rows()] == ids_b[2:]  # the other run's own retention
    assert catalog.get("run=a/best").row_id == ids[3]
    assert catalog.get("run=a/last").row_id == ids[6]
    # best moved on each improvement only; last on every save
    best_history = [a.row_id for a in catalog.alias_history("run=a/best")]
    assert best_history == [ids[0], ids[1], ids[3]]
    assert [a.row_id for a in catalog.alias_history("run=a/last")] == ids
    # an alias the user sets protects its row from the checkpointer's retention
    catalog.alias("keep-me", ids[3])
    more = save_losses(checkpointer, net, [0.01, 0.02])
    assert [r.row_id for r in checkpointer.rows()] == [ids[3], *more]
    assert catalog.get("run=a/best").row_id == more[0]


def test_keep_top_k_none_keeps_everything_and_no_monitor_keeps_the_latest(
    catalog: Catalog,
) -> None:
    net = model()
    everything = Checkpointer(catalog, keep_top_k=None, columns={"run": "all"})
    ids = save_losses(everything, net, [0.3, 0.2, 0.1])
    assert [r.row_id for r in everything.rows()] == ids
    latest = Checkpointer(catalog, monitor=None, keep_top_k=2, columns={"run": "latest"})
    ids = save_losses(latest, net, [0.1, 0.2, 0.3])
    assert [r.row_id for r in latest.rows()] == ids[1:]
    assert catalog.aliases()[-1].name == "run=latest/last"
    assert "run=latest/best" not in {a.name for a in catalog.aliases()}


def test_resume_restores_weights_optimizer_and_rngs(catalog: Catalog) -> None:
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    checkpointer = Checkpointer(catalog, columns={"run": "r"})
    checkpointer.save(net, optimizer=optimizer, epoch=0, train_loss=1.0)
    expected = torch.rand(3)
    fresh = model()
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    row = checkpointer.resume(fresh, optimizer=fresh_optimizer)
    assert row is not None and row.val_loss is None
    assert torch.equal(torch.rand(3), expected)
    for name, tensor in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh_optimizer.param_groups[0]["lr"] == 0.1
    assert torch.equal(
        fresh_optimizer.state_dict()["state"][0]["momentum_buffer"],
        read_training_state(row)["optimizer"]["state"][0]["momentum_buffer"],
    )


def test_a_fresh_run_resumes_nothing(catalog: Catalog) -> None:
    checkpointer = Checkpointer(catalog, columns={"run": "new"})
    assert checkpointer.resume(model()) is None
    assert checkpointer.resume(model(), row="best") is None
    with pytest.raises(
        RowNotFoundError, match="no row '01ARZ3NDEKTSV4RRFFQ69G5FAV' in the catalog"
    ):
        checkpointer.resume(model(), row="01ARZ3NDEKTSV4RRFFQ69G5FAV")


def test_an_unpartitioned_catalog_is_one_run(tmp_path: Path) -> None:
    catalog = Catalog.create(tmp_path / "one", CheckpointV1)
    checkpointer = Checkpointer(catalog, columns={"run": "x"})
    assert checkpointer.aliases == {"best": "best", "last": "last"}
    ids = save_losses(checkpointer, model(), [0.3, 0.1])
    ids.append(Checkpointer(catalog).save(model(), run="y", epoch=0, train_loss=2.0))
    last = Checkpointer(catalog).resume(model())  # every row is this run's
    assert last is not None and last.row_id == ids[2]
    best = Checkpointer(catalog).resume(model(), row="best")
    assert best is not None and best.row_id == ids[1]


def test_what_cannot_work_is_refused(catalog: Catalog, tmp_path: Path) -> None:
    plain = Catalog.create(tmp_path / "plain", ModelV1)
    with pytest.raises(CatalogError) as info:
        Checkpointer(plain)
    assert str(info.value) == (
        f"{plain.root} holds modelrows.model@1 rows, which hold no training state; create the "
        "catalog with a row class that extends modelrows.TrainingStateV1"
    )
    with pytest.raises(
        CatalogError,
        match=r"^cannot monitor 'accuracy': not a metric column of test\.training\.checkpoint@1",
    ):
        Checkpointer(catalog, monitor="accuracy")
    with pytest.raises(CatalogError, match="mode is 'min' or 'max', not 'lowest'"):
        Checkpointer(catalog, mode="lowest")  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="keep_top_k is a whole number >= 0 or None, not -1"):
        Checkpointer(catalog, keep_top_k=-1)
    with pytest.raises(CatalogError) as info:
        Checkpointer(catalog).resume(model())
    assert str(info.value) == (
        "cannot resume its run's 'last' checkpoint: the checkpointer does not know which run it "
        "keeps yet; name it "
        "with Checkpointer(catalog, columns={'run': ...}), or save first"
    )
    checkpointer = Checkpointer(catalog, columns={"run": "a"})
    with pytest.raises(
        CatalogError, match=r"writes run='a' into every row; save\(\) was given run='b'"
    ):
        checkpointer.save(model(), run="b", epoch=0, train_loss=1.0)
    with pytest.raises(CatalogError, match="save\\(\\) fills the 'weights' column itself"):
        checkpointer.save(model(), weights=None, epoch=0, train_loss=1.0)
    learner = Checkpointer(catalog)
    learner.save(model(), run="c", epoch=0, train_loss=1.0)
    with pytest.raises(
        CatalogError, match=r"keeps the rows of \{'run': 'c'\}; save\(\) was given \{'run': 'd'\}"
    ):
        learner.save(model(), run="d", epoch=0, train_loss=1.0)


if __name__ == "__main__":
    for spec in sys.argv[2:]:
        run, epochs = spec.split(":")
        train(Path(sys.argv[1]), run, int(epochs))
