"""Generators and random sampling.

A `Generator` holds its state as two 0-d int64 tensors (seed, offset). Each
draw reads them and advances the offset in place, so a compiled program sees
the generator state as an input it updates: fresh numbers each call,
reproducible under `manual_seed`, identical to eager.
"""
from __future__ import annotations

import time

import numpy as np

from . import dtypes as D
from .ops import REGISTRY as R
from .ops import random as RNG
from .ops.dispatch import STATE, apply
from .tensor import Tensor

RAND, RANDPERM = R["rand"], R["randperm"]


class Generator:
    def __init__(self, device="cpu"):
        self.seed_t = Tensor._make(np.zeros((), "int64"), D.int64)
        self.offset_t = Tensor._make(np.zeros((), "int64"), D.int64)
        self.manual_seed(67280421310721)

    def manual_seed(self, seed: int) -> "Generator":
        seed = int(seed)
        self.seed_t.fill_(seed % 2**63)     # in-place ops (not raw writes), so a tracer records the reseed
        self.offset_t.fill_(0)
        self._initial = seed
        return self

    def seed(self) -> int:
        s = time.time_ns() % 2**63
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        return self._initial

    def get_state(self) -> Tensor:
        from .creation import tensor
        return tensor([int(self.seed_t._data), int(self.offset_t._data)], dtype=D.int64)

    def set_state(self, state: Tensor) -> "Generator":
        seed, offset = (int(v) for v in state.tolist())
        self.seed_t.fill_(seed)
        self.offset_t.fill_(offset)
        return self

    def _advance(self, n: int) -> None:
        self.offset_t.add_(n)


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    return default_generator.manual_seed(seed)


def seed() -> int:
    return default_generator.seed()


def initial_seed() -> int:
    return default_generator.initial_seed()


def get_rng_state() -> Tensor:
    return default_generator.get_state()


def set_rng_state(state: Tensor) -> None:
    default_generator.set_state(state)


def _sizes(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    return tuple(int(s) for s in size)


def _draw(shape, dtype, generator, normal, device=None):
    gen = generator if generator is not None else default_generator
    dt = D.as_dtype(dtype) if dtype is not None else D.get_default_dtype()
    if not dt.is_floating_point:
        raise RuntimeError(f"{'randn' if normal else 'rand'}: expected a floating-point dtype, got {dt.name}")
    on_device = device is not None and str(device) != "cpu"
    seed, offset = gen.seed_t, gen.offset_t
    if on_device and STATE.tracer is None:      # drawn by a device kernel from the same counter-based stream
        seed, offset = seed.to(device), offset.to(device)
    out = apply(RAND, seed, offset, shape=shape, dtype=dt, normal=normal)
    gen._advance(RNG.draws(shape, normal))
    if on_device:
        out = out.to(device)        # traced: drawn from the CPU state, then moved (the device backend runs both)
    return out


def _device_of(x):
    return None if type(x._data) is np.ndarray else x.device


def rand(*size, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    out = _draw(_sizes(size), dtype, generator, False, device)
    return out.requires_grad_(True) if requires_grad else out


def randn(*size, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    out = _draw(_sizes(size), dtype, generator, True, device)
    return out.requires_grad_(True) if requires_grad else out


def rand_like(x, *, dtype=None, generator=None) -> Tensor:
    return _draw(x._data.shape, dtype or x._dtype, generator, False, _device_of(x))


def randn_like(x, *, dtype=None, generator=None) -> Tensor:
    return _draw(x._data.shape, dtype or x._dtype, generator, True, _device_of(x))


def randint(low=None, high=None, size=None, *, generator=None, dtype=None, device=None) -> Tensor:
    if size is None and isinstance(high, (tuple, list)):
        low, high, size = 0, low, high      # randint(high, size)
    if high is None:
        low, high = 0, low
    if low is None:
        low = 0                             # randint(high=5, size=...)
    if high is None:
        raise TypeError("randint() missing required argument 'high'")
    if size is None:
        raise TypeError("randint() missing required argument 'size'")
    if high <= low:
        raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={low} >= to={high}")
    u = _draw(tuple(size), D.float64, generator, False, device)
    out = (u * (high - low)).floor() + low
    return out.to(D.as_dtype(dtype) if dtype is not None else D.int64)


def randint_like(x, low, high=None, *, dtype=None, generator=None) -> Tensor:
    return randint(low, high, x.shape, generator=generator, dtype=dtype or x._dtype)


def randperm(n: int, *, generator=None, dtype=None, device=None) -> Tensor:
    gen = generator if generator is not None else default_generator
    on_device = device is not None and str(device) != "cpu"
    seed, offset = gen.seed_t, gen.offset_t
    if on_device and STATE.tracer is None:      # sorted on the device, the same permutation (as in _draw)
        seed, offset = seed.to(device), offset.to(device)
    out = apply(RANDPERM, seed, offset, n=int(n))
    gen._advance(int(n))
    if on_device:
        out = out.to(device)
    return out if dtype is None else out.to(dtype)


def normal(mean=0.0, std=1.0, size=None, *, generator=None, dtype=None) -> Tensor:
    if size is None:
        ref = mean if isinstance(mean, Tensor) else std
        if not isinstance(ref, Tensor):
            raise TypeError("normal(): give a size, or a tensor mean or std")
        shape = tuple(np.broadcast_shapes(
            *(t._data.shape for t in (mean, std) if isinstance(t, Tensor))))
        dtype = dtype or ref._dtype
        device = _device_of(ref)
    else:
        shape, device = tuple(size), None
    if isinstance(std, Tensor):
        if (std < 0).any():
            raise RuntimeError("normal expects all elements of std >= 0.0")
    elif std < 0:
        raise RuntimeError(f"normal expects std >= 0.0, but found std {std:g}")
    return _draw(shape, dtype, generator, True, device) * std + mean


def bernoulli(p, *, generator=None) -> Tensor:
    return (_draw(p._data.shape, p._dtype, generator, False, _device_of(p)) < p).to(p._dtype)
