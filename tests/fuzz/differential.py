"""Run a generated program eagerly and compiled, and compare everything it produced.

Compared, in float64: every returned value (tensors, numbers, gradient
tuples), every input tensor and the captured `state` after the call (in-place
writes), and the inputs' `.grad` (from a `backward()` inside the program, or,
when outputs require grad and the program has none, from a backward outside
it through the compiled function's backward program).

Tolerance: |compiled - eager| <= 1e-9 * |eager| + 1e-12 elementwise, NaN
where eager has NaN, the same infinities; integer and bool results exactly.
The absolute floor covers results that cancel to ~0 (a backend may sum in
another order: LLVM reductions are reassociated); 1e-9 relative is ~10^7
float64 ulps, far above reordering error for these small tensors and far
below any real bug. Inputs are multiples of 0.25, so sums and products of
them are exact in any order.

The compiled function is traced on one set of values (set 0) and compared on
another (set 1), so a value baked into the program shows up as a mismatch. If
set 1 takes another path (a value guard), it is run again, now from the
program cached for that path: the comparison checks a compiled run. (Except
where a float is guarded by its exact value and the backend rounds it
differently from eager: that call retraces by design; counted in the summary.)
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

import tracetorch as tt
from program_gen import FLOAT, Program

RTOL, ATOL = 1e-9, 1e-12
STATS: dict = {}            # backend -> Counter, for the summary at the end of the session


class EagerFailed(Exception):
    """The program raises eagerly (an autograd conflict with an in-place write): not a valid case."""


@dataclass
class Outcome:
    outputs: list           # flattened results: arrays, numbers, None
    inputs: list            # input arrays after the call
    state: np.ndarray
    grads: list             # each input's .grad (array or None)


def run(fn, program: Program, state, which: int) -> Outcome:
    values = program.values(which)
    with tt.no_grad():
        state.copy_(tt.tensor(values["state"], dtype=tt.float64))
    args = [tt.tensor(values[i.name], dtype=getattr(tt, i.dtype), requires_grad=i.requires_grad)
            for i in program.inputs]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = fn(*args)
        leaves = _flatten(result)
        diff = [t for t in leaves if isinstance(t, tt.Tensor) and t.requires_grad]
        if diff and not program.backward_inside:
            sum((t * _weights(t.shape)).sum() for t in diff).backward()
    return Outcome([_array(x) for x in leaves], [a.detach().numpy().copy() for a in args],
                   state.detach().numpy().copy(), [_array(a.grad) for a in args])


def compare(program: Program, backend: str) -> list[str]:
    """Mismatches between eager and `tt.compile(backend=...)` on this program ([] when they agree)."""
    stats = STATS.setdefault(backend, Counter())
    fn, state = program.function()
    try:
        run(fn, program, state, 0)
        expected = run(fn, program, state, 1)
    except Exception as e:
        stats["rejected (eager raises)"] += 1
        raise EagerFailed(f"{type(e).__name__}: {e}") from e
    fn, state = program.function()
    compiled = tt.compile(fn, backend=backend)
    try:
        run(compiled, program, state, 0)                     # traces (the call itself runs eagerly)
        got = run(compiled, program, state, 1)
        if compiled.stats()["cache_hits"] == 0:              # set 1 took another path: its trace is cached now
            got = run(compiled, program, state, 1)
    except Exception as e:
        return [f"compiled raised {type(e).__name__}: {e}"]
    s = compiled.stats()
    stats["programs"] += 1
    stats["value-guard paths"] += s["traces"] > 1
    stats["gradients compared"] += any(g is not None for g in expected.grads)
    problems = []
    if not s["cache_hits"]:
        if backend != "interp" and _rounding_misses(s):
            stats["no compiled run (a float guarded by value)"] += 1
        else:
            problems.append(f"no compiled run happened: {s}")
    problems += _diff("outputs", got.outputs, expected.outputs)
    problems += _diff("inputs after the call", got.inputs, expected.inputs)
    problems += _diff("state after the call", [got.state], [expected.state])
    problems += _diff("input .grad", got.grads, expected.grads)
    stats["mismatches"] += bool(problems)
    return problems


def _rounding_misses(stats: dict) -> bool:
    """Whether every guard that failed compares a float's exact value (`float(t)`, a number from
    `.item()` made a constant). The trace recorded the eager value; a backend that rounds
    differently (reassociated sums, vectorized exp) computes other last bits even on the same
    inputs, so such a guard misses by design, and the call retraces (an eager, correct result)."""
    keys = stats["guard_failures"]
    return bool(keys) and all(k.startswith("`float(t)`") or (k.startswith("a number from the trace")
                                                              and "compared" not in k and "truth" not in k)
                              for k in keys)


def _diff(what: str, got: list, want: list) -> list[str]:
    if len(got) != len(want):
        return [f"{what}: {len(got)} values, eager has {len(want)}"]
    out = []
    for k, (g, w) in enumerate(zip(got, want)):
        problem = _mismatch(g, w)
        if problem:
            out.append(f"{what}[{k}]: {problem}\n  compiled: {g!r}\n  eager:    {w!r}")
    return out


def _mismatch(g, w) -> str | None:
    if w is None or g is None:
        return None if g is w else "one is None"
    if not isinstance(w, np.ndarray):
        if isinstance(g, np.ndarray) or type(g) is not type(w):
            return f"type {type(g).__name__}, eager {type(w).__name__}"
        g, w = np.asarray(g), np.asarray(w)
    if g.shape != w.shape or g.dtype != w.dtype:
        return f"shape/dtype {g.shape} {g.dtype}, eager {w.shape} {w.dtype}"
    if w.dtype.kind != "f":
        return None if np.array_equal(g, w) else "values differ"
    nan_ok = np.isnan(g) == np.isnan(w)
    inf_ok = np.where(np.isinf(g) | np.isinf(w), g == w, True)
    with np.errstate(all="ignore"):
        close = np.where(np.isfinite(g) & np.isfinite(w), np.abs(g - w) <= RTOL * np.abs(w) + ATOL, True)
    bad = ~(nan_ok & inf_ok & close)
    return f"{int(bad.sum())} of {w.size} elements differ" if bad.any() else None


def _flatten(x) -> list:
    if isinstance(x, (tuple, list)):
        return [leaf for e in x for leaf in _flatten(e)]
    return [x]


def _array(x):
    if isinstance(x, tt.Tensor):
        return x.detach().numpy().copy()
    return x


def _weights(shape) -> tt.Tensor:
    """Fixed, distinct output weights for the backward outside the program."""
    n = int(np.prod(shape))
    return tt.tensor((np.arange(n) % 7 - 3).reshape(shape) * 0.5, dtype=getattr(tt, FLOAT))
