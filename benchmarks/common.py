"""Shared pieces of the benchmark suite: models, row classes, timing and /proc readings."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from modelrows import ModelV1

MB = 1_000_000


class BenchRowV1(ModelV1, schema="bench.model", version=1):
    """The catalog row of the benchmarks: a training run's checkpoint with its metrics."""

    run: str
    epoch: int | None = None
    accuracy: float | None = None


def conv_block(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))


def build_model(
    target_bytes: int, dtype: torch.dtype = torch.float32, *, seed: int = 0
) -> nn.Module:
    """A conv net with BatchNorm (many small tensors, some large) of about ``target_bytes`` in fp32.

    Blocks of Conv2d(512, 512, 3) + BatchNorm2d(512) (9.4 MB each in fp32) and a linear head;
    ``dtype`` converts parameters and floating buffers (bf16 halves the bytes).
    """
    torch.manual_seed(seed)
    width = 512 if target_bytes >= 9 * MB else 64
    block_bytes = (width * width * 9 + 4 * width) * 4 + 8
    blocks = max(1, round(target_bytes / block_bytes))
    model = nn.Sequential(
        *[conv_block(width) for _ in range(blocks)],
        nn.Flatten(),
        nn.Linear(width, 1000),
    )
    with torch.no_grad():  # trained-looking BatchNorm statistics, not the defaults
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1000)
    return model.to(dtype)


def state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def memcpy_into(model: nn.Module, source: dict[str, torch.Tensor]) -> Callable[[], None]:
    """The memcpy limit: copy an in-memory state dict into the model's tensors with copy_."""
    targets = [(t, source[k]) for k, t in model.state_dict().items()]

    def run() -> None:
        with torch.no_grad():
            for dst, src in targets:
                dst.copy_(src)

    return run


@dataclass
class Contender:
    """One thing to time: ``run`` is timed, ``before``/``after`` are not."""

    name: str
    run: Callable[[], object]
    after: Callable[[], object] | None = None
    before: Callable[[], object] | None = None
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def prefault(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it again.

    On a VM whose kernel hands free memory back to the hypervisor (free page reporting, ballooning),
    touching such memory again costs the host's page faults: about 0.35 GB/s on the machine of
    docs/benchmarks.md, ten times a normal first touch. Which contender meets such memory would
    depend on who ran before it; touching enough memory just before each timed run gives every
    contender host-backed free memory to allocate from.
    """
    if nbytes > 0:
        block = np.ones(nbytes, dtype=np.uint8)
        del block


def race(
    contenders: list[Contender],
    *,
    reps: int,
    warmup: int = 1,
    prefault_bytes: int = 0,
    settle: bool = False,
) -> None:
    """Time every contender ``reps`` times, round-robin, so drift hits them all alike; each round
    starts with the next contender, so each runs after every other one equally often (what ran
    just before a contender, e.g. a 400 MB copy through the caches, shifts its time).

    ``prefault_bytes``: memory touched and freed (untimed) before each timed run; see prefault.
    ``settle``: flush the kernel's dirty pages (``os.sync()``, untimed) before each timed run, so
    no writer is throttled by the writeback of the file the one before it wrote.
    """
    for rep in range(warmup + reps):
        shift = rep % len(contenders)  # each round starts one further on: no contender always
        for c in contenders[shift:] + contenders[:shift]:  # runs right after the same other one
            if c.before is not None:
                c.before()
            if settle:
                os.sync()
            prefault(prefault_bytes)
            gc.collect()
            t0 = time.perf_counter()
            c.run()
            elapsed = time.perf_counter() - t0
            if c.after is not None:
                c.after()
            if rep >= warmup:
                c.times.append(elapsed)


def paired_ratio(numerator: Contender, denominator: Contender) -> float:
    """Median over rounds of numerator time / denominator time (robust to machine drift)."""
    return statistics.median(
        a / b for a, b in zip(numerator.times, denominator.times, strict=True) if b > 0
    )


def unlink(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The kB figures of /proc/<pid>/status (VmHWM, VmRSS, RssAnon, RssFile ...) in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def proc_io() -> dict[str, int]:
    """This process's /proc/self/io counters (rchar: bytes read by read-like syscalls)."""
    with open("/proc/self/io") as f:
        return {k: int(v) for k, _, v in (line.partition(":") for line in f)}
