"""Backend "cuda" (jit/cuda_backend.py): whole programs through tt.compile against eager.

Without a GPU the programs run on an emulated device: tests/runtime/fake_pycuda.py stands in for
pycuda and runs the generated CUDA C on the CPU (tests/codegen/cuda_emulator.py, built with g++), so
fusion, lowering, CUDA rendering, the engine's arena, device matmuls, host extern calls and the error
flag are all exercised. The last test runs a training step on a real GPU (`pytest -m cuda`)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.cuda
import tracetorch.nn as nn
import tracetorch.nn.functional as F
from codegen.cuda_matmul import MatmulSpec
from codegen.kernel import ExternCall
from tracetorch.jit import backends
from tracetorch.jit.cuda_backend import CUDABackend, CUDAExecutable


@pytest.fixture(scope="module")
def cuda(tmp_path_factory, fake_pycuda):
    """A CUDA backend on an emulated device (host memory; kernels compiled for the CPU emulator)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found (the emulated CUDA device needs it)")
    import runtime.cuda_engine as cuda_engine_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cuda_engine_module, "_DRIVER", None)
        log = fake_pycuda.install(mp)
        backend = CUDABackend(cuda_engine_module.CUDAEngine(cache_dir=str(tmp_path_factory.mktemp("cuda-cache"))))
        backend.fake_log = log
        yield backend


def _executables(f) -> list:
    return [p.executable for p in f.programs]


def _run_both(fn, backend, *args, rtol=1e-5, atol=1e-6):
    want = fn(*args)
    f = tt.compile(fn, backend=backend)
    launches = len(backend.fake_log["launches"])
    for _ in range(2):
        got = f(*args)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=rtol, atol=atol)
    assert all(isinstance(e, CUDAExecutable) for e in _executables(f))
    assert len(backend.fake_log["launches"]) > launches          # kernels really ran on the (emulated) device
    return f, got


# ---------------------------------------------------------------- availability
def test_cuda_is_never_auto_and_names_why_it_is_unavailable():
    assert backends.resolve("auto").name != "cuda"
    if tracetorch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    assert "cuda" not in backends.BACKENDS
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available: (pycuda|no CUDA device)"):
        tt.compile(lambda x: x + 1, backend="cuda")


# ---------------------------------------------------------------- emulated device
def test_gelu_chain_matches_eager(cuda, rng):
    x = tt.tensor(rng.standard_normal((37, 53)).astype(np.float32))
    f, got = _run_both(lambda x: F.gelu(x * 1.5 + 0.25).tanh() * x, cuda, x)
    assert got.dtype == tt.float32 and got.shape == (37, 53)


def test_results_are_fresh_arrays(cuda, rng):
    x = tt.tensor(rng.standard_normal(300).astype(np.float32))
    f = tt.compile(lambda x: x.exp() + 1, backend=cuda)
    a = f(x)
    first = a.numpy().copy()
    b = f(x * 2)
    np.testing.assert_array_equal(a.numpy(), first)        # the second call did not overwrite the first result
    np.testing.assert_allclose(b.numpy(), (x * 2).exp().numpy() + 1, rtol=1e-6)


def test_softmax_rows_match_eager(cuda, rng):
    x = tt.tensor(rng.standard_normal((9, 130)).astype(np.float32) * 4)
    _, got = _run_both(lambda x: tt.softmax(x, dim=-1), cuda, x)
    np.testing.assert_allclose(got.numpy().sum(-1), np.ones(9), rtol=1e-5)


def test_layer_norm_matches_eager(cuda, rng):
    x = tt.tensor(rng.standard_normal((6, 96)).astype(np.float32) + 3)
    w = tt.tensor(rng.standard_normal(96).astype(np.float32))
    b = tt.tensor(rng.standard_normal(96).astype(np.float32))
    _run_both(lambda x, w, b: F.layer_norm(x, (96,), w, b), cuda, x, w, b, rtol=1e-4, atol=1e-5)


def test_mlp_forward_runs_its_matmuls_on_the_device(cuda, rng):
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    x = tt.tensor(rng.standard_normal((16, 20)).astype(np.float32))
    with tt.no_grad():
        f, _ = _run_both(lambda x: model(x), cuda, x, rtol=1e-4, atol=1e-5)
    (exe,) = _executables(f)
    steps = exe.compiled.program.steps
    assert sum(isinstance(s, MatmulSpec) for s in steps) == 2
    assert not any(isinstance(s, ExternCall) for s in steps)
    assert "2 extern op(s) run on the device" in exe.explain()


