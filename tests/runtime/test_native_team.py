"""The native fork-join team: every index run exactly once, by more than one thread, across fork and close."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from runtime import native_team
from runtime.llvm_engine import LLVMEngine

pytestmark = pytest.mark.skipif(not native_team.supported(), reason="the native team needs Linux on x86-64/AArch64")

# range(table, err, lo, hi): counts[i] += 1 (atomically) and owner[i] = pthread_self() for i in [lo, hi),
# after `table[2]` rounds of busy work per index (slow chunks, so that the worker surely joins in)
MARK_IR = """
declare i64 @pthread_self()

define void @mark(ptr %table, ptr %err, i64 %lo, i64 %hi) nounwind {
entry:
  %counts = load ptr, ptr %table
  %pown = getelementptr ptr, ptr %table, i64 1
  %owner = load ptr, ptr %pown
  %pwork = getelementptr ptr, ptr %table, i64 2
  %work = load i64, ptr %pwork
  %me = call i64 @pthread_self()
  %sink = alloca i64
  %any = icmp slt i64 %lo, %hi
  br i1 %any, label %body, label %done
body:
  %i = phi i64 [%lo, %entry], [%i1, %busy.done]
  br label %busy
busy:
  %k = phi i64 [0, %body], [%k1, %busy]
  store volatile i64 %k, ptr %sink
  %k1 = add i64 %k, 1
  %more.k = icmp slt i64 %k1, %work
  br i1 %more.k, label %busy, label %busy.done
busy.done:
  %c = getelementptr i32, ptr %counts, i64 %i
  %old = atomicrmw add ptr %c, i32 1 monotonic
  %o = getelementptr i64, ptr %owner, i64 %i
  store i64 %me, ptr %o
  %i1 = add i64 %i, 1
  %more = icmp slt i64 %i1, %hi
  br i1 %more, label %body, label %done
done:
  ret void
}
"""


@pytest.fixture(scope="module")
def mark(engine):
    lib = engine.ir_library("test-native-team-mark", MARK_IR, ("mark",))
    return lib, lib["mark"]


def _job(extent: int, work: int):
    counts = np.zeros(extent, np.int32)
    owner = np.zeros(extent, np.uint64)
    table = (ctypes.c_int64 * 3)(counts.ctypes.data, owner.ctypes.data, work)
    return counts, owner, table


@pytest.mark.parametrize("threads", [2, 3])
def test_each_index_runs_once_over_many_jobs_of_any_extent_and_alignment(engine, mark, threads):
    team = native_team.NativeTeam(engine, threads)
    try:
        rng = np.random.default_rng(0)
        for _ in range(300):
            extent, align = int(rng.integers(1, 300)), int(rng.choice([1, 4, 64]))
            counts, _, table = _job(extent, 0)
            team.run(mark[1], (ctypes.addressof(table), 0), extent, align)
            np.testing.assert_array_equal(counts, 1)
    finally:
        team.close()


def _threads_sharing_slow_chunks(team, fn) -> int:
    """How many threads ran chunks of a slow job (~0.1 ms of busy work per index), every index run once;
    up to 20 runs, as a busy machine may leave the worker unscheduled for all of one."""
    for _ in range(20):
        counts, owner, table = _job(64, 200_000)
        team.run(fn, (ctypes.addressof(table), 0), 64, 1)
        np.testing.assert_array_equal(counts, 1)
        threads = len(set(owner.tolist()))
        if threads > 1:
            break
    return threads


def test_slow_chunks_are_shared_between_threads(engine, mark):
    team = native_team.NativeTeam(engine, 2)
    try:
        assert _threads_sharing_slow_chunks(team, mark[1]) == 2     # the caller and the worker both ran chunks
    finally:
        team.close()


def test_close_stops_the_workers_and_refuses_more_jobs(engine, mark):
    team = native_team.NativeTeam(engine, 3)
    team.close()
    assert not any(t.is_alive() for t in team._workers)
    counts, _, table = _job(8, 0)
    with pytest.raises(RuntimeError, match="closed"):
        team.run(mark[1], (ctypes.addressof(table), 0), 8, 1)
    team.close()                                          # twice: nothing happens


def test_rest_sends_spinning_workers_to_sleep_and_the_next_run_wakes_them(engine, mark):
    import time
    team = native_team.NativeTeam(engine, 3)
    sleepers = ctypes.c_int32.from_address(team.state + 128)
    assert team._spin[0] == team._spin[1] > 0
    spin_default = team._spin[1] = 1 << 60                          # idle workers would never sleep
    try:
        counts, _, table = _job(64, 0)
        team.run(mark[1], (ctypes.addressof(table), 0), 64, 1)       # the run takes the default spin
        assert team._spin[0] == spin_default
        team.rest()
        assert team._spin[0] == 0
        deadline = time.perf_counter() + 5
        while sleepers.value < 2 and time.perf_counter() < deadline:
            time.sleep(1e-4)
        assert sleepers.value == 2                                 # both asleep, with no spin left
        assert team._spin[0] == 0
        assert _threads_sharing_slow_chunks(team, mark[1]) > 1     # woken, they work again
        assert team._spin[0] == spin_default                       # the run restored the spin
    finally:
        team.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")     # 3.12: fork of a threaded process
def test_a_forked_child_gets_a_team_of_its_own(tmp_path, mark):
    from runtime.disk_cache import DiskCache
    engine = LLVMEngine(cache=DiskCache(tmp_path), threads=2)
    parent_team = engine.team
    assert isinstance(parent_team, native_team.NativeTeam)
    lib = engine.ir_library("test-native-team-mark", MARK_IR, ("mark",))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child: the parent's worker did not survive fork
        ok = 0
        try:
            team = engine.team
            ok = int(team is not parent_team and _threads_sharing_slow_chunks(team, lib["mark"]) == 2)
        finally:
            os.write(w, bytes([ok]))
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"\x01"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert engine.team is parent_team
    parent_team.close()


def test_parallel_programs_match_with_either_team(engine, monkeypatch):
    """The same parallel kernels through the native team and through Python threads."""
    from sample_programs import big_program
    program = big_program(601, 1031)
    x = np.random.default_rng(1).standard_normal((601, 1031)).astype(np.float32)
    results = {}
    for kind in ("1", "0"):
        monkeypatch.setenv("TRACETORCH_NATIVE_TEAM", kind)
        eng = LLVMEngine(cache=engine.cache, threads=2)
        compiled = eng.compile(program)
        assert [s[0] for s in compiled._steps] == ["parallel", "parallel"]
        assert isinstance(eng.team, native_team.NativeTeam) == (kind == "1")
        results[kind] = compiled(x)
        if kind == "1":
            eng.team.close()
    for a, b in zip(results["1"], results["0"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(results["1"][1], np.log(np.exp(x.astype(np.float64)).sum(1)), rtol=1e-5)


def test_an_extern_step_sends_the_team_to_rest_first(engine, monkeypatch):
    """A float64 matmul is numpy's (OpenBLAS's threads): the team's workers must not spin beside it."""
    import tracetorch as tt
    rng = np.random.default_rng(2)
    a, b = (tt.tensor(rng.standard_normal((512, 512))) for _ in range(2))
    f = tt.compile(lambda a, b: tt.exp(a) @ b, backend="llvm")
    np.testing.assert_allclose(f(a, b).numpy(), np.exp(a.numpy()) @ b.numpy(), rtol=1e-9, atol=1e-9)
    compiled = f.programs[0].executable.compiled
    if compiled.engine.threads < 2:
        pytest.skip("one thread: no team")
    assert [s[0] for s in compiled._steps] == ["parallel", "extern"]
    rests = []
    monkeypatch.setattr(compiled.engine.team, "rest", lambda: rests.append(1))
    np.testing.assert_allclose(f(a, b).numpy(), np.exp(a.numpy()) @ b.numpy(), rtol=1e-9, atol=1e-9)
    assert rests == [1]
