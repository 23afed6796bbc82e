"""Registry ops on cuda tensors (emulated device) against the same ops on CPU tensors: forward over
contiguous and non-contiguous device layouts, and gradients. A sample of ops and only float32, to keep
the number of distinct kernels (one g++ build each, cached in the temp dir) modest; the GPU module
test_gpu_registry.py runs every op sample on a real device."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from device_samples import check_sample_on_device
from op_samples import op_samples
from tracetorch.jit import cuda_eager

OPS = ["add", "mul", "exp", "where", "cast", "sum", "amax", "argmax", "cumsum", "matmul", "index", "cat",
       "slice_scatter", "clone"]


@pytest.mark.parametrize("name", OPS)
def test_op_on_device_matches_cpu(name, fake_cuda, rng):
    samples = op_samples(name, tt.float32, rng)[:2]
    assert samples
    for s in samples:
        for layout in ("contiguous", "transposed"):
            check_sample_on_device(s, layout, f"{name} {s.desc}")


def test_one_cached_program_per_signature(fake_cuda):
    x = tt.ones(3, 5, device="cuda")
    (x * 2.0).cpu()                               # compile (or find) the program of mul(f32[3,5], f32 scalar)
    before = cuda_eager.stats()
    for lr in (0.1, 0.2, 0.3):                    # scalars are device inputs: no program per value
        np.testing.assert_allclose((x * lr).cpu().numpy(), np.full((3, 5), lr, np.float32))
    after = cuda_eager.stats()
    assert after["compiles"] == before["compiles"] and after["hits"] == before["hits"] + 3


def test_index_out_of_range_raises_from_the_device(fake_cuda):
    x = tt.arange(6.0, device="cuda")
    with pytest.raises(IndexError, match="index"):
        x[tt.tensor([1, 7], device="cuda")]


def test_gradients_on_device_match_cpu(fake_cuda, rng):
    a = rng.standard_normal((4, 5)).astype(np.float32)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    t = np.array([2, 0, 1, 1])

    def loss(x, w, t):
        h = (x @ w).tanh() * x[:, :3].exp()
        return F.cross_entropy(h, t) + (x.T[1:] ** 2).sum() * 0.1

    grads = []
    for device in ("cpu", "cuda"):
        x = tt.tensor(a, device=device, requires_grad=True)
        wt = tt.tensor(w, requires_grad=True)        # a CPU leaf moved inside: its grad comes back to the CPU
        out = loss(x, wt.to(device), tt.tensor(t, device=device))
        out.backward()
        assert x.grad.device.type == device and wt.grad.device.type == "cpu"
        grads.append((out.item(), x.grad.cpu().numpy(), wt.grad.numpy()))
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-5)
    for g_dev, g_cpu in zip(grads[1][1:], grads[0][1:]):
        np.testing.assert_allclose(g_dev, g_cpu, rtol=1e-5, atol=1e-6)
