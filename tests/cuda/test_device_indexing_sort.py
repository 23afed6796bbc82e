"""The last ops that used to run on the host between device kernels, now device kernels (emulated device):
index_put with accumulate (embedding gradients) and with several index tensors, randperm, float16
cumsum, integer and float16/bfloat16 matmuls, and matmuls whose batch dims do not fold. Each runs inside
`on_device_only()` (no device-to-host copy, no host step) and is compared with the same computation on
CPU tensors: exactly where the device computes in the CPU's order (accumulate sums in index order,
randperm, integer matmuls, cumsum), within float32 rounding elsewhere."""
from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from codegen.kernel import ExternCall
from device_samples import on_cpu_and_device, on_device_only
from tracetorch.jit import cuda_eager
from tracetorch.ops import REGISTRY
from tracetorch.ops.dispatch import apply

INDEX_PUT = REGISTRY["index_put"]


def _on(device):
    return on_device_only() if device == "cuda" else contextlib.nullcontext()


def _ints(a, like):
    return tt.tensor(np.asarray(a), device=like.device)


def _all_on_the_device(*ops):
    """The cached eager programs of `ops` run entirely on the device: no ExternCall step is left in one."""
    programs = [(key, p) for key, p in cuda_eager.CACHE.programs.items() if key[0] in ops]
    assert programs
    for key, program in programs:
        assert not any(isinstance(s, ExternCall) for s in program.compiled.program.steps), key


# ---------------------------------------------------------------- index_put with accumulate
def test_embedding_gradient_is_exact(fake_cuda, rng):
    weight = rng.standard_normal((6, 5)).astype(np.float32)
    tokens = np.array([[1, 4, 1, 0], [4, 4, 5, 1]])            # repeats: their gradients add up per row
    (want, want_g), (got, got_g) = on_cpu_and_device(lambda w: F.embedding(_ints(tokens, w), w) * 1.5, weight,
                                                     grad=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_g[0], want_g[0])        # summed in index order, like np.add.at
    _all_on_the_device("index_put")


def test_zeros_on_the_device_upload_nothing(fake_cuda, monkeypatch):
    """The zero base of an embedding gradient (tt.zeros / zeros_like on the device) is a memset."""
    x = tt.ones(3, device="cuda")

    def refuse(*args):
        raise AssertionError("host-to-device copy")
    monkeypatch.setattr(sys.modules["pycuda.driver"], "memcpy_htod", refuse)
    z = [tt.zeros(300, 4, device="cuda"), tt.zeros_like(x, dtype=tt.float16), tt.zeros(2, dtype=tt.bool, device="cuda")]
    w = tt.zeros(5, device="cuda", requires_grad=True)
    monkeypatch.undo()
    assert all(t.device.type == "cuda" for t in z + [w]) and w.requires_grad and z[1].dtype is tt.float16
    assert [t.cpu().numpy().tolist() for t in z] == [np.zeros((300, 4)).tolist(), [0, 0, 0], [False, False]]


@pytest.mark.parametrize("dtype", [tt.float16, tt.bfloat16, tt.int32])
def test_accumulate_matches_the_cpu_bit_for_bit(dtype, fake_cuda, rng):
    """float16 rounds after every add (numpy's np.add.at), bfloat16 once at the end (eager rounds the
    float32 result), integers wrap: the device adds in the same order, so the results are equal."""
    base, values = rng.standard_normal((5, 3)) * 4, rng.standard_normal((9, 3)) * 100
    idx = np.array([2, 0, 2, 2, -1, 4, 2, 0, 2])               # (-1: the last row)
    results = []
    for device in ("cpu", "cuda"):
        x = tt.tensor(base, dtype=dtype, device=device)
        with _on(device):
            x = tt.index_put(x, (_ints(idx, x),), tt.tensor(values, dtype=dtype, device=device), accumulate=True)
        results.append(x.cpu().numpy())
    np.testing.assert_array_equal(results[1], results[0])


