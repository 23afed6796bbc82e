"""The memory planner: no two buffers alive at the same time share memory (random schedules), dead
buffers are reused, in-place updates only take an input that dies in that step; and a compiled
program's arena is what the planner said."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
from tracetorch.jit.passes.memplan import ALIGN, StepUse, live_overlaps, plan_memory


def _random_schedule(rng, n_steps=12, n_buffers=20):
    """Buffers written once (in creation order) and read by later steps; random in-place offers."""
    sizes = {f"b{k}": int(rng.choice([1, 7, 64, 100, 4096, 5000])) for k in range(n_buffers)}
    written_at = {b: int(rng.integers(0, n_steps)) for b in sizes}
    steps = []
    for k in range(n_steps):
        writes = tuple(b for b in sizes if written_at[b] == k)
        earlier = [b for b in sizes if written_at[b] < k]
        reads = tuple(b for b in earlier if rng.random() < 0.3)
        offers = tuple((r, w) for r in reads for w in writes if rng.random() < 0.5)
        steps.append(StepUse(reads, writes, offers))
    return steps, sizes


def _users(steps, key):
    return [k for k, s in enumerate(steps) if key in s.reads or key in s.writes]


@pytest.mark.parametrize("seed", range(40))
def test_random_schedules_never_overlap_live_buffers(seed):
    rng = np.random.default_rng(seed)
    steps, sizes = _random_schedule(rng)
    plan = plan_memory(steps, sizes)
    assert live_overlaps(plan) == []
    for key, n in sizes.items():
        lo, hi = plan.span(key)
        assert lo % ALIGN == 0 and hi - lo >= n and hi <= plan.size
    # the buffers one step touches are disjoint, except an in-place pair (one slot)
    pairs = set(plan.inplace)
    for k, step in enumerate(steps):
        used = list(dict.fromkeys(step.reads + step.writes))
        for i, a in enumerate(used):
            for b in used[i + 1:]:
                (a0, a1), (b0, b1) = plan.span(a), plan.span(b)
                if a0 < b1 and b0 < a1:
                    assert (a, b) in pairs or (b, a) in pairs, (k, a, b)
    # an in-place output takes an input read for the last time in that very step, one pair per step
    for r, w in plan.inplace:
        (k,) = [k for k, s in enumerate(steps) if w in s.writes]
        assert (r, w) in steps[k].inplace and max(_users(steps, r)) == k
    assert len({next(k for k, s in enumerate(steps) if w in s.writes) for _, w in plan.inplace}) == len(plan.inplace)
    assert plan.total_bytes == sum(-(-n // ALIGN) * ALIGN for n in sizes.values())


def test_a_chain_reuses_dead_buffers():
    # t0 -> t1 -> t2 -> t3 -> t4, each read only by the next step: two buffers suffice, one in place
    sizes = {f"t{k}": 1000 for k in range(5)}
    steps = [StepUse((), ("t0",))] + [StepUse((f"t{k}",), (f"t{k + 1}",)) for k in range(4)]
    plan = plan_memory(steps, sizes)
    assert plan.size == 2 * 1024 and plan.total_bytes == 5 * 1024 and plan.inplace == ()
    inplace = [StepUse((), ("t0",))] + [StepUse((f"t{k}",), (f"t{k + 1}",), ((f"t{k}", f"t{k + 1}"),))
                                       for k in range(4)]
    plan = plan_memory(inplace, sizes)
    assert plan.size == 1024 and len(plan.inplace) == 4


def test_in_place_is_refused_for_an_input_read_later():
    sizes = {"a": 256, "b": 256, "c": 256}
    steps = [StepUse((), ("a",)), StepUse(("a",), ("b",), (("a", "b"),)), StepUse(("a", "b"), ("c",))]
    plan = plan_memory(steps, sizes)
    assert plan.inplace == () and live_overlaps(plan) == []
    assert len({plan.span(k) for k in sizes}) == 3


def test_compiled_program_plans_its_arena(rng):
    """A chain of matmuls: every intermediate is written to memory; dead ones are reused."""
    ws = [tt.tensor(rng.standard_normal((32, 32)).astype(np.float32)) for _ in range(6)]
    x = tt.tensor(rng.standard_normal((16, 32)).astype(np.float32))

    def chain(x, *ws):
        for w in ws:
            x = (x @ w).tanh()
        return x

    f = tt.compile(chain, backend="llvm")
    f(x, *ws)
    out = f(x, *ws)
    want = x.numpy()
    for w in ws:
        want = np.tanh(want @ w.numpy())
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)
    ex = f.programs[0].executable
    arena = ex.lowered.arena
    assert live_overlaps(arena) == []
    assert len(arena.slot_of) == 11 and ex.planned_peak_bytes < ex.intermediate_bytes / 3
    assert arena.inplace                  # tanh overwrites the matmul result it reads
