"""Reading LegolasFlux.jl rows (modelrows._legolasflux) and the Julia -> PyTorch mapping of
docs/interop.md, against a file LegolasFlux.jl wrote (tests/fixtures/legolasflux)."""

import math
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
import torch.nn as nn

from modelrows import (
    CorruptRowError,
    LegolasFluxModelV1,
    ModelV1,
    Row,
    SchemaError,
    SchemaMismatchError,
    Weights,
    WeightsError,
    fetch_weights,
    load_weights,
    read_model_row,
    write_model_row,
)
from modelrows import _blob as blob_module
from modelrows import _schema as schema
from modelrows._legolasflux import FlatArrayWeights, FlatArrayWeightsType

FIXTURE = Path(__file__).parent / "fixtures" / "legolasflux" / "test.digits-model.arrow"
INTEROP_DOC = Path(__file__).parent.parent / "docs" / "interop.md"
JULIA_SHAPES = [
    (3, 3, 1, 32), (32,), (32,), (32,), (32,), (32,),
    (3, 3, 32, 16), (16,), (3, 3, 16, 10), (10,), (10, 90), (10,), (10, 10), (10,),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_other_digits_model() -> None:
    """Tests here declare their own ``digits.model@1`` (extending legolas-flux.model@1); another
    test module declares one extending modelrows.model@1, and the registry rightly refuses a
    second, different declaration of one identifier. Forget it here; conftest restores it."""
    schema._registry.pop("digits.model@1", None)


def raw_flat_arrays() -> list[tuple[np.ndarray, list[int]]]:
    """(vec, size) of every FlatArray in the fixture, read with pyarrow alone."""
    table = ipc.open_file(pa.memory_map(str(FIXTURE))).read_all()
    flats = table.column("weights")[0].as_py()["weights"]
    return [(np.array(f["vec"], dtype=np.float32), f["size"]) for f in flats]


def julia_index(vec: np.ndarray, size: list[int]) -> np.ndarray:
    """Julia's A as a NumPy array: A[i, j, k, l] = vec[i + s0*(j + s1*(k + s2*l))]."""
    idx = np.indices(size)
    flat = np.zeros(size, dtype=np.int64)
    for axis in reversed(range(len(size))):
        flat = flat * size[axis] + idx[axis]
    return vec[flat]


def doc_namespace() -> dict[str, Any]:
    """Run the code blocks of docs/interop.md marked ``<!-- tested -->``; return their names."""
    blocks = re.findall(r"<!-- tested -->\n```python\n(.*?)```", INTEROP_DOC.read_text(), re.S)
    assert len(blocks) == 3, "docs/interop.md lost a tested code block"
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(blocks), str(INTEROP_DOC), "exec"), namespace)
    return namespace


def write_flux_file(
    path: Path,
    arrays: list[tuple[list[Any], list[int]]] | None,
    *,
    element: pa.DataType | None = None,
    qualified: str = "legolas-flux.model@1",
) -> Path:
    """A LegolasFlux.jl-shaped row file, written with pyarrow (as Arrow.jl lays it out)."""
    flat = pa.struct([("vec", pa.list_(element or pa.float32())), ("size", pa.list_(pa.int64()))])
    weights_type = pa.struct([("weights", pa.list_(flat))])
    value = None if arrays is None else {"weights": [{"vec": v, "size": s} for v, s in arrays]}
    table = pa.table(
        {
            "weights": pa.array([value], type=weights_type),
            "architecture_version": pa.array([3], type=pa.int64()),
        }
    ).replace_schema_metadata({"legolas_schema_qualified": qualified})
    with ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)
    return path


# -- reading the fixture ---------------------------------------------------------------------------


def test_fixture_weights_are_fourteen_tensors_named_by_position_with_julia_shapes() -> None:
    row = read_model_row(FIXTURE)
    assert type(row) is LegolasFluxModelV1
    assert row.weights is not None
    assert list(row.weights) == [str(k) for k in range(14)]
    assert [tuple(t.shape) for t in row.weights.values()] == JULIA_SHAPES
    assert all(t.dtype == torch.float32 for t in row.weights.values())