def test_sgd_training_step_matches_eager(cuda, rng):
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 8)

    def train(compiled: bool):
        tt.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        opt = tt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        run = tt.compile(step, backend=cuda) if compiled else step
        losses = [run(tt.tensor(x), tt.tensor(y)).item() for _ in range(4)]
        return losses, model, run

    got, model_c, f = train(True)
    want, model_e, _ = train(False)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for (name, p), q in zip(model_c.named_parameters(), model_e.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert all(isinstance(e, CUDAExecutable) for e in _executables(f))
    (exe,) = _executables(f)
    steps = exe.compiled.program.steps
    assert sum(isinstance(s, MatmulSpec) for s in steps) == 5       # forward, and both grads (transposed reads)
    assert not any(isinstance(s, ExternCall) for s in steps)


def test_float64_batched_matmul_runs_on_the_device(cuda, rng):
    a = tt.tensor(rng.standard_normal((3, 5, 7)))
    b = tt.tensor(rng.standard_normal((3, 7, 4)))
    f, _ = _run_both(lambda a, b: (tt.matmul(a.exp(), b) * 2).relu(), cuda, a, b, rtol=1e-12, atol=1e-12)
    (exe,) = _executables(f)
    steps = exe.compiled.program.steps
    assert any(isinstance(s, MatmulSpec) and s.batch == 3 for s in steps)
    assert not any(isinstance(s, ExternCall) for s in steps)


def test_every_extern_op_runs_on_the_device(cuda, rng):
    """randperm, an embedding-style scatter-add, a float16 cumsum and an integer matmul: no host step."""
    x, w = tt.tensor(rng.standard_normal((4, 9))), tt.tensor(rng.standard_normal((6, 3)).astype(np.float32))
    idx, m = tt.tensor([[1, 4], [1, 0]]), tt.tensor(rng.integers(-9, 9, (3, 4)).astype(np.int32))

    def f(x, w, idx, m):
        tt.manual_seed(3)
        grad = tt.index_put(tt.zeros_like(w), (idx.reshape(-1),), w[:4] * 2.0, accumulate=True)
        return grad.sum() + x.half().cumsum(1).float().sum() + (m @ m.T).sum() + tt.randperm(5)[1]

    f_, _ = _run_both(f, cuda, x, w, idx, m, rtol=1e-5, atol=1e-5)
    (exe,) = _executables(f_)
    assert not any(isinstance(s, ExternCall) for s in exe.compiled.program.steps)
    assert "0 extern call(s) run on the host" in exe.explain()


def test_extern_ops_without_a_device_step_run_on_the_host(cuda, rng, monkeypatch):
    """The fallback (numpy between kernels, with copies) stays correct for an op no device step takes."""
    from tracetorch.jit import cuda_backend
    monkeypatch.delitem(cuda_backend._DEVICE_STEPS, "cumsum")
    x = tt.tensor(rng.standard_normal((4, 9)))
    f, _ = _run_both(lambda x: (x.exp().cumsum(1) * 2).relu(), cuda, x, rtol=1e-12, atol=1e-12)
    (exe,) = _executables(f)
    assert any(isinstance(s, ExternCall) for s in exe.compiled.program.steps)
    assert "1 extern call(s) run on the host" in exe.explain()


def test_gather_out_of_range_raises_index_error_and_commits_nothing(cuda, rng):
    table = tt.tensor(rng.standard_normal((5, 4)).astype(np.float32))
    acc = tt.zeros(3, 4)

    def f(table, idx):
        acc.add_(table[idx] * 2)
        return acc.sum()

    g = tt.compile(f, backend=cuda)
    g(table, tt.tensor([0, 4, -1]))
    np.testing.assert_allclose(acc.numpy(), table.numpy()[[0, 4, -1]] * 2, rtol=1e-6)
    before = acc.numpy().copy()
    with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 5"):
        g(table, tt.tensor([0, 5, 1]))
    np.testing.assert_array_equal(acc.numpy(), before)                  # the failed call committed nothing
    g(table, tt.tensor([1, 2, 3]))                                      # the program still serves good indices
    np.testing.assert_allclose(acc.numpy(), before + table.numpy()[[1, 2, 3]] * 2, rtol=1e-6)


# ---------------------------------------------------------------- real GPU
@pytest.mark.cuda
def test_mlp_training_step_on_gpu_matches_cpu(rng):
    if not tracetorch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def train(backend):
        tt.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = tt.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        @tt.compile(backend=backend)
        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        losses = [step(tt.tensor(x), tt.tensor(y)).item() for _ in range(5)]
        return losses, [p.detach().numpy().copy() for p in model.parameters()]

    gpu_losses, gpu_params = train("cuda")
    cpu_losses, cpu_params = train("auto")
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    for a, b in zip(gpu_params, cpu_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dump_and_diagnose_show_the_cuda_source(cuda, rng, tmp_path):
    x = tt.tensor(rng.standard_normal((4, 8)).astype(np.float32))
    f = tt.compile(lambda x: tt.softmax(x.exp() * 2, dim=-1) + 1, backend=cuda)
    f(x)
    (exe,) = _executables(f)
    exe.dump(str(tmp_path), "prog")
    assert "__global__" in (tmp_path / "prog.cu").read_text()
    group = exe.lowered.groups[0]
    (value,) = group.outputs
    inputs = [x.numpy()]
    report = exe.diagnose(inputs, {value: np.full(value.shape, 123.0, value.dtype.np)})
    assert report.startswith(f"first differing kernel: {group.describe()}") and "CUDA C of the program" in report


def test_cuda_code_generation_does_not_need_llvmlite():
    # the CUDA renderer and its device steps take `Check` from codegen.rendered: a GPU machine without
    # llvmlite's native library still renders programs
    import subprocess
    import sys
    code = ("import sys; import codegen.cuda_c, codegen.cuda_steps, codegen.cuda_matmul, codegen.cuda_index, "
            "codegen.cuda_sort; print('llvmlite' in sys.modules)")
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