@pytest.mark.parametrize("dims", [(0, 1), (0, 2)])
def test_accumulate_with_several_index_tensors(dims, fake_cuda, rng):
    """Index tensors broadcast to (3, 2) with repeated pairs; values broadcast over the region, which is
    (3, 2, 5) for consecutive dims and (3, 2, 3) for dims 0 and 2 (numpy's rule)."""
    base = rng.standard_normal((4, 3, 5)).astype(np.float32)
    i, j = np.array([[0], [3], [0]]), np.array([2, 2])
    v = rng.standard_normal((3, 1, 5 if dims == (0, 1) else 3)).astype(np.float32)

    def f(x, v):
        return apply(INDEX_PUT, x * 1.0, v * 2.0, _ints(i, x), _ints(j, x), dims=dims, accumulate=True)

    (want, want_g), (got, got_g) = on_cpu_and_device(f, base, v, grad=True)
    np.testing.assert_array_equal(got, want)
    for a, b in zip(got_g, want_g):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_accumulate_of_a_number_and_of_an_empty_index(fake_cuda):
    x = tt.zeros(4, 2, device="cuda")
    with on_device_only():
        y = apply(INDEX_PUT, x, 0.5, _ints([1, 3, 1], x), dims=(0,), accumulate=True)
        z = apply(INDEX_PUT, y, tt.ones(2, device="cuda"), _ints(np.zeros(0, np.int64), x), dims=(0,), accumulate=True)
    np.testing.assert_array_equal(z.cpu().numpy(), [[0, 0], [1, 1], [0, 0], [0.5, 0.5]])


def test_accumulate_out_of_range_raises_and_leaves_the_tensor(fake_cuda, rng):
    x = tt.tensor(rng.standard_normal((4, 3)).astype(np.float32), device="cuda")
    before = x.cpu().numpy()
    for bad in ([0, 4, 1], [-5, 1]):
        with pytest.raises(IndexError, match="out of range"):
            x[_ints(bad, x)] += tt.ones(len(bad), 3, device="cuda")          # (the gather raises first)
        with pytest.raises(IndexError, match="out of range"):
            x.copy_(tt.index_put(x, (_ints(bad, x),), tt.ones(len(bad), 3, device="cuda"), accumulate=True))
        np.testing.assert_array_equal(x.cpu().numpy(), before)
    x.copy_(tt.index_put(x, (_ints([3, 3], x),), tt.ones(2, 3, device="cuda"), accumulate=True))   # still works
    np.testing.assert_array_equal(x.cpu().numpy(), before + np.array([[0], [0], [0], [2]], np.float32))


# ---------------------------------------------------------------- several index tensors: gathers and assignment
def test_gathers_and_writes_through_several_index_tensors(fake_cuda, rng):
    """(Their gradients, index_put with accumulate and gathers: test_accumulate_with_several_index_tensors.)"""
    a = rng.standard_normal((4, 3, 5)).astype(np.float32)
    v = rng.standard_normal((2, 3)).astype(np.float32)
    i, j = np.array([3, 0]), np.array([4, 1])
    results = []
    for device in ("cpu", "cuda"):
        x, vt = tt.tensor(a, device=device), tt.tensor(v, device=device)
        with _on(device):
            x[_ints(i, x), :, _ints(j, x)] = vt                  # non-consecutive dims: region (2, 3)
            x[_ints(i, x), _ints([[2], [0]], x)] = vt[:, :1]     # (2,) with (2, 1): region (2, 2, 5)
            got = [x[_ints(i, x), _ints([1, 2], x)], x[:, _ints([0, 2], x), _ints(j, x)]]
        results.append([t.cpu().numpy() for t in [x] + got])
    for got, want in zip(*reversed(results)):
        np.testing.assert_array_equal(got, want)
    _all_on_the_device("index_put", "index")


def test_write_through_several_indices_out_of_range_writes_nothing(fake_cuda):
    x = tt.zeros(3, 4, device="cuda")
    with pytest.raises(IndexError, match="out of range"):
        x[_ints([0, 2], x), _ints([1, 4], x)] = 1.0
    np.testing.assert_array_equal(x.cpu().numpy(), np.zeros((3, 4)))
    x[_ints([0, 2], x), _ints([1, -1], x)] = 1.0
    np.testing.assert_array_equal(np.argwhere(x.cpu().numpy()), [[0, 1], [2, 3]])


