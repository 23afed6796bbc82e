"""Kernel decisions of the LLVM backend made for speed (issue 5, the GPT block of W6): each checked on
the fusion groups or the generated IR of a small program, and every time the compiled result against
eager in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch.jit.llvm_backend import LLVMExecutable
from training_steps import training_step


def _compiled(fn, *args):
    f = tt.compile(fn, backend="llvm")
    f(*args)                                  # traces
    out = f(*args)                            # runs the program
    ex = f.programs[0].executable
    assert isinstance(ex, LLVMExecutable) and f.stats()["cache_hits"] == 1
    return ex, out


def _close(got, want):
    got, want = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)


def _causal_softmax(x):
    n = x.shape[-1]
    causal = tt.arange(n).reshape(1, n) <= tt.arange(n).reshape(n, 1)
    return F.softmax(tt.where(causal, x * 0.25, float("-inf")), -1)


def test_masked_max_reduction_freezes_its_value_and_keeps_nan(rng):
    # freeze keeps LLVM from turning max(acc, where(m, x, -inf)) into a conditional reduction it runs scalar
    x = rng.standard_normal((3, 2, 9, 9))
    x[1, 0, 4, 2] = np.nan                    # a NaN among the kept scores of one row: that row is all NaN
    ex, out = _compiled(_causal_softmax, tt.tensor(x))
    want = _causal_softmax(tt.tensor(x))
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-12, atol=1e-15)
    assert np.isnan(out.numpy()[1, 0, 4]).all() and not np.isnan(out.numpy()[1, 0, 3]).any()
    (g,) = ex.lowered.groups
    assert [type(s).__name__ for s in g.stages] == ["SoftmaxStats"]
    assert "freeze" in ex.compiled.ir_text()

    ex, out = _compiled(lambda x: tt.where(x > 0, x, float("-inf")).amax(-1), tt.tensor(x))
    np.testing.assert_array_equal(out.numpy(), np.where(x > 0, x, -np.inf).max(-1))    # NaN propagates


def test_gather_in_a_reduction_checks_its_indices_after_the_loop(rng):
    # the check only ORs into a flag inside the loop (no branch: the loop vectorizes); the id is stored
    # when the kernel returns, and the call still raises before committing anything
    w, b = rng.standard_normal((11, 16)), rng.standard_normal(16)

    def embed_norm(idx, w, b):
        return F.layer_norm(F.embedding(idx, w), (16,), None, b)

    idx = tt.tensor(rng.integers(0, 11, (4, 5)))
    ex, out = _compiled(embed_norm, idx, tt.tensor(w), tt.tensor(b))
    _close(out, embed_norm(idx, tt.tensor(w), tt.tensor(b)))
    assert ex.kernels == 1 and ex.lowered.groups[0].kind == "reduction"
    f = tt.compile(embed_norm, backend="llvm")
    f(idx, tt.tensor(w), tt.tensor(b))
    bad = idx.numpy().copy()
    bad[3, 4] = 11
    with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 11"):
        f(tt.tensor(bad), tt.tensor(w), tt.tensor(b))
    _close(f(idx, tt.tensor(w), tt.tensor(b)), out)         # the flag was reset: the next call runs clean


def test_a_gather_read_by_two_kernels_is_written_once_not_recomputed(rng):
    w = rng.standard_normal((13, 32))

    def two_norms(idx, w):
        e = F.embedding(idx, w) * 2.0
        return F.layer_norm(e, (32,)), e.sum((0, 1))       # a row and a column reduction: two kernels

    idx = tt.tensor(rng.integers(0, 13, (3, 7)))
    ex, out = _compiled(two_norms, idx, tt.tensor(w))
    _close(out, two_norms(idx, tt.tensor(w)))
    gathers = [g for g in ex.lowered.groups if any(n.op.name == "index" for n in g.nodes)]
    assert len(gathers) == 1 and ex.kernels == 2                     # the gather's kernel writes e once
    assert not any(g.inlined for g in ex.lowered.groups)             # ... and nobody gathers again


def test_reshapes_of_a_computed_value_feed_a_matmul_without_a_copy(rng):
    x, w = rng.standard_normal((4, 6, 8)), rng.standard_normal((8, 5))

    def merged(x, w):
        return (x * 2.0 + 1.0).reshape(24, 8) @ w

    def twice(x, w):                         # reshape of a reshape
        return (x * 2.0).reshape(4, 48).reshape(24, 8) @ w

    for fn in (merged, twice):
        ex, out = _compiled(fn, tt.tensor(x), tt.tensor(w))
        _close(out, fn(tt.tensor(x), tt.tensor(w)))
        assert [g.kind for g in ex.lowered.groups] == ["elementwise", "extern"]
        assert "copy" not in ex.lowered.groups[0].name

    def transposed(x, w):                    # a permuted layout still needs its copy (not affine)
        return (x * 2.0).transpose(0, 1).reshape(24, 8) @ w
    ex, out = _compiled(transposed, tt.tensor(x), tt.tensor(w))
    _close(out, transposed(tt.tensor(x), tt.tensor(w)))


def test_rows_split_then_merged_are_read_at_an_affine_index(rng):
    # W6's logits: [512, V] -> [B, T, V] (+ bias) -> [B*T, V] for the loss; the rows' split divides the row
    # index (by T), never the flat index, and the merge puts the row back together: contiguous loads
    x, b = rng.standard_normal((24, 8)), rng.standard_normal(8)

    def loss(x, b):
        y = x.reshape(4, 6, 8) + b
        return F.log_softmax(y.reshape(24, 8), -1)

    ex, out = _compiled(loss, tt.tensor(x), tt.tensor(b))
    _close(out, loss(tt.tensor(x), tt.tensor(b)))
    (kernel,) = ex.lowered.program.kernels
    assert "floordiv" not in str(kernel) and "mod(" not in str(kernel)


def test_a_split_dim_keeps_the_other_dims_affine():
    from tracetorch.jit.passes.positions import Space, flat_index, reshape_source
    space = Space((6, 20))                          # [6, 20] read as [2, 3, 4, 5]: rows split, columns split
    pos = reshape_source(space, space.identity(), (6, 20), (2, 3, 4, 5))
    assert [c.affine for c in pos] == [False, False, False, False]
    values = {}
    for i in range(6):
        for j in range(20):
            env = {"@i0": i, "@i1": j}
            values[i, j] = tuple(_evaluate(c, env) for c in pos)
    assert all(values[i, j] == np.unravel_index(i * 20 + j, (2, 3, 4, 5)) for i, j in values)
    back = flat_index(space, pos, (2, 3, 4, 5))     # merged again: affine, the row-major index
    assert back.affine and back.coeffs == (20, 1) and back.const == 0


def _evaluate(coord, env):
    if coord.affine:
        return sum(c * env[f"@i{k}"] for k, c in enumerate(coord.coeffs)) + coord.const
    from codegen.kernel import Const, Op, Var

    def ev(e):
        if isinstance(e, Var):
            return env[e.name]
        if isinstance(e, Const):
            return e.value
        a, b = (ev(x) for x in e.args)
        return {"add": int.__add__, "mul": int.__mul__, "floordiv": int.__floordiv__, "mod": int.__mod__}[e.op](a, b)
    return ev(coord.as_expr())


def _gelu_reference(x: np.ndarray) -> np.ndarray:
    return x * 0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in x.ravel()]).reshape(x.shape)


def test_exact_gelu_saves_its_input_alone_for_backward(rng):
    x, w = rng.standard_normal((6, 5)), rng.standard_normal((5, 7))

    def step(x, w):
        w.grad = None
        y = F.gelu(x @ w)
        (y * y).sum().backward()
        return y.detach(), w.grad

    wt = tt.tensor(w, requires_grad=True)
    ex, (y, gw) = _compiled(step, tt.tensor(x), wt)
    z = x @ w
    np.testing.assert_allclose(y.numpy(), _gelu_reference(z), rtol=1e-12, atol=1e-15)
    cdf = 0.5 * np.vectorize(math.erfc)(-z / math.sqrt(2.0))
    dgelu = cdf + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(gw.numpy(), x.T @ (2 * _gelu_reference(z) * dgelu), rtol=1e-10, atol=1e-12)
    # forward matmul, gelu (writing y and at most one value for the backward, never the series' steps),
    # the backward's elementwise kernel, the weight gradient's matmul
    kinds = [g.kind for g in ex.lowered.groups]
    outputs = [len(g.outputs) for g in ex.lowered.groups]
    assert kinds == ["extern", "elementwise", "elementwise", "extern"] and max(outputs) <= 2


def test_exact_gelu_double_backward_matches_finite_differences(rng):
    x = rng.standard_normal(9) * 2.0
    t = tt.tensor(x, requires_grad=True)
    (g,) = tt.autograd.grad(F.gelu(t).sum(), t, create_graph=True)
    (gg,) = tt.autograd.grad(g.sum(), t)

    def dgelu(v):
        return 0.5 * np.vectorize(math.erfc)(-v / math.sqrt(2.0)) + v * np.exp(-v * v / 2) / math.sqrt(2 * math.pi)

    np.testing.assert_allclose(g.detach().numpy(), dgelu(x), rtol=1e-12, atol=1e-14)
    h = 1e-6
    np.testing.assert_allclose(gg.numpy(), (dgelu(x + h) - dgelu(x - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_index_put_is_a_serial_scatter_kernel_in_index_order(rng):
    # duplicates accumulate (or the last one wins) exactly as numpy's add.at / assignment, in order
    x, v = rng.standard_normal((6, 4, 5)), rng.standard_normal((3, 7, 5))
    idx = rng.integers(-4, 4, (3, 7))
    args = (tt.tensor(x), tt.tensor(v), tt.tensor(idx))
    for accumulate in (True, False):
        def fn(x, v, i, accumulate=accumulate):
            return _index_put(x * 1.0, v, i, accumulate)
        ex, out = _compiled(fn, *args)
        _close(out, fn(*args))
        assert sum(type(s).__name__ == "ExternCall" for s in ex.lowered.program.steps) == 0
        assert any("serial scatter kernel" in n for g in ex.lowered.groups for n in g.notes)
        assert "(0 extern calls)" in ex.explain()

    f = tt.compile(lambda x, v, i: _index_put(x * 1.0, v, i, True), backend="llvm")
    f(*args)
    bad = idx.copy()
    bad[2, 6] = 4
    with pytest.raises(IndexError, match="out of bounds for dimension 1 with size 4"):
        f(tt.tensor(x), tt.tensor(v), tt.tensor(bad))


def _index_put(x, v, idx, accumulate):
    """x with x[:, idx] = (+=) v: index_put on dim 1 with an index tensor of shape [3, 7]."""
    from tracetorch.ops import REGISTRY
    from tracetorch.ops.dispatch import apply
    return apply(REGISTRY["index_put"], x, v, idx, dims=(1,), accumulate=accumulate)     # v broadcasts


def test_embedding_gradient_is_exact_through_the_scatter_kernel(rng):
    w = tt.tensor(rng.standard_normal((9, 16)), requires_grad=True)
    idx = tt.tensor(rng.integers(0, 9, (5, 6)))                       # repeated rows accumulate

    def step(idx):
        w.grad = None
        (F.embedding(idx, w) * tt.arange(16.0)).sum().backward()
        return w.grad

    ex, got = _compiled(step, idx)
    want = np.zeros((9, 16))
    np.add.at(want, idx.numpy(), np.broadcast_to(np.arange(16.0), (5, 6, 16)))
    np.testing.assert_array_equal(got.numpy(), want)
    assert sum(type(s).__name__ == "ExternCall" for s in ex.lowered.program.steps) == 0


def test_rows_too_short_for_a_vector_weigh_their_scalar_operations(rng):
    # a log-softmax over rows of 10 runs its exp scalar: a [4096, 10] one (~0.2 ms on one thread) is worth
    # threads, the same work over rows of 160 is vectorized and is not
    from runtime.llvm_engine import SCALAR_LOOP_WEIGHT, kernel_cost, worth_threads
    narrow = tt.tensor(rng.standard_normal((4096, 10)).astype(np.float32))
    wide = tt.tensor(rng.standard_normal((256, 160)).astype(np.float32))
    kernels = []
    for x in (narrow, wide):
        ex, out = _compiled(lambda t: F.log_softmax(t, dim=1), x)
        want = x.numpy() - np.log(np.exp(x.numpy()).sum(1, keepdims=True))
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
        kernels += [k for k in ex.compiled.program.kernels if "reduce" in k.name]
    k_narrow, k_wide = kernels
    assert kernel_cost(k_narrow) >= SCALAR_LOOP_WEIGHT * kernel_cost(k_wide) // 2
    assert worth_threads(k_narrow) and not worth_threads(k_wide)


def test_only_kernels_with_enough_work_for_a_fork_join_run_on_threads(rng):
    # threads pay from ~50 us of serial work: enough operations (an exact GELU over 2^16 elements) or
    # enough memory traffic (a plain exp over 2^18 elements), not a plain exp over 2^16 elements
    from runtime.llvm_engine import PARALLEL_MIN_BYTES, PARALLEL_MIN_COST, kernel_cost, worth_threads
    small = tt.tensor(rng.standard_normal((256, 256)).astype(np.float32))
    big = tt.tensor(rng.standard_normal((512, 512)).astype(np.float32))
    ex_small, out = _compiled(tt.exp, small)
    np.testing.assert_allclose(out.numpy(), np.exp(small.numpy()), rtol=1e-6)
    ex_big, out = _compiled(tt.exp, big)
    np.testing.assert_allclose(out.numpy(), np.exp(big.numpy()), rtol=1e-6)
    ex_gelu, out = _compiled(F.gelu, small)
    np.testing.assert_allclose(out.numpy(), F.gelu(small).numpy(), rtol=1e-6, atol=1e-7)
    (k_small,), (k_big,), (k_gelu,) = (e.compiled.program.kernels for e in (ex_small, ex_big, ex_gelu))
    assert kernel_cost(k_small) < kernel_cost(k_big) < PARALLEL_MIN_COST <= kernel_cost(k_gelu)
    assert sum(b.nbytes for b in k_small.buffers) < PARALLEL_MIN_BYTES <= sum(b.nbytes for b in k_big.buffers)
    assert [worth_threads(k) for k in (k_small, k_big, k_gelu)] == [False, True, True]
    if ex_gelu.compiled.engine.threads > 1:
        assert ex_small.compiled._steps is None                       # one native call, no fork-join
        assert [s[0] for s in ex_big.compiled._steps] == ["parallel"]
        assert [s[0] for s in ex_gelu.compiled._steps] == ["parallel"]


def test_a_gather_from_a_unit_dim_keeps_its_bounds_check():
    # the only valid index is 0 (or -1), so the coordinate is always 0, but its check must stay
    x = tt.tensor(np.arange(4.0).reshape(1, 4))
    f = tt.compile(lambda x, i: x[i] * 2, backend="llvm")
    good = tt.tensor([0, -1])
    f(x, good)
    _close(f(x, good), x[good] * 2)
    with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 1"):
        f(x, tt.tensor([0, 3]))


def test_slice_scatter_extern_writes_straight_into_its_output(rng):
    x = tt.tensor(rng.standard_normal((4, 9)), requires_grad=True)
    w = tt.tensor(rng.standard_normal((9, 3)))

    def step(x, w):
        x.grad = None
        q, k, v = (x @ w @ w.t()).split(3, dim=1)
        (q * q + k * 2.0 + v.exp()).sum().backward()
        return x.grad

    ex, got = _compiled(step, x, w)
    want = step(x, w)
    _close(got, want)
    assert any(g.kind == "extern" and g.extern.op.name == "slice_scatter" for g in ex.lowered.groups)


def test_transcendental_kernels_ask_for_wide_vectors_and_others_do_not(rng):
    # 512-bit vectors where AVX-512 is: kernels computing a transcendental (elementwise math and
    # reductions like softmax over rows of 32 or more); memory-bound elementwise kernels, short rows and
    # reductions without one (layer norm) keep LLVM's choice
    import re
    from codegen.llvm_ir import WIDE_VECTORS, wide_vectors
    x = tt.tensor(rng.standard_normal((64, 96)).astype(np.float32))
    ex_gelu, out = _compiled(lambda x: F.gelu(x, approximate="tanh"), x)
    np.testing.assert_allclose(out.numpy(), F.gelu(x, approximate="tanh").numpy(), rtol=1e-6, atol=1e-6)
    ex_soft, out = _compiled(lambda x: F.softmax(x, -1), x)
    np.testing.assert_allclose(out.numpy(), F.softmax(x, -1).numpy(), rtol=1e-6, atol=1e-7)
    short = tt.tensor(rng.standard_normal((64, 10)).astype(np.float32))
    ex_short, out = _compiled(lambda x: F.softmax(x, -1), short)
    np.testing.assert_allclose(out.numpy(), F.softmax(short, -1).numpy(), rtol=1e-6, atol=1e-7)
    ex_norm, out = _compiled(lambda x: F.layer_norm(x, (96,)), x)
    np.testing.assert_allclose(out.numpy(), F.layer_norm(x, (96,)).numpy(), rtol=1e-5, atol=1e-5)
    ex_add, out = _compiled(lambda x: x * 2 + 1, x)
    np.testing.assert_array_equal(out.numpy(), x.numpy() * 2 + 1)
    assert [wide_vectors(k) for k in ex_gelu.compiled.program.kernels] == [True]
    assert [wide_vectors(k) for k in ex_soft.compiled.program.kernels] == [True]   # a row reduction with exp
    assert not any(wide_vectors(k) for k in ex_short.compiled.program.kernels)     # rows of 10: scalar remainders
    assert not any(wide_vectors(k) for k in ex_norm.compiled.program.kernels)      # sums and a rsqrt
    assert not any(wide_vectors(k) for k in ex_add.compiled.program.kernels)       # memory-bound
    defines = lambda ex: [line for line in ex.compiled.ir_text().splitlines() if line.startswith("define")]
    for ex in (ex_gelu, ex_soft):
        assert all(WIDE_VECTORS in line for line in defines(ex) if re.search(r"@\"?k0", line))
    assert not any(WIDE_VECTORS in line for line in defines(ex_norm) + defines(ex_add))


@pytest.mark.parametrize("case", ["last dim, strided pieces", "dim 0", "middle dim, int", "vectors, empty piece",
                                  "unit dims"])
def test_cat_is_a_copy_kernel_reading_views_in_place(rng, case):
    # one loop nest per piece inside a parallel outer loop: bit-equal to numpy's concatenate, whatever
    # the pieces' layouts (transposed, strided slices, broadcast-free views), with no extern step left
    a = rng.standard_normal((4, 6, 8))
    fns = {
        "last dim, strided pieces": (lambda x: tt.cat([x, x[:, :, ::2] * 2.0, x.permute(0, 2, 1)[:, :3].permute(0, 2, 1)],
                                                      dim=2), (a,)),
        "dim 0": (lambda x, y: tt.cat([x.t(), y], 0), (a[0], rng.standard_normal((3, 6)))),
        "middle dim, int": (lambda x, y: tt.cat([x, y + 1], 1), (rng.integers(-9, 9, (3, 4, 5)),
                                                                 rng.integers(-9, 9, (3, 2, 5)))),
        "vectors, empty piece": (lambda x, y: tt.cat([x, y, x * 3.0], 0), (rng.standard_normal(7), np.zeros(0))),
        "unit dims": (lambda x, y: tt.cat([x, y], 1), (rng.standard_normal((1, 3, 1)), rng.standard_normal((1, 2, 1)))),
    }
    fn, arrays = fns[case]
    args = tuple(tt.tensor(x) for x in arrays)
    ex, out = _compiled(fn, *args)
    np.testing.assert_array_equal(out.numpy(), fn(*args).numpy())
    assert not any(type(s).__name__ == "ExternCall" for s in ex.lowered.program.steps)
    assert any(n.startswith("cat: a copy kernel") for g in ex.lowered.groups for n in g.notes)


def test_cat_kernel_in_a_training_step_matches_eager(rng):
    # the q, k, v pattern of W6's attention: the gradients of three projections concatenated (by autograd's
    # narrow-backward and the user's cat) and the compiled step equal to the eager one
    w = tt.tensor(rng.standard_normal((8, 24)) * 0.3, requires_grad=True)
    x = tt.tensor(rng.standard_normal((5, 8)))

    def step(x):
        w.grad = None
        q, k, v = (x @ w).split(8, dim=1)
        y = tt.cat([q.tanh(), k * v, v.t().t()], dim=1)
        (y * y).sum().backward()
        return y.detach(), w.grad

    want = step(x)
    ex, got = _compiled(step, x)
    _close(got, want)
    assert any(type(s).__name__ == "Kernel" and s.name.endswith("cat") for s in ex.lowered.program.steps)


def test_long_bias_gradient_is_summed_in_row_chunks_and_profiled_as_its_group(rng):
    # a [1024, 80] float64 bias gradient: partial sums of 8 row chunks (a parallel kernel), then one kernel
    # adding them and running the SGD update; compiled == eager, and the profile names both by the group
    x = tt.tensor(rng.standard_normal((1024, 16)))

    def trained(compiled: bool):
        tt.manual_seed(0)
        lin = tt.nn.Linear(16, 80).double()
        opt = tt.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)

        def step(x):
            opt.zero_grad()
            loss = (lin(x).relu() ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        f = tt.compile(step, backend="llvm") if compiled else step
        losses = [f(x).item() for _ in range(3)]
        return f, losses, [p.detach().numpy() for p in lin.parameters()]

    _, want_losses, want = trained(False)
    f, losses, got = trained(True)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    steps = [s for p in f.programs for s in p.executable.lowered.program.steps]
    split = [s for s in steps if s.name.endswith("_partials")]
    assert len(split) == 1 and split[0].outer.extent == 8
    with tt.compiler.profile() as prof:
        f(x)
    rows = {r["step"]: r["what"] for r in prof.rows()}
    final = split[0].name.removesuffix("_partials")
    assert rows[split[0].name] == rows[final] and "reduction over [1024, 80] reduce dims [0]" in rows[final]
    ex = next(p.executable for p in f.programs if split[0] in p.executable.lowered.program.steps)
    scratch = 8 * 80 * 8                                   # 8 partial rows of 80 float64
    assert ex.planned_peak_bytes == ex.lowered.plan.size >= ex.lowered.arena.size + scratch
    assert f"{scratch / 1024:.1f} KiB of reductions' scratch rows past them" in ex.explain()


@pytest.mark.parametrize("batch, features, blocks", [(100, 40, 1), (1024, 256, 4)], ids=["small", "blocks"])
def test_batch_norm_runs_column_wise_and_matches_eager(rng, batch, features, blocks):
    # statistics over the rows of [batch, features] as scratch rows updated row after row (vectorized over
    # the columns; a large batch in blocks of columns, what threads share), rsqrt(var + eps) and its
    # powers once per column, not inside the row loops
    from codegen.kernel import Loop, Op, Reduce, walk_exprs, walk_stmts
    x = tt.tensor(rng.standard_normal((batch, features)) * 3 + 1)
    t = tt.tensor(rng.standard_normal((batch, features)))

    def make():
        tt.manual_seed(3)
        model = tt.nn.Sequential(tt.nn.Linear(features, features), tt.nn.BatchNorm1d(features),
                                 tt.nn.ReLU()).double()
        return model, tt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    (mc, oc), (me, oe) = make(), make()
    f, g = tt.compile(training_step(mc, oc, F.mse_loss), backend="llvm"), training_step(me, oe, F.mse_loss)
    for _ in range(3):
        np.testing.assert_allclose(f(x, t).detach().numpy(), g(x, t).detach().numpy(), rtol=1e-12)
    for pc, pe in zip(mc.state_dict().values(), me.state_dict().values()):
        np.testing.assert_allclose(pc.numpy(), pe.numpy(), rtol=1e-12, atol=1e-12)
    kernels = [k for k in f.programs[0].executable.compiled.program.kernels if "reduce" in k.name]
    columnwise = [k for k in kernels if any(b.name.startswith("scratch") for b in k.buffers)]
    assert columnwise                             # the statistics, their gradients, the bias gradient
    plan = f.programs[0].executable.lowered.plan  # one kernel's scratch rows do not overlap
    spans = sorted((plan.offsets[b.name], plan.offsets[b.name] + plan.nbytes[b.name])
                   for k in columnwise for b in k.buffers if b.name.startswith("scratch"))
    assert len(spans) > 2 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    for k in columnwise:
        assert k.outer.extent == blocks and not any(isinstance(s, Reduce) for s in walk_stmts(k.outer))
        for loop in walk_stmts(k.outer):          # no rsqrt or pow inside a loop over rows
            if isinstance(loop, Loop) and loop.var.startswith("r"):
                ops = {e.op for e in walk_exprs(loop) if isinstance(e, Op)}
                assert not ops & {"rsqrt", "pow", "sqrt", "div"}, (k.name, ops)


@pytest.mark.parametrize("a_shape, b_shape", [((7, 4, 3), (3, 5)), ((4, 3), (7, 3, 5)), ((2, 7, 4, 3), (7, 3, 5)),
                                              ((1, 4, 3), (7, 3, 5)), ((7, 4, 3), (7, 3, 5))])
def test_a_transposed_batch_broadcast_matmul_computes_the_transposed_product(rng, a_shape, b_shape):
    """(a @ b).mT read only transposed becomes b.mT @ a.mT, each operand transposed over its own last two
    dims: a 3-D @ 2-D (attention's x @ w_k, then q @ k.mT) once failed to compile."""
    a, b = tt.tensor(rng.standard_normal(a_shape)), tt.tensor(rng.standard_normal(b_shape))

    def f(a, b):
        return (a @ b).mT.exp()
    _, out = _compiled(f, a, b)
    _close(out, f(a, b))
    np.testing.assert_allclose(out.numpy(), np.exp(np.swapaxes(a.numpy() @ b.numpy(), -1, -2)), rtol=1e-12)


def test_long_float32_sums_and_moments_stay_accurate():
    """A float sum over many elements adds blocks into a float64 total (and the moments merge their
    blocks in float64): the error grows with a block, not with the extent (a running float32 sum per
    lane was 2.6e-4 off for 2^20 elements of 0.1, var 7e-5 off for 2^24 uniform values)."""
    n = 1 << 20
    x = tt.full((n,), 0.1)
    rows = tt.tensor(np.random.default_rng(0).random((3, n // 4)).astype(np.float32))
    exact = n * float(np.float32(0.1))

    def stats(x, rows):
        return x.sum(), x.mean(), rows.sum(1), rows.var(1), rows.double().var(1)
    _, (s, m, rs, rv, rv64) = _compiled(stats, x, rows)
    r = rows.numpy().astype(np.float64)
    assert abs(s.item() - exact) / exact < 1e-6 and abs(m.item() - 0.1) / 0.1 < 1e-6
    np.testing.assert_allclose(rs.numpy(), r.sum(1), rtol=1e-6)
    np.testing.assert_allclose(rv.numpy(), r.var(1, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(rv64.numpy(), r.var(1, ddof=1), rtol=1e-12)
