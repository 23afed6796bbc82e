"""tt.save / tt.load: round trips of state-dict shaped data, the documented format, and refusal of bad files."""
import collections
import io
import json
import math
import zipfile

import numpy as np
import pytest

import tracetorch as tt


def round_trip(obj, **load_kwargs):
    buf = io.BytesIO()
    tt.save(obj, buf)
    buf.seek(0)
    return tt.load(buf, **load_kwargs)


def assert_same_tensor(a, b):
    assert isinstance(b, tt.Tensor) and b.dtype is a.dtype and tuple(b.shape) == tuple(a.shape)
    np.testing.assert_array_equal(b.numpy(force=True), a.numpy(force=True))


@pytest.mark.parametrize("dtype", [tt.float32, tt.float64, tt.float16, tt.bfloat16, tt.int64, tt.int32, tt.int16,
                                   tt.int8, tt.uint8, tt.bool])
def test_dtypes_round_trip_exactly(dtype):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((3, 5)) * 50
    t = tt.tensor(values > 0) if dtype is tt.bool else tt.tensor(values).to(dtype)
    out = round_trip({"t": t})["t"]
    assert_same_tensor(t, out)


def test_bfloat16_is_stored_as_its_bit_patterns():
    t = tt.tensor([1.0, -3.140625, 1e30, float("inf"), float("nan")]).to(tt.bfloat16)
    buf = io.BytesIO()
    tt.save(t, buf)
    with zipfile.ZipFile(buf) as zf:
        stored = np.load(zf.open("tensors/0.npy"), allow_pickle=False)
    assert stored.dtype == np.uint16
    out = tt.load(io.BytesIO(buf.getvalue()))
    assert out.dtype is tt.bfloat16
    np.testing.assert_array_equal(out.numpy(), t.numpy())


@pytest.mark.parametrize("t", [tt.tensor(3.5), tt.tensor(7), tt.zeros(0), tt.zeros(0, 3, dtype=tt.int64),
                               tt.tensor(True), tt.arange(12.0).reshape(3, 4).T, tt.arange(10)[::3]],
                         ids=["0d-float", "0d-int", "empty", "empty-2d-int", "0d-bool", "transposed", "strided"])
def test_shapes_and_views_round_trip(t):
    assert_same_tensor(t, round_trip(t))


def test_nested_structure_keeps_types():
    obj = collections.OrderedDict(
        weight=tt.ones(2, 2),
        meta={0: "zero", 1: (1, 2.5, None), "neg": -3, (1, 2): [True, False], 2.5: "float key"},
        numbers=[1, 2 ** 70, 1e-300, float("inf"), -float("inf")],
        dtype=tt.bfloat16,
        device=tt.device("cpu"),
        np_array=np.arange(4, dtype=np.int16),
        np_scalar=np.float32(0.5),
    )
    out = round_trip(obj)
    assert type(out) is collections.OrderedDict and list(out) == list(obj)
    assert out["meta"] == obj["meta"] and type(out["meta"][1]) is tuple and type(out["meta"][(1, 2)]) is list
    assert out["numbers"] == obj["numbers"]
    assert out["dtype"] is tt.bfloat16 and out["device"] == tt.device("cpu")
    assert out["np_array"].dtype == np.int16 and out["np_array"].tolist() == [0, 1, 2, 3]
    assert out["np_scalar"] == 0.5
    assert math.isnan(round_trip({"x": float("nan")})["x"])
    assert type(round_trip({"a": 1})) is dict


