"""tt.compiler.profile(): per-call and per-kernel times of compiled calls. Profiling changes no result
(compiled == eager, in and out of a profile), its steps are the program's fusion groups (the names
`.explain()` prints), and its figures add up: step times within the run, runs within the calls."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.jit.backends
import tracetorch.nn as nn
from runtime import profiler
from training_steps import training_step

pytestmark = pytest.mark.skipif("llvm" not in tracetorch.jit.backends.BACKENDS,
                                reason="the LLVM backend is not registered")


def _mlp_step():
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = tt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return training_step(model, opt), model


def _data():
    rng = np.random.default_rng(0)
    return tt.tensor(rng.standard_normal((32, 12), dtype=np.float32)), tt.tensor(rng.integers(0, 4, 32))


def test_a_profiled_training_step_matches_eager_and_reports_every_kernel():
    x, y = _data()
    step_e, model_e = _mlp_step()
    step_c, model_c = _mlp_step()
    f = tt.compile(step_c, backend="llvm")
    losses_e = [step_e(x, y).item() for _ in range(6)]
    losses_c = [f(x, y).item() for _ in range(2)]          # traced (momentum buffers appear), then cached
    with tt.compiler.profile() as prof:
        losses_c += [f(x, y).item() for _ in range(4)]
    np.testing.assert_allclose(losses_c, losses_e, rtol=1e-5)
    for p_e, p_c in zip(model_e.parameters(), model_c.parameters()):
        np.testing.assert_allclose(p_c.detach().numpy(), p_e.detach().numpy(), rtol=1e-5, atol=1e-6)

    (fn,) = prof.functions()
    assert fn.name == f.name and fn.calls == 4 and fn.traced == 0
    forward = [p for p in fn.programs if p.kind == "forward"]
    assert len(forward) == 1 and forward[0].runs == 4
    executable = f.programs[0].executable
    names = [g.name for g in executable.lowered.groups]
    steps = forward[0].steps
    assert len(steps) == executable.kernels_after_fusion           # every step timed, none twice
    assert [s.name for s in steps if not s.name.startswith("writeback")] == names
    assert sum(s.seconds for s in steps) <= forward[0].seconds * (1 + 1e-9)
    assert sum(p.seconds for p in fn.programs) <= fn.seconds       # the programs run inside the calls
    assert all(s.per_run > 0 and 0 < s.share <= 1 for s in steps)
    matmuls = [(s, g) for s, g in zip(steps, executable.lowered.groups) if g.kind == "extern"
               and g.extern.op.name == "matmul"]
    assert matmuls
    for s, g in matmuls:                                            # 2 M N K, from the operands' shapes
        a, b = g.extern.inputs[0].shape, g.extern.inputs[1].shape
        kinds = ("serial", "parallel") if executable.backend.generated_matmuls else ("extern",)
        assert s.kind in kinds and s.flops == 2 * a[-2] * a[-1] * b[-1]
    text = prof.table(sort_by="order")
    for name in names:
        assert name[:28] in text
    assert "4 calls" in text and "matmul" in text
    rows = prof.rows()
    assert len(rows) == sum(len(p.steps) for p in fn.programs) and {r["function"] for r in rows} == {f.name}


def test_calls_that_trace_are_counted_apart():
    f = tt.compile(lambda a: (a * 2).exp(), backend="llvm")
    with tt.compiler.profile() as prof:
        f(tt.ones(5))
        f(tt.ones(5))
        f(tt.ones(7))                                      # a new shape: traced again
    (fn,) = prof.functions()
    assert (fn.calls, fn.traced) == (1, 2) and fn.traced_seconds > 0
    assert "2 more traced" in str(prof)


def test_a_one_call_program_runs_kernel_by_kernel_with_the_same_results():
    def g(a, b):
        s = (a * b).sum(1, keepdim=True)
        return (a - s).tanh() + b.sum()                     # a reduction, then elementwise: several kernels

    a = tt.randn(6, 5, dtype=tt.float64)
    b = tt.randn(6, 5, dtype=tt.float64)
    f = tt.compile(g, backend="llvm")
    plain = f(a, b).numpy()
    compiled = f.programs[0].executable.compiled
    assert compiled._steps is None                          # normally one native call
    with tt.compiler.profile() as prof:
        profiled = f(a, b).numpy()
    np.testing.assert_allclose(profiled, plain, rtol=1e-12)  # the one-call entry may group a sum otherwise
    np.testing.assert_allclose(plain, g(a, b).numpy(), rtol=1e-12)
    (program,) = prof.functions()[0].programs
    assert len(program.steps) == f.programs[0].executable.kernels_after_fusion > 1
    assert {s.kind for s in program.steps} == {"serial"}
    assert compiled._steps is None                          # and it still is, after the profile


def test_a_backward_run_outside_the_call_is_reported():
    tt.manual_seed(0)
    lin = nn.Linear(6, 3)
    f = tt.compile(lambda x: lin(x).tanh().sum(), backend="llvm")
    x = tt.randn(4, 6)
    f(x).backward()
    lin.zero_grad()
    with tt.compiler.profile() as prof:
        f(x).backward()
    grad_c = lin.weight.grad.numpy().copy()
    lin.zero_grad()
    lin(x).tanh().sum().backward()
    np.testing.assert_allclose(grad_c, lin.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    kinds = {p.kind for fn in prof.functions() for p in fn.programs}
    assert {"forward", "backward"} <= kinds
    assert "backward program" in prof.table()


def test_calls_from_other_threads_are_recorded():
    f = tt.compile(lambda a: a.exp() * 3, backend="llvm")
    x = tt.randn(8)
    f(x)
    with tt.compiler.profile() as prof:
        threads = [threading.Thread(target=lambda: [f(x) for _ in range(5)]) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    (fn,) = prof.functions()
    assert fn.calls == 15 and fn.programs[0].runs == 15


def test_profiles_do_not_nest_and_stop_recording_on_exit():
    f = tt.compile(lambda a: a + 1, backend="llvm")
    with tt.compiler.profile() as prof:
        with pytest.raises(RuntimeError, match="already active"):
            with tt.compiler.profile():
                pass
        f(tt.ones(3))
    assert profiler.STATE.recorder is None
    f(tt.ones(3))
    assert prof.functions()[0].traced == 1 and prof.functions()[0].calls == 0     # the later call is not in it
    assert "finished" in repr(prof)


def test_an_empty_profile_and_bad_arguments():
    with tt.compiler.profile() as prof:
        pass
    assert "no compiled function ran" in prof.table() and prof.rows() == []
    with pytest.raises(ValueError, match="sort_by"):
        prof.table(sort_by="name")
    with pytest.raises(ValueError, match="top"):
        prof.table(top=0)


def test_interpreted_functions_are_timed_per_call_only():
    f = tt.compile(lambda a: a * 2, backend="interp")
    f(tt.ones(3))
    with tt.compiler.profile() as prof:
        out = f(tt.ones(3))
    np.testing.assert_array_equal(out.numpy(), np.full(3, 2.0))
    (fn,) = prof.functions()
    assert fn.calls == 1 and fn.programs == []
    assert "1 call" in prof.table()


def test_top_limits_the_rows_and_sums_the_rest():
    x, y = _data()
    step, _ = _mlp_step()
    f = tt.compile(step, backend="llvm")
    f(x, y)
    f(x, y)
    with tt.compiler.profile() as prof:
        f(x, y)
    text = prof.table(top=2)
    forward = next(p for p in prof.functions()[0].programs if p.kind == "forward")
    assert f"({len(forward.steps) - 2} more steps" in text
    slowest = max(forward.steps, key=lambda s: s.seconds)
    section = text.split("forward program")[1].splitlines()
    first_row = section[2]                                  # after the heading and the column titles
    assert first_row.split()[0] == slowest.name[:28]
