"""Helpers for the device tests: op_samples' inputs as cuda tensors in the same layouts, and a runner
that compares an op on cuda tensors with the same op on CPU tensors."""
from __future__ import annotations

import numpy as np

import tracetorch as tt
from op_samples import as_tuple, assert_close, to_tensor


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
