"""Several modules compiled at once in forked children (runtime.compile_jobs), and big programs rendered
as several modules (codegen.llvm_ir.module_of) that compile, cache, link and run as one."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import codegen.llvm_ir as llvm_ir
from codegen.kernel import Arg, Buffer, IndexMap, MatmulKernel, Program, Var
from codegen.scalar import op
from codegen.templates import Reduction, elementwise_kernel, reduction_kernel
from runtime import native_team
from runtime.compile_jobs import compile_all, job_count
from runtime.disk_cache import DiskCache
from runtime.host import gemm_lanes
from runtime.llvm_engine import LLVMEngine
from runtime.shared_object import SharedLibrary, find_linker
from sample_programs import big_program, mixed_program, two_stage_program
from tracetorch.dtypes import float32

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture
def forked(monkeypatch) -> list:
    """The pids of the children os.fork makes during the test."""
    pids, fork = [], os.fork

    def recording_fork():
        pid = fork()
        if pid:
            pids.append(pid)
        return pid
    monkeypatch.setattr(os, "fork", recording_fork)
    return pids


def _all_reaped(pids) -> bool:
    """Whether every one of these children has exited and been waited for (none is left running)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        return False
    return True


def _fake_compile(texts):
    """compile_one for texts: "text@pid|" repeated (some past a pipe's buffer), naming who made it; it
    takes 50 ms, so that every process gets some of the work."""
    def compile_one(i):
        time.sleep(0.05)
        return f"{texts[i]}@{os.getpid()}|".encode() * (1 + 40000 * (i % 3))
    return compile_one


def _made(out: bytes) -> tuple[str, str]:
    text, pid = out.split(b"|")[0].decode().split("@")
    return text, pid


@needs_fork
def test_jobs_are_shared_between_this_process_and_forked_children_in_order(forked):
    texts = [f"module {i} " + "x" * (i * 37 % 11) for i in range(7)]
    compile_one = _fake_compile(texts)
    out = compile_all(compile_one, [len(t) for t in texts], jobs=3)
    assert out == [compile_one(i).replace(str(os.getpid()).encode(), _made(o)[1].encode())
                   for i, o in enumerate(out)]                 # each complete, in order
    assert [_made(o)[0] for o in out] == texts
    makers = {_made(o)[1] for o in out}
    assert len(makers) == 3 and str(os.getpid()) in makers     # this process and two children
    assert len(forked) == 2 and _all_reaped(forked)


def test_one_job_compiles_everything_here(monkeypatch):
    monkeypatch.setenv("TRACETORCH_COMPILE_JOBS", "1")
    texts = ["a", "b", "c"]
    assert job_count() == 1
    assert [_made(o) for o in compile_all(_fake_compile(texts), [1] * len(texts))] == [(t, str(os.getpid())) for t in texts]
    monkeypatch.setenv("TRACETORCH_COMPILE_JOBS", "two")
    with pytest.raises(ValueError, match="TRACETORCH_COMPILE_JOBS='two'"):
        job_count()


@needs_fork
@pytest.mark.parametrize("failure", ["raises", "dies midway"])
def test_a_failing_child_costs_only_time(failure, forked):
    parent = os.getpid()
    texts = [f"t{i}" for i in range(4)]

    done = []

    def compile_one(i):
        if os.getpid() != parent:
            if failure == "raises":
                raise RuntimeError("child failed")
            if done:                        # one object made, then the child dies
                os._exit(3)
            done.append(i)
        time.sleep(0.05)
        return f"{texts[i]}!".encode()
    assert compile_all(compile_one, [len(t) for t in texts], jobs=2) == [f"{t}!".encode() for t in texts]
    assert len(forked) == 1 and _all_reaped(forked)


@needs_fork
def test_an_error_here_leaves_no_child_running(forked):
    parent = os.getpid()
    texts = ["a" * 10, "b"]

    def compile_one(i):
        if os.getpid() == parent:
            raise ValueError("bad IR")
        time.sleep(30)                      # a child still at work when the error arrives: killed
        return b""
    with pytest.raises(ValueError, match="bad IR"):
        compile_all(compile_one, [len(t) for t in texts], jobs=2)
    assert len(forked) == 1 and _all_reaped(forked)


