"""The CUDA engine (runtime.cuda_engine): importable without pycuda; the arena layout; programs against
numpy with poisoned buffers, the error flag, host extern steps, memory plans with reuse, fused matmul
steps, input checks. Each engine test runs on an emulated device (fake_pycuda) and, with `pytest -m cuda`
on a machine with a GPU, on the real one."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

import tracetorch.cuda
from codegen.cuda_matmul import ACC, MatmulSpec
from codegen.kernel import Arg, Buffer, CheckedIndex, Const, ExternCall, IndexMap, Load, Op, Program
from codegen.scalar import op
from codegen.templates import elementwise_kernel
from runtime.cuda_engine import SLOT_ALIGN, arena_layout
from runtime.memory import MemoryPlan, sequential_plan
import fake_pycuda
from sample_programs import two_stage_program
from tracetorch.dtypes import float32, int64


@pytest.fixture(scope="module", params=["emulated", pytest.param("gpu", marks=pytest.mark.cuda)])
def cuda_engine(request, tmp_path_factory):
    """The engine on the real GPU, or on an emulated device (fake_pycuda: host memory, kernels on the
    CPU emulator) that runs the engine's own code without a GPU."""
    import runtime.cuda_engine as cuda_engine_module
    cache = str(tmp_path_factory.mktemp("cuda-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cuda_engine_module, "_DRIVER", None)
        if request.param == "gpu":
            if not tracetorch.cuda.is_available():
                pytest.skip("no CUDA device")
            yield cuda_engine_module.CUDAEngine(cache_dir=cache)
            return
        if shutil.which("g++") is None:
            pytest.skip("g++ not found (the emulated device needs it)")
        log = fake_pycuda.install(mp)
        engine = cuda_engine_module.CUDAEngine(cache_dir=cache)
        engine.fake_log = log
        yield engine


def compile_poisoned(engine, program, plan=None):
    compiled = engine.compile(program, plan)
    compiled.poison()
    return compiled


# ---------------------------------------------------------------- without a GPU
def test_imports_without_pycuda_and_probes_availability():
    assert isinstance(tracetorch.cuda.is_available(), bool)
    if importlib.util.find_spec("pycuda") is None:
        from runtime.cuda_engine import CUDAEngine
        assert not tracetorch.cuda.is_available()
        with pytest.raises(ImportError):
            CUDAEngine()


def test_arena_layout_keeps_the_plan_and_aligns_every_slot():
    program = two_stage_program(1000)
    plan = sequential_plan(program.temps)
    offsets, err, size = arena_layout(program, plan)
    assert set(offsets) == set(program.buffers)
    for buf in program.temps:
        assert offsets[buf] == plan.offsets[buf.name]
    spans = sorted((offsets[b], offsets[b] + b.nbytes) for b in program.buffers)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert all(offsets[b] % SLOT_ALIGN == 0 for b in program.inputs + program.outputs)
    assert err >= spans[-1][1] and err % SLOT_ALIGN == 0 and size >= err + 4


# ---------------------------------------------------------------- on a GPU
def test_sample_program_matches_numpy_call_after_call(cuda_engine):
    compiled = compile_poisoned(cuda_engine, two_stage_program(100_003, name="cuda_two_stage"))
    assert compiled.launches_per_call == 3
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal(100_003).astype(np.float32)
        y, s = compiled(x)
        t = np.exp(x.astype(np.float64)) * 0.5
        np.testing.assert_allclose(y, t + x, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s, t.sum(), rtol=1e-5)
    y2, _ = compiled(x)
    assert y2 is not y and not np.shares_memory(y, y2)          # fresh host arrays every call


def test_modules_are_built_for_sm_90_and_launched_prepared(cuda_engine):
    if not hasattr(cuda_engine, "fake_log"):
        pytest.skip("checks the emulated device's record of pycuda calls")
    compiled = cuda_engine.compile(two_stage_program(5000, name="cuda_logged"))
    kwargs = cuda_engine.fake_log["modules"][-1]
    assert kwargs["no_extern_c"] and kwargs["arch"] == "sm_90" and "-std=c++17" in kwargs["options"]
    assert kwargs["cache_dir"] == cuda_engine.cache_dir
    before = len(cuda_engine.fake_log["launches"])
    compiled(np.zeros(5000, np.float32))
    launches = cuda_engine.fake_log["launches"][before:]
    assert [s.split("_", 1)[1] for s, _, _ in launches] == ["half_exp", "plus", "total"]
    assert launches[0][1] == (5, 1, 1) and launches[0][2] == (256, 1, 1)     # 5000 / (256 * 4) -> 5 blocks
    assert launches[2][1] == (1, 1, 1)                                        # one row: one block


def embedding_program(rows=6, vocab=10, dim=33):
    table, idx = Buffer("table", float32, (vocab, dim)), Buffer("idx", int64, (rows,))
    out = Buffer("out", float32, (rows, dim))

    def gather(at):
        row = CheckedIndex(Load(idx, at[0]), vocab, "embedding index")
        return Op("add", (Op("mul", (row, Const(dim, int64)), int64), at[1]), int64)

    k = elementwise_kernel("embedding", (rows, dim), {"w": (table, gather)},
                           [(out, op("mul", Arg("w", float32), 2.0))])
    return Program("cuda_embedding", (k,), (table, idx), (out,))


def test_failed_check_raises_and_the_next_call_runs(cuda_engine):
    compiled = compile_poisoned(cuda_engine, embedding_program())
    table = np.random.default_rng(1).standard_normal((10, 33)).astype(np.float32)
    for bad in (10, -11, 2 ** 40):
        with pytest.raises(IndexError, match="embedding index out of range for a dimension of size 10"):
            compiled(table, np.array([0, 1, bad, 2, 3, 4]))
    idx = np.array([0, 9, -1, -10, 3, 3])
    np.testing.assert_array_equal(compiled(table, idx)[0], table[idx] * 2)


def mlp_steps(fused: bool):
    """relu(a) @ w + bias: the matmul as a host extern (numpy) or as a CUDA matmul with the bias fused."""
    a, w, b = Buffer("a", float32, (70, 50)), Buffer("w", float32, (50, 30)), Buffer("b", float32, (30,))
    r, out = Buffer("r", float32, (70, 50)), Buffer("out", float32, (70, 30))
    relu = elementwise_kernel("relu", (70, 50), {"a": (a, IndexMap.contiguous((70, 50)))},
                              [(r, op("max", Arg("a", float32), 0.0))])
    if fused:
        mm = MatmulSpec("mm", r, w, out, 70, 30, 50, epilogue=op("add", ACC, Arg("b", float32)),
                        epilogue_inputs=(("b", b, IndexMap.broadcast((30,), (70, 30))),))
        return Program("mlp_fused", (relu, mm), (a, w, b), (out,))
    m = Buffer("m", float32, (70, 30))
    matmul = ExternCall("matmul", lambda x, y, o: np.matmul(x, y, out=o), (r, w), (m,))
    bias = elementwise_kernel("bias", (70, 30), {"m": (m, IndexMap.contiguous((70, 30))),
                                                 "b": (b, IndexMap.broadcast((30,), (70, 30)))},
                              [(out, op("add", Arg("m", float32), Arg("b", float32)))])
    return Program("mlp_extern", (relu, matmul, bias), (a, w, b), (out,))


@pytest.mark.parametrize("fused", [False, True], ids=["host_extern", "fused_matmul"])
def test_matmul_steps(cuda_engine, fused):
    compiled = compile_poisoned(cuda_engine, mlp_steps(fused))
    rng = np.random.default_rng(2)
    a, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((70, 50), (50, 30), (30,)))
    np.testing.assert_allclose(compiled(a, w, b)[0], np.maximum(a, 0) @ w + b, rtol=1e-4, atol=1e-4)


def test_memory_plan_reuse_between_kernels(cuda_engine):
    """t1 and t2 share arena bytes (no kernel uses both): x -> t1 -> y1 and x -> t2 -> y2."""
    n = 4099
    x = Buffer("x", float32, (n,))
    t1, t2, y1, y2 = (Buffer(name, float32, (n,)) for name in ("t1", "t2", "y1", "y2"))
    ident = IndexMap((1,))
    steps = (elementwise_kernel("k1", (n,), {"x": (x, ident)}, [(t1, op("mul", Arg("x", float32), 2.0))]),
             elementwise_kernel("k2", (n,), {"t": (t1, ident)}, [(y1, op("add", Arg("t", float32), 1.0))]),
             elementwise_kernel("k3", (n,), {"x": (x, ident)}, [(t2, op("mul", Arg("x", float32), 3.0))]),
             elementwise_kernel("k4", (n,), {"t": (t2, ident)}, [(y2, op("add", Arg("t", float32), 1.0))]))
    plan = MemoryPlan({"t1": 0, "t2": 0}, {"t1": x.nbytes, "t2": x.nbytes}, x.nbytes)
    compiled = compile_poisoned(cuda_engine, Program("reuse", steps, (x,), (y1, y2)), plan)
    xs = np.linspace(-1, 1, n).astype(np.float32)
    got1, got2 = compiled(xs)
    np.testing.assert_allclose(got1, xs * 2 + 1, rtol=1e-6)
    np.testing.assert_allclose(got2, xs * 3 + 1, rtol=1e-6)


def test_identical_programs_share_the_loaded_module(cuda_engine):
    before = cuda_engine.stats.memory_hits
    cuda_engine.compile(two_stage_program(64, name="shared"))
    cuda_engine.compile(two_stage_program(64, name="shared"))
    assert cuda_engine.stats.memory_hits == before + 1


def test_inputs_are_validated(cuda_engine):
    compiled = cuda_engine.compile(two_stage_program(16, name="cuda_validate"))
    with pytest.raises(TypeError, match="takes 1 inputs"):
        compiled()
    with pytest.raises(TypeError, match="must be float32"):
        compiled(np.zeros(16, np.float64))
    with pytest.raises(TypeError, match=r"float32\[16\]"):
        compiled(np.zeros(15, np.float32))
