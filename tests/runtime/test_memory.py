"""Arena plans and the caching allocator for results."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from codegen.kernel import Buffer
from runtime.memory import ALIGN, Arena, BufferPool, MemoryPlan, sequential_plan
from tracetorch.dtypes import float32, float64, int8


def test_sequential_plan_aligns_every_buffer():
    bufs = [Buffer("a", float32, (3,)), Buffer("b", int8, (1,)), Buffer("c", float64, (10, 10))]
    plan = sequential_plan(bufs)
    assert all(off % ALIGN == 0 for off in plan.offsets.values())
    assert plan.offsets == {"a": 0, "b": 64, "c": 128} and plan.size == 128 + 832
    assert plan.total_requested == 12 + 1 + 800


def test_plan_validation():
    with pytest.raises(ValueError, match="not 64-byte aligned"):
        MemoryPlan({"a": 8}, {"a": 4}, 64)
    with pytest.raises(ValueError, match="outside the arena"):
        MemoryPlan({"a": 64}, {"a": 65}, 128)


def test_arena_views_share_one_aligned_buffer():
    bufs = [Buffer("a", float32, (5,)), Buffer("b", float64, (2, 3))]
    arena = Arena(sequential_plan(bufs))
    assert arena.base % ALIGN == 0 and arena.address("b") == arena.base + 64
    a = arena.view("a", np.float32, (5,))
    b = arena.view("b", np.float64, (2, 3))
    a[:] = 1.5
    b[:] = 2.5
    assert a.ctypes.data == arena.address("a") and b.ctypes.data == arena.address("b")
    assert np.all(arena.view("a", np.float32, (5,)) == 1.5)
    with pytest.raises(ValueError, match="planned"):
        arena.view("a", np.float32, (6,))


def test_pool_reuses_a_buffer_once_nothing_references_it():
    pool = BufferPool()
    x, addr = pool.array((100,), np.float32)
    assert addr % ALIGN == 0 and x.ctypes.data == addr
    y, addr_y = pool.array((100,), np.float32)
    assert addr_y != addr                      # x is still alive
    del x
    gc.collect()
    z, addr_z = pool.array((10, 10), np.float32)
    assert addr_z == addr and pool.reused == 1  # same size, x's buffer came back


def test_pool_keeps_buffers_alive_through_views():
    pool = BufferPool()
    x, addr = pool.array((64,), np.float64)
    view = x[3:10].reshape(7, 1)
    del x
    other, other_addr = pool.array((64,), np.float64)
    assert other_addr != addr                   # a view of a view still holds the buffer
    view[:] = 7.0
    other[:] = 1.0
    assert np.all(view == 7.0)
    del view
    again, again_addr = pool.array((64,), np.float64)
    assert again_addr == addr


def _in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_pool_buffers_go_back_to_the_thread_that_allocated_them():
    pool = BufferPool()
    x, addr = pool.array((32,), np.float32)
    del x
    assert _in_thread(lambda: pool.array((32,), np.float32)[1]) != addr     # another thread: its own buffer
    y, addr_y = pool.array((32,), np.float32)
    assert addr_y == addr
    held = [y]
    del y
    _in_thread(held.clear)                      # dropped by another thread: free for this one again
    z, addr_z = pool.array((32,), np.float32)
    assert addr_z == addr
    pool.clear()
    assert pool.array((32,), np.float32)[1] != addr


def test_pool_arrays_writes_the_addresses_of_a_programs_outputs():
    pool = BufferPool()
    table = [0] * 4
    a, b = pool.outputs([((2, 3), np.dtype(np.float32), 24), ((5,), np.dtype(np.int64), 40)]).arrays(table, 2)
    assert (a.shape, a.dtype, b.shape, b.dtype) == ((2, 3), np.float32, (5,), np.int64)
    assert table == [0, 0, a.ctypes.data, b.ctypes.data]


def test_each_program_output_alternates_between_its_own_buffers():
    pool = BufferPool()
    specs = [((10,), np.dtype(np.float32), 40)] * (2 * BufferPool.MAX_PER_SIZE)   # more than one size keeps
    outputs = pool.outputs(specs)
    table = [0] * len(specs)
    held = outputs.arrays(table, 0)                 # like gradients still bound to .grad
    first = list(table)
    for call in range(4):
        new = outputs.arrays(table, 0)
        assert len(set(table)) == len(specs) and not set(table) & {a.ctypes.data for a in held}
        held = new                                  # the previous call's results are dropped
    assert pool.allocated == 2 * len(specs)         # two buffers per output, then reuse only
    assert set(table) == set(first) or set(table).isdisjoint(first)


def test_plan_must_keep_the_buffers_of_one_kernel_apart(engine):
    from sample_programs import two_stage_program
    program = two_stage_program(32, name="overlap")
    (t,) = program.temps
    with pytest.raises(ValueError, match="no place for"):
        engine.compile(program, MemoryPlan({}, {}, 0))
    plan = MemoryPlan({"t": 0}, {"t": t.nbytes}, 128)
    engine.compile(program, plan)                       # fine: one temporary
    overlapping = MemoryPlan({"a": 0, "b": 64}, {"a": 100, "b": 100}, 256)
    with pytest.raises(ValueError, match="'a' and 'b' overlap but are both used by kernel 'k'"):
        overlapping.check_disjoint(["a", "b"], "kernel 'k'")
    overlapping.check_disjoint(["a"], "kernel 'k'")
