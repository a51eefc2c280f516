"""fetch_weights / load_weights: names, dtypes, ties, errors, and round trips through files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from modelrows import (
    ModelV1,
    Weights,
    WeightsError,
    WeightsMismatchError,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)
from modelrows._blob import DTYPE_NAMES


def roundtrip(model: nn.Module, tmp_path: Path) -> Weights:
    path = tmp_path / "m.model.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights(model)))
    return read_model_row(path, verify=True).weights  # type: ignore[attr-defined, no-any-return]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        raw_a, raw_b = (t.contiguous().view(-1).view(torch.uint8) for t in (sa[k], sb[k]))
        assert torch.equal(raw_a, raw_b), k


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_trained_batchnorm_model_gives_identical_outputs_after_roundtrip(tmp_path: Path) -> None:
    model = ConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(16, 1, 8, 8)).square().mean().backward()
        opt.step()
    assert int(model.bn.num_batches_tracked) == 5
    assert not torch.allclose(model.bn.running_mean, torch.zeros(4))
    w = roundtrip(model, tmp_path)
    assert list(w) == list(model.state_dict())
    fresh = ConvNet()
    load_weights(fresh, w)
    model.eval()
    fresh.eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), fresh(x))
    assert_same_state(model, fresh)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3), nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        ),
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4)),
        lambda: nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6)),
        lambda: nn.LSTM(4, 8, num_layers=2, bidirectional=True),
        lambda: nn.Sequential(),
    ],
    ids=["instancenorm", "groupnorm", "layernorm", "lstm", "no-weights"],
)
def test_layers_roundtrip_exactly(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = make()
    for p in model.parameters():
        nn.init.normal_(p)
    fresh = make()
    report = load_weights(fresh, roundtrip(model, tmp_path))
    assert report.complete
    assert_same_state(model, fresh)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight


def test_tied_parameters_are_stored_once_and_retied(tmp_path: Path) -> None:
    model = Tied()
    w = roundtrip(model, tmp_path)
    assert list(w) == ["embed.weight", "out.weight"]
    assert w.ties == {"out.weight": "embed.weight"}
    assert w["out.weight"] is w["embed.weight"]
    assert w.nbytes == 10 * 4 * 4  # once

    fresh = Tied()
    assert load_weights(fresh, w).retied == []  # already tied by its own code
    assert torch.equal(fresh.out.weight, model.embed.weight)

    untied = Tied()
    untied.out.weight = nn.Parameter(torch.zeros(10, 4))
    report = load_weights(untied, w)
    assert report.retied == [("out.weight", "embed.weight")]
    assert untied.out.weight is untied.embed.weight


def test_mixed_precision_scalars_and_non_contiguous(tmp_path: Path) -> None:
    model = nn.Module()
    model.a = nn.Linear(3, 3).to(torch.bfloat16)
    model.b = nn.Linear(3, 3).to(torch.float16)
    model.register_buffer("scale", torch.tensor(2.5))  # 0-d
    model.register_buffer("step", torch.tensor(7, dtype=torch.int64))
    model.register_buffer("t", torch.arange(12, dtype=torch.float32).reshape(3, 4).t())
    model.register_buffer("empty", torch.zeros(0, 3))
    model.register_buffer("scratch", torch.ones(2), persistent=False)
    w = roundtrip(model, tmp_path)
    assert "scratch" not in w
    assert w["a.weight"].dtype == torch.bfloat16 and w["b.bias"].dtype == torch.float16
    assert w["scale"].shape == () and w["scale"].item() == 2.5
    assert torch.equal(w["t"], model.t) and w["t"].shape == (4, 3)
    assert w["empty"].shape == (0, 3)
    for name, value in model.state_dict().items():
        assert torch.equal(w[name].view(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("dtype_name", sorted(DTYPE_NAMES))
def test_every_dtype_roundtrips_bit_exactly(dtype_name: str, tmp_path: Path) -> None:
    dtype = DTYPE_NAMES[dtype_name]
    raw = torch.randint(0, 256, (3, 5 * dtype.itemsize), dtype=torch.uint8)
    if dtype is torch.bool:
        raw = raw % 2
    tensor = raw.view(dtype)
    path = tmp_path / "d.model.arrow"
    write_model_row(path, ModelV1(weights=fetch_weights({"x": tensor})))
    back = read_model_row(path, verify=True).weights["x"]  # type: ignore[attr-defined]
    assert back.dtype == dtype and back.shape == tensor.shape
    assert torch.equal(back.view(torch.uint8), raw)


def test_load_checks_everything_first_and_leaves_the_model_unchanged() -> None:
    src = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = dict(fetch_weights(src))
    state["extra.weight"] = torch.zeros(1)
    del state["1.bias"]
    state["0.weight"] = torch.zeros(5, 4)
    state["1.weight"] = state["1.weight"].double()
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = snapshot(target)
    with pytest.raises(WeightsMismatchError) as info:
        load_weights(target, state)
    assert str(info.value) == (
        "cannot load weights into Sequential: 4 problems; the model was not changed\n"
        "  missing from the weights: 1.bias\n"
        "  unexpected in the weights: extra.weight\n"
        "  shape mismatch: 0.weight is (5, 4) in the weights, (3, 4) in the model\n"
        "  dtype mismatch: 1.weight is float64 in the weights, float32 in the model "
        "(pass cast=True to convert)\n"
        "Pass strict=False to load what matches, or prefix=... to load a sub-module."
    )
    assert info.value.missing == ["1.bias"] and info.value.unexpected == ["extra.weight"]
    assert info.value.mismatched == ["0.weight", "1.weight"]
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"

    report = load_weights(target, state, strict=False)
    assert report.loaded == ["0.bias"] and not report.complete
    assert torch.equal(target[0].bias, src[0].bias)
    assert torch.equal(target[0].weight, before["0.weight"])


def test_cast_is_explicit() -> None:
    src = nn.Linear(2, 2).double()
    dst = nn.Linear(2, 2)
    with pytest.raises(WeightsMismatchError, match="pass cast=True"):
        load_weights(dst, fetch_weights(src))
    load_weights(dst, fetch_weights(src), cast=True)
    assert dst.weight.dtype == torch.float32
    assert torch.allclose(dst.weight.double(), src.weight)


def test_prefix_loads_a_submodule_from_a_whole_model_row() -> None:
    whole = nn.Sequential()
    whole.backbone = nn.Linear(3, 3)
    whole.head = nn.Linear(3, 1)
    backbone = nn.Linear(3, 3)
    report = load_weights(backbone, fetch_weights(whole), prefix="backbone")
    assert report.loaded == ["weight", "bias"]
    assert torch.equal(backbone.weight, whole.backbone.weight)
    with pytest.raises(WeightsMismatchError, match=r"prefixes present: backbone\., head\."):
        load_weights(backbone, fetch_weights(whole), prefix="encoder")


def test_fetch_copies_so_training_does_not_change_the_snapshot() -> None:
    model = nn.Linear(2, 2)
    w = fetch_weights(model)
    before = w["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert torch.equal(w["weight"], before)
    with pytest.raises(AttributeError, match="immutable"):
        w.x = 1  # type: ignore[attr-defined]


def test_fetch_rejects_what_it_cannot_store() -> None:
    with pytest.raises(WeightsError, match="'x' is a list, not a torch.Tensor"):
        fetch_weights({"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(WeightsError, match="layout torch.sparse_coo"):
        fetch_weights({"s": torch.eye(2).to_sparse()})
    with pytest.raises(WeightsError, match="meta device"):
        fetch_weights({"m": torch.empty(2, device="meta")})
    with pytest.raises(WeightsError, match="expects a torch.nn.Module or a state_dict"):
        fetch_weights(3)  # type: ignore[arg-type]


def test_non_tensor_extra_state_is_ignored() -> None:
    class WithExtra(nn.Linear):
        def get_extra_state(self) -> object:
            return {"activation": "relu"}

        def set_extra_state(self, state: object) -> None:
            pass

    w = fetch_weights(WithExtra(2, 2))
    assert list(w) == ["weight", "bias"]
    assert load_weights(WithExtra(2, 2), w).complete


def test_weights_value_semantics() -> None:
    model = nn.Linear(3, 3)
    a, b = fetch_weights(model), fetch_weights(copy.deepcopy(model))
    assert a == b and hash(a) == hash(b) and a.fingerprint == b.fingerprint
    nan = {"x": torch.tensor([float("nan")])}
    assert fetch_weights(nan) == fetch_weights(nan)  # bitwise, so NaN equals itself
    with torch.no_grad():
        model.bias[0] += 1
    c = fetch_weights(model)
    assert c != a and c.fingerprint == a.fingerprint and c.checksum != a.checksum
    assert fetch_weights(nn.Linear(3, 4)).fingerprint != a.fingerprint


def test_tensors_are_aligned_views_of_the_mapped_file(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 7))
    w = roundtrip(model, tmp_path)
    data = (tmp_path / "m.model.arrow").read_bytes()
    base = w._storage.data_ptr()
    for name, t in w.items():
        assert t.data_ptr() % 64 == 0
        offset = t.data_ptr() - base  # the storage is the whole mapped file
        assert (
            data[offset : offset + t.nbytes] == t.contiguous().view(torch.uint8).numpy().tobytes()
        )
        assert torch.equal(t, model.state_dict()[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_model_roundtrip(tmp_path: Path) -> None:
    model = ConvNet().cuda()
    w = roundtrip(model, tmp_path)
    assert all(t.device.type == "cpu" for t in w.values())
    fresh = ConvNet().cuda()
    load_weights(fresh, w)
    assert all(p.device.type == "cuda" for p in fresh.parameters())
    assert_same_state(model, fresh)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_model_written_without_a_snapshot(tmp_path: Path) -> None:
    model = ConvNet().cuda().to(torch.bfloat16)
    live = fetch_weights(model, copy=False)
    assert all(t.device.type == "cuda" for t in live.values())  # views of the model, no copy
    path = tmp_path / "gpu.model.arrow"
    write_model_row(path, ModelV1(weights=live), fsync=False)  # each tensor streamed to the host
    back = read_model_row(path, verify=True).weights
    assert back == fetch_weights(model)


class _TaggedParameter(nn.Parameter):
    """A Parameter subclass: loads into it go through torch's copy_, never raw bytes."""


