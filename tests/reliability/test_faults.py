"""Injected faults: a failing code generator or compiler, a damaged on-disk cache, several threads
at once, and KeyboardInterrupt at each phase of a compiled call. Each ends in a clear error or a
correct result, with the function's state consistent (all of a call's updates or none)."""
from __future__ import annotations

import os
import signal
import threading
import warnings

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.jit.backends
from tracetorch.compiler import CompileError, CompileWarning

BACKENDS = sorted(tracetorch.jit.backends.BACKENDS)
needs_llvm = pytest.mark.skipif("llvm" not in BACKENDS, reason="the LLVM backend is not registered")


def _counting_function():
    """A function with a side effect on captured state, so that each eager or compiled run shows."""
    counter = tt.zeros((), dtype=tt.float64)

    def fn(x):
        counter.add_(1)
        return (x * 2).sum()

    return fn, counter


# ---------------------------------------------------------------- code generation / compile failures
class InjectedFault(RuntimeError):
    pass


def _failing(compile_fn, fail_calls):
    """The backend's compile, failing on the calls numbered in `fail_calls` (1-based)."""
    count = [0]

    def compile(graph, **options):
        count[0] += 1
        if count[0] in fail_calls:
            raise InjectedFault(f"injected code generation failure in {graph.name}")
        return compile_fn(graph, **options)
    return compile


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_failure_raises_with_the_ir_and_the_eager_result(backend, monkeypatch):
    impl = tracetorch.jit.backends.BACKENDS[backend]
    monkeypatch.setattr(impl, "compile", _failing(impl.compile, fail_calls={1, 2}))
    fn, counter = _counting_function()
    f = tt.compile(fn, backend=backend)
    x = tt.arange(3.0)
    for call in (1, 2):
        with pytest.raises(CompileError, match="injected code generation failure") as err:
            f(x)
        text = str(err.value)
        assert "traced IR:" in text and "mul(x, 2)" in text and "sum(" in text
        assert "mul(x, 2)" in err.value.ir.text()
        assert float(err.value.result) == 6.0           # the call ran eagerly, once: nothing is lost
        assert float(counter) == call
        assert isinstance(err.value.__cause__, InjectedFault)
    assert float(f(x)) == 6.0 and float(f(x)) == 6.0    # the backend works again: compiled and cached
    assert float(counter) == 4 and f.stats()["cache_hits"] == 1 and f.stats()["compiles"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_failure_with_fallback_warns_once_and_runs_eagerly(backend, monkeypatch):
    impl = tracetorch.jit.backends.BACKENDS[backend]
    monkeypatch.setattr(impl, "compile", _failing(impl.compile, fail_calls=set(range(1, 100))))
    fn, counter = _counting_function()
    f = tt.compile(fn, backend=backend, fallback=True)
    warning = r"compiling \S*fn failed \(injected code generation failure.*running it eagerly"
    with pytest.warns(CompileWarning, match=warning):
        assert float(f(tt.arange(3.0))) == 6.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # no second warning
        for k in range(2, 6):
            assert float(f(tt.full((4,), float(k)))) == 8.0 * k
    assert float(counter) == 5                          # every call ran exactly once
    s = f.stats()
    assert s["eager_since_limit"] and s["fallbacks"] == 4 and s["compiles"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_compiling_the_backward_program(backend, monkeypatch):
    """Outputs that need gradients get a backward program, compiled first: failing there is the same
    clear error, and with fallback=True gradients still flow (eagerly)."""
    impl = tracetorch.jit.backends.BACKENDS[backend]
    monkeypatch.setattr(impl, "compile", _failing(impl.compile, fail_calls={1, 3}))
    w = tt.tensor([1.0, 2.0, 3.0], dtype=tt.float64, requires_grad=True)

    def fn(x):
        return (x * w).tanh().sum()

    with pytest.raises(CompileError, match="injected"):
        tt.compile(fn, backend=backend)(tt.ones(3, dtype=tt.float64))
    f = tt.compile(fn, backend=backend, fallback=True)
    with pytest.warns(CompileWarning, match="injected"):
        loss = f(tt.ones(3, dtype=tt.float64))
    w.grad = None
    f(tt.ones(3, dtype=tt.float64)).backward()
    np.testing.assert_allclose(w.grad.numpy(), 1 - np.tanh([1.0, 2.0, 3.0]) ** 2, rtol=1e-12)
    assert float(loss) == pytest.approx(float(np.tanh([1.0, 2.0, 3.0]).sum()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_program_failing_at_run_time_commits_nothing(backend, monkeypatch):
    fn, counter = _counting_function()
    f = tt.compile(fn, backend=backend)
    f(tt.ones(2))
    f(tt.ones(2))
    program = f.programs[0]
    real = program.executable
    monkeypatch.setattr(program, "executable", _raising(real, InjectedFault("injected kernel failure")))
    with pytest.raises(InjectedFault, match="injected kernel failure"):
        f(tt.ones(2))
    assert float(counter) == 2                          # the failed run did not write back
    monkeypatch.setattr(program, "executable", real)
    assert float(f(tt.ones(2))) == 4.0 and float(counter) == 3
    assert f.stats()["traces"] == 1


@needs_llvm
@pytest.mark.parametrize("stage", ["fusion", "lowering", "llvm parse"])
def test_llvm_failure_at_each_stage_is_a_compile_error_naming_the_stage(stage, monkeypatch, tmp_path):
    import runtime.llvm_engine
    import tracetorch.jit.llvm_backend as llvm_backend
    from runtime.disk_cache import DiskCache
    # an engine of its own, with an empty disk cache: every stage runs (nothing is found by key)
    monkeypatch.setattr(llvm_backend.BACKEND, "_engine", runtime.llvm_engine.LLVMEngine(cache=DiskCache(tmp_path)))
    if stage == "fusion":
        monkeypatch.setattr(llvm_backend, "fuse", _raising(None, InjectedFault("injected fusion failure")))
        expected = "llvm backend: fusion of"
    elif stage == "lowering":
        monkeypatch.setattr(llvm_backend, "lower_program", _raising(None, InjectedFault("injected lowering failure")))
        expected = "llvm backend: lowering of"
    else:                                               # invalid LLVM IR reaches llvmlite's parser
        render = runtime.llvm_engine.render_module

        def broken_render(program, plan, m):
            text, checks = render(program, plan, m)
            return text.replace("define", "define broken", 1), checks
        monkeypatch.setattr(runtime.llvm_engine, "render_module", broken_render)
        expected = "llvm backend: code generation of"
    f = tt.compile(lambda x: (x.exp() + 0.123456789).sum(1), backend="llvm")
    with pytest.raises(CompileError, match=expected) as err:
        f(tt.ones(2, 3))
    assert "traced IR:" in str(err.value) and "exp(x)" in str(err.value)
    g = tt.compile(lambda x: (x.exp() + 0.123456789).sum(1), backend="llvm", fallback=True)
    with pytest.warns(CompileWarning, match="running it eagerly"):
        np.testing.assert_allclose(g(tt.ones(2, 3)).numpy(), [3 * (np.e + 0.123456789)] * 2, rtol=1e-6)


def _raising(real, error):
    def call(*args, **kwargs):
        raise error
    return call


# ---------------------------------------------------------------- the on-disk cache
@needs_llvm
@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped byte", "garbage", "header only"])
def test_damaged_disk_cache_entries_are_detected_and_rebuilt(damage, tmp_path):
    from runtime.disk_cache import DiskCache
    from runtime.llvm_engine import LLVMEngine
    backend_type = type(tracetorch.jit.backends.BACKENDS["llvm"])

    def run():
        """A fresh engine on the same cache directory: a second process, as far as caches go."""
        engine = LLVMEngine(cache=DiskCache(tmp_path))
        f = tt.compile(lambda x: (x.exp() * 2 + x.sin()).sum(1), backend=backend_type(engine=engine))
        x = tt.arange(12.0).reshape(3, 4) / 10
        f(x)
        out = f(x).numpy()
        engine.wait_for_links()                         # the shared objects linked in the background
        return out, engine

    want = (np.exp(np.arange(12.0).reshape(3, 4) / 10) * 2 + np.sin(np.arange(12.0).reshape(3, 4) / 10)).sum(1)
    out, first = run()
    np.testing.assert_allclose(out, want, rtol=1e-5)
    entries = sorted([*tmp_path.glob("*.o"), *tmp_path.glob("*.so")])   # object code and shared objects
    assert first.stats.compiles == len(entries) - first.stats.links >= 1
    for path in entries:
        blob = path.read_bytes()
        path.write_bytes({"truncated": blob[: len(blob) // 2], "empty": b"",
                          "flipped byte": blob[:-7] + bytes([blob[-7] ^ 0xFF]) + blob[-6:],
                          "garbage": os.urandom(len(blob)), "header only": blob[:100]}[damage])
    out, second = run()
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert second.cache.corrupt == len(entries) and second.stats.compiles == first.stats.compiles
    out, third = run()                                  # the rebuilt entries are whole again
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert third.stats.compiles == 0 and third.stats.disk_hits == first.stats.compiles and third.cache.corrupt == 0


# ---------------------------------------------------------------- threads
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_compiled_function_from_many_threads_at_once(backend):
    rng = np.random.default_rng(0)
    w = tt.tensor(rng.standard_normal((16, 8)), requires_grad=True)

    def fn(x):
        h = (x @ w).relu()
        return h.sum(1) + h.amax(1), tt.softmax(h, dim=1)

    f = tt.compile(fn, backend=backend)
    n_threads, n_calls = 8, 30
    start = threading.Barrier(n_threads)
    problems = []

    def worker(k):
        local = np.random.default_rng(k)
        start.wait()                                    # all threads race for the first trace
        for i in range(n_calls):
            x = tt.tensor(local.standard_normal((4 + 4 * ((i + k) % 2), 16)))
            got = f(x)
            want = fn(x)
            if i % 5 == 0:                              # the compiled backward program, concurrently
                got[0].sum().backward()
            for g, e in zip(got, want):
                if not np.allclose(g.detach().numpy(), e.detach().numpy(), rtol=1e-9, atol=1e-12):
                    problems.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not problems
    s = f.stats()
    assert s["traces"] == 2 and s["calls"] == n_threads * n_calls, s     # one trace per shape, no duplicates


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_following_different_branches_of_a_trace_tree(backend):
    @tt.compile(backend=backend)
    def f(x):
        if x.sum() > 0:
            return x * 2
        return x - 1

    problems = []

    def worker(k):
        for i in range(40):
            v = float((i + k) % 3 - 1) or 0.5
            out = f(tt.full((3,), v, dtype=tt.float64))
            if out.numpy().tolist() != [v * 2 if v > 0 else v - 1] * 3:
                problems.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not problems and f.stats()["traces"] == 2


# ---------------------------------------------------------------- KeyboardInterrupt
def _two_counters(backend):
    """A compiled step that updates two captured tensors: consistent state means b == 2 * a."""
    a = tt.zeros(4, dtype=tt.float64)
    b = tt.zeros(4, dtype=tt.float64)

    def fn(x):
        a.add_(x)
        b.add_(x * 2)
        return (a + b).sum()

    return fn, a, b


def _consistent(a, b) -> bool:
    return np.array_equal(b.numpy(), 2 * a.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyboard_interrupt_while_tracing(backend):
    a = tt.zeros(2, dtype=tt.float64)
    interrupt = [True]

    def fn(x):
        a.add_(x)
        if interrupt[0]:
            raise KeyboardInterrupt
        return a * 2

    f = tt.compile(fn, backend=backend)
    with pytest.raises(KeyboardInterrupt):
        f(tt.ones(2))
    from tracetorch.ops.dispatch import STATE
    assert STATE.tracer is None and f.programs == []    # no half-recorded trace left behind
    interrupt[0] = False
    assert f(tt.ones(2)).numpy().tolist() == [4, 4] and f(tt.ones(2)).numpy().tolist() == [6, 6]
    s = f.stats()
    assert s["failed_traces"] == 1 and s["traces"] == 1 and s["cache_hits"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyboard_interrupt_while_the_program_runs_commits_nothing(backend, monkeypatch):
    fn, a, b = _two_counters(backend)
    f = tt.compile(fn, backend=backend)
    x = tt.arange(4.0, dtype=tt.float64)
    f(x)
    f(x)
    program = f.programs[0]
    real = program.executable
    monkeypatch.setattr(program, "executable", _raising(real, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        f(x)
    np.testing.assert_array_equal(a.numpy(), 2 * x.numpy())          # two calls, not three
    assert _consistent(a, b)
    monkeypatch.setattr(program, "executable", real)
    f(x)
    np.testing.assert_array_equal(a.numpy(), 3 * x.numpy())
    assert _consistent(a, b) and f.stats()["traces"] == 1


class _InterruptingVersion(list):
    """A version counter that raises KeyboardInterrupt when first bumped: inside the commit, after
    the first write-back was copied."""

    def __setitem__(self, i, v):
        super().__setitem__(i, v)
        if not getattr(self, "fired", False):
            self.fired = True
            raise KeyboardInterrupt


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyboard_interrupt_in_the_middle_of_the_commit_finishes_it(backend):
    fn, a, b = _two_counters(backend)
    f = tt.compile(fn, backend=backend)
    x = tt.arange(4.0, dtype=tt.float64)
    f(x)
    f(x)
    for t in (a, b):
        t._version = _InterruptingVersion(t._version)
    with pytest.raises(KeyboardInterrupt):
        f(x)
    np.testing.assert_array_equal(a.numpy(), 3 * x.numpy())          # both write-backs applied
    assert _consistent(a, b)
    f(x)
    np.testing.assert_array_equal(a.numpy(), 4 * x.numpy())


ROUNDS = 12


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigint_at_random_moments_of_long_compiled_calls(backend):
    """A real SIGINT, delivered by a timer thread at a different moment of each round (reading
    inputs, kernels, parallel kernels, the commit, between calls): the state is always consistent
    and the function keeps giving right answers."""
    a = tt.zeros(1 << 19, dtype=tt.float64)
    b = tt.zeros(1 << 19, dtype=tt.float64)

    def fn(x):
        a.add_(x.sin().exp())
        b.add_(x.sin().exp() * 2)
        return b.sum() - 2 * a.sum()

    f = tt.compile(fn, backend=backend)
    x = tt.linspace(-3, 3, 1 << 19, dtype=tt.float64)
    f(x)
    f(x)                                                # traced (eagerly: not atomic) and compiled
    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    interrupted = 0
    try:
        for round_ in range(ROUNDS):
            delay = (round_ * 0.37) % 1 * 0.005
            timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
            try:
                armed[0] = True
                timer.start()
                for _ in range(1000):                  # until the signal lands
                    f(x)
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                armed[0] = False
                timer.join()
            assert _consistent(a, b), f"round {round_}: a write-back was half applied"
    finally:
        signal.signal(signal.SIGINT, old)
    before = a.numpy().copy()
    assert abs(float(f(x))) < 1e-6
    np.testing.assert_allclose(a.numpy(), before + np.exp(np.sin(x.numpy())), rtol=1e-12)
    assert interrupted == ROUNDS