# ---------------------------------------------------------------- randperm
def test_randperm_on_the_device_is_the_cpu_permutation(fake_cuda):
    results = {}
    for device in ("cpu", "cuda"):
        tt.manual_seed(7)
        gen = tt.Generator().manual_seed(3)
        with _on(device):
            perms = [tt.randperm(n, device=device) for n in (1, 7, 33)]
            perms.append(tt.randperm(33, generator=gen, device=device))
            after = tt.rand(3, device=device)                   # the offset advanced alike
        assert all(p.device.type == device and p.dtype is tt.int64 for p in perms)
        results[device] = [p.cpu().numpy() for p in perms + [after]]
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_array_equal(got, want)
    assert sorted(results["cuda"][2]) == list(range(33))
    assert not np.array_equal(results["cuda"][2], results["cuda"][3])
    assert tt.randperm(0, device="cuda").shape == (0,)
    _all_on_the_device("randperm")


# ---------------------------------------------------------------- cumsum, matmuls
@pytest.mark.parametrize("dtype", [tt.float16, tt.bfloat16])
def test_half_cumsum_is_eagers_float32_sum_rounded_once(dtype, fake_cuda, rng):
    x = rng.standard_normal((3, 300)) * 3
    results = []
    for device in ("cpu", "cuda"):
        t = tt.tensor(x, dtype=dtype, device=device)
        with _on(device):
            r = [t.cumsum(1), t.T.cumsum(0), t[0, 0].cumsum(0)]       # rows, a transposed view, 0-d
        results.append([c.cpu().numpy() for c in r])
    for got, want in zip(*reversed(results)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [tt.int32, tt.int64, tt.uint8, tt.bool])
def test_integer_and_bool_matmuls_are_exact(dtype, fake_cuda, rng):
    a = rng.integers(0 if dtype in (tt.uint8, tt.bool) else -50, 50, (2, 3, 20))
    b = rng.integers(0 if dtype in (tt.uint8, tt.bool) else -50, 50, (20, 4))
    if dtype is tt.bool:
        a, b = a % 7 == 0, b % 5 == 0
    results = []
    for device in ("cpu", "cuda"):
        x, y = tt.tensor(a, dtype=dtype, device=device), tt.tensor(b, dtype=dtype, device=device)
        with _on(device):
            r = [x @ y, x[0, :, :5] @ y[:5].T.T]
        results.append([t.cpu().numpy() for t in r])
    for got, want in zip(*reversed(results)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)             # uint8 wraps like the CPU's int64 -> uint8
    _all_on_the_device("matmul")


@pytest.mark.parametrize("dtype", [tt.float16, tt.bfloat16])
def test_half_matmuls_accumulate_in_float32(dtype, fake_cuda, rng):
    """The CPU's float16 matmul (numpy) sums in float32 and rounds once, and bfloat16's is float32 BLAS
    rounded: the device's float32 sums round to the same value but where the float32 sums differ in their
    last bits across a rounding boundary (one unit in the last place of the half type). (Gradients are
    matmuls of the same kinds.)"""
    a, b = rng.standard_normal((2, 5, 70)), rng.standard_normal((6, 70))
    results = []
    for device in ("cpu", "cuda"):
        x, y = tt.tensor(a, dtype=dtype, device=device), tt.tensor(b, dtype=dtype, device=device)
        with _on(device):
            r = x @ y.T                                       # a transposed operand, a broadcast batch
        assert r.dtype is dtype
        results.append(r.float().cpu().numpy())
    ulp = 2.0 ** (-10 if dtype is tt.float16 else -7)
    np.testing.assert_allclose(results[1], results[0], rtol=ulp, atol=ulp)
    assert np.mean(results[1] == results[0]) > 0.9            # mostly bit-equal: the same float32 sums
    _all_on_the_device("matmul")


def test_matmul_with_batch_dims_that_do_not_fold(fake_cuda, rng):
    """[B,1,M,K] @ [H,K,N]: A broadcast along H, B along B; the gradients are matmuls of the same kind."""
    a = rng.standard_normal((2, 1, 3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4, 5)).astype(np.float32)
    (want, want_g), (got, got_g) = on_cpu_and_device(lambda a, b: a @ b, a, b, grad=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    a64, b64 = rng.standard_normal((2, 1, 3, 2, 6)), rng.standard_normal((1, 4, 3, 6, 2))  # three batch dims
    (want, _), (got, _) = on_cpu_and_device(lambda a, b: a @ b.mT.mT, a64, b64)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    _all_on_the_device("matmul")
