"""Resources: a compiled training step called 10,000 times keeps memory flat, the cache of one
function never holds more than `cache_size_limit` programs, and compiled programs (with their
generated code) are freed together with the function, method instance or outputs that own them."""
from __future__ import annotations

import gc
import os
import warnings
import weakref

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.jit.backends
from tracetorch.compiler import CompileWarning

nn, F = tt.nn, tt.nn.functional
BACKENDS = sorted(tracetorch.jit.backends.BACKENDS)
CALLS = 10_000
RSS_SLACK = 4 << 20          # 4 MiB over 10,000 calls: a leak of 420 bytes a call fails
OBJECT_SLACK = 50            # Python objects: a leak of one object every 200 calls fails


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _training_step(backend):
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = tt.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    @tt.compile(backend=backend)
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_thousand_calls_keep_memory_flat(backend):
    model, step = _training_step(backend)
    x, y = tt.randn(8, 8), tt.randint(0, 4, (8,))
    for _ in range(1000):
        step(x, y)
    gc.collect()
    rss0, objects0 = _rss(), len(gc.get_objects())
    losses = [float(step(x, y)) for _ in range(CALLS)]
    gc.collect()
    rss1, objects1 = _rss(), len(gc.get_objects())
    s = step.stats()
    assert s["cache_entries"] == 1 and s["cache_hits"] >= CALLS, s
    assert objects1 - objects0 <= OBJECT_SLACK, f"{objects1 - objects0} Python objects more after {CALLS} calls"
    assert rss1 - rss0 <= RSS_SLACK, f"RSS grew by {(rss1 - rss0) >> 10} KiB over {CALLS} calls"
    assert np.isfinite(losses).all() and losses[-1] < losses[0]          # it really trained


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cache_never_holds_more_programs_than_the_limit(backend):
    f = tt.compile(lambda x: (x * 2).sum(0), backend=backend, cache_size_limit=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 31):                          # 30 shapes: 4 traces, then eager
            np.testing.assert_array_equal(f(tt.ones(n, 2)).numpy(), [2.0 * n] * 2)
            assert len(f.programs) <= 4
    assert sum(issubclass(w.category, CompileWarning) for w in caught) == 1
    s = f.stats()
    assert s["traces"] == 4 and s["cache_entries"] == 4 and s["eager_since_limit"] and s["fallbacks"] == 26


def _freed(refs) -> bool:
    gc.collect()
    return all(r() is None for r in refs)


def _program_refs(compiled) -> list:
    """Weak references to each cached program and its executables (generated code)."""
    refs = []
    for p in compiled.programs:
        refs += [weakref.ref(p), weakref.ref(p.executable)]
        if p.backward is not None:
            refs.append(weakref.ref(p.backward.executable))
    return refs


@pytest.mark.parametrize("backend", BACKENDS)
def test_programs_are_freed_with_their_function(backend):
    w = tt.randn(3, 3, requires_grad=True)
    f = tt.compile(lambda x: (x @ w).relu().sum(), backend=backend)
    for n in (2, 3, 4):
        f(tt.randn(n, 3)).backward()
    refs = _program_refs(f)
    assert len(refs) == 9                               # 3 programs, each with a forward and a backward
    del f
    assert _freed(refs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_programs_are_freed_by_reset_and_with_their_module_or_instance(backend):
    model = nn.Linear(4, 2)
    compiled = tt.compile(model, backend=backend)
    compiled(tt.randn(3, 4))
    refs = _program_refs(compiled._compiled)
    tt.compiler.reset()
    assert refs and _freed(refs)
    compiled(tt.randn(3, 4))
    refs = _program_refs(compiled._compiled)
    del compiled
    assert _freed(refs)

    class Scaler:
        def __init__(self):
            self.k = tt.tensor(2.0)

        @tt.compile(backend=backend)
        def __call__(self, x):
            return x * self.k

    s = Scaler()
    s(tt.ones(2))
    refs = _program_refs(s.__call__)
    del s                                               # the per-instance cache dies with the instance
    assert refs and _freed(refs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_keep_only_their_own_backward_alive(backend):
    """A compiled output's grad_fn holds the backward program and the saved activations, for as
    long as the output lives; nothing else does."""
    w = tt.randn(64, 64, requires_grad=True)
    f = tt.compile(lambda x: (x @ w).tanh(), backend=backend)
    f(tt.randn(64, 64))
    out = f(tt.randn(64, 64))
    saved = weakref.ref(out.grad_fn)
    del out
    assert _freed([saved])
