"""Uniform random numbers fuse into kernels (fuse.py: `rand` is the `random` op of the element's flat index in
rand's own output): compiled draws are eager's bit for bit, on backend llvm and on the emulated cuda backend,
through views of the draws, in every float dtype, with fresh draws per call; a dropout mask is computed in the
kernel that uses it (no extern call, no mask buffer). Normal draws stay an extern call (numpy's log1p and
cos), so they are eager's bits too."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.nn.functional as F
from codegen.cuda_c import ARCH, NVCC_OPTIONS
from codegen.kernel import Kernel, Op, walk_exprs
from tracetorch.jit.passes.fuse import EXTERN

from test_cuda_backend import cuda  # noqa: F401  (the emulated CUDA backend fixture)


def draws(x64):
    """rand in every float dtype, read plainly, permuted, broadcast, sliced (each consumed by another op,
    so the draw is computed at the consumer's position), a 0-element draw, and normal draws."""
    return (tt.rand(3, 4, 5),
            tt.rand(4, 6, dtype=tt.float64).permute(1, 0) + x64,
            tt.rand(5, 1, dtype=tt.float16).expand(5, 7) * 2,
            tt.rand(6, 8, dtype=tt.bfloat16)[1::2, ::3] * 2,
            tt.rand(2, 3, 4).permute(2, 0, 1).reshape(4, 6)[:, 1:] - 1,
            tt.rand(0, 3),
            tt.randn(7, dtype=tt.float64))


def _same_as_eager(backend, calls=2):
    x64 = tt.tensor(np.arange(24, dtype=np.float64).reshape(6, 4))
    tt.manual_seed(5)
    want = [[t.numpy() for t in draws(x64)] for _ in range(calls)]
    f = tt.compile(draws, backend=backend)
    tt.manual_seed(5)
    got = [[t.numpy() for t in f(x64)] for _ in range(calls)]
    for k, (a, b) in enumerate(zip(got, want)):
        for j, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and x.shape == y.shape, (k, j)
            np.testing.assert_array_equal(x, y, err_msg=f"call {k}, result {j}")
    assert not np.array_equal(got[0][0], got[1][0])                 # fresh draws each call
    return f


def _groups(f):
    return [g for p in f.programs for g in p.executable.lowered.groups]


def _externs(f) -> list:
    return [g.extern.op.name for g in _groups(f) if g.kind == EXTERN]


def test_llvm_draws_are_eager_bits_through_views():
    f = _same_as_eager("llvm")
    rands = [n for p in f.programs for n in p.graph.nodes if n.op.name == "rand"]
    assert len(rands) == 7 and _externs(f) == ["rand"]
    assert [g.extern.attrs["normal"] for g in _groups(f) if g.kind == EXTERN] == [True]   # randn only
    written = {v for g in _groups(f) for v in g.outputs}
    assert not any(n.out in written for n in rands[1:5])             # drawn where they are read, not stored


def test_cuda_draws_are_eager_bits_through_views(cuda):  # noqa: F811
    f = _same_as_eager(cuda)
    assert _externs(f) == ["rand"]                                   # a device step (RandSpec) for randn
    kernels = [s for p in f.programs for s in p.executable.compiled.program.steps if isinstance(s, Kernel)]
    assert sum(_draws(k) for k in kernels) >= 4


def reduced_draws(x):
    """Draws inside reduction kernels: column and row prologues, a row output of the kept shape, a row
    kernel's epilogue, a full reduction."""
    return ((x * tt.rand(6, 9)).sum(0),
            (x * tt.rand(6, 9, dtype=tt.float64).float()).sum(1),
            x.sum(1, keepdim=True) * tt.rand(6, 1),
            F.softmax(x + tt.rand(9), 1),
            (x.sum(1) + tt.rand(6)).sum(),
            tt.rand(6, 9).sum(1, keepdim=True) - tt.rand(6, 9))


@pytest.mark.parametrize("where", ["llvm", "cuda"])
def test_draws_inside_reductions(where, request, rng):
    backend = request.getfixturevalue("cuda") if where == "cuda" else where
    x = tt.tensor(rng.standard_normal((6, 9)).astype(np.float32))
    tt.manual_seed(1)
    want = [t.numpy() for t in reduced_draws(x)]
    f = tt.compile(reduced_draws, backend=backend)
    tt.manual_seed(1)
    for a, b in zip(f(x), want):                    # (sums in another order than numpy's)
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)
    assert not _externs(f)


def _draws(kernel: Kernel) -> bool:
    return any(isinstance(e, Op) and e.op == "random" for e in walk_exprs(kernel.outer))


# ---------------------------------------------------------------- dropout in a training step
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.4, training=self.training))


def _train(compiled: bool, backend="llvm", steps=3):
    tt.manual_seed(2)
    model = _Net()
    opt = tt.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    x = tt.tensor(rng.standard_normal((16, 12)).astype(np.float32))
    y = tt.tensor(rng.integers(0, 3, 16))

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    f = tt.compile(step, backend=backend) if compiled else step
    losses = [f(x, y).item() for _ in range(steps)]
    return losses, [p.detach().numpy().copy() for p in model.parameters()], f


def test_dropout_training_step_draws_its_mask_inside_the_kernels():
    lc, pc, f = _train(True)
    le, pe, _ = _train(False)
    np.testing.assert_allclose(lc, le, rtol=1e-5)
    for a, b in zip(pc, pe):                 # the same masks as eager (other masks would move other weights)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert "rand" not in _externs(f) and set(_externs(f)) == {"matmul"}
    text = f.explain()
    assert "_rand [extern" not in text and "rand" in text
    written = {v for g in _groups(f) for v in g.outputs}
    masks = [v for g in _groups(f) for n in g.nodes for v in n.outputs
             if n.op.name in ("rand", "ge") and v.shape == (16, 32)]
    assert masks and not any(v in written for v in masks)        # neither the draws nor the mask in memory


def test_cuda_dropout_kernel_compiles_with_nvcc(cuda, tmp_path):  # noqa: F811
    """The emulated run checks the values; nvcc checks the CUDA C of the fused draws is valid for the GPU."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    x = tt.tensor(np.linspace(-1, 1, 6 * 50, dtype=np.float32).reshape(6, 50))
    f = tt.compile(lambda x: F.dropout(x.tanh(), 0.25).sum(1), backend=cuda)
    tt.manual_seed(9)
    got = f(x).numpy()
    tt.manual_seed(9)
    np.testing.assert_allclose(got, F.dropout(x.tanh(), 0.25).sum(1).numpy(), rtol=1e-5, atol=1e-6)
    (program,) = f.programs
    compiled = program.executable.compiled
    assert any(_draws(s) for s in compiled.program.steps if isinstance(s, Kernel)) and not _externs(f)
    src = tmp_path / "dropout.cu"
    src.write_text(compiled.rendered.source)
    done = subprocess.run([nvcc, f"-arch={ARCH}", "--cubin", *NVCC_OPTIONS, str(src), "-o", str(tmp_path / "d.cubin")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
