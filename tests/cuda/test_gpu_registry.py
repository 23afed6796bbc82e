"""On a real GPU (`pytest -m cuda`): every registry op sample (tests/op_samples.py), in every dtype and
layout it lists, on cuda tensors against the same op on CPU tensors. Skips without a device."""
from __future__ import annotations

import pytest

import tracetorch as tt
from device_samples import check_sample_on_device
from op_samples import LAYOUTS, SAMPLES, op_samples

CASES = [(name, dt) for name, info in SAMPLES.items() for dt in info.dtypes]


@pytest.fixture(scope="module")
def gpu():
    if not tt.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.cuda
@pytest.mark.parametrize("name,dtype", CASES, ids=lambda c: getattr(c, "name", str(c)))
def test_registry_op_on_gpu_matches_cpu(name, dtype, gpu, rng):
    for s in op_samples(name, dtype, rng):
        layouts = LAYOUTS if any(getattr(v, "ndim", 0) for v in s.inputs) else LAYOUTS[:1]
        for layout in layouts:
            check_sample_on_device(s, layout, f"{name}[{dtype.name}] {s.desc}")