def test_fixture_elements_follow_julia_column_major_indexing() -> None:
    weights = read_model_row(FIXTURE).weights
    assert weights is not None
    for (vec, size), (name, tensor) in zip(raw_flat_arrays(), weights.items(), strict=True):
        assert tuple(size) == tuple(tensor.shape), name
        assert np.array_equal(tensor.numpy(), julia_index(vec, size)), name
    # one element spelled out: A[2, 3, 1, 5] (Julia, 1-based) of the first kernel
    s0, s1, s2 = 3, 3, 1
    first_vec = raw_flat_arrays()[0][0]
    assert weights["0"][1, 2, 0, 4].item() == first_vec[1 + s0 * (2 + s1 * (0 + s2 * 4))]


def test_fixture_tensors_are_zero_copy_views_of_the_mapped_file() -> None:
    weights = read_model_row(FIXTURE).weights
    assert weights is not None
    file_size = FIXTURE.stat().st_size
    storages = {t.untyped_storage().data_ptr() for t in weights.values()}
    assert len(storages) == 1
    for t in weights.values():
        assert t.untyped_storage().nbytes() == file_size
        expected_strides = tuple(math.prod(t.shape[:axis]) for axis in range(t.dim()))
        assert t.stride() == expected_strides


def test_fixture_other_columns_are_readable_as_extras() -> None:
    row = read_model_row(FIXTURE, verify=True)
    assert row.architecture_version is None
    assert row.epoch == 1
    assert row.accuracy == pytest.approx(0.06)
    assert row.config == {"seed": 5, "dropout_rate": 0.0}
    assert row.declared_schema == "digits.model@1>legolas-flux.model@1"
    assert set(row.extras) == {"config", "epoch", "accuracy"}


def test_a_declared_julia_schema_comes_back_as_its_class_with_a_nested_config_row() -> None:
    class DigitsConfigV1(Row, schema="digits.config", version=1):
        seed: int = 5
        dropout_rate: float = 0.0

    class DigitsRowV1(LegolasFluxModelV1, schema="digits.model", version=1):
        config: DigitsConfigV1 | None = None
        epoch: int | None = None
        accuracy: float | None = None

    row = read_model_row(FIXTURE)
    assert type(row) is DigitsRowV1
    assert DigitsRowV1.__qualified__ == row.declared_schema
    assert type(row.config) is DigitsConfigV1
    assert row.config == DigitsConfigV1(seed=5, dropout_rate=0.0)
    assert row.epoch == 1
    assert row.accuracy == pytest.approx(0.06)
    assert row.extras == {}
    assert row.weights is not None
    assert len(row.weights) == 14


def test_checksum_and_fingerprint_describe_the_packed_layout() -> None:
    weights = read_model_row(FIXTURE).weights
    assert weights is not None
    packed = fetch_weights({name: t.contiguous() for name, t in weights.items()})
    assert weights == packed
    assert weights.checksum == packed.checksum
    assert weights.fingerprint == packed.fingerprint
    assert weights.nbytes == sum(4 * math.prod(s) for s in JULIA_SHAPES)
    assert weights.stored_checksum is None
    assert weights.verify()


def test_julia_weights_repack_when_written_as_a_modelrows_row(tmp_path: Path) -> None:
    weights = read_model_row(FIXTURE).weights
    assert weights is not None
    path = tmp_path / "digits.model.arrow"
    write_model_row(path, ModelV1(weights=weights, architecture_version=7))
    back = read_model_row(path, verify=True)
    assert type(back) is ModelV1
    assert back.weights == weights
    assert back.weights.checksum == back.weights.stored_checksum == weights.checksum
    for name, tensor in weights.items():
        assert back.weights[name].is_contiguous()
        assert torch.equal(back.weights[name], tensor), name


def test_writing_a_legolasflux_row_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    row = LegolasFluxModelV1(weights=fetch_weights(nn.Linear(2, 2)), architecture_version=1)
    with pytest.raises(WeightsError) as info:
        write_model_row(tmp_path / "flux.model.arrow", row)
    assert str(info.value) == (
        "modelrows reads LegolasFlux.jl weights (legolas-flux.model@1) but does not write them; "
        "store the weights as a modelrows row instead, e.g. "
        "ModelV1(weights=row.weights, architecture_version=row.architecture_version)"
    )
    assert list(tmp_path.iterdir()) == []


