"""Training state without pickle: every optimizer, scheduler, scaler and RNG round-trips exactly
through a row file; what is not data is refused by name; a malformed state is refused on read."""

from __future__ import annotations

import collections
import doctest
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.optim import lr_scheduler as sched

import modelrows
from modelrows import (
    ModelRowsError,
    RowValidationError,
    TrainingStateError,
    TrainingStateV1,
    fetch_weights,
    read_model_row,
    read_training_state,
    restore_training_state,
    training_state,
    write_model_row,
)
from modelrows import _training as training_module


class StateRowV1(TrainingStateV1, schema="test.training.state", version=1):
    step: int = 0


def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Equal values of equal types, tensors bit for bit, dict keys in the same order."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
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


def through_file(tmp_path: Path, **state: Any) -> StateRowV1:
    """A row holding ``training_state(**state)``, written to a file and read back."""
    row = StateRowV1(weights=fetch_weights(nn.Linear(1, 1)), **training_state(**state))
    path = tmp_path / "state.model.arrow"
    write_model_row(path, row)
    read = read_model_row(path)
    assert isinstance(read, StateRowV1)
    return read


def model_with_groups() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


def groups(model: nn.Module) -> list[dict[str, Any]]:
    """Two parameter groups with their own settings."""
    return [
        {"params": list(model[0].parameters()) + list(model[1].parameters()), "lr": 0.02},
        {"params": list(model[2].parameters())},
    ]


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for i in range(steps):
        x = torch.randn(8, 4)

        def closure(x: torch.Tensor = x, i: int = i) -> torch.Tensor:
            optimizer.zero_grad()
            loss = model(x).pow(2).mean() + i
            loss.backward()
            return loss

        optimizer.step(closure)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "SGD": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "Adam": lambda g: torch.optim.Adam(g, lr=1e-3, betas=(0.8, 0.99), amsgrad=True),
    "AdamW": lambda g: torch.optim.AdamW(g, lr=1e-3, weight_decay=0.05),
    "Adagrad": lambda g: torch.optim.Adagrad(g, lr=0.1, lr_decay=0.01),
    "Adadelta": lambda g: torch.optim.Adadelta(g),
    "Adamax": lambda g: torch.optim.Adamax(g),
    "NAdam": lambda g: torch.optim.NAdam(g, decoupled_weight_decay=True, weight_decay=0.01),
    "RAdam": lambda g: torch.optim.RAdam(g),
    "RMSprop": lambda g: torch.optim.RMSprop(g, momentum=0.5, centered=True),
    "Rprop": lambda g: torch.optim.Rprop(g),
    "ASGD": lambda g: torch.optim.ASGD(g),
    "LBFGS": lambda g: torch.optim.LBFGS(  # one group only
        [p for group in g for p in group["params"]], lr=0.1, history_size=3, max_iter=2
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_round_trips_exactly_with_per_group_settings(
    tmp_path: Path, name: str
) -> None:
    model = model_with_groups()
    optimizer = OPTIMIZERS[name](groups(model))
    train_steps(model, optimizer)
    row = through_file(tmp_path, optimizer=optimizer)
    assert_same(read_training_state(row)["optimizer"], optimizer.state_dict())

    # a fresh optimizer built the same way continues exactly as the original does
    fresh_model = model_with_groups()
    fresh_model.load_state_dict(model.state_dict())
    fresh = OPTIMIZERS[name](groups(fresh_model))
    fresh.param_groups[0]["lr"] = 99.0  # restored from the row, not kept
    restore_training_state(row, optimizer=fresh)
    assert_same(fresh.state_dict(), optimizer.state_dict())
    torch.manual_seed(3)
    train_steps(model, optimizer)
    torch.manual_seed(3)
    train_steps(fresh_model, fresh)
    assert_same(fresh.state_dict(), optimizer.state_dict())
    for a, b in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_tensors_are_named_columns_and_settings_are_queryable_json(
    tmp_path: Path,
) -> None:
    model = model_with_groups()
    optimizer = torch.optim.Adam(groups(model), lr=1e-3)
    train_steps(model, optimizer, 1)
    row = through_file(tmp_path, optimizer=optimizer, rng=False)
    assert list(row.training_tensors) == [
        f"optimizer.state.{i}.{key}" for i in range(6) for key in ("step", "exp_avg", "exp_avg_sq")
    ]
    doc = json.loads(row.training_state, parse_constant=pytest.fail)  # strict JSON
    assert doc["format"] == "modelrows.training-state" and doc["version"] == 1
    assert doc["optimizer"]["class"] == "Adam"
    first, second = doc["optimizer"]["state"]["param_groups"]
    assert (first["lr"], second["lr"]) == (0.02, 1e-3)
    assert first["betas"] == {"$tuple": [0.9, 0.999]}
    assert doc["optimizer"]["state"]["state"]["$dict"][0][0] == 0  # int keys stay ints
    # restored tensors are the optimizer's own, not views of the (read-only) mapped file
    fresh = torch.optim.Adam(groups(model_with_groups()), lr=1e-3)
    restore_training_state(row, optimizer=fresh)
    fresh.state_dict()["state"][0]["exp_avg"].add_(1.0)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: sched.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, milestones=[2, 4, 4]),  # a Counter
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.5, total_steps=20),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=3),
    "CyclicLR": lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=2),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o, patience=1),  # best = inf
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda epoch: 0.9**epoch),  # the lambda is code
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=8),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, start_factor=0.1, total_iters=2), sched.ExponentialLR(o, 0.9)], [2]
    ),
}


