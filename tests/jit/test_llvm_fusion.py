"""Fusion decisions of the LLVM backend: which ops share a kernel, checked on the groups and kernel
counts of small programs (and, every time, the compiled result against numpy or eager)."""
from __future__ import annotations

import numpy as np

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.nn.functional as F
from tracetorch.jit.llvm_backend import LLVMExecutable


def _compiled(fn, *args):
    f = tt.compile(fn, backend="llvm")
    f(*args)                                  # traces
    out = f(*args)                            # runs the program
    ex = f.programs[0].executable
    assert isinstance(ex, LLVMExecutable) and f.stats()["cache_hits"] == 1
    return ex, out


def _stage_kinds(group):
    return [type(s).__name__ for s in group.stages]


def test_softmax_is_one_kernel_with_one_statistics_pass(rng):
    x = rng.standard_normal((7, 45)).astype(np.float32)
    ex, out = _compiled(lambda x: tt.softmax(x, dim=1), tt.tensor(x))
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(out.numpy(), e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert ex.kernels_before_fusion == 5 and ex.kernels == 1
    (g,) = ex.lowered.groups
    assert g.kind == "reduction" and g.reduce_dims == (1,) and _stage_kinds(g) == ["SoftmaxStats"]
    assert ex.planned_peak_bytes == 0             # nothing in between is written to memory


def test_log_softmax_and_layer_norm_are_one_kernel_each(rng):
    x = rng.standard_normal((5, 600)).astype(np.float64)      # several blocks of the one-pass statistics
    w, b = rng.standard_normal(600), rng.standard_normal(600)
    ex, out = _compiled(lambda x: tt.log_softmax(x, dim=-1), tt.tensor(x))
    shifted = x - x.max(1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), shifted - np.log(np.exp(shifted).sum(1, keepdims=True)), rtol=1e-12)
    assert ex.kernels == 1 and _stage_kinds(ex.lowered.groups[0]) == ["SoftmaxStats"]

    ex, out = _compiled(lambda x, w, b: F.layer_norm(x, (600,), w, b), *map(tt.tensor, (x, w, b)))
    mean = x.mean(1, keepdims=True)
    var = ((x - mean) ** 2).mean(1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), (x - mean) / np.sqrt(var + 1e-5) * w + b, rtol=1e-12, atol=1e-12)
    assert ex.kernels_before_fusion == 11 and ex.kernels == 1
    assert _stage_kinds(ex.lowered.groups[0]) == ["Moments"]


def test_gelu_chain_with_broadcasts_is_one_elementwise_kernel(rng):
    x = rng.standard_normal((64, 33)).astype(np.float32)
    a, b = rng.standard_normal(33).astype(np.float32), rng.standard_normal(()).astype(np.float32)

    def gelu(x, a, b):
        z = x * a + b
        return 0.5 * z * (1 + tt.tanh(0.79788456 * (z + 0.044715 * (z * z * z))))

    ex, out = _compiled(gelu, *map(tt.tensor, (x, a, b)))
    z = x * a + b
    want = 0.5 * z * (1 + np.tanh(np.float32(0.79788456) * (z + np.float32(0.044715) * z * z * z)))
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
    assert ex.kernels_before_fusion == 11 and ex.kernels == 1
    assert ex.lowered.groups[0].kind == "elementwise" and ex.intermediate_bytes == 0


def test_views_fold_into_the_loads_of_one_kernel(rng):
    x, y = rng.standard_normal((4, 6)), rng.standard_normal((6, 2, 2))
    ex, out = _compiled(lambda x, y: (x.t() * 2 + y.reshape(6, 4)).exp()[:, ::2].expand(3, 6, 2).sum(0),
                        tt.tensor(x), tt.tensor(y))
    want = 3 * np.exp(x.T * 2 + y.reshape(6, 4))[:, ::2]
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    # transpose, reshape, strided slice and expand are index arithmetic of one reduction kernel's loads
    assert ex.kernels_before_fusion == 4 and ex.kernels == 1 and ex.intermediate_bytes == 0


