"""`tt.cuda`: availability (pycuda is an optional extra, probed lazily), seeding and the memory statistics
of the caching allocator behind `device="cuda"` tensors (runtime/cuda_memory.py)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _probe() -> int:
    try:
        import pycuda.driver as drv
        drv.init()
        return drv.Device.count()
    except Exception:
        return 0


def is_available() -> bool:
    return _probe() > 0


def device_count() -> int:
    return _probe()


def current_device() -> int:
    return 0


def synchronize(device=None) -> None:
    if is_available():
        from runtime.cuda_engine import _driver
        _driver().Context.synchronize()


def manual_seed(seed: int) -> None:
    """The CUDA generator is the default generator: seeding it seeds both (device random numbers are drawn
    from the same counter-based stream, so a seeded run gives the same numbers on either device)."""
    from .random import manual_seed as seed_all
    seed_all(seed)


manual_seed_all = manual_seed


def _allocator():
    """The allocator if device memory was ever used (statistics of an unused device are zeros)."""
    from . import device_array
    rt = device_array._RUNTIME
    return None if rt is None else rt.allocator


def memory_allocated(device=None) -> int:
    """Bytes held by live device tensors (rounded up to the allocator's size classes)."""
    a = _allocator()
    return 0 if a is None else a.allocated


def max_memory_allocated(device=None) -> int:
    a = _allocator()
    return 0 if a is None else a.peak


def memory_reserved(device=None) -> int:
    """Bytes taken from the driver: live blocks plus the cache of freed ones."""
    a = _allocator()
    return 0 if a is None else a.reserved


def reset_peak_memory_stats(device=None) -> None:
    a = _allocator()
    if a is not None:
        a.reset_peak()


def empty_cache() -> None:
    """Give the cached (freed) blocks back to the driver."""
    a = _allocator()
    if a is not None:
        a.empty_cache()
