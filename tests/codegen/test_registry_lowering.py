"""Every elementwise op of the registry, generated from its `lowering` string, against its eager kernel.

The registry is the source of truth: the dtypes each op is tested with are
the ones its `infer` accepts and its eager kernel computes in the inferred
dtype. All cases are compiled together as one program (one LLVM module).
"""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch  # noqa: F401  (fills the registry)
from codegen.kernel import Arg, Buffer, IndexMap
from codegen.scalar import lower
from codegen.templates import elementwise_kernel
from tracetorch.dtypes import (bfloat16, bool_, float16, float32, float64, int8, int16, int32, int64, uint8)
from tracetorch.ops.registry import ELEMENTWISE, REGISTRY, Aval

N = 1037  # odd: not a multiple of any vector width
CANDIDATES = (float32, float64, int32, int64, int8, uint8, bool_)
CAST_PAIRS = [(a, b) for a in (float32, float64, int32, int64, uint8, bool_, float16)
              for b in (float32, float64, int32, int64, int8, int16, uint8, bool_, float16, bfloat16) if a is not b]
FLOAT_SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 1e30, -1e30, 88.0, -88.0,
                  100.0, 3.14159265, 1e-7]


def _data(dtype, seed: int, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype is bool_:
        return rng.random(n) < 0.5
    if dtype.is_floating_point:
        body = np.concatenate([rng.standard_normal(n // 2) * 3, rng.uniform(-60, 60, n)])[:n - len(FLOAT_SPECIALS)]
        with np.errstate(over="ignore"):
            return np.concatenate([FLOAT_SPECIALS, body]).astype(dtype.np)
    info = np.iinfo(dtype.np)
    lo, hi = max(int(info.min), -1000), min(int(info.max), 1000)
    return rng.integers(lo, hi + 1, n).astype(dtype.np)


def _operands(name: str, dtypes) -> list[np.ndarray]:
    xs = [_data(dt, seed) for seed, dt in enumerate(dtypes)]
    if name in ("floor_divide", "remainder") and not dtypes[1].is_floating_point:
        xs[1] = np.where(xs[1] == 0, 1, xs[1]).astype(dtypes[1].np)
    if name == "pow" and not dtypes[1].is_floating_point:
        xs[0] = (xs[0] % 7 - 3).astype(dtypes[0].np)
        xs[1] = (np.abs(xs[1]) % 6).astype(dtypes[1].np)
    if name == "cast" and dtypes[0].is_floating_point:
        xs[0] = np.clip(np.nan_to_num(xs[0]), -100, 100).astype(dtypes[0].np)  # in range of every target
    if name == "cast" and dtypes[0] in (int32, int64):
        xs[0] = np.clip(xs[0], -100, 100).astype(dtypes[0].np)
    return xs


def _cases():
    """(op name, operand dtypes, attrs, output dtype) for every case the registry defines."""
    cases = []
    for name in sorted(n for n, op in REGISTRY.items() if op.kind == ELEMENTWISE):
        op = REGISTRY[name]
        arity = 3 if name == "where" else 2 if "x1" in op.lowering else 1
        if name == "cast":
            combos = [((a,), {"dtype": b}) for a, b in CAST_PAIRS]
        elif name == "where":
            combos = [((bool_, d, d), {}) for d in CANDIDATES]
        else:
            combos = [((d,) * arity, {}) for d in CANDIDATES]
        for dtypes, attrs in combos:
            try:
                out = op.infer(*[Aval((N,), d) for d in dtypes], **attrs).dtype
                small = [x[:8] for x in _operands(name, dtypes)]
                with np.errstate(all="ignore"):
                    got = np.asarray(op.eager(*small, **attrs))
            except (TypeError, ValueError, ZeroDivisionError):
                continue
            if got.dtype != out.np:
                continue    # the eager kernel disagrees with infer for this dtype: not a case the registry defines
            cases.append((name, dtypes, attrs, out))
    return cases


CASES = _cases()


def _case_id(case) -> str:
    name, dtypes, attrs, out = case
    return f"{name}-{'-'.join(d.name for d in dtypes)}" + (f"-to-{out.name}" if attrs else "")


@pytest.fixture(scope="module")
def results(run):
    kernels, inputs, outputs, expected = [], {}, [], {}
    for n, (name, dtypes, attrs, out_dt) in enumerate(CASES):
        op = REGISTRY[name]
        xs = _operands(name, dtypes)
        bufs = [Buffer(f"c{n}_x{i}", dt, (N,)) for i, dt in enumerate(dtypes)]
        args = [Arg(f"x{i}", dt) for i, dt in enumerate(dtypes)]
        expr = lower(op.lowering, args, out_dt)
        out = Buffer(f"c{n}_out", out_dt, (N,))
        kernels.append(elementwise_kernel(f"c{n}_{name}", (N,), {f"x{i}": (b, IndexMap((1,))) for i, b in
                                                                 enumerate(bufs)}, [(out, expr)]))
        inputs.update(zip(bufs, xs))
        outputs.append(out)
        with np.errstate(all="ignore"):
            expected[_case_id(CASES[n])] = (np.asarray(op.eager(*xs, **attrs)), f"c{n}_out")
    got = run(kernels, inputs, outputs, name="registry")
    return {case: (want, got[out]) for case, (want, out) in expected.items()}


def test_every_elementwise_op_has_cases():
    tested = {c[0] for c in CASES}
    every = {n for n, op in REGISTRY.items() if op.kind == ELEMENTWISE}
    assert tested == every
    assert len(CASES) > 100


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_lowering_matches_eager(results, case):
    want, got = results[_case_id(case)]
    out_dt = case[3]
    assert got.dtype == want.dtype and got.shape == want.shape
    if out_dt.is_floating_point:
        rtol = {float64: 1e-12, float32: 2e-6}.get(out_dt, 1e-2)
        atol = {float64: 1e-15, float32: 1e-7}.get(out_dt, 1e-3)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                                   equal_nan=True, err_msg=_case_id(case))
    else:
        np.testing.assert_array_equal(got, want, err_msg=_case_id(case))
