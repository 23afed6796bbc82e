"""Functionalization and write-backs: program state is updated exactly as eager updates it, once
per call, and never by an abandoned run."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch.jit.capture import Call
from tracetorch.jit.program import ValueGuardFailed


def _np(t):
    return t.detach().numpy()


def test_state_is_updated_exactly_once_per_call_across_guard_failures():
    counter = tt.zeros((), dtype=tt.int64)
    total = tt.zeros(3)

    @tt.compile
    def f(x):
        counter.add_(1)
        if x.sum() > 0:
            total.add_(x)
            return x * 2
        total.sub_(x)
        return x * 3

    expected = np.zeros(3)
    for k in range(9):
        x = tt.full((3,), float(k + 1) * (1 if k % 3 else -1))
        f(x)
        expected += np.abs(_np(x))
        assert int(counter) == k + 1
        np.testing.assert_allclose(_np(total), expected)
    s = f.stats()
    assert s["traces"] == 2 and s["value_guard_misses"] > 0, s


def test_an_abandoned_run_commits_nothing():
    buf = tt.zeros(2)
    rng = tt.random.default_generator

    @tt.compile
    def f(x):
        buf.add_(tt.rand(2))
        return x * 1 if bool(x > 0) else x * -1

    f(tt.tensor(1.0))
    program = f.programs[0]
    before = (_np(buf).copy(), int(rng.offset_t))
    with pytest.raises(ValueGuardFailed):
        program.run(Call.of((tt.tensor(-1.0),), {}))
    assert _np(buf).tolist() == before[0].tolist() and int(rng.offset_t) == before[1]


def test_a_run_that_fails_commits_nothing():
    buf = tt.zeros(3)

    @tt.compile
    def f(x, idx):
        buf.add_(1)
        return x[idx]

    x = tt.arange(3.0)
    f(x, tt.tensor([0, 2]))
    f(x, tt.tensor([1, 2]))
    assert _np(buf).tolist() == [2, 2, 2]
    with pytest.raises(Exception, match="out of bounds"):
        f(x, tt.tensor([1, 7]))
    assert _np(buf).tolist() == [2, 2, 2]


def test_random_numbers_are_fresh_each_call_and_reproducible():
    def step(x):
        return F.dropout(x, 0.5, training=True) + tt.randn(x.shape[0])

    compiled = tt.compile(step)
    x = tt.ones(64)
    tt.manual_seed(7)
    outs_c = [_np(compiled(x)).copy() for _ in range(4)]
    tt.manual_seed(7)
    outs_e = [_np(step(x)).copy() for _ in range(4)]
    for a, b in zip(outs_c, outs_e):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outs_c[2], outs_c[3])             # a new mask on every (replayed) call
    assert compiled.stats()["traces"] == 1 and compiled.stats()["cache_hits"] == 3


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_running_stats_match_eager(momentum):
    def make():
        tt.manual_seed(1)
        return tt.nn.BatchNorm1d(4, momentum=momentum)

    bn_c, bn_e = make(), make()
    f = tt.compile(bn_c)
    for k in range(4):
        x = tt.randn(8, 4) * (k + 1)
        np.testing.assert_allclose(_np(f(x)), _np(bn_e(x)), rtol=1e-6, atol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(_np(getattr(bn_c, name)), _np(getattr(bn_e, name)), rtol=1e-6)
    # momentum=None averages with 1 / num_batches_tracked, a tensor: no number to guard, one trace
    assert f.stats()["traces"] == 1


def test_grads_accumulate_across_calls_like_eager():
    def make():
        return tt.tensor([1.0, -2.0, 3.0], requires_grad=True)

    wc, we = make(), make()

    def step(w):
        (w * w).sum().backward()
        return w.grad * 1

    f = tt.compile(step)
    for _ in range(4):
        np.testing.assert_array_equal(_np(f(wc)), _np(step(we)))
    np.testing.assert_array_equal(_np(wc.grad), _np(we.grad))
    assert f.stats()["traces"] == 2                     # .grad absent at the first call, present after


def test_writes_through_views_and_detached_aliases():
    def make():
        return tt.arange(12.0).reshape(3, 4)

    bc, be = make(), make()

    def step(x):
        b = bc if x is not None else be
        b[1:, ::2] += x
        b.t()[0].mul_(-1)
        d = b.detach()
        d[2, 3] = b.sum()
        return b.diagonal().sum() if hasattr(b, "diagonal") else b[0].sum()

    f = tt.compile(lambda x: step(x))
    for k in range(3):
        x = tt.full((2, 2), float(k))
        f(x)
        b = be
        b[1:, ::2] += x
        b.t()[0].mul_(-1)
        b.detach()[2, 3] = b.sum()
    np.testing.assert_array_equal(_np(bc), _np(be))


def test_adam_state_created_on_the_first_step_then_compiled_steps_match_eager():
    def run(compiled):
        tt.manual_seed(3)
        w = tt.randn(5, 3, requires_grad=True)
        opt = tt.optim.Adam([w], lr=0.1)

        def step(x):
            opt.zero_grad()
            loss = (x @ w).tanh().sum()
            loss.backward()
            opt.step()
            return loss

        f = tt.compile(step, backend="interp") if compiled else step
        x = tt.randn(4, 5)
        losses = [float(f(x)) for _ in range(5)]
        return losses, w, opt, f

    lc, wc, oc, f = run(True)
    le, we, oe, _ = run(False)
    assert lc == le
    np.testing.assert_array_equal(_np(wc), _np(we))
    np.testing.assert_array_equal(_np(oc.state[wc]["exp_avg_sq"]), _np(oe.state[we]["exp_avg_sq"]))
    assert float(oc.state[wc]["step"]) == 5
    s = f.stats()
    assert s["traces"] == 2 and s["uncached_traces"] == 1 and s["cache_hits"] == 3, s


def test_temporary_tensors_from_python_data_become_constants():
    @tt.compile
    def f(x):
        return x[[2, 0]] + tt.tensor([10.0, 20.0])

    for k in range(3):
        assert _np(f(tt.arange(3.0) + k)).tolist() == [12 + k, 20 + k]
    assert f.stats()["traces"] == 1


def test_writes_through_data_alias_are_replayed():
    w = tt.ones(3, requires_grad=True)

    @tt.compile
    def shrink():
        w.data.mul_(0.5)            # the classic pre-`no_grad` idiom: an alias without autograd
        return w.sum()

    for k in range(1, 4):
        shrink()
        np.testing.assert_allclose(_np(w), [0.5 ** k] * 3)
    assert shrink.stats()["cache_hits"] == 2


def test_reseeding_inside_the_region_is_replayed():
    @tt.compile
    def f(x):
        tt.manual_seed(0)
        return x + tt.rand(3)

    outs = [_np(f(tt.zeros(3))).tolist() for _ in range(3)]
    tt.manual_seed(0)
    assert outs[0] == outs[1] == outs[2] == _np(tt.rand(3)).tolist()
    assert f.stats()["cache_hits"] == 2


def test_state_changed_behind_the_tracers_back_is_never_replayed():
    w = tt.ones(3)

    @tt.compile
    def f(x):
        y = x * w
        w.data = w * 2              # rebinds w's storage: not an op the trace can replay
        return y

    for k in range(3):
        np.testing.assert_array_equal(_np(f(tt.ones(3))), [2.0 ** k] * 3)
    s = f.stats()
    assert s["cache_hits"] == 0 and s["uncached_traces"] == 3, s