# -- other LegolasFlux.jl-shaped files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "dtype"),
    [
        (pa.float64(), torch.float64),
        (pa.float16(), torch.float16),
        (pa.int32(), torch.int32),
        (pa.uint8(), torch.uint8),
    ],
)
def test_element_types_map_to_torch_dtypes(
    tmp_path: Path, element: pa.DataType, dtype: torch.dtype
) -> None:
    arrays = [
        (list(range(6)), [2, 3]),
        (list(range(24)), [2, 3, 4]),
        ([7], []),
        ([], [0, 3]),
    ]
    row = read_model_row(write_flux_file(tmp_path / "f.arrow", arrays, element=element))
    assert row.architecture_version == 3
    assert row.weights is not None
    for (vec, size), (name, tensor) in zip(arrays, row.weights.items(), strict=True):
        assert tensor.dtype == dtype, name
        assert tuple(tensor.shape) == tuple(size), name
        expected = np.reshape(np.array(vec, dtype=np.int64), size, order="F")
        assert np.array_equal(tensor.to(torch.int64).numpy(), expected), name


def test_missing_weights_read_as_none(tmp_path: Path) -> None:
    row = read_model_row(write_flux_file(tmp_path / "f.arrow", None))
    assert type(row) is LegolasFluxModelV1
    assert row.weights is None


def test_a_size_that_disagrees_with_vec_is_corrupt(tmp_path: Path) -> None:
    path = write_flux_file(tmp_path / "f.arrow", [([1.0, 2.0], [2]), ([1.0, 2.0, 3.0], [2, 2])])
    with pytest.raises(CorruptRowError) as info:
        read_model_row(path)
    assert str(info.value) == (
        f"{path}: LegolasFlux.jl weights: tensor '1' has size (2, 2) = 4 elements, but its vec "
        "holds 3; the file is corrupt"
    )


def test_a_flatarray_of_strings_is_a_schema_mismatch(tmp_path: Path) -> None:
    path = write_flux_file(tmp_path / "f.arrow", [(["a"], [1])], element=pa.string())
    with pytest.raises(SchemaMismatchError) as info:
        read_model_row(path)
    assert info.value.problems == [
        "column 'weights' is struct<weights: list<item: struct<vec: list<item: string>, "
        "size: list<item: int64>>>>, expected FlatArrayWeights | None"
    ]


# -- the PyTorch port of the digits model (docs/interop.md) ------------------------------------------


