"""Donated write-backs (LLVM backend): an elementwise kernel stores a captured tensor's new value
straight into that tensor's array, so the commit copies nothing. Compiled == eager in every case,
a target the program may not write into gets a private copy, and a call that fails (a bounds check,
a value guard) leaves every target untouched."""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.jit.backends
import tracetorch.nn as nn
import tracetorch.nn.functional as F
from training_steps import training_step

pytestmark = pytest.mark.skipif("llvm" not in tracetorch.jit.backends.BACKENDS,
                                reason="the LLVM backend is not registered")


def _counters(n=6):
    a = tt.zeros(n, dtype=tt.float64)
    b = tt.zeros(n, dtype=tt.float64)

    def step(x):
        a.add_(x.exp())
        b.mul_(0.5).add_(a)            # reads a's new value after a was stored in place
        return a * b                   # elementwise: one kernel computes a, b and the result

    return step, a, b


def _run_both(make, calls, *args):
    """The same steps eagerly and compiled, from the same state: (eager results, compiled results,
    eager state, compiled state, compiled function)."""
    step_e, *state_e = make()
    step_c, *state_c = make()
    f = tt.compile(step_c, backend="llvm")
    res_e = [step_e(*args).detach().numpy().copy() for _ in range(calls)]
    res_c = [f(*args).detach().numpy().copy() for _ in range(calls)]
    return res_e, res_c, state_e, state_c, f


def test_a_captured_update_is_stored_in_place_and_matches_eager():
    x = tt.linspace(-1, 1, 6, dtype=tt.float64)
    res_e, res_c, (a_e, b_e), (a_c, b_c), f = _run_both(_counters, 4, x)
    np.testing.assert_allclose(res_c, res_e, rtol=1e-12)
    np.testing.assert_allclose(a_c.numpy(), a_e.numpy(), rtol=1e-12)
    np.testing.assert_allclose(b_c.numpy(), b_e.numpy(), rtol=1e-12)
    program = f.programs[0]
    assert len(program.donated) == 2                      # both a and b
    arrays = (a_c._data, b_c._data)
    versions = (a_c._version[0], b_c._version[0])
    f(x)
    assert a_c._data is arrays[0] and b_c._data is arrays[1]     # the same arrays, updated in place
    assert (a_c._version[0], b_c._version[0]) == (versions[0] + 1, versions[1] + 1)   # one commit each


def _sgd_step(layers):
    """(a training step of a fresh model made of `layers()` with SGD momentum, the model, its optimizer):
    the same initial weights every time."""
    tt.manual_seed(0)
    model = nn.Sequential(*layers())
    opt = tt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return training_step(model, opt), model, opt