def _split_program(n: int = 30) -> Program:
    """Kernels of different shapes (no two share a function), with a checked gather (mixed_program's)
    and, where the host has the generated GEMM, a matmul: split, the modules hold kernels of each kind."""
    base = mixed_program(rows=40, cols=70)
    x, w = Buffer("mx", float32, (n, 24)), Buffer("mw", float32, (24, 20))
    out, z, s = Buffer("mo", float32, (n, 20)), Buffer("mz", float32, (n, 20)), Buffer("ms", float32, ())
    lanes = gemm_lanes()
    if lanes:
        mm = (MatmulKernel("mm", x, w, out, (), n, 20, 24, IndexMap.contiguous((n, 24)), IndexMap.contiguous((24, 20)),
                           lanes),)
    else:                                   # out = x[:, :20] stands in for the product
        mm = (elementwise_kernel("mm", (n, 20), {"x": (x, IndexMap((24, 1)))}, [(out, Arg("x", float32))]),)
    ew = elementwise_kernel("tanh_mm", (n, 20), {"o": (out, IndexMap.contiguous((n, 20)))},
                            [(z, op("tanh", op("add", Arg("o", float32), 0.25)))])
    red = reduction_kernel("total_mm", (n, 20), (0, 1), {"z": (z, IndexMap.contiguous((n, 20)))},
                           [Reduction("acc", "add", Arg("z", float32))], row_outputs=[(s, Var("acc", float32))])
    return Program("split", base.steps + mm + (ew, red), base.inputs + (x, w), base.outputs + (z, s))


