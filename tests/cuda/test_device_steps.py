"""Work that used to run on the host between device kernels, now on the (emulated) device: random numbers
and dropout masks, batched and float64 matmuls, writes into strided views, cat and slice_scatter. Each is
compared with the same computation on CPU tensors (forward, and gradients where the op has one), inside
`on_device_only()`, which fails the test on any device-to-host copy or host step."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from codegen.cuda_steps import RandSpec
from codegen.kernel import ExternCall, Kernel, Op, walk_exprs
from device_samples import on_cpu_and_device as _both, on_device_only
from runtime.cuda_engine import CUDAProgram
from tracetorch.ops import REGISTRY
from tracetorch.ops.dispatch import apply


# ---------------------------------------------------------------- random numbers
def test_rand_randn_and_dropout_masks_are_the_cpu_draws(fake_cuda, rng):
    x = rng.standard_normal((4, 7)).astype(np.float32) + 3
    results = {}
    for device in ("cpu", "cuda"):
        tt.manual_seed(11)
        xt = tt.tensor(x, device=device)
        with on_device_only() if device == "cuda" else contextlib.nullcontext():
            draws = [tt.rand(4, 7, device=device), tt.rand(4, 7, device=device), tt.randn(33, device=device),
                     F.dropout(xt, 0.3)]
        assert all(d.device.type == device for d in draws)
        results[device] = [d.cpu().numpy() for d in draws]
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_array_equal(got, want)           # same stream, same bits (offsets advance alike)
    assert not np.array_equal(results["cuda"][0], results["cuda"][1])
    mask = results["cuda"][3] != 0
    assert 0 < mask.sum() < mask.size
    steps = [s for k, p in _eager_programs() if k[0] == "rand" for s in p.compiled.program.steps]
    assert any(isinstance(s, RandSpec) for s in steps)                   # normal draws: a device step
    assert any(_draws_uniform(s) for s in steps)                         # uniform: a kernel's `random` op
    assert all(isinstance(s, RandSpec) or _draws_uniform(s) for s in steps)


def _draws_uniform(step) -> bool:
    return isinstance(step, Kernel) and any(isinstance(e, Op) and e.op == "random" for e in walk_exprs(step.outer))


def test_compiled_dropout_step_draws_on_the_device(fake_cuda, rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)

    def f(x):
        return F.dropout(x * 2.0, 0.5).sum(1)

    tt.manual_seed(4)
    want = [f(tt.tensor(x)).numpy() for _ in range(2)]
    g = tt.compile(f)
    tt.manual_seed(4)
    got = [g(tt.tensor(x, device="cuda")).cpu().numpy() for _ in range(2)]
    for a, b in zip(got, want):                    # fresh masks per call, the same ones as eager on the CPU
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.array_equal(got[0], got[1])
    (program,) = g.programs
    steps = program.executable.compiled.program.steps
    assert not any(isinstance(s, (RandSpec, ExternCall)) for s in steps)   # the mask is drawn inside the kernel
    assert any(_draws_uniform(s) for s in steps)


# ---------------------------------------------------------------- matmuls
def test_batched_attention_matmuls_on_the_device(fake_cuda, rng):
    q, k = (rng.standard_normal((2, 3, n, 4)).astype(np.float32) for n in (5, 6))
    (want, want_g), (got, got_g) = _both(lambda q, k: q @ k.mT, q, k, grad=True)      # 4-D, a transposed operand
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, want_g):                  # the gradients: batched matmuls of a broadcast (0-stride) g
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    w = rng.standard_normal((4, 3)).astype(np.float32)              # a 2-D weight broadcast over the batch
    (want, _), (got, _) = _both(lambda q, w: q @ w, q, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_float64_matmul_on_the_device(fake_cuda, rng):
    """(Its gradients are matmuls of the same kinds: transposed operands, as in the batched test.)"""
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((7, 3))
    (want, _), (got, _) = _both(lambda a, b: a.T @ b, a, b)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_matmul_of_sliced_operands_reads_them_in_place(fake_cuda, rng):
    a, b = rng.standard_normal((6, 9)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    (want, _), (got, _) = _both(lambda a, b: a[1:5, 2:8] @ b[1:7, ::2], a, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- writes into strided views
def test_writes_into_strided_views_run_a_device_kernel(fake_cuda, rng):
    a = rng.standard_normal((5, 6)).astype(np.float32)
    col = rng.standard_normal(5).astype(np.float32)

    def writes(x, c):
        x[:, 2] = c
        x.t().add_(1.0)
        x.T[3:, 1:3].copy_(x[:2, :3].T)          # a transposed source into a transposed block
        x[:, 1:5].copy_(x[:, :4])                # source and destination overlap: read before writing
        return x

    results = []
    for device in ("cpu", "cuda"):
        x, c = tt.tensor(a, device=device), tt.tensor(col, device=device)
        with on_device_only() if device == "cuda" else contextlib.nullcontext():
            writes(x, c)
        results.append(x.cpu().numpy())
    np.testing.assert_array_equal(results[1], results[0])


def test_gradients_through_strided_writes(fake_cuda, rng):
    w, z = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal(4).astype(np.float32)

    def f(w, z):
        y = w * 1.5
        y[:, 1] = z * 2.0                       # a select: index_put through the flat positions
        y.t().add_(1.0)                          # a permute: index_put
        return y

    (want, want_g), (got, got_g) = _both(f, w, z, grad=True)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(got_g, want_g):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_index_put_out_of_range_raises_and_writes_nothing(fake_cuda):
    """(Values, other dims and negative indices: tests/codegen/test_cuda_steps.py; autograd above.)"""
    x = tt.zeros(5, device="cuda")
    with pytest.raises(IndexError, match="out of range"):
        x[tt.tensor([2, 5], device="cuda")] = 1.0                    # (2 is in range: not written either)
    x[tt.tensor([1, -1], device="cuda")] = 1.0                    # the same program serves good indices
    np.testing.assert_array_equal(x.cpu().numpy(), [0, 1, 0, 0, 1])


# ---------------------------------------------------------------- cat and slice_scatter
def test_cat_and_slice_scatter_on_the_device(fake_cuda, rng):
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    scatter = REGISTRY["slice_scatter"]

    def f(a, b):
        c = tt.cat([a, b.t()], dim=1)                                              # (3, 6)
        return apply(scatter, c, b[:1, :2].t(), starts=(0, 1), stops=(3, 6), steps=(2, 3))

    (want, want_g), (got, got_g) = _both(f, a, b, grad=True)
    np.testing.assert_array_equal(got, want)
    for x, y in zip(got_g, want_g):
        np.testing.assert_array_equal(x, y)


def _eager_programs():
    from tracetorch.jit import cuda_eager
    return list(cuda_eager.CACHE.programs.items())


# ---------------------------------------------------------------- scans and arg-reductions
def test_cumsum_argmax_argmin_on_the_device(fake_cuda, rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    x[1, 3] = x[1, 0]                                     # a tie: the first index wins
    (want, want_g), (got, got_g) = _both(lambda x: x.cumsum(1), x, grad=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_g[0], want_g[0])
    for f in (lambda x: x.argmax(1), lambda x: x.argmin(0), lambda x: x.argmax()):
        (want, _), (got, _) = _both(f, x)
        np.testing.assert_array_equal(got, want)
