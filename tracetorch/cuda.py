"""`tt.cuda`: CUDA availability, probed lazily (pycuda is an optional extra)."""
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


def synchronize(device=None) -> None:
    if is_available():
        import pycuda.driver as drv
        drv.Context.synchronize()


def manual_seed(seed: int) -> None:
    """The CUDA generator is the default generator: seeding it seeds both."""
    from .random import manual_seed as seed_all
    seed_all(seed)


manual_seed_all = manual_seed
