"""Tensors that outlive a traced call outside its results (escaped into Python state) make the trace
uncacheable; dead ones in reference cycles do not. The check collects as little garbage as it can:
state held by a reachable optimizer or module needs no collection, cycles made during the call only
the young generations, and a full collection runs only when neither settles it."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.jit.capture as capture


@pytest.fixture
def collections(monkeypatch):
    """The generations `capture` asked the garbage collector to collect, in order."""
    asked = []

    class RecordingGC:
        @staticmethod
        def collect(generation=2):
            asked.append(generation)
            return gc.collect(generation)

    monkeypatch.setattr(capture, "gc", RecordingGC)
    return asked


def test_optimizer_state_created_on_the_first_step_needs_no_collection(collections):
    tt.manual_seed(0)
    w = tt.randn(4, 3, requires_grad=True)
    opt = tt.optim.SGD([w], lr=0.1, momentum=0.9)

    @tt.compile(backend="interp")
    def step(x):
        opt.zero_grad()
        loss = (x @ w).sum()
        loss.backward()
        opt.step()
        return loss

    x = tt.ones(2, 4)
    step(x)
    assert step.stats()["uncached_traces"] == 1 and "momentum_buffer" in opt.state[w]
    assert 2 not in collections                       # the momentum buffer is held by `opt`: no full walk
    for _ in range(3):
        step(x)
    assert step.stats()["traces"] == 2 and step.stats()["cache_hits"] == 2


def test_a_dead_cycle_made_during_the_call_does_not_count_as_escaped(collections):
    @tt.compile(backend="interp")
    def f(x):
        junk = [x * 2]
        junk.append(junk)                 # a cycle holding a tensor the trace made; garbage after the call
        return x + 1

    for k in range(3):
        np.testing.assert_array_equal(f(tt.full((3,), float(k))).numpy(), [k + 1.0] * 3)
    s = f.stats()
    assert s["traces"] == 1 and s["uncached_traces"] == 0 and s["cache_hits"] == 2, s
    assert collections == [1]                         # the young generations were enough


def test_a_tensor_escaping_into_a_plain_list_is_found_by_a_full_collection(collections):
    kept = []

    @tt.compile(backend="interp")
    def f(x):
        if not kept:
            kept.append(x * 2)            # a cache filled on the first call
        return x + kept[0]

    x = tt.ones(3)
    for _ in range(3):
        np.testing.assert_array_equal(f(x).numpy(), [3.0] * 3)
    s = f.stats()
    assert s["uncached_traces"] == 1 and s["traces"] == 2 and s["cache_hits"] == 1, s
    assert collections[:2] == [1, 2]
