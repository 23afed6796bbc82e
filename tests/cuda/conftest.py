"""Fixtures for `device="cuda"` tensors without a GPU: `fake_cuda` puts the fake pycuda in place (host
memory as device memory; kernels run by the CPU emulator, built with g++) for one test module."""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="module")
def fake_cuda(tmp_path_factory, fake_pycuda):
    """An emulated CUDA device for tensors, eager kernels and tt.compile; yields the fake's log."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found (the emulated CUDA device needs it)")
    import runtime.cuda_engine as engine_module
    import tracetorch.cuda
    import tracetorch.device_array as device_array
    from tracetorch.jit import backends, cuda_backend, cuda_eager
    from tracetorch.ops import dispatch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module, "_DRIVER", None)
        log = fake_pycuda.install(mp)
        tracetorch.cuda._probe.cache_clear()
        engine = engine_module.CUDAEngine(cache_dir=str(tmp_path_factory.mktemp("cuda-cache")))
        mp.setattr(engine_module, "_DEFAULT_ENGINE", engine)
        mp.setattr(device_array, "_RUNTIME", None)
        mp.setattr(cuda_backend.BACKEND, "_engine", engine)
        mp.setitem(backends.BACKENDS, "cuda", cuda_backend.BACKEND)
        mp.setattr(dispatch.DEVICE, "apply", None)
        mp.setattr(dispatch.DEVICE, "array", None)
        try:
            yield log
        finally:
            cuda_eager.clear_cache()
            tracetorch.cuda._probe.cache_clear()