def _inputs(program: Program, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = []
    for b in program.inputs:
        if b.dtype.np == np.int64:
            arrays.append(rng.integers(0, 10, b.shape).astype(np.int64))
        else:
            arrays.append(rng.standard_normal(b.shape).astype(np.float32))
    return arrays


@pytest.fixture
def small_modules(monkeypatch):
    """Any program of more than ~one kernel's weight is split (up to MAX_MODULES modules), and compiled
    by 3 processes whatever the cores."""
    monkeypatch.setattr(llvm_ir, "MODULE_WEIGHT", 20)
    monkeypatch.setenv("TRACETORCH_COMPILE_JOBS", "3")


@needs_fork
def test_a_program_in_several_modules_runs_as_in_one(tmp_path, small_modules, monkeypatch, forked):
    program = _split_program()
    rendered = llvm_ir.render_program(program)
    assert len(rendered.modules) == llvm_ir.MAX_MODULES
    if gemm_lanes():                        # module 0 defines the GEMM table, the matmul's module declares it
        users = [text for text in rendered.modules[1:] if "tt_gemm_table" in text]
        assert '@"tt_gemm_table" = global' in rendered.modules[0] and len(users) == 1
        assert '@"tt_gemm_table" = external global' in users[0]
    inputs = _inputs(program)
    split = LLVMEngine(cache=DiskCache(tmp_path / "split")).compile(program)
    monkeypatch.setattr(llvm_ir, "MODULE_WEIGHT", 1 << 40)
    whole = LLVMEngine(cache=DiskCache(tmp_path / "whole")).compile(program)
    assert len(llvm_ir.render_program(program).modules) == 1
    for a, b in zip(split(*inputs), whole(*inputs)):
        np.testing.assert_array_equal(a, b)                # the same code, in other modules
    z, s = split(*inputs)[-2:]
    x, w = inputs[-2:]
    np.testing.assert_allclose(z, np.tanh((x @ w if gemm_lanes() else x[:, :20]) + 0.25), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(s, z.sum(dtype=np.float64), rtol=1e-4)
    bad = list(inputs)
    bad[program.inputs.index(next(b for b in program.inputs if b.name == "idx"))] = np.full(6, 10, np.int64)
    with pytest.raises(IndexError, match="embedding index"):
        split(*bad)
    gemm_children = 2 if gemm_lanes() else 0           # each engine's GEMM library, compiled meanwhile
    assert len(forked) == 2 + gemm_children and _all_reaped(forked)     # 8 modules by 3 processes


@needs_fork
def test_objects_from_children_are_those_compiled_here(tmp_path, small_modules, monkeypatch):
    rendered = llvm_ir.render_program(_split_program())
    engine = LLVMEngine(cache=None)
    forked = engine.object_codes(rendered.modules, "same")
    monkeypatch.setenv("TRACETORCH_COMPILE_JOBS", "1")
    assert engine.object_codes(rendered.modules, "same") == forked
    assert engine.stats.compiles == 2 * len(rendered.modules)


@needs_fork
@pytest.mark.parametrize("linker", ["auto", None])
def test_several_modules_are_cached_and_loaded_by_a_warm_engine(tmp_path, small_modules, linker):
    if linker == "auto" and not (SharedLibrary.supported() and find_linker()):
        pytest.skip("needs memfd and a system linker (cc)")
    program = _split_program()
    inputs = _inputs(program, 1)
    cold = LLVMEngine(cache=DiskCache(tmp_path), linker=linker)
    want = cold.compile(program)(*inputs)
    cold.wait_for_links()
    gemm = 1 if gemm_lanes() else 0        # the GEMM library: one more module, object and shared object
    program_files = lambda suffix: sorted(p for p in tmp_path.glob("*" + suffix) if not p.name.startswith("gemm-"))
    objects, shared = program_files(".o"), program_files(".so")
    assert len(objects) == llvm_ir.MAX_MODULES == cold.stats.compiles - gemm
    assert len(shared) == (1 if linker else 0)
    warm = LLVMEngine(cache=DiskCache(tmp_path), linker=linker)
    for a, b in zip(warm.compile(program)(*inputs), want):
        np.testing.assert_array_equal(a, b)
    assert warm.stats.compiles == 0
    assert (warm.stats.shared_loads, warm.stats.orc_links) == ((1 + gemm, 0) if linker else (0, 1 + gemm))
    for entry in shared:
        entry.unlink()
    objects[-1].unlink()                   # one module's object lost: all are compiled again
    healed = LLVMEngine(cache=DiskCache(tmp_path), linker=None)
    for a, b in zip(healed.compile(program)(*inputs), want):
        np.testing.assert_array_equal(a, b)
    assert healed.stats.compiles == llvm_ir.MAX_MODULES


def test_module_weights_balance_and_keep_shared_kernels_together():
    program = mixed_program(rows=40, cols=70)
    keys = [llvm_ir._matmul_key(k) if isinstance(k, MatmulKernel) else llvm_ir.canonical_kernel(k)
            for k in program.kernels]
    weights = [llvm_ir.kernel_weight(k) for k in program.kernels]
    assert llvm_ir.module_of(program.kernels, keys)[0] == {key: 0 for key in keys}     # light: one module
    home, _ = llvm_ir.module_of(program.kernels * 3, keys * 3)                          # repeats share functions
    assert set(home) == set(keys)
    old = llvm_ir.MODULE_WEIGHT
    try:
        llvm_ir.MODULE_WEIGHT = sum(weights) // 3
        home, _ = llvm_ir.module_of(program.kernels, keys)
    finally:
        llvm_ir.MODULE_WEIGHT = old
    loads = [0] * (max(home.values()) + 1)
    for key, wt in zip(keys, weights):
        loads[home[key]] += wt
    assert len(loads) == 3 and max(loads) <= max(sum(weights) / 3, max(weights)) * 1.5


@needs_fork
@pytest.mark.skipif(not gemm_lanes(), reason="the generated GEMM needs AVX2 and FMA or AVX-512")
def test_the_gemm_library_compiles_in_a_child_while_the_program_compiles(tmp_path, monkeypatch, forked):
    monkeypatch.setenv("TRACETORCH_COMPILE_JOBS", "2")
    program = _split_program()
    inputs = _inputs(program, 2)
    cold = LLVMEngine(cache=DiskCache(tmp_path), linker=None)
    z, s = cold.compile(program)(*inputs)[-2:]
    x, w = inputs[-2:]
    np.testing.assert_allclose(z, np.tanh(x @ w + 0.25), rtol=2e-5, atol=2e-6)
    gemm_objects = list(tmp_path.glob("gemm-*.o"))
    assert len(gemm_objects) == 1 and cold.stats.compiles == 2          # the program (one module) and the library
    assert len(forked) == 1 and _all_reaped(forked) and not cold._later
    warm = LLVMEngine(cache=DiskCache(tmp_path), linker=None)         # in the disk cache: no child
    np.testing.assert_array_equal(warm.compile(program)(*inputs)[-2], z)
    assert len(forked) == 1 and warm.stats.compiles == 0


@needs_fork
@pytest.mark.skipif(not native_team.supported(), reason="the native team needs Linux on x86-64/AArch64")
def test_the_native_team_compiles_in_a_child_while_a_parallel_program_compiles(tmp_path, monkeypatch, forked):
    monkeypatch.setenv("TRACETORCH_COMPILE_JOBS", "2")
    monkeypatch.setenv("TRACETORCH_NATIVE_TEAM", "1")
    program = big_program(256, 1024)
    x = np.random.default_rng(0).standard_normal((256, 1024), dtype=np.float32)
    cold = LLVMEngine(cache=DiskCache(tmp_path), linker=None, threads=2)
    assert all(map(cold.parallel, program.kernels))
    y, rowsum = cold.compile(program)(x)
    np.testing.assert_allclose(y, x / (1 + np.exp(-1.702 * x)), rtol=1e-5, atol=1e-6)
    assert isinstance(cold.team, native_team.NativeTeam) and not cold._later
    assert len(forked) == 1 and _all_reaped(forked)                   # the team's child (one module: no other)
    assert len(list(tmp_path.glob("team-*.o"))) == 1
    warm = LLVMEngine(cache=DiskCache(tmp_path), linker=None, threads=2)   # in the disk cache: no child
    np.testing.assert_array_equal(warm.compile(program)(x)[0], y)
    assert len(forked) == 1 and warm.stats.compiles == 0
    serial = LLVMEngine(cache=DiskCache(tmp_path / "serial"), linker=None, threads=1)   # no team wanted
    serial.compile(program)
    assert len(forked) == 1 and serial._team is None


@needs_fork
@pytest.mark.parametrize("child", ["compiles", "fails"])
def test_a_prefetched_program_is_compiled_by_a_child_for_the_compile_that_follows(tmp_path, monkeypatch, forked,
                                                                                   child):
    monkeypatch.setenv("TRACETORCH_COMPILE_JOBS", "2")
    if child == "fails":                     # the child dies: the compile does the work here
        parent, render = os.getpid(), llvm_ir.render_module

        def render_here_only(*args):
            if os.getpid() != parent:
                os._exit(3)
            return render(*args)
        monkeypatch.setattr(llvm_ir, "render_module", render_here_only)
    program = two_stage_program(1000)
    x = np.linspace(-2, 2, 1000, dtype=np.float32)
    engine = LLVMEngine(cache=DiskCache(tmp_path), linker=None, threads=1)
    engine.prefetch(program)
    assert len(forked) == 1 and len(engine._later) == 1
    engine.prefetch(program)                 # asked again meanwhile: the same child
    assert len(forked) == 1
    y, s = engine.compile(program)(x)
    t = np.exp(x) * np.float32(0.5)
    np.testing.assert_allclose(y, t + x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, t.sum(dtype=np.float64), rtol=1e-5)
    assert not engine._later and _all_reaped(forked) and engine.stats.compiles == 1
    engine.prefetch(program)                 # loaded here, and cached on disk: nothing to do
    LLVMEngine(cache=DiskCache(tmp_path), linker=None, threads=1).prefetch(program)
    assert len(forked) == 1