def test_sgd_momentum_step_donates_parameters_and_buffers(monkeypatch):
    from tracetorch.jit.llvm_backend import LLVMBackend
    prefetched, prefetch = [], LLVMBackend.prefetch
    monkeypatch.setattr(LLVMBackend, "prefetch", lambda self, g: (prefetched.append(g.name), prefetch(self, g)))

    def make():
        return _sgd_step(lambda: [nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)])

    tt.manual_seed(1)
    x, y = tt.randn(16, 5, dtype=tt.float32), tt.randint(0, 3, (16,))
    res_e, res_c, (m_e, _), (m_c, _), f = _run_both(make, 5, x, y)
    np.testing.assert_allclose(res_c, res_e, rtol=1e-5)
    for (name, p_e), p_c in zip(m_e.named_parameters(), m_c.parameters()):
        np.testing.assert_allclose(p_c.detach().numpy(), p_e.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    for (name, p_e), p_c in zip(m_e.named_parameters(), m_c.parameters()):
        np.testing.assert_allclose(p_c.grad.numpy(), p_e.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    program = f.programs[0]
    # the optimizer's `momentum != 0` and the labels' range check are checked before the run
    assert program.value_guards and program.precheck is not None
    assert len(program.donated) >= 4                       # the weights and their momentum buffers
    from tracetorch.jit.llvm_backend import LLVMExecutable
    assert isinstance(program.precheck, LLVMExecutable)    # one native call, not numpy node by node
    assert prefetched == [program.precheck.graph.name]     # compiled meanwhile, while the step compiled
    bad = y.clone()
    bad[3] = 7                                             # out of range: the precheck's guard fails
    with pytest.raises(IndexError):
        f(x, bad)
    for (name, p_e), p_c in zip(m_e.named_parameters(), m_c.parameters()):   # nothing committed
        np.testing.assert_allclose(p_c.detach().numpy(), p_e.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    # the generated commit: one version bump per target and call, gradients bound to the run's new arrays
    params = list(m_c.parameters())
    f(x, y)
    versions, grads = [p._version[0] for p in params], [p.grad for p in params]
    f(x, y)
    assert [p._version[0] for p in params] == [v + 1 for v in versions]
    assert all(p.grad is not g and p.grad._data is not g._data for p, g in zip(params, grads))
    assert "_version[0] += 1" in program._commit_donated.source


def test_targets_sharing_one_storage_get_private_copies():
    base = tt.zeros(8, dtype=tt.float64)

    def make():
        store = base.clone()
        lo, hi = store[:4], store[4:]

        def step(x):
            lo.add_(x)
            hi.add_(lo * 2)
            return store.sum()
        return step, store

    x = tt.arange(4.0, dtype=tt.float64)
    res_e, res_c, (s_e,), (s_c,), _ = _run_both(make, 3, x)
    np.testing.assert_array_equal(res_c, res_e)
    np.testing.assert_array_equal(s_c.numpy(), s_e.numpy())


def test_a_non_contiguous_target_is_updated_through_a_copy():
    def make():
        w = tt.arange(12.0, dtype=tt.float64).reshape(3, 4)
        wt = w.t()                                         # a transposed view: not C-contiguous

        def step(x):
            wt.mul_(x)
            return w.sum()
        return step, w

    x = tt.full((4, 3), 1.5, dtype=tt.float64)
    res_e, res_c, (w_e,), (w_c,), _ = _run_both(make, 3, x)
    np.testing.assert_array_equal(res_c, res_e)
    np.testing.assert_array_equal(w_c.numpy(), w_e.numpy())


def test_a_value_guard_on_computed_data_turns_donation_off():
    a = tt.zeros(5, dtype=tt.float64)

    def step(x):
        a.add_(x)
        if (a.sum() > 10).item():                          # depends on the run: checked after it
            return a * 2
        return a * 1

    f = tt.compile(step, backend="llvm")
    x = tt.ones(5, dtype=tt.float64)
    f(x)
    assert f.programs[0].donated == {} and f.programs[0].precheck is None
    f(x)
    f(x)                                                   # sum goes 10 -> 15: the guard fails...
    np.testing.assert_array_equal(a.numpy(), np.full(5, 3.0))   # ...the retried call applied once
    assert f.stats()["traces"] == 2


def test_a_failed_precheck_leaves_the_targets_untouched_and_retraces():
    a = tt.zeros(3, dtype=tt.float64)
    scale = tt.tensor(1.0, dtype=tt.float64)

    def step(x):
        if scale != 0:                                     # a guard on a 0-d input: checked before the run
            a.add_(x * scale)
        return a * 2

    f = tt.compile(step, backend="llvm")
    x = tt.ones(3, dtype=tt.float64)
    f(x)
    f(x)
    assert f.programs[0].precheck is not None and f.programs[0].donated
    scale.fill_(0)
    f(x)                                                   # precheck fails: retraced, a unchanged
    np.testing.assert_array_equal(a.numpy(), np.full(3, 2.0))
    assert f.stats()["traces"] == 2


def test_an_index_error_before_the_update_commits_nothing():
    table = tt.arange(10.0, dtype=tt.float64)
    acc = tt.zeros(4, dtype=tt.float64)

    def step(idx):
        acc.add_(table[idx])                               # a bounds-checked gather, then the update
        return acc.sum()

    f = tt.compile(step, backend="llvm")
    good = tt.tensor([1, 2, 3, 4])
    f(good)
    f(good)
    before = acc.numpy().copy()
    with pytest.raises(IndexError):
        f(tt.tensor([1, 2, 30, 4]))
    np.testing.assert_array_equal(acc.numpy(), before)
    f(good)
    np.testing.assert_array_equal(acc.numpy(), before + [1, 2, 3, 4])


def test_updates_after_the_last_checked_step_are_still_donated():
    table = tt.arange(10.0, dtype=tt.float64)
    acc = tt.ones(4, dtype=tt.float64)
    calls = tt.zeros((), dtype=tt.float64)

    def step(idx):
        calls.add_(1)                                      # updated before the check: committed after the run
        total = table[idx].sum()                           # a bounds-checked gather: the last step that may fail
        acc.mul_(0.5).add_(total)                          # a later kernel: stored straight into acc
        return total

    f = tt.compile(step, backend="llvm")
    good = tt.tensor([1, 2, 3])
    want = np.ones(4)
    for _ in range(3):
        np.testing.assert_allclose(f(good).item(), 6.0)
        want = want * 0.5 + 6.0
    np.testing.assert_allclose(acc.numpy(), want, rtol=1e-12)
    assert calls.item() == 3
    program = f.programs[0]
    assert len(program.donated) == 2            # acc by its kernel; calls, updated first, by the final copy
    assert [k.name for k in program.executable.lowered.program.kernels][-1].startswith("writeback")
    arr = acc._data
    with pytest.raises(IndexError):
        f(tt.tensor([1, 20, 3]))
    assert acc._data is arr
    np.testing.assert_allclose(acc.numpy(), want, rtol=1e-12)       # nothing committed
    assert calls.item() == 3


def test_write_backs_computed_by_reductions_are_copied_in_by_the_last_kernel():
    table = tt.arange(12.0, dtype=tt.float64).reshape(3, 4)
    mean = tt.zeros(4, dtype=tt.float64)           # a running mean: updated by the reduction's epilogue

    def step(x, idx):
        mean.mul_(0.9).add_(0.1 * x.sum(0))
        return table[idx].sum()                    # a bounds-checked gather after the update

    eager_mean = tt.zeros(4, dtype=tt.float64)
    f = tt.compile(step, backend="llvm")
    x = tt.tensor(np.linspace(-1, 1, 20).reshape(5, 4))
    good = tt.tensor([0, 2])
    for _ in range(3):
        np.testing.assert_allclose(f(x, good).item(), 44.0)
        eager_mean.mul_(0.9).add_(0.1 * x.sum(0))
    np.testing.assert_allclose(mean.numpy(), eager_mean.numpy(), rtol=1e-12)
    program = f.programs[0]
    kinds = [g.kind for g in program.executable.lowered.groups]
    assert "reduction" in kinds and len(program.donated) == 1
    assert program.executable.lowered.program.kernels[-1].name.startswith("writeback")
    arr, version = mean._data, mean._version[0]
    with pytest.raises(IndexError):
        f(x, tt.tensor([0, 7]))
    assert mean._data is arr and mean._version[0] == version
    np.testing.assert_allclose(mean.numpy(), eager_mean.numpy(), rtol=1e-12)    # nothing committed
    f(x, good)
    assert mean._data is arr                        # stored into the tensor's own array
    np.testing.assert_allclose(mean.numpy(), (eager_mean * 0.9 + 0.1 * x.sum(0)).numpy(), rtol=1e-12)


def test_index_arithmetic_by_constants_does_not_turn_donation_off():
    w = tt.zeros(4, 3, dtype=tt.float64)

    def step():
        w.add_(tt.rand(3, 4, dtype=tt.float64).t())    # draws read transposed: positions from the flat index
        return w * 2.0

    f = tt.compile(step, backend="llvm")
    eager_w = tt.zeros(4, 3, dtype=tt.float64)
    tt.manual_seed(3)
    for _ in range(3):
        f()
    tt.manual_seed(3)
    for _ in range(3):
        eager_w.add_(tt.rand(3, 4, dtype=tt.float64).t())
    np.testing.assert_array_equal(w.numpy(), eager_w.numpy())
    assert "floordiv" in str(f.programs[0].executable.lowered.program)   # (the kernel divides by constants)
    lowered = f.programs[0].executable.lowered
    assert len(lowered.donated) == 2 and len(lowered.copied) == 1   # w by its kernel, the offset by the copy


def test_dropout_before_the_update_keeps_donation_on():
    def make():             # the second mask is drawn after the generator's offset is updated
        return _sgd_step(lambda: [nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 8), nn.Dropout(0.2),
                                  nn.Linear(8, 3)])

    tt.manual_seed(1)
    x, y = tt.randn(16, 5, dtype=tt.float32), tt.randint(0, 3, (16,))
    (step_e, m_e, _), (step_c, m_c, _) = make(), make()
    f = tt.compile(step_c, backend="llvm")
    tt.manual_seed(2)                                      # the same masks in both runs
    res_e = [step_e(x, y).item() for _ in range(4)]
    tt.manual_seed(2)
    res_c = [f(x, y).item() for _ in range(4)]
    np.testing.assert_allclose(res_c, res_e, rtol=1e-5)
    for (name, p_e), p_c in zip(m_e.named_parameters(), m_c.parameters()):
        np.testing.assert_allclose(p_c.detach().numpy(), p_e.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert len(f.programs[0].donated) >= 6                 # the parameters at least (random masks never fail)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_sigint_while_donated_updates_run_finishes_the_call():
    """Real SIGINTs at different moments of a call whose parallel kernels store into their targets:
    the interrupt is held until the call is finished and committed, so the targets never disagree."""
    n = 1 << 19
    a = tt.zeros(n, dtype=tt.float64)
    b = tt.zeros(n, dtype=tt.float64)

    def step(x):
        a.add_(x.sin().exp())
        total = a.sum()                                    # a reduction between the two updates:
        b.add_(x.sin().exp() * 2 * (total > -1))           # b is written by a later kernel than a
        return b - 2 * a

    f = tt.compile(step, backend="llvm")
    x = tt.linspace(-3, 3, n, dtype=tt.float64)
    f(x)
    f(x)
    assert f.programs[0].donated
    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    try:
        for round_ in range(8):
            timer = threading.Timer((round_ * 0.37) % 1 * 0.004, os.kill, (os.getpid(), signal.SIGINT))
            try:
                armed[0] = True
                timer.start()
                for _ in range(1000):
                    f(x)
            except KeyboardInterrupt:
                pass
            finally:
                armed[0] = False
                timer.join()
            np.testing.assert_array_equal(b.numpy(), 2 * a.numpy(), err_msg=f"round {round_}")
    finally:
        signal.signal(signal.SIGINT, old)
    assert np.abs(f(x).numpy()).max() == 0


def test_a_target_made_read_only_between_calls_is_not_written():
    # the same arrays as the last call skip the layout and aliasing checks, never the writeability one
    x = tt.linspace(-1, 1, 6, dtype=tt.float64)
    step, a, b = _counters()
    f = tt.compile(step, backend="llvm")
    for _ in range(3):
        f(x)
    assert f.programs[0].donated
    before = a.numpy().copy()
    a._data.flags.writeable = False
    with pytest.raises(RuntimeError, match="read-only"):
        f(x)
    np.testing.assert_array_equal(a._data, before)          # the program wrote into a private copy
    a._data.flags.writeable = True
    f(x)                                                     # and donates again once it may
    np.testing.assert_array_less(before, a.numpy())


def test_adam_with_weight_decay_updates_parameter_and_moments_in_place():
    # the moments read the parameter (L2 weight decay) and the parameter reads the moments: the kernel
    # loads all three before storing any, so all are donated, no write-back copy kernel, == eager
    def make():
        tt.manual_seed(2)
        model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
        opt = tt.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.1)
        return training_step(model, opt, F.mse_loss), model, opt

    x, y = tt.randn(10, 6, dtype=tt.float64), tt.randn(10, 3, dtype=tt.float64)
    res_e, res_c, (m_e, o_e), (m_c, o_c), f = _run_both(make, 4, x, y)
    np.testing.assert_allclose(res_c, res_e, rtol=1e-12)
    for (name, p_e), p_c in zip(m_e.named_parameters(), m_c.parameters()):
        np.testing.assert_allclose(p_c.detach().numpy(), p_e.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(o_c.state[p_c][key].numpy(), o_e.state[p_e][key].numpy(), rtol=1e-12,
                                       atol=1e-14, err_msg=f"{name} {key}")
    program = f.programs[0]
    lowered = program.executable.lowered
    copies = [k for k in lowered.program.kernels if k.name.startswith("writeback")]
    copied = {b.shape for k in copies for b in k.written}  # the biases' updates come from their reductions
    assert (12, 6) not in copied and (3, 12) not in copied, copied
    assert len(program.donated) >= 12                      # 4 parameters and their 2 moments each