def test_shared_tensors_stay_shared_and_loaded_tensors_are_independent():
    w = tt.arange(4.0)
    out = round_trip({"a": w, "b": [w]})
    assert out["a"] is out["b"][0]
    out["a"].add_(1.0)                                   # writable, and not the original's memory
    np.testing.assert_array_equal(w.numpy(), [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(out["b"][0].numpy(), [1.0, 2.0, 3.0, 4.0])


def test_requires_grad_is_preserved():
    p = tt.randn(3, requires_grad=True)
    out = round_trip({"p": p, "d": p.detach()})
    assert out["p"].requires_grad and out["p"].is_leaf and not out["d"].requires_grad


def test_save_and_load_by_path(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {"w": tt.randn(2, 3), "step": 10}
    tt.save(state, path)
    out = tt.load(str(path), map_location="cpu", weights_only=False)
    assert_same_tensor(state["w"], out["w"]) and out["step"] == 10


def test_optimizer_state_round_trip():
    p = tt.randn(4, 3, requires_grad=True)
    opt = tt.optim.Adam([p], lr=0.01, amsgrad=True)
    for _ in range(2):
        p.grad = tt.randn(4, 3)
        opt.step()
    sd = opt.state_dict()
    out = round_trip(sd)
    assert out["param_groups"] == sd["param_groups"]
    assert isinstance(out["param_groups"][0]["betas"], tuple) and list(out["state"]) == [0]
    for key, value in sd["state"][0].items():
        assert_same_tensor(value, out["state"][0][key])


def test_file_is_the_documented_zip_format():
    buf = io.BytesIO()
    tt.save({"w": tt.ones(2, dtype=tt.float64), "n": 3}, buf)
    with zipfile.ZipFile(buf) as zf:
        assert sorted(zf.namelist()) == ["data.json", "tensors/0.npy"]
        manifest = json.loads(zf.read("data.json"))
        array = np.load(zf.open("tensors/0.npy"), allow_pickle=False)
    assert manifest["format"] == "tracetorch" and manifest["version"] == 1
    assert manifest["root"] == {"dict": [["w", {"tensor": 0, "dtype": "float64", "shape": [2],
                                                "requires_grad": False, "parameter": False}], ["n", 3]],
                                "ordered": False}
    np.testing.assert_array_equal(array, [1.0, 1.0])


def test_loads_a_plain_npz(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.eye(2, dtype=np.float32), i=np.arange(3))
    out = tt.load(path)
    assert set(out) == {"w", "i"} and out["w"].dtype is tt.float32 and out["i"].dtype is tt.int64


def test_unsupported_objects_are_refused_with_their_location():
    with pytest.raises(TypeError, match=r"cannot save a set at obj\['a'\]\[1\]"):
        tt.save({"a": [1, {2}]}, io.BytesIO())
    with pytest.raises(TypeError, match="cannot save a object"):
        tt.save(object(), io.BytesIO())


def _valid_bytes():
    buf = io.BytesIO()
    tt.save({"w": tt.arange(64.0), "b": tt.ones(3)}, buf)
    return buf.getvalue()


def test_truncated_file_raises_a_clear_error():
    data = _valid_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        with pytest.raises(RuntimeError, match="tt.load: .*(truncated|corrupt|not a tracetorch)"):
            tt.load(io.BytesIO(data[:cut]))


def test_corrupted_tensor_bytes_raise_a_clear_error():
    data = bytearray(_valid_bytes())
    i = data.index(b"\x93NUMPY") + 200
    data[i] ^= 0xFF
    with pytest.raises(RuntimeError, match="corrupt"):
        tt.load(io.BytesIO(bytes(data)))


def _zip_with(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    buf.seek(0)
    return buf


def test_pickle_checkpoints_and_foreign_zips_are_refused():
    with pytest.raises(RuntimeError, match="never unpickles"):
        tt.load(_zip_with({"archive/data.pkl": b"\x80\x02cos\nsystem\n."}))
    with pytest.raises(RuntimeError, match="not a tracetorch checkpoint"):
        tt.load(_zip_with({"readme.txt": "hello"}))
    with pytest.raises(RuntimeError, match="not a tracetorch checkpoint"):
        tt.load(io.BytesIO(b"plain text, not a zip"))


def test_manifest_disagreeing_with_data_is_refused():
    def npy(arr):
        b = io.BytesIO()
        np.save(b, arr)
        return b.getvalue()

    tensor = {"tensor": 0, "dtype": "float32", "shape": [3], "requires_grad": False, "parameter": False}
    good = {"format": "tracetorch", "version": 1, "root": tensor}
    assert tt.load(_zip_with({"data.json": json.dumps(good), "tensors/0.npy": npy(np.ones(3, np.float32))})).shape \
        == (3,)
    with pytest.raises(RuntimeError, match="shape"):
        tt.load(_zip_with({"data.json": json.dumps(good), "tensors/0.npy": npy(np.ones(4, np.float32))}))
    with pytest.raises(RuntimeError, match="float64"):
        tt.load(_zip_with({"data.json": json.dumps(good), "tensors/0.npy": npy(np.ones(3))}))
    with pytest.raises(RuntimeError, match="corrupt"):
        tt.load(_zip_with({"data.json": json.dumps(good)}))
    with pytest.raises(RuntimeError, match="corrupt"):                     # object arrays need pickle
        tt.load(_zip_with({"data.json": json.dumps(good), "tensors/0.npy": npy(np.array([1, "x"], object))}))
    with pytest.raises(RuntimeError, match="version 99"):
        tt.load(_zip_with({"data.json": json.dumps({**good, "version": 99})}))


def test_parameters_load_as_parameters():
    nn = pytest.importorskip("tracetorch.nn")
    if not hasattr(nn, "Parameter"):
        pytest.skip("tracetorch.nn.Parameter is not exported yet")
    p = nn.Parameter(tt.randn(3))
    frozen = nn.Parameter(tt.randn(2), requires_grad=False)
    out = round_trip({"p": p, "frozen": frozen})
    assert isinstance(out["p"], nn.Parameter) and out["p"].requires_grad
    assert isinstance(out["frozen"], nn.Parameter) and not out["frozen"].requires_grad
    assert_same_tensor(p, out["p"])


def test_dtypes_pickle_and_copy_as_themselves():
    """As torch dtypes: pickle (and deepcopy) give back the one instance, so `x.dtype is tt.float32` holds."""
    import copy
    import pickle
    for dt in tt.dtypes.ALL_DTYPES:
        assert pickle.loads(pickle.dumps(dt)) is dt and copy.deepcopy(dt) is dt