def flux_forward_numpy(arrays: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux's digits model in NumPy, in Julia's terms: arrays indexed as in Julia, ``x`` of size
    (W, H, C, N); returns the conv stack's output (3, 3, 10, N) and the probabilities (10, N)."""
    A = [a.astype(np.float64) for a in arrays]

    def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Flux Conv is a true convolution: y[i, j, o] = sum x[i+a, j+b, c] * w[k1-1-a, k2-1-b, c, o]
        k1, k2 = w.shape[:2]
        o1, o2 = x.shape[0] - k1 + 1, x.shape[1] - k2 + 1
        y = np.zeros((o1, o2, w.shape[3], x.shape[3]))
        for a in range(k1):
            for b_ in range(k2):
                y += np.einsum(
                    "ijcn,co->ijon", x[a : a + o1, b_ : b_ + o2], w[k1 - 1 - a, k2 - 1 - b_]
                )
        return np.maximum(y + b[None, None, :, None], 0.0)

    def batchnorm_relu(x: np.ndarray, *params: np.ndarray) -> np.ndarray:
        beta, gamma, mu, var = (p[None, None, :, None] for p in params)  # per channel
        return np.maximum(gamma * (x - mu) / np.sqrt(var + 1e-5) + beta, 0.0)  # Flux: eps = 1f-5

    def maxpool2(x: np.ndarray) -> np.ndarray:
        d1, d2 = x.shape[0] // 2, x.shape[1] // 2
        return x[: 2 * d1, : 2 * d2].reshape(d1, 2, d2, 2, *x.shape[2:]).max(axis=(1, 3))

    h = maxpool2(batchnorm_relu(conv(x, A[0], A[1]), *A[2:6]))
    h = maxpool2(conv(h, A[6], A[7]))
    features = conv(h, A[8], A[9])
    z = features.reshape(-1, features.shape[3], order="F")  # Flux's reshape(x, :, size(x, 4))
    for w, b in ((A[10], A[11]), (A[12], A[13]), (A[12], A[13])):  # Dense(90, 10), D, D
        z = w @ z + b[:, None]
    e = np.exp(z - z.max(axis=0))
    return features, e / e.sum(axis=0)


@pytest.fixture
def julia_batch() -> np.ndarray:
    return np.random.default_rng(7).random((28, 28, 1, 4))  # (W, H, C, N), as Flux takes it


@pytest.fixture
def flux_reference(julia_batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth: Flux's forward pass on ``julia_batch`` with the fixture's numbers."""
    return flux_forward_numpy([julia_index(v, s) for v, s in raw_flat_arrays()], julia_batch)


def loaded_port(doc: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    row = read_model_row(FIXTURE)
    model = doc["DigitsNet"](row.config["dropout_rate"]).eval()
    report = load_weights(model, state, strict=False)
    assert report.missing == ["bn.num_batches_tracked"]
    assert not report.unexpected
    assert not report.mismatched
    return model


def test_port_parameters_land_with_julia_values() -> None:
    doc = doc_namespace()
    weights = read_model_row(FIXTURE).weights
    model = loaded_port(doc, doc["digits_state_dict"](weights))
    vec = [v for v, _ in raw_flat_arrays()]

    def conv_expected(v: np.ndarray, k1: int, k2: int, cin: int, cout: int) -> np.ndarray:
        out = np.empty((cout, cin, k2, k1), dtype=np.float32)  # torch: (C_out, C_in, kH, kW)
        for o in range(cout):
            for c in range(cin):
                for kh in range(k2):
                    for kw in range(k1):  # Julia A[kW', kH', c, o], flipped spatially
                        i, j = k1 - 1 - kw, k2 - 1 - kh
                        out[o, c, kh, kw] = v[i + k1 * (j + k2 * (c + cin * o))]
        return out

    def dense_expected(v: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
        return np.array([[v[o + n_out * i] for i in range(n_in)] for o in range(n_out)])

    expected = {
        "conv1.weight": conv_expected(vec[0], 3, 3, 1, 32), "conv1.bias": vec[1],
        "bn.bias": vec[2], "bn.weight": vec[3], "bn.running_mean": vec[4], "bn.running_var": vec[5],
        "conv2.weight": conv_expected(vec[6], 3, 3, 32, 16), "conv2.bias": vec[7],
        "conv3.weight": conv_expected(vec[8], 3, 3, 16, 10), "conv3.bias": vec[9],
        "dense1.weight": dense_expected(vec[10], 10, 90), "dense1.bias": vec[11],
        "dense.weight": dense_expected(vec[12], 10, 10), "dense.bias": vec[13],
    }  # fmt: skip
    state = model.state_dict()
    assert set(state) == {*expected, "bn.num_batches_tracked"}
    for name, value in expected.items():
        assert np.array_equal(state[name].numpy(), value), name
    assert not np.array_equal(vec[2], vec[3])  # beta and gamma differ: a swap would show


def test_port_forward_matches_the_flux_forward_pass(
    julia_batch: np.ndarray, flux_reference: tuple[np.ndarray, np.ndarray]
) -> None:
    doc = doc_namespace()
    weights = read_model_row(FIXTURE).weights
    model = loaded_port(doc, doc["digits_state_dict"](weights)).double()
    features, probs = flux_reference
    x = doc["input_from_flux"](torch.from_numpy(julia_batch))
    with torch.no_grad():
        torch_features, torch_probs = model.features(x), model(x)
    np.testing.assert_allclose(
        torch_features.numpy(), features.transpose(3, 2, 1, 0), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(torch_probs.numpy(), probs.T, rtol=1e-9, atol=1e-12)
    assert features.max() > 0  # the relu stack did not collapse to zeros


def test_port_with_julia_spatial_order_needs_the_dense_columns_permuted(
    julia_batch: np.ndarray, flux_reference: tuple[np.ndarray, np.ndarray]
) -> None:
    doc = doc_namespace()
    weights = read_model_row(FIXTURE).weights
    _, probs = flux_reference
    x = doc["input_from_flux_spatial_kept"](torch.from_numpy(julia_batch))
    state = doc["digits_state_dict_spatial_kept"](weights)
    with torch.no_grad():
        out = loaded_port(doc, state).double()(x)
    np.testing.assert_allclose(out.numpy(), probs.T, rtol=1e-9, atol=1e-12)
    # without the permutation the same model is wrong: the check above can fail
    state["dense1.weight"] = weights["10"]
    with torch.no_grad():
        wrong = loaded_port(doc, state).double()(x)
    assert not np.allclose(wrong.numpy(), probs.T, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mistake", ["kernel not flipped", "spatial axes swapped"])
def test_a_wrong_conv_mapping_is_caught_by_the_forward_check(
    julia_batch: np.ndarray, flux_reference: tuple[np.ndarray, np.ndarray], mistake: str
) -> None:
    doc = doc_namespace()
    weights = read_model_row(FIXTURE).weights
    state = doc["digits_state_dict"](weights)
    wrong = {
        "kernel not flipped": lambda w: w.permute(3, 2, 1, 0),
        "spatial axes swapped": lambda w: w.permute(3, 2, 0, 1).flip(2, 3),
    }[mistake]
    state["conv1.weight"] = wrong(weights["0"])
    features, _ = flux_reference
    x = doc["input_from_flux"](torch.from_numpy(julia_batch))
    with torch.no_grad():
        torch_features = loaded_port(doc, state).double().features(x)
    assert not np.allclose(torch_features.numpy(), features.transpose(3, 2, 1, 0), rtol=1e-6)


def test_weights_from_tensors_are_views_not_copies() -> None:
    base = torch.arange(12, dtype=torch.float32)
    view = base.view(4, 3).t()
    weights = Weights._from_tensors({"a": view})
    assert weights["a"] is view
    assert weights.entries[0].shape == (3, 4)
    assert weights == fetch_weights({"a": view.contiguous()})


def test_flat_array_weights_declare_like_weights() -> None:
    class MyFluxModelV1(Row, schema="my.flux", version=1):
        weights: FlatArrayWeights

    assert MyFluxModelV1.__row_fields__["weights"].type.signature() == "FlatArrayWeights"
    with pytest.raises(SchemaError) as info:

        class ListedV1(Row, schema="my.listed", version=1):
            weights: list[FlatArrayWeights]

    assert (
        str(info.value) == "ListedV1.weights: Weights can only be a top-level field, not in a list"
    )
    with pytest.raises(SchemaError) as info:

        class TwiceV1(Row, schema="my.twice", version=1):
            weights: Annotated[Weights, FlatArrayWeightsType(), FlatArrayWeightsType()]

    assert "names 2 field types; give one" in str(info.value)


def test_a_same_named_schema_with_other_parents_is_passed_over() -> None:
    class OtherDigitsV1(ModelV1, schema="digits.model", version=1):
        epoch: int | None = None

    row = read_model_row(FIXTURE)
    assert type(row) is LegolasFluxModelV1
    assert row.declared_schema == "digits.model@1>legolas-flux.model@1"
    assert row.extras["epoch"] == 1


def test_a_dtype_this_torch_lacks_says_to_upgrade_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f8.model.arrow"
    write_model_row(
        path, ModelV1(weights=fetch_weights({"x": torch.zeros(4, dtype=torch.float8_e5m2)}))
    )
    monkeypatch.delitem(blob_module.DTYPE_NAMES, "float8_e5m2")
    row = read_model_row(path)  # the row and its facts read without making tensors
    assert [e.dtype for e in row.weights.entries] == ["float8_e5m2"]
    assert row.weights.verify()
    message = f"{re.escape(str(path))}: tensor 'x' has dtype 'float8_e5m2', which this torch .* lacks; upgrade torch"
    with pytest.raises(CorruptRowError, match=message):
        row.weights["x"]
    with pytest.raises(CorruptRowError, match=message):
        load_weights(nn.Linear(1, 1), row.weights)
