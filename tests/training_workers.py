"""Bodies of the processes the retention and alias concurrency tests start (see workers.py for
the forkserver they come from and how they report)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
from multiprocessing.context import BaseContext
from typing import Any

import torch.nn as nn

from modelrows import Catalog, Checkpointer, TrainingStateV1
from modelrows._catalog import _store

RUN = "shared"


class StressCheckpointV1(TrainingStateV1, schema="reliability.checkpoint", version=1):
    run: str
    writer: int
    step: int
    val_loss: float | None = None


def context() -> BaseContext:
    """A forkserver context whose server has already imported modelrows and this module."""
    multiprocessing.set_forkserver_preload(["modelrows", "training_workers"])
    return multiprocessing.get_context("forkserver")


def report(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def loss(writer: int, step: int) -> float:
    """A distinct pseudo-random loss per (writer, step)."""
    return random.Random(writer * 1_000_003 + step).random() + writer * 1e-9 + step * 1e-12


def checkpointer(root: str, keep_top_k: int) -> Checkpointer:
    return Checkpointer(
        Catalog.open(root),
        monitor="val_loss",
        mode="min",
        keep_top_k=keep_top_k,
        keep_last=1,
        columns={"run": RUN},
    )


def saver(root: str, writer: int, saves: int, keep_top_k: int, out: str) -> None:
    """Save ``saves`` checkpoints into the shared run; report "<row id> <loss>" after each."""
    cp = checkpointer(root, keep_top_k)
    net = nn.Linear(2, 2)
    for step in range(saves):
        value = loss(writer, step)
        row_id = cp.save(net, writer=writer, step=step, val_loss=value)
        report(out, f"{row_id} {value!r}")


def alias_setter(root: str, writer: int, sets: int, rows: list[str], out: str) -> None:
    """Point alias "contested" to rows, last writer wins; report "<sequence> <row id>"."""
    catalog = Catalog.open(root)
    rng = random.Random(writer)
    for _ in range(sets):
        version = catalog.alias("contested", rng.choice(rows))
        report(out, f"{version.sequence} {version.row_id}")


def alias_swapper(root: str, writer: int, sets: int, rows: list[str], out: str) -> None:
    """Compare-and-set alias "cas" until ``sets`` of this writer's sets succeed; report
    "<sequence> <expected> <row id>" for each, and "conflict" for each one refused."""
    from modelrows._catalog._aliases import AliasConflict

    catalog = Catalog.open(root)
    rng = random.Random(1000 + writer)
    done = 0
    while done < sets:
        now = catalog.get("cas").row_id
        try:
            version = catalog.alias("cas", rng.choice(rows), expected=now)
        except AliasConflict:
            report(out, "conflict")
            continue
        report(out, f"{version.sequence} {now} {version.row_id}")
        done += 1


def dying_saver(root: str, seed: int, kill_at: int, keep_top_k: int, out: str) -> None:
    """Save checkpoints until the ``kill_at``-th store event, then SIGKILL this process.

    Events are the moments just before and just after each create-if-absent and delete the
    catalog makes; the event's name is reported first ("kill before put _aliases/...")."""
    events = [0]

    def event(when: str, what: str, key: str) -> None:
        events[0] += 1
        if events[0] == kill_at:
            report(out, f"kill {when} {what} {key}")
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name: str, what: str) -> None:
        real = getattr(_store.LocalStore, name)

        def wrapped(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
            event("before", what, key)
            result = real(self, key, *args, **kwargs)
            event("after", what, key)
            return result

        setattr(_store.LocalStore, name, wrapped)

    wrap("put_if_absent", "put")
    wrap("put_stream_if_absent", "put")
    wrap("delete", "delete")
    cp = checkpointer(root, keep_top_k)
    net = nn.Linear(2, 2)
    for step in range(1000):
        value = loss(seed, step)
        row_id = cp.save(net, writer=seed, step=step, val_loss=value)
        report(out, f"{row_id} {value!r}")
    report(out, "done")