def step_scheduler(s: Any, steps: int) -> list[float]:
    lrs = []
    for i in range(steps):
        s.optimizer.step()
        if isinstance(s, sched.ReduceLROnPlateau):
            s.step(1.0 / (1 + i % 2))
        else:
            s.step()
        lrs.append(s.optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_round_trips_exactly(tmp_path: Path, name: str) -> None:
    def build() -> tuple[torch.optim.Optimizer, Any]:
        optimizer = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
        return optimizer, SCHEDULERS[name](optimizer)

    optimizer, scheduler = build()
    step_scheduler(scheduler, 5)
    row = through_file(tmp_path, optimizer=optimizer, scheduler=scheduler)
    assert_same(read_training_state(row)["scheduler"], scheduler.state_dict())
    fresh_optimizer, fresh = build()
    restore_training_state(row, optimizer=fresh_optimizer, scheduler=fresh)
    assert_same(fresh.state_dict(), scheduler.state_dict())
    assert step_scheduler(fresh, 6) == step_scheduler(scheduler, 6)


def test_grad_scaler_round_trips(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        scaler.scale(model(torch.ones(1, 2)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    row = through_file(tmp_path, scaler=scaler)
    assert read_training_state(row)["scaler"] == scaler.state_dict()
    assert scaler.state_dict()["_growth_tracker"] == 1 and scaler.get_scale() == 2.0**11
    fresh = torch.amp.GradScaler("cpu")
    restore_training_state(row, scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict()


def draws() -> tuple[Any, ...]:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.normal(size=3).tolist(),
        np.random.standard_normal(),
        torch.rand(3).tolist(),
    )


def test_global_rngs_are_restored(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian (gauss_next) in the state
    np.random.standard_normal()  # and one in numpy's (has_gauss)
    row = through_file(tmp_path)
    expected = draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_training_state(row)
    assert draws() == expected
    restore_training_state(row, rng=False)  # leaves the RNGs alone
    assert draws() != expected
    state = read_training_state(row)["rng"]
    assert set(state) == {"python", "numpy", "torch"} | (
        {"cuda"} if torch.cuda.is_available() else set()
    )
    assert state["torch"].dtype == torch.uint8


def test_a_row_saved_without_rng_leaves_the_rngs_alone(tmp_path: Path) -> None:
    row = through_file(tmp_path, rng=False)
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    restore_training_state(row)
    assert torch.equal(torch.rand(2), expected)
    assert read_training_state(row)["rng"] is None


def test_generators_the_loop_owns_are_restored(tmp_path: Path) -> None:
    gens: dict[str, Any] = {
        "loader": torch.Generator().manual_seed(4),
        "numpy": np.random.default_rng(5),  # PCG64: 128-bit integers in its state
        "legacy": np.random.RandomState(6),
        "python": random.Random(7),
        "mt": np.random.Generator(np.random.MT19937(8)),
    }

    def draw(g: dict[str, Any]) -> list[Any]:
        return [
            torch.randperm(10, generator=g["loader"]).tolist(),
            g["numpy"].integers(0, 100, 5).tolist(),
            g["legacy"].randint(0, 100, 5).tolist(),
            g["python"].random(),
            g["mt"].random(),
        ]

    draw(gens)
    row = through_file(tmp_path, generators=gens, rng=False)
    expected = draw(gens)
    fresh: dict[str, Any] = {
        "loader": torch.Generator(),
        "numpy": np.random.default_rng(),
        "legacy": np.random.RandomState(),
        "python": random.Random(),
        "mt": np.random.Generator(np.random.MT19937()),
    }
    restore_training_state(row, generators=fresh)
    assert draw(fresh) == expected
    doc = json.loads(row.training_state)
    assert set(doc["generators"]["numpy"]["state"]["state"]["state"]) == {"$int"}  # > 2**53
    assert doc["generators"]["mt"]["state"]["state"]["key"]["dtype"] == "<u4"


# -- refusals: what is not data, and states that do not fit -------------------------------------------


class Halving:
    """A callable object as LambdaLR's lr_lambda: torch stores its __dict__."""

    def __init__(self) -> None:
        self.rate = 0.5
        self.schedule = lambda epoch: self.rate**epoch

    def __call__(self, epoch: int) -> float:
        return float(self.schedule(epoch))


class Warmup(sched.LRScheduler):
    """A scheduler that keeps a function in its state (LRScheduler.state_dict is its __dict__)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.ramp = lambda epoch: min(1.0, (epoch + 1) / 3)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [base * self.ramp(self.last_epoch) for base in self.base_lrs]


def test_functions_and_objects_in_a_state_are_refused_by_name() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(TrainingStateError) as info:
        training_state(scheduler=sched.LambdaLR(optimizer, Halving()))
    assert str(info.value) == (
        "cannot store the training state: scheduler.lr_lambdas[0].schedule is a function or "
        "callable (Halving.__init__.<locals>.<lambda>); functions are code, and modelrows stores "
        "state as data, never code or pickles; rebuild it in your code and leave it out of the "
        "state (torch's own schedulers already leave plain functions such as LambdaLR's lambdas out)"
    )
    with pytest.raises(
        TrainingStateError, match=r"^cannot store the training state: scheduler\.ramp is a function"
    ):
        training_state(scheduler=Warmup(optimizer))
    optimizer.param_groups[0]["owner"] = Path("/tmp")
    with pytest.raises(TrainingStateError) as info:
        training_state(optimizer=optimizer)
    assert str(info.value).startswith(
        "cannot store the training state: optimizer.param_groups[0].owner is "
        f"{type(Path('/tmp')).__module__}.{type(Path('/tmp')).__qualname__}; only tensors, numpy "
        "arrays and scalars, numbers, strings, bytes, bools, None, and lists, tuples and dicts "
        "of them are stored"
    )
    with pytest.raises(TrainingStateError, match=r"generators\.g is a dict; generators are"):
        training_state(generators={"g": {}})  # type: ignore[dict-item]
    with pytest.raises(TrainingStateError, match="the scaler \\(object\\) has no state_dict"):
        training_state(scaler=object())
    assert issubclass(TrainingStateError, ModelRowsError) and issubclass(
        TrainingStateError, ValueError
    )


def test_values_json_has_no_word_for_round_trip(tmp_path: Path) -> None:
    class Odd:
        def __init__(self) -> None:
            self.values = {
                "floats": [math.inf, -math.inf, math.nan, -0.0, 0.1, 5e-324],
                "ints": [2**53, 2**53 + 1, -(2**70), True],
                "keys": {1: "int", (1, "a"): "tuple", None: "none", "$dollar": 1, 2.5: "float"},
                "counter": collections.Counter({3: 2}),
                "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
                "bytes": b"\x00\xff",
                "numpy": [np.float32(1.5), np.int16(-3), np.bool_(True)],
                "array": np.arange(6, dtype=">i4").reshape(2, 3),
                "empty": {"list": [], "tuple": (), "dict": {}},
            }

        def state_dict(self) -> dict[str, Any]:
            return self.values

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.values = state

    odd = Odd()
    row = through_file(tmp_path, scheduler=odd, rng=False)
    restored = Odd()
    restore_training_state(row, scheduler=restored)
    expected = dict(odd.values)
    expected["array"] = expected["array"].astype(">i4")
    assert_same(restored.values, expected)
    assert restored.values["array"].dtype.str == ">i4"


def test_restoring_into_what_does_not_fit_is_refused(tmp_path: Path) -> None:
    model = model_with_groups()
    adam = torch.optim.Adam(groups(model))
    train_steps(model, adam, 1)
    row = through_file(tmp_path, optimizer=adam, generators={"loader": torch.Generator()})
    with pytest.raises(TrainingStateError) as info:
        restore_training_state(row, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert str(info.value) == (
        "row StateRowV1 holds the state of a Adam optimizer; cannot restore it into a SGD. "
        "Build the same optimizer class as the saved run"
    )
    with pytest.raises(
        TrainingStateError, match="does not fit the given Adam: .*Build it over the same parameters"
    ):
        restore_training_state(row, optimizer=torch.optim.Adam(model.parameters()))
    with pytest.raises(TrainingStateError, match="holds no scheduler state; save it with"):
        restore_training_state(row, scheduler=sched.StepLR(adam, 1))
    with pytest.raises(
        TrainingStateError, match=r"holds no generator 'data' \(it holds: 'loader'\)"
    ):
        restore_training_state(row, generators={"data": torch.Generator()})
    with pytest.raises(
        TrainingStateError, match="holds the state of a torch.Generator, not of the given Random"
    ):
        restore_training_state(row, generators={"loader": random.Random()})
    np_row = through_file(tmp_path, generators={"g": np.random.default_rng(1)}, rng=False)
    with pytest.raises(
        TrainingStateError,
        match="holds a PCG64 bit generator's state; the given numpy Generator draws from MT19937",
    ):
        restore_training_state(np_row, generators={"g": np.random.Generator(np.random.MT19937())})
    # a refusal leaves the global RNGs alone
    torch.manual_seed(1)
    with pytest.raises(TrainingStateError):
        restore_training_state(row, scheduler=sched.StepLR(adam, 1))
    assert torch.equal(torch.rand(2), torch.manual_seed(1) and torch.rand(2))
    plain = modelrows.ModelV1(weights=fetch_weights(nn.Linear(1, 1)))
    with pytest.raises(TrainingStateError, match="holds no training state"):
        restore_training_state(plain)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(rng={"torch": {"$tensor": "missing"}}),
            "rng: expected an object with numpy, python, torch, got ['torch']",
        ),
        (
            lambda d: d.update(scaler={"class": "X", "state": {"$tensor": "x"}}),
            "training_state names tensors that training_tensors lacks: ['x']",
        ),
        (
            lambda d: d.update(generators={"g": {"kind": "torch.Generator"}}),
            "generators.g: expected an object with kind, state, got ['kind']",
        ),
        (
            lambda d: d.update(scaler={"class": "X", "state": {"$pickle": "gASV"}}),
            "scaler.state: unknown tagged value with keys ['$pickle']",
        ),
        (
            lambda d: d.update(scaler={"class": "X", "state": {"$float": "big"}}),
            "scaler.state: $float is 'nan', 'inf' or '-inf', not 'big'",
        ),
        (
            lambda d: d.update(version=2),
            "training_state has version 2; this modelrows reads version 1. Upgrade modelrows to read it.",
        ),
        (
            lambda d: d.update(format="other"),
            "training_state is not a 'modelrows.training-state' JSON document",
        ),
        (lambda d: d.update(surprise=1), "training_state has unknown sections ['surprise']"),
    ],
)
def test_a_malformed_state_is_refused_when_the_row_is_built_or_read(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    state = training_state(rng=False)
    doc = json.loads(state["training_state"])
    edit(doc)
    with pytest.raises(RowValidationError) as info:
        StateRowV1(
            weights=fetch_weights(nn.Linear(1, 1)),
            training_tensors=state["training_tensors"],
            training_state=json.dumps(doc),
        )
    assert str(info.value) == f"StateRowV1: check of modelrows.training@1 failed: {message}"


def test_non_json_tokens_are_refused() -> None:
    state = training_state(rng=False)
    text = state["training_state"].replace('"scaler":null', '"scaler":{"class":"X","state":NaN}')
    with pytest.raises(RowValidationError, match="NaN is not JSON"):
        StateRowV1(
            weights=fetch_weights(nn.Linear(1, 1)),
            training_tensors=state["training_tensors"],
            training_state=text,
        )


def test_the_snapshot_does_not_follow_later_training(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train = [torch.ones(1, 2)]
    for x in train:
        model(x).sum().backward()
        optimizer.step()
    state = training_state(optimizer=optimizer, rng=False)
    before = state["training_tensors"]["optimizer.state.0.momentum_buffer"].clone()
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert torch.equal(state["training_tensors"]["optimizer.state.0.momentum_buffer"], before)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(training_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0


def test_extra_state_is_stored_as_data_and_read_back() -> None:
    class AttributeDict(dict):  # type: ignore[type-arg]  # like Lightning's
        pass

    extra = {
        "epoch": 3,
        "loops": {"fit": {"progress": {"total": 12}}},
        "hyper_parameters": AttributeDict(lr=0.1, layers=(2, 3)),
        "kth_value": torch.tensor(0.25),
        "tensors": [torch.arange(3)],
    }
    state = training_state(rng=False, extra=extra)
    back = read_training_state(StateRowV1(weights=fetch_weights(nn.Linear(1, 1)), **state))["extra"]
    assert back["loops"] == extra["loops"] and back["epoch"] == 3
    assert type(back["hyper_parameters"]) is dict
    assert back["hyper_parameters"] == {"lr": 0.1, "layers": (2, 3)}
    assert torch.equal(back["kth_value"], extra["kth_value"])
    assert torch.equal(back["tensors"][0], torch.arange(3))
    assert read_training_state(StateRowV1(weights=fetch_weights(nn.Linear(1, 1)),
                                        **training_state(rng=False)))["extra"] is None  # fmt: skip
    with pytest.raises(TrainingStateError, match=r"extra\.hyper_parameters\.net is a function"):
        training_state(rng=False, extra={"hyper_parameters": {"net": lambda x: x}})