class Mixed(nn.Module):
    """Every kind of target a load copies into: large and small parameters (plain copy_ and raw
    byte copies), bf16, an int64 buffer, a non-contiguous buffer and a Parameter subclass."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(600, 600)  # 1.4 MB weight: copy_
        self.bn = nn.BatchNorm1d(600)  # small tensors: raw byte copies
        self.half = nn.Linear(8, 8).to(torch.bfloat16)
        self.register_buffer("transposed", torch.zeros(3, 4).t())
        self.tagged = _TaggedParameter(torch.zeros(5))


def randomized(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.copy_((torch.rand(t.shape) * 100).to(t.dtype))
    return model


@pytest.mark.parametrize("source", ["file", "memory"])
def test_every_kind_of_target_loads_as_load_state_dict_would(tmp_path: Path, source: str) -> None:
    original = randomized(Mixed(), 1)
    weights = roundtrip(original, tmp_path) if source == "file" else fetch_weights(original)
    ours, reference = randomized(Mixed(), 2), randomized(Mixed(), 2)
    load_weights(ours, weights)
    reference.load_state_dict(weights.state_dict())
    assert_same_state(ours, reference)
    assert_same_state(ours, original)
    assert not ours.transposed.is_contiguous() and type(ours.tagged) is _TaggedParameter


def test_a_load_with_cast_and_prefix_from_a_file(tmp_path: Path) -> None:
    whole = nn.Sequential(randomized(Mixed(), 3), nn.Linear(2, 2))
    weights = roundtrip(whole, tmp_path)
    target = randomized(Mixed(), 4).to(torch.float64)
    load_weights(target, weights, prefix="0.", cast=True)
    for name, value in target.state_dict().items():
        assert torch.equal(value, whole[0].state_dict()[name].to(torch.float64)), name


def test_autograd_sees_a_load_as_an_in_place_change(tmp_path: Path) -> None:
    model = randomized(nn.BatchNorm1d(4), 5)  # small tensors: copied as raw bytes
    weights = roundtrip(randomized(nn.BatchNorm1d(4), 6), tmp_path)
    loss = (model.weight**2).sum()  # saves the weight for the backward pass
    load_weights(model, weights)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
