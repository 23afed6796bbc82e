"""Accuracy of the float32 transcendentals written in IR (codegen.llvm_math), in ulp against float64 numpy.

Inputs: random bit patterns (every finite float32 magnitude, denormals included), dense
samples of the interesting ranges, and the special values.
"""
from __future__ import annotations

import numpy as np
import pytest

from codegen.kernel import Arg, Buffer, IndexMap
from codegen.scalar import lower
from codegen.templates import elementwise_kernel
from tracetorch.dtypes import float32, float64

REFERENCE = {
    "exp": np.exp, "log": np.log, "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "log1p": np.log1p,
    "expm1": np.expm1, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}
MAX_ULP = {"exp": 1.5, "log": 1.5, "sin": 1.0, "cos": 1.0, "tanh": 2.0, "log1p": 3.0, "expm1": 3.0, "sigmoid": 3.0}
SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.17e-38, 3.4e38, -3.4e38, 88.72, 88.73, -87.3,
            -103.9, -104.0, 0.625, -0.625, 1.0, -1.0, np.pi, -np.pi, np.pi / 2, 1e-8, -1e-8]


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2 ** 32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    dense = [rng.uniform(-10, 10, 100_000), rng.uniform(-1, 1, 50_000) * 1e-3, rng.uniform(-100, 100, 50_000),
             rng.uniform(0, 2, 50_000)]
    return np.concatenate([np.array(SPECIALS, np.float32), bits[np.isfinite(bits)]] +
                          [d.astype(np.float32) for d in dense])


@pytest.fixture(scope="module")
def computed(run):
    xs = _inputs()
    x = Buffer("x", float32, xs.shape)
    kernels, outs = [], []
    for name in REFERENCE:
        y = Buffer(f"y_{name}", float32, xs.shape)
        expr = lower(f"{name}(x0)", [Arg("x0", float32)], float32)
        kernels.append(elementwise_kernel(name, xs.shape, {"x0": (x, IndexMap((1,)))}, [(y, expr)]))
        outs.append(y)
    got = run(kernels, {x: xs}, outs, name="float32_math")
    return xs, {name: got[f"y_{name}"] for name in REFERENCE}


def ulp_error(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in units of the float32 spacing at the exact value (denormal spacing at least)."""
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float32)
    spacing = np.maximum(np.spacing(np.abs(rounded)).astype(np.float64),
                         float(np.finfo(np.float32).smallest_subnormal))
    with np.errstate(invalid="ignore"):
        err = np.abs(got.astype(np.float64) - exact) / spacing
    agree = (np.isnan(got) & np.isnan(exact)) | (np.isinf(got) & (got == rounded))
    return np.where(agree, 0.0, err)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_float32_accuracy_in_ulp(computed, name):
    xs, got = computed
    with np.errstate(all="ignore"):
        exact = REFERENCE[name](xs.astype(np.float64))
    err = ulp_error(got[name], exact)
    worst = int(np.nanargmax(err))
    assert not np.any(np.isnan(err)), f"{name}: NaN where the reference is not (or the reverse)"
    assert err[worst] <= MAX_ULP[name], f"{name}({xs[worst]!r}) = {got[name][worst]!r}, exact {exact[worst]!r}: " \
                                        f"{err[worst]:.2f} ulp"


@pytest.mark.parametrize("name", ["exp", "log", "sin", "cos", "tanh"])
def test_special_values_match_ieee(computed, name):
    xs, got = computed
    special = xs[:len(SPECIALS)]
    with np.errstate(all="ignore"):
        want = REFERENCE[name](special.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(got[name][:len(SPECIALS)], want, rtol=3e-7, atol=0, equal_nan=True)


def test_float64_uses_full_precision(run):
    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.uniform(-30, 30, 4001), [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-300, 700.0]])
    x = Buffer("x", float64, xs.shape)
    kernels, outs = [], []
    for name in REFERENCE:
        y = Buffer(f"y_{name}", float64, xs.shape)
        kernels.append(elementwise_kernel(name, xs.shape, {"x0": (x, IndexMap((1,)))},
                                          [(y, lower(f"{name}(x0)", [Arg("x0", float64)], float64))]))
        outs.append(y)
    got = run(kernels, {x: xs}, outs, name="float64_math")
    with np.errstate(all="ignore"):
        for name, ref in REFERENCE.items():
            np.testing.assert_allclose(got[f"y_{name}"], ref(xs), rtol=1e-13, atol=1e-300, equal_nan=True,
                                       err_msg=name)
