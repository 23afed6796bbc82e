"""The LLVM engine: one call per program, threads, extern steps, fresh outputs, input checks."""
from __future__ import annotations

import numpy as np
import pytest

from codegen.kernel import Arg, Buffer, ExternCall, IndexMap, Program
from codegen.scalar import op
from codegen.templates import elementwise_kernel
from runtime.disk_cache import DiskCache
from runtime.llvm_engine import LLVMEngine
from runtime.parallel import ThreadTeam, split
from sample_programs import big_program, mixed_program, two_stage_program
from tracetorch.dtypes import float32


def test_small_program_is_one_call_and_matches_step_by_step(engine):
    compiled = engine.compile(two_stage_program(1000))
    assert compiled._steps is None
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    y1, s1 = compiled(x)
    y2, s2 = compiled.run_kernel_by_kernel(x)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, np.exp(x) * 0.5 + x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s1, (np.exp(x) * 0.5).sum(), rtol=1e-5)


def test_outputs_are_fresh_arrays(engine):
    compiled = engine.compile(two_stage_program(64, name="fresh"))
    first, _ = compiled(np.zeros(64, np.float32))
    second, _ = compiled(np.ones(64, np.float32))
    assert not np.shares_memory(first, second)
    np.testing.assert_allclose(first, 0.5)         # not overwritten by the second call
    assert not np.shares_memory(first, compiled.arena.memory)


def test_inputs_are_read_where_they_are_views_read_only_or_new_each_call(engine):
    compiled = engine.compile(two_stage_program(16, name="addresses"))
    base = np.arange(40, dtype=np.float32) / 10
    frozen = base[:16].copy()
    frozen.flags.writeable = False
    for x in (base[5:21], frozen, base[20:36], base[5:21].copy()):     # an offset view, read-only, ...
        y, _ = compiled(x)
        np.testing.assert_allclose(y, np.exp(x) * 0.5 + x, rtol=1e-6)
    assert compiled.run([base[:16]])[0].shape == (16,)


def test_identical_programs_share_loaded_code(engine):
    before, hits = engine.stats.compiles, engine.stats.memory_hits
    first = engine.compile(two_stage_program(333, name="shared"))
    second = engine.compile(two_stage_program(333, name="shared"))
    assert engine.stats.compiles == before + 1 and engine.stats.memory_hits == hits + 1
    assert first._library is second._library
    del first, second                     # the code is freed with its last user; the disk cache remains
    disk_hits = engine.stats.disk_hits
    engine.compile(two_stage_program(333, name="shared"))
    assert engine.stats.compiles == before + 1 and engine.stats.disk_hits == disk_hits + 1


def test_threaded_kernels_match_single_thread(engine, tmp_path):
    program = big_program(601, 1031)          # above PARALLEL_MIN_COST: both kernels split across threads
    threaded = engine.compile(program)
    assert engine.threads > 1 or pytest.skip("one CPU")
    assert [s[0] for s in threaded._steps] == ["parallel", "parallel"]
    single = LLVMEngine(cache=DiskCache(tmp_path), threads=1).compile(program)
    assert single._steps is None
    x = np.random.default_rng(1).standard_normal((601, 1031)).astype(np.float32)
    for a, b in zip(threaded(x), single(x)):
        np.testing.assert_array_equal(a, b)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(threaded(x)[1], np.log(np.exp(x64).sum(1)), rtol=1e-5)


def test_runs_of_serial_kernels_between_parallel_ones_are_one_call_each(engine):
    compiled = engine.compile(mixed_program())
    assert engine.threads > 1 or pytest.skip("one CPU")
    # (kind, fn, a, b, ...): a serial step runs kernels a..b-1 through the segment entry when it has two
    assert [(s[0],) + ((s[2], s[3]) if s[0] == "serial" else ()) for s in compiled._steps] == [
        ("serial", 0, 2), ("parallel",), ("parallel",), ("serial", 4, 6)]
    assert [kind for kind in compiled.step_kinds().values()] == ["serial"] * 2 + ["parallel"] * 2 + ["serial"] * 2
    rng = np.random.default_rng(3)
    x = rng.standard_normal((601, 1031)).astype(np.float32)
    table = rng.standard_normal((10, 33)).astype(np.float32)
    idx = np.array([0, 9, -1, -10, 3, 3])
    got = compiled(x, table, idx)
    for a, b in zip(got, compiled.run_kernel_by_kernel(x, table, idx)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(got[2], table[idx] * 2, rtol=1e-6)
    np.testing.assert_allclose(got[3], table[idx].sum(1) + 1, rtol=1e-5, atol=1e-5)
    for bad in (10, -11):                      # the check fails inside the first segment
        with pytest.raises(IndexError, match="embedding index out of range for a dimension of size 10"):
            compiled(x, table, np.array([0, 1, bad, 2, 3, 4]))
    np.testing.assert_array_equal(compiled(x, table, idx)[2], got[2])


def test_extern_steps_run_between_kernels(engine):
    """relu(a) @ w + b with the matmul as a Python-side extern on arena temporaries."""
    a, w, b = Buffer("a", float32, (8, 5)), Buffer("w", float32, (5, 3)), Buffer("b", float32, (3,))
    r, m, out = Buffer("r", float32, (8, 5)), Buffer("m", float32, (8, 3)), Buffer("out", float32, (8, 3))
    relu = elementwise_kernel("relu", (8, 5), {"a": (a, IndexMap.contiguous((8, 5)))},
                              [(r, op("max", Arg("a", float32), 0.0))])
    matmul = ExternCall("matmul", lambda x, y, o: np.matmul(x, y, out=o), (r, w), (m,))
    bias = elementwise_kernel("bias", (8, 3), {"m": (m, IndexMap.contiguous((8, 3))),
                                               "b": (b, IndexMap.broadcast((3,), (8, 3)))},
                              [(out, op("add", Arg("m", float32), Arg("b", float32)))])
    compiled = engine.compile(Program("mlp", (relu, matmul, bias), (a, w, b), (out,)))
    rng = np.random.default_rng(2)
    a_np, w_np, b_np = (rng.standard_normal(s).astype(np.float32) for s in ((8, 5), (5, 3), (3,)))
    (got,) = compiled(a_np, w_np, b_np)
    np.testing.assert_allclose(got, np.maximum(a_np, 0) @ w_np + b_np, rtol=1e-5, atol=1e-6)


def test_inputs_are_validated(engine):
    compiled = engine.compile(two_stage_program(16, name="validate"))
    with pytest.raises(TypeError, match="takes 1 inputs"):
        compiled()
    with pytest.raises(ValueError, match=r"must have shape \(16,\)"):
        compiled(np.zeros(15, np.float32))
    with pytest.raises(TypeError, match="must be float32"):
        compiled(np.zeros(16, np.float64))
    strided = np.arange(32, dtype=np.float32)[::2]
    y, _ = compiled(strided)                         # non-contiguous input: copied, then run
    np.testing.assert_allclose(y, np.exp(strided) * 0.5 + strided, rtol=1e-6)


def test_split_covers_the_range_on_aligned_boundaries():
    assert split(1000, 2, 64) == [(0, 512), (512, 1000)]
    assert split(10, 4) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert split(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert split(0, 2) == []


def test_thread_team_reports_worker_errors():
    team = ThreadTeam(2)
    seen = []

    def work(tag, lo, hi):
        seen.append((lo, hi))
        if lo > 0:
            raise RuntimeError("worker failed")

    with pytest.raises(RuntimeError, match="worker failed"):
        team.run(work, ("t",), 10)
    assert sorted(seen) == [(0, 5), (5, 10)]
