"""The IR and each pass on its own: printer, DOT, verifier, functionalize, fold, simplify, CSE,
DCE, partition."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
from tracetorch.jit import ir
from tracetorch.jit.capture import Call, capture
from tracetorch.jit.interp import InterpExecutable
from tracetorch.jit.passes import (IRError, cse, dce, expand_backward, fold, functionalize, joint, lower_markers,
                                   partition, simplify, verify)
from tracetorch.ops import REGISTRY, apply


def _trace(fn, *args):
    return capture(fn, Call.of(args, {}), name=fn.__name__).raw


def _run(graph, *arrays):
    return InterpExecutable(graph)([np.asarray(a) for a in arrays])


def test_printer_reads_like_python_with_shapes_and_source_lines():
    def f(x, w):
        h = x @ w
        return h.relu().sum(1)

    g = _trace(f, tt.ones(2, 3), tt.ones(3, 4))
    text = g.text()
    lines = text.splitlines()
    assert lines[0] == "def f(x: f32[2, 3], w: f32[3, 4]):"
    assert any(line.strip().startswith("v") and "= matmul(x, w)" in line and "f32[2, 4]" in line
               and "test_jit_ir_passes.py:" in line and "in f" in line for line in lines)
    assert lines[-1].strip().startswith("return (")
    assert len(lines) == len(g.nodes) + 2
    assert g.to_dot().count("->") >= len(g.nodes)


def test_verifier_catches_broken_graphs():
    x = ir.Value((2,), tt.float32, "x")
    y = ir.Value((2,), tt.float32)
    exp = REGISTRY["exp"]
    good = ir.Graph((x,), (ir.Node(exp, (x,), (y,)),), (y,))
    verify(good, pure=True)
    with pytest.raises(IRError, match="before it is defined"):
        verify(ir.Graph((), (ir.Node(exp, (x,), (y,)),), (y,)))
    with pytest.raises(IRError, match="infer gives"):
        bad = ir.Value((3,), tt.float32)
        verify(ir.Graph((x,), (ir.Node(exp, (x,), (bad,)),), (bad,)))
    with pytest.raises(IRError, match="IR-only op"):
        verify(ir.Graph((x,), (ir.Node(ir.COPY_, (x, x), ()),), ()), pure=True)
    with pytest.raises(IRError, match="write-back"):
        verify(good.replace(writebacks=((y, x),)))


def test_functionalize_turns_view_writes_into_ssa_and_write_backs():
    buf = tt.zeros(3, 4)

    def f(x):
        v = buf[:, 1:3]
        v.add_(x)                   # through a slice view
        buf.t()[0] = 5.0            # through a permuted view
        return v * 1                # the view, read after its base changed again

    g = _trace(f, tt.ones(3, 2))
    assert any(n.op is ir.COPY_ for n in g.nodes)
    fg = verify(functionalize(g))
    assert not any(n.op is ir.COPY_ for n in fg.nodes)
    assert [d.name for d, _ in fg.writebacks] == ["buf"]
    out, new_buf = _run(fg, np.ones((3, 2), np.float32), np.zeros((3, 4), np.float32))
    expected = np.zeros((3, 4), np.float32)
    expected[:, 1:3] += 1
    expected[:, 0] = 5.0
    np.testing.assert_array_equal(new_buf, expected)
    np.testing.assert_array_equal(out, expected[:, 1:3])


def test_fold_simplify_cse_dce():
    def f(x):
        k = tt.full((3,), 2.0) * 3.0            # constant: folded
        a = (x * 1.0 + 0.0).reshape(3).to(tt.float32)
        b = (-(-x)).exp() + x.exp()             # neg(neg(x)) and a common exp
        unused = x.sin()                        # noqa: F841  (dead)
        return a * k + b

    g = lower_markers(functionalize(_trace(f, tt.ones(3))))
    folded = verify(fold(g), pure=True)
    assert any(n.op.name == "constant" for n in folded.nodes)
    simple = verify(simplify(folded), pure=True)
    assert all(n.op.name not in ("neg", "reshape", "cast") for n in dce(simple).nodes)
    common = verify(cse(simple), pure=True)
    assert [n.op.name for n in dce(common).nodes].count("exp") == 1
    final = verify(dce(common), pure=True)
    assert all(n.op.name != "sin" for n in final.nodes) and final.inputs == g.inputs
    x = np.array([0.5, 1.0, -2.0], np.float32)
    np.testing.assert_allclose(_run(final, x)[0], _run(g, x)[0], rtol=1e-6)


def test_permutes_of_permutes_compose_and_cancel():
    def f(x):
        back = x.permute(2, 0, 1).permute(1, 2, 0)            # the identity: dropped
        turned = x.permute(1, 0, 2).permute(0, 2, 1)          # one permute (1, 2, 0)
        return back * 2.0, turned + 1.0

    x = tt.tensor(np.arange(24.0, dtype=np.float32).reshape(2, 3, 4))
    g = lower_markers(functionalize(_trace(f, x)))
    simple = verify(dce(simplify(g)), pure=True)
    permutes = [n for n in simple.nodes if n.op.name == "permute"]
    assert [tuple(n.attrs["dims"]) for n in permutes] == [(1, 2, 0)] and permutes[0].inputs[0] is simple.inputs[0]
    for got, want in zip(_run(simple, x.numpy()), _run(g, x.numpy())):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_run(simple, x.numpy())[1], x.numpy().transpose(1, 2, 0) + 1)


def test_joint_graph_partition_saves_residuals():
    def f(x, w):
        return (x @ w).tanh()

    x, w = tt.ones(2, 3), tt.ones(3, 4, requires_grad=True)
    g = lower_markers(expand_backward(functionalize(_trace(f, x, w))))
    j, seeds, grads = joint(g, [g.outputs[0]], [g.inputs[1]])
    j = verify(j.replace(outputs=tuple(j.outputs) + tuple(grads)))
    split = partition(j, 1, len(seeds))
    fwd, bwd = verify(dce(split.forward), pure=True), verify(dce(split.backward), pure=True)
    assert split.input_residuals == (0,)                  # x, saved by reference
    assert len(fwd.outputs) == 2                          # the output and tanh's result (its VJP reads it)
    assert bwd.inputs[-1] is seeds[0] and bwd.outputs == tuple(grads)
    xs = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    ws = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    out, saved = _run(fwd, xs, ws)
    seed = np.ones((2, 4), np.float32)
    (gw,) = _run(bwd, xs, saved, seed)
    np.testing.assert_allclose(gw, xs.T @ (seed * (1 - np.tanh(xs @ ws) ** 2)), rtol=1e-5)


def test_printed_ir_is_runnable_python():
    buf = tt.zeros(3)

    def f(x, y):
        buf.add_(x)
        return (x * y + 1).relu().sum(0), (x * 2)[1:]      # (a view of an input is made outside the program)

    compiled = tt.compile(f)
    x, y = tt.tensor([1.0, -2.0, 3.0]), tt.tensor([2.0, 2.0, 2.0])
    compiled(x, y)
    namespace = {name: (lambda *a, _op=op, **k: apply(_op, *a, **k)) for name, op in REGISTRY.items()}
    namespace.update(tt=tt, array=np.array)
    exec(compiled.graph.text(), namespace)                       # `def f(x, y, buf): ...`
    mine = tt.zeros(3)
    total, tail = namespace["f"](x, y, mine)
    assert float(total) == 3.0 + 0.0 + 7.0 and tail.tolist() == [-4.0, 6.0]
    assert mine.tolist() == [1.0, -2.0, 3.0]                     # the write-back line ran too


SLICE_PATTERNS = {          # pieces of a [4, 9] tensor's columns, and whether the gradient should be one cat
    "split": (lambda x: x.split(3, dim=1) if isinstance(x, tt.Tensor) else (x[:, :3], x[:, 3:6], x[:, 6:]), True),
    "uneven tiles": (lambda x: (x[:, 5:9], x[:, 0:3], x[:, 3:5]), True),
    "strided": (lambda x: (x[:, ::2], x[:, 1::2]), False),
    "gap": (lambda x: (x[:, :2], x[:, 4:]), False),
    "overlap": (lambda x: (x[:, :5], x[:, 3:]), False),
    "rows and columns": (lambda x: (x[:2, :4], x[2:, :4], x[:, 4:]), False),
}


@pytest.mark.parametrize("backend", ["interp", "llvm"])
@pytest.mark.parametrize("pattern", list(SLICE_PATTERNS))
def test_gradient_of_slices_is_one_cat_when_they_tile(pattern, backend):
    """Autodiff gives each slice's gradient as a slice_scatter into zeros, summed: simplify turns a sum of
    disjoint scatters into one chain, and a chain tiling a dim into a cat. Gradients equal eager's and
    the analytic ones (overlaps add, gaps stay zero)."""
    pieces_of, tiles = SLICE_PATTERNS[pattern]
    x0 = np.random.default_rng(3).normal(size=(4, 9))

    def loss_and_grad(x):
        x.grad = None
        loss = sum(((k + 1.0) * p * p).sum() for k, p in enumerate(pieces_of(x)))
        loss.backward()
        return loss

    expected = np.zeros_like(x0)
    for k, piece in enumerate(pieces_of(x0)):
        piece_grad = np.zeros_like(x0)
        view_of = pieces_of(piece_grad)[k]
        view_of[...] = 2 * (k + 1.0) * piece
        expected += piece_grad
    fn = tt.compile(loss_and_grad, backend=backend)
    for _ in range(2):                   # traced, then compiled
        x = tt.tensor(x0.copy(), requires_grad=True)
        fn(x)
        np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12, atol=1e-12)
    after_passes = fn.explain(x).split("-- IR after passes --")[1]
    assert (" cat(" in after_passes) == tiles, after_passes
    if tiles:
        assert "slice_scatter(" not in after_passes, after_passes
