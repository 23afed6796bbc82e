"""Helpers for the device tests: op_samples' inputs as cuda tensors in the same layouts, a runner that
compares an op on cuda tensors with the same op on CPU tensors, and `on_device_only()`, which fails a test
whose device work goes through the host."""
from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest

import tracetorch as tt
from op_samples import as_tuple, assert_close, to_tensor
from runtime.cuda_engine import CUDAProgram


def device_tensor(value: np.ndarray, dtype, layout: str = "contiguous"):
    """`op_samples.to_tensor`, made on the device: the views are device views of a device tensor."""
    if layout == "transposed" and value.ndim >= 2:
        order = tuple(reversed(range(value.ndim)))
        return tt.tensor(np.ascontiguousarray(value.transpose(order)), dtype=dtype, device="cuda").permute(*order)
    if layout in ("transposed", "strided") and value.ndim >= 1:
        wide = np.zeros(value.shape[:-1] + (2 * value.shape[-1],), value.dtype)
        wide[..., ::2] = value
        return tt.tensor(wide, dtype=dtype, device="cuda")[..., ::2]
    return tt.tensor(value, dtype=dtype, device="cuda")


def check_sample_on_device(sample, layout: str, what: str) -> None:
    """The sample's op on cuda tensors == on CPU tensors (within the dtype's tolerance), results on cuda."""
    cpu_inputs = [to_tensor(v, sample.tensor_dtype(v), layout) if isinstance(v, np.ndarray) else v
                  for v in sample.inputs]
    dev_inputs = [device_tensor(v, sample.tensor_dtype(v), layout) if isinstance(v, np.ndarray) else v
                  for v in sample.inputs]
    want = as_tuple(sample.fn(*cpu_inputs, **sample.attrs))
    got = as_tuple(sample.fn(*dev_inputs, **sample.attrs))
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        if not isinstance(g, tt.Tensor):
            assert g == w, what
            continue
        assert g.device.type == "cuda", f"{what}: result on {g.device}"
        assert g.dtype is w.dtype and g.shape == w.shape, f"{what}: {g.dtype}{list(g.shape)} vs {w.dtype}{list(w.shape)}"
        assert_close(g.cpu(), w.numpy(), w.dtype, f"{what} [{layout}]")


@contextlib.contextmanager
def on_device_only():
    """Fail on a device-to-host copy or an extern step run on the host. Allowed: uploads of scalars and of
    the generator state (PyTorch passes those as kernel arguments), and reading the 4-byte error flag of
    bounds-checked kernels."""
    driver = sys.modules["pycuda.driver"]
    copy_back = driver.memcpy_dtoh

    def refuse(*args, **kwargs):
        raise AssertionError("host round trip on the device path")

    def flag_only(dest, src):
        if dest.dtype != np.int32 or dest.size != 1:
            refuse()
        copy_back(dest, src)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "memcpy_dtoh", flag_only)
        mp.setattr(CUDAProgram, "_host_step", refuse)
        yield


def on_cpu_and_device(make, *arrays, grad=False):
    """make(*tensors) on CPU tensors and on cuda tensors: ((cpu result, cpu grads), (device ones)); the
    gradients are those of sum(result * weights) for fixed weights (uploaded: no extra kernels to build)."""
    out, weights = [], None
    for device in ("cpu", "cuda"):
        ts = [tt.tensor(a, device=device, requires_grad=grad) for a in arrays]
        with on_device_only() if device == "cuda" else contextlib.nullcontext():
            r = make(*ts)
            if grad:
                if weights is None:
                    weights = np.random.default_rng(1).standard_normal(r.shape).astype(r.detach().numpy().dtype)
                r.backward(tt.tensor(weights, device=device))
        out.append((r.cpu().detach().numpy(), [t.grad.cpu().numpy() for t in ts] if grad else []))
    return out
