"""Counter-based random numbers.

A generator's state is two 0-d int64 tensors (seed, offset); draw i of a call is a pure
hash of (seed, offset + i), so eager mode, the interpreter and generated code
produce the same numbers, and a compiled program takes the state as an input
and returns it advanced (fresh masks every call, no recompiles).
"""
from __future__ import annotations

import numpy as np

from ..dtypes import as_dtype, int64
from .registry import RANDOM, Aval, register

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit hash."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def random_bits(seed: int, offset: int, n: int) -> np.ndarray:
    """n 64-bit words for counters offset .. offset+n-1 of stream `seed`."""
    key = np.uint64(_mix64_int((seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) % 2**64))
    ctr = np.arange(offset, offset + n, dtype=np.uint64)
    return mix64(ctr * _GOLDEN + key)


def _mix64_int(z: int) -> int:
    m = 2**64 - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def uniform(seed: int, offset: int, n: int, np_dtype) -> np.ndarray:
    """n floats in [0, 1) with the full mantissa of the dtype."""
    bits = random_bits(seed, offset, n)
    if np.dtype(np_dtype) == np.float64:
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return ((bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)).astype(np_dtype)


_SHORT_FLOAT_DIGITS = {"float16": 11, "bfloat16": 8}


def _rand(seed, offset, shape, dtype, normal):
    seed, offset = int(seed), int(offset)
    n = int(np.prod(shape, dtype=np.int64))
    np_dt = np.float64 if dtype.np == np.float64 else np.float32
    if not normal:
        out = uniform(seed, offset, n, np_dt)
        digits = _SHORT_FLOAT_DIGITS.get(dtype.name)
        if digits:      # keep the top bits the dtype holds (like torch), so rounding never yields 1.0
            out = np.floor(out * np.float32(2.0 ** digits)) * np.float32(2.0 ** -digits)
    else:
        u = uniform(seed, offset, 2 * n, np.float64)
        out = np.sqrt(-2.0 * np.log1p(-u[:n])) * np.cos(2 * np.pi * u[n:])
    return out.astype(dtype.np).reshape(shape)


def draws(shape, normal: bool) -> int:
    """How far one call advances the generator's offset."""
    n = int(np.prod(shape, dtype=np.int64))
    return 2 * n if normal else n


def _infer_rand(seed, offset, shape, dtype, normal):
    dt = as_dtype(dtype)
    if not dt.is_floating_point:
        raise TypeError(f"rand/randn: expected a floating-point dtype, got {dt.name}")
    return Aval(tuple(shape), dt)


RAND = register("rand", RANDOM, eager=_rand, infer=_infer_rand, lowering="rand",
                doc="uniform [0,1) or, with normal=True, standard normal (Box-Muller of two uniform draws)")


def _randperm(seed, offset, n):
    return np.argsort(random_bits(int(seed), int(offset), n), kind="stable").astype(np.int64)


RANDPERM = register("randperm", RANDOM, eager=_randperm, infer=lambda seed, offset, n: Aval((n,), int64),
                    lowering=None, doc="a random permutation of 0..n-1 (argsort of n random words)")