def test_independent_updates_of_one_shape_merge_horizontally(rng):
    ps = [tt.tensor(rng.standard_normal((8, 16)).astype(np.float32)) for _ in range(3)]
    gs = [tt.tensor(rng.standard_normal((8, 16)).astype(np.float32)) for _ in range(3)]

    def update(*pg):
        p, g = pg[:3], pg[3:]
        return tuple(pi - 0.1 * gi for pi, gi in zip(p, g))

    ex, out = _compiled(update, *ps, *gs)
    for o, p, g in zip(out, ps, gs):
        np.testing.assert_allclose(o.numpy(), p.numpy() - np.float32(0.1) * g.numpy(), rtol=1e-6)
    assert ex.kernels == 1 and len(ex.lowered.groups[0].outputs) == 3
    assert "merged horizontally" in ex.explain()


def _mlp_step(batch=16):
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = tt.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    x, y = tt.randn(batch, 12), tt.randint(0, 10, (batch,))
    return tt.compile(step, backend="llvm"), x, y


def test_mlp_training_step_kernels():
    f, x, y = _mlp_step()
    for _ in range(3):                            # step 1 creates the momentum buffers; then one program
        f(x, y)
    ex = f.programs[0].executable
    groups = ex.lowered.groups
    externs = [g for g in groups if g.kind == "extern"]
    assert [g.extern.op.name for g in externs] == ["matmul"] * 5       # 2 forward, 3 backward
    # cross-entropy forward and backward: one row kernel, softmax statistics in one pass
    rows = [g for g in groups if g.kind == "reduction" and g.space == (16, 10) and g.reduce_dims == (1,)]
    assert len(rows) == 1 and _stage_kinds(rows[0])[0] == "SoftmaxStats"
    assert {n.op.name for n in rows[0].nodes} >= {"amax", "exp", "log", "sum", "where", "mul"}
    # the momentum update of each weight is one kernel reading its gradient contiguously
    for shape in ((32, 12), (10, 32)):
        (upd,) = [g for g in groups if g.kind == "elementwise" and g.space == shape]
        assert len(upd.outputs) == 2                                   # new weight, new momentum buffer
        assert all(a.flat.affine for a in upd.args.values())
    # forward: matmul, bias+relu, matmul; the label check with the count of valid labels; cross-entropy
    # forward and backward; the loss; per layer the bias gradient with its momentum update (one column
    # reduction each), the relu backward, and the weight update; the optimizer's value guards; then the
    # bias updates (computed by reduction kernels) copied into their tensors, one kernel per shape
    assert len(groups) == 15 and ex.kernels == 17
    assert ex.kernels_before_fusion == sum(n.op.name not in ("reshape", "permute", "expand", "slice", "constant")
                                           for n in f.graph.nodes) > 60
    s = f.stats()
    assert s["kernels"] == 17 and s["cache_hits"] == 1


def test_explain_reports_groups_and_the_memory_plan():
    f, x, y = _mlp_step()
    for _ in range(3):
        f(x, y)
    text = f.explain(x, y)
    gemm = f.programs[0].executable.backend.generated_matmuls     # matmuls as kernels (AVX-512 hosts)
    assert f"llvm: 17 kernels after fusion ({0 if gemm else 5} extern calls)" in text
    # weights and momentum buffers by their update kernels, the bias updates by the copy kernels
    assert "write-backs: 4 stored by the kernels computing them, 4 copied in by the last kernels, 0 copied by " \
           "the caller after the run" in text
    assert "planned arena peak" in text and "for all" in text and "bytes moved per call" in text
    assert "SoftmaxStats" in text
    assert ("matmul: generated GEMM kernel" if gemm else "matmul: extern call into numpy's BLAS") in text
    ex = f.programs[0].executable
    assert 0 < ex.planned_peak_bytes < ex.intermediate_bytes and ex.bytes_moved > 0


def test_identical_kernels_are_compiled_once(rng):
    """Two softmaxes of one shape (the second reads the first through a matmul): two kernels, one
    kernel function in the LLVM module."""
    x, w = tt.tensor(rng.standard_normal((6, 8))), tt.tensor(rng.standard_normal((8, 8)))
    ex, out = _compiled(lambda x, w: tt.softmax(tt.softmax(x, dim=1) @ w, dim=1), x, w)
    want = tt.softmax(tt.softmax(x, dim=1) @ w, dim=1)
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-12)
    assert [g.kind for g in ex.lowered.groups] == ["reduction", "extern", "reduction"]
    assert ex.compiled.ir_text().count("define internal void") == 1


