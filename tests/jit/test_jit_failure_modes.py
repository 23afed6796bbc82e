"""The known failure modes of tracing JITs (TinyJit's footgun tests, shared/LLVM.md): each is a
guard, a copy or a clear error here."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt

SCALE = 2.0


def _np(t):
    return t.detach().numpy()


# ---------------------------------------------------------------- Python constants and branches
def test_global_constant_changed_is_not_frozen():
    global SCALE

    @tt.compile
    def f(x):
        return x * SCALE

    x = tt.ones(2)
    assert _np(f(x)).tolist() == [2, 2]
    SCALE = 5.0
    try:
        assert _np(f(x)).tolist() == [5, 5]
    finally:
        SCALE = 2.0
    assert _np(f(x)).tolist() == [2, 2]
    assert f.stats()["traces"] == 2 and "SCALE" in str(f.stats()["guard_failures"])


def test_closure_constant_changed_is_not_frozen():
    scale = 3

    @tt.compile
    def f(x):
        return x + scale

    assert float(f(tt.zeros(()))) == 3
    scale = 4       # noqa: F841  (read by f through its closure cell)
    assert float(f(tt.zeros(()))) == 4


def test_python_branch_on_tensor_value_takes_both_paths():
    @tt.compile
    def f(x):
        if (x > 0).all():
            return x.log()
        return x.abs()

    pos, neg = tt.tensor([1.0, 2.0]), tt.tensor([-1.0, 3.0])
    for _ in range(3):
        np.testing.assert_allclose(_np(f(pos)), np.log([1.0, 2.0]))
        np.testing.assert_allclose(_np(f(neg)), [1.0, 3.0])


# ---------------------------------------------------------------- list inputs
def test_list_inputs_are_read_every_call():
    @tt.compile
    def f(xs):
        return sum(x * (i + 1) for i, x in enumerate(xs))

    a, b = tt.ones(2), tt.ones(2)
    assert _np(f([a, b])).tolist() == [3, 3]
    assert _np(f([a * 2, b])).tolist() == [4, 4]                # new values in the same list structure
    assert _np(f([a, b, a])).tolist() == [6, 6]                 # a longer list: a new trace
    assert f.stats()["traces"] == 2


# ---------------------------------------------------------------- writes to inputs
def test_writes_to_an_input_are_replayed():
    @tt.compile
    def f(x, y):
        x.mul_(2)
        y[0] = x.sum()
        return x

    x, y = tt.ones(3), tt.zeros(2)
    for k in range(1, 4):
        f(x, y)
        assert _np(x).tolist() == [2 ** k] * 3
        assert _np(y).tolist() == [3 * 2 ** k, 0]


# ---------------------------------------------------------------- .item() during capture
def test_item_flowing_into_tensor_math_is_recomputed_not_frozen():
    @tt.compile
    def f(x):
        m = x.max().item()
        return x / m, m

    for k in (1.0, 2.0, 4.0):
        out, m = f(tt.tensor([k, k / 2]))
        assert m == k and _np(out).tolist() == [1.0, 0.5]
    assert f.stats()["traces"] == 1                             # no guard on the value


def test_item_used_as_a_shape_is_guarded():
    @tt.compile
    def f(x, n):
        return x[: int(n.item())].sum()

    x = tt.arange(10.0)
    assert float(f(x, tt.tensor(3))) == 3
    assert float(f(x, tt.tensor(5))) == 10
    assert float(f(x, tt.tensor(3))) == 3
    assert f.stats()["traces"] == 2


# ---------------------------------------------------------------- returned outputs
def test_returned_outputs_are_not_overwritten_by_the_next_call():
    @tt.compile
    def f(x):
        y = x + 1
        return y, y.reshape(-1), x.reshape(-1)

    first = f(tt.zeros(2, 2))
    second = f(tt.ones(2, 2))
    third = f(tt.full((2, 2), 5.0))
    assert _np(first[0]).tolist() == [[1, 1], [1, 1]] and _np(second[0]).tolist() == [[2, 2], [2, 2]]
    assert _np(first[1]).tolist() == [1] * 4 and _np(third[2]).tolist() == [5] * 4
    x = tt.zeros(2, 2)
    out = f(x)[2]
    x.add_(1)                                   # the result is a view of the input, as eagerly
    assert _np(out).tolist() == [1] * 4
    assert _np(second[1]).tolist() == [2] * 4   # a view of an intermediate is the caller's own


# ---------------------------------------------------------------- instance-method caches
class Scaler:
    def __init__(self, k):
        self.k = tt.tensor(float(k))

    @tt.compile
    def __call__(self, x):
        return x * self.k


def test_method_caches_are_per_instance():
    a, b = Scaler(2), Scaler(3)
    x = tt.ones(2)
    for _ in range(2):
        assert _np(a(x)).tolist() == [2, 2] and _np(b(x)).tolist() == [3, 3]
    assert a.__call__.stats()["traces"] == 1 and b.__call__.stats()["traces"] == 1
    assert a.__call__ is not b.__call__


# ---------------------------------------------------------------- shapes locked at capture
def test_a_new_shape_is_a_new_trace_not_a_wrong_answer():
    @tt.compile
    def f(x):
        return x.sum(0)

    assert _np(f(tt.ones(2, 3))).tolist() == [2, 2, 2]
    assert _np(f(tt.ones(4, 2))).tolist() == [4, 4]
    with pytest.raises(RuntimeError):               # a genuinely bad input still fails like eager
        tt.compile(lambda x: x @ x)(tt.ones(2, 3))


def test_item_compared_is_guarded_on_the_outcome_only():
    @tt.compile
    def f(x):
        return x * 2 if x.max().item() > 1 else x

    assert _np(f(tt.tensor([2.0]))).tolist() == [4.0]
    assert _np(f(tt.tensor([3.0]))).tolist() == [6.0]           # another value, same outcome: cached
    assert _np(f(tt.tensor([0.5]))).tolist() == [0.5]           # the other outcome: a second trace
    assert f.stats()["traces"] == 2


def test_tolist_numbers_used_in_math_are_recomputed():
    @tt.compile
    def f(x):
        a, b = x.tolist()
        return x * (a + b) - a / b

    for a, b in ((1.0, 2.0), (3.0, -1.0), (0.5, 4.0)):
        np.testing.assert_allclose(_np(f(tt.tensor([a, b]))), [a * (a + b) - a / b, b * (a + b) - a / b],
                                   rtol=1e-6)
    assert f.stats()["traces"] == 1


WEIGHT = tt.ones(2)


def test_a_global_tensor_rebound_is_read_anew_not_stale():
    global WEIGHT
    keep_old = WEIGHT                                   # the old tensor stays alive elsewhere

    @tt.compile
    def f(x):
        return x * WEIGHT

    assert _np(f(tt.ones(2))).tolist() == [1, 1]
    WEIGHT = tt.full((2,), 3.0)
    try:
        assert _np(f(tt.ones(2))).tolist() == [3, 3]
        WEIGHT.mul_(2)                                  # in place: same object, read by reference
        assert _np(f(tt.ones(2))).tolist() == [6, 6]
    finally:
        WEIGHT = keep_old
    assert f.stats()["traces"] == 2 and "WEIGHT is the traced object" in f.stats()["guard_failures"]


def test_an_attribute_rebound_on_a_plain_object_is_read_anew():
    s = Scaler(2)
    x = tt.ones(2)
    old = s.k
    assert _np(s(x)).tolist() == [2, 2]
    s.k = tt.tensor(5.0)
    assert _np(s(x)).tolist() == [5, 5] and old is not s.k
