"""Exact resume, proven: N steps straight equal K steps, then N-K steps in a fresh process that
starts from nothing but a row file, bit for bit (weights, optimizer state, losses).

The run has everything that makes resuming hard: dropout (the global torch RNG), BatchNorm
(running statistics), a DataLoader shuffling with its own generator, noise drawn from numpy's and
python's global RNGs, an LR scheduler, and for AdamW an AMP grad scaler whose scale grows. The
checkpoint falls in the middle of an epoch.

This file is also the worker: ``python test_training_resume.py first|resume DIR``.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from modelrows import (
    TrainingStateV1,
    fetch_weights,
    load_weights,
    read_model_row,
    read_training_state,
    restore_training_state,
    training_state,
    write_model_row,
)

TOTAL_STEPS = 30
STOP_AT = 17  # mid-epoch: 7 batches an epoch
BATCH = 8


class ResumeRowV1(TrainingStateV1, schema="test.training.resume", version=1):
    config: str
    step: int
    losses: list[float]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    return TensorDataset(torch.randn(60, 8, generator=g), torch.randint(0, 3, (60,), generator=g))


def build(config: str, model: Net) -> tuple[torch.optim.Optimizer, Any, Any]:
    head = list(model.body[4].parameters())
    rest = [p for p in model.parameters() if all(p is not h for h in head)]
    scaler = None
    if config == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            [{"params": rest}, {"params": head, "lr": 0.05, "momentum": 0.5}],
            lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
        )  # fmt: skip
        scheduler: Any = lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    elif config == "adam":
        optimizer = torch.optim.Adam(
            [{"params": rest}, {"params": head, "betas": (0.8, 0.99)}], lr=1e-2
        )
        scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=TOTAL_STEPS)
    elif config == "adamw":
        optimizer = torch.optim.AdamW(rest + head, lr=1e-2, weight_decay=0.05, amsgrad=True)
        scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL_STEPS)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
    else:
        raise ValueError(config)
    return optimizer, scheduler, scaler


def train(config: str, *, stop: int, resume_from: Path | None) -> ResumeRowV1:
    """Train from scratch (or from the row at ``resume_from``) until step ``stop``; the row of
    the state there, with the losses of the steps this call ran."""
    seed = 0 if resume_from is None else 999  # a resumed run owes nothing to its seeds
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = Net()
    optimizer, scheduler, scaler = build(config, model)
    loader_generator = torch.Generator().manual_seed(7 + seed)
    step = 0
    if resume_from is not None:
        row = read_model_row(resume_from)
        assert isinstance(row, ResumeRowV1)
        load_weights(model, row.weights)
        restore_training_state(
            row, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            generators={"loader_at_epoch_start": loader_generator},
        )  # fmt: skip
        step = row.step
    loader = DataLoader(
        dataset(), batch_size=BATCH, shuffle=True, drop_last=True, generator=loader_generator
    )
    per_epoch = len(loader)
    losses: list[float] = []
    model.train()
    while step < stop:
        # what the loader's generator is before this epoch draws its order: resuming in the
        # middle of the epoch draws the same order again and skips the batches already done
        at_epoch_start = torch.Generator()
        at_epoch_start.set_state(loader_generator.get_state())
        for i, (x, y) in enumerate(loader):
            if i < step % per_epoch:
                continue
            noise = torch.from_numpy(np.random.normal(0.0, 0.05, x.shape).astype(np.float32))
            x = x + noise * random.random()
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if step == stop:
                break
    return ResumeRowV1(
        weights=fetch_weights(model),
        config=config,
        step=step,
        losses=losses,
        **training_state(
            optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            generators={"loader_at_epoch_start": at_epoch_start},
        ),
    )  # fmt: skip


CONFIGS = ("sgd", "adam", "adamw")


def worker(mode: str, directory: Path) -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for config in CONFIGS:
        out = directory / config
        if mode == "first":  # the uninterrupted run, then the run that stops at STOP_AT
            out.mkdir()
            straight = train(config, stop=TOTAL_STEPS, resume_from=None)
            write_model_row(out / "straight.arrow", straight)
            write_model_row(out / "checkpoint.arrow", train(config, stop=STOP_AT, resume_from=None))
        elif mode == "resume":
            row = train(config, stop=TOTAL_STEPS, resume_from=out / "checkpoint.arrow")
            write_model_row(out / "resumed.arrow", row)
        else:
            raise ValueError(mode)


def run_worker(mode: str, directory: Path) -> None:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, mode, str(directory)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every configuration trained straight and to the checkpoint in one process, then resumed
    in another, fresh process whose only input is each configuration's checkpoint.arrow."""
    directory = tmp_path_factory.mktemp("runs")
    run_worker("first", directory)
    run_worker("resume", directory)
    return directory


def assert_same(a: Any, b: Any, path: str) -> None:
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("config", CONFIGS)
def test_resuming_in_a_fresh_process_matches_an_uninterrupted_run_bit_for_bit(
    runs: Path, config: str
) -> None:
    tmp_path = runs / config
    straight = read_model_row(tmp_path / "straight.arrow")
    checkpoint = read_model_row(tmp_path / "checkpoint.arrow")
    resumed = read_model_row(tmp_path / "resumed.arrow")
    assert isinstance(straight, ResumeRowV1) and isinstance(checkpoint, ResumeRowV1)
    assert isinstance(resumed, ResumeRowV1)
    assert (checkpoint.step, resumed.step) == (STOP_AT, TOTAL_STEPS)

    assert len(straight.losses) == TOTAL_STEPS
    assert checkpoint.losses + resumed.losses == straight.losses  # floats, compared exactly
    assert list(straight.weights) == list(resumed.weights)
    for name in straight.weights:
        assert torch.equal(straight.weights[name], resumed.weights[name]), name
    assert straight.weights == resumed.weights  # the same bytes
    # the whole training state: optimizer, scheduler, scaler, loader generator, global RNGs
    assert_same(read_training_state(resumed), read_training_state(straight), "state")
    assert resumed.training_tensors == straight.training_tensors

    # the run is not trivially reproducible: the checkpoint's state differs from a fresh start's
    assert checkpoint.weights != straight.weights
    state = json.loads(straight.training_state)
    assert (
        state["optimizer"]["state"]["param_groups"][0]["lr"]
        != (json.loads(checkpoint.training_state)["optimizer"]["state"]["param_groups"][0]["lr"])
    )
    if config == "adamw":
        assert state["scaler"]["state"]["scale"] > 2.0**8  # the scale grew: its state matters


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