def test_diagnose_names_the_kernel_that_differs(rng):
    x = tt.tensor(rng.standard_normal((4, 5)))
    f = tt.compile(lambda x: (x @ x.t()).exp().sum(1), backend="llvm")
    f(x)
    program = f.programs[0]
    ex = program.executable
    reference = {}
    from tracetorch.jit.interp import InterpExecutable
    InterpExecutable(program.graph).run([x.numpy()], on_node=lambda n, v: reference.__setitem__(n.out, v))
    assert "every kernel output matches" in ex.diagnose([x.numpy()], reference)
    matmul = next(n for n in program.graph.nodes if n.op.name == "matmul")
    reference[matmul.out] = reference[matmul.out] + 1.0          # pretend the interpreter disagrees there
    report = ex.diagnose([x.numpy()], reference)
    assert report.startswith("first differing kernel: k0_matmul") and "kernel IR:" in report


def test_diagnose_shows_both_kernels_of_a_split_reduction(rng):
    # a column sum over 1024 rows lowers to a partial-sum kernel and a combining one: the report names
    # the group and shows the IR of both (steps no longer line up one to one with fusion groups)
    x = tt.tensor(rng.standard_normal((1024, 160)).astype(np.float32))
    f = tt.compile(lambda x: (x * 2.0).sum(0) + 1.0, backend="llvm")
    f(x)
    program = f.programs[0]
    ex = program.executable
    reference = {}
    from tracetorch.jit.interp import InterpExecutable
    InterpExecutable(program.graph).run([x.numpy()], on_node=lambda n, v: reference.__setitem__(n.out, v))
    assert [s.name for s in ex.lowered.program.steps] == ["k0_reduce_sum_partials", "k0_reduce_sum"]
    assert "every kernel output matches" in ex.diagnose([x.numpy()], reference)
    out = program.graph.results()[0]
    reference[out] = reference[out] + 1.0
    report = ex.diagnose([x.numpy()], reference)
    assert report.startswith("first differing kernel: k0_reduce_sum")
    assert "kernel k0_reduce_sum_partials(" in report and "kernel k0_reduce_sum(" in report


def test_dump_writes_kernels_and_llvm_ir(tmp_path, rng):
    from tracetorch.jit import logs
    logs.configure(dump=str(tmp_path))
    try:
        f = tt.compile(lambda x: tt.softmax(x, dim=0), backend="llvm")
        f(tt.tensor(rng.standard_normal((3, 4))))
    finally:
        logs.configure()
    (ll,) = tmp_path.glob("*.ll")
    assert 'define void @"program"' in ll.read_text()
    (kernels,) = tmp_path.glob("*.kernels.txt")
    assert "parallel for" in kernels.read_text()
    assert "fusion groups" in next(tmp_path.glob("*.fusion.txt")).read_text()


def test_fused_half_chains_round_every_op_as_eager(rng):
    """A fused float16/bfloat16 chain rounds each op's result to the dtype, as eager and PyTorch do; it
    was computed in float32 and rounded only at the store (x * 1.1 + 0.3 differed in the last bit)."""
    for dt in (tt.float16, tt.bfloat16):
        f = tt.compile(lambda x, y: ((x * 1.1 + 0.3) * y).sum() + 3.0 / x, backend="llvm")
        for _ in range(3):
            x, y = (tt.tensor(rng.standard_normal(257).astype(np.float32) * 3, dtype=dt) for _ in range(2))
            got, want = f(x, y), ((x * 1.1 + 0.3) * y).sum() + 3.0 / x
            assert got.dtype is dt
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_half_column_reductions_accumulate_in_float32_as_eager(rng):
    """A reduction over the rows of a float16/bfloat16 matrix, column-wise, summed in float32 and rounded
    once as eager does: its rows of partial sums were kept in the half dtype, rounded at every row
    (a bfloat16 x.sum(0) over 4096 rows was 66 ulps off)."""
    for dt in (tt.float16, tt.bfloat16):
        f = tt.compile(lambda x: (x.sum(0), x.sum(0) + x[0]), backend="llvm")
        for _ in range(3):
            x = tt.tensor(rng.standard_normal((4096, 64)).astype(np.float32) * 3 + 1, dtype=dt)
            for got, want in zip(f(x), (x.sum(0), x.sum(0) + x[0])):
                np.testing.assert_array_equal(got.numpy(), want.numpy())
