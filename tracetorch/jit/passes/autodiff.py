"""Reverse-mode autodiff on the IR, with the registry's VJP rules.

The VJP rules are written with tracetorch ops on tensors (one rule, two
uses: eager autograd and this pass). To apply them to IR values we run them
under an `AbstractTracer`: placeholder ("proxy") tensors stand for IR values
and every op a rule calls is recorded as a new node; no kernel runs.

`backprop` is the whole algorithm: walk the nodes backwards from the roots,
follow exactly the edges eager autograd recorded (`Node.diff`), call each
node's VJP, accumulate gradients with `+`. A `custom_fn` node's VJP is the
user's `backward`, traced the same way. On top of it:

- `expand_backward(g)`: replace every `backward` node (a `loss.backward()` or
  `autograd.grad` inside the compiled region) by the gradient computation;
- `joint(g, roots, wrt)`: append the backward of `roots` w.r.t. `wrt` with new
  seed inputs (autograd across the compiled boundary; partition.py splits it);
- `lower_markers(g)`: once no more differentiation will happen, `detach` and
  `custom_fn` are identities and disappear.
"""
from __future__ import annotations

from ...autograd.function import FunctionCtx
from ...ops.dispatch import STATE
from ...ops.registry import OpDef
from ..ir import BACKWARD, CUSTOM_FN, DETACH, Graph, Node, Value
from ..tracer import AbstractTracer


def expand_backward(g: Graph) -> Graph:
    if not any(n.op is BACKWARD for n in g.nodes):
        return g
    nodes: list[Node] = []
    rename: dict = {}
    for n in g.nodes:
        n = _renamed(n, rename)
        if n.op is not BACKWARD:
            nodes.append(n)
            continue
        k = n.attrs["n_roots"]
        roots, seeds, wrt = n.inputs[:k], n.inputs[k:2 * k], n.inputs[2 * k:]
        builder = AbstractTracer(n.where)
        grads = backprop(nodes, roots, [builder.proxy(s) for s in seeds], wrt, builder)
        outs = iter(n.outputs)
        for has, w, gr in zip(n.attrs["has_grad"], wrt, grads):
            if has:
                rename[next(outs)] = builder.value_of(gr) if gr is not None else _zeros(builder, w)
        nodes.extend(builder.nodes)
    return g.replace(nodes=tuple(nodes), outputs=tuple(rename.get(v, v) for v in g.outputs),
                     writebacks=tuple((d, rename.get(v, v)) for d, v in g.writebacks))


def joint(g: Graph, roots: list, wrt: list):
    """g extended with the backward of `roots` w.r.t. `wrt`: (graph, seed inputs, grads (Value or None))."""
    seeds = [Value(r.shape, r.dtype, f"grad_{k}") for k, r in enumerate(roots)]
    builder = AbstractTracer("backward of the compiled function")
    grads = backprop(list(g.nodes), roots, [builder.proxy(s) for s in seeds], wrt, builder)
    grad_values = [builder.value_of(gr) if gr is not None else None for gr in grads]
    return g.replace(inputs=tuple(g.inputs) + tuple(seeds), nodes=tuple(g.nodes) + tuple(builder.nodes)), seeds, \
        grad_values


def lower_markers(g: Graph) -> Graph:
    """Drop `detach` and `custom_fn` (identities once differentiation is done)."""
    rename: dict = {}
    nodes = []
    for n in g.nodes:
        n = _renamed(n, rename)
        if n.op is DETACH:
            rename[n.out] = n.inputs[0]
        elif n.op is CUSTOM_FN:
            fwd = n.inputs[len(n.inputs) - len(n.outputs):]
            rename.update(zip(n.outputs, fwd))
        elif n.op is BACKWARD:
            raise AssertionError("lower_markers: run expand_backward first")
        else:
            nodes.append(n)
    return g.replace(nodes=tuple(nodes), outputs=tuple(rename.get(v, v) for v in g.outputs),
                     writebacks=tuple((d, rename.get(v, v)) for d, v in g.writebacks))


# ---------------------------------------------------------------- the reverse walk
def backprop(nodes, roots, seeds, wrt, builder: AbstractTracer) -> list:
    """Gradients (proxy tensors or None) of sum(root * seed) w.r.t. each of `wrt`."""
    active = set(wrt)
    builder.producers.update((o, n) for n in nodes for o in n.outputs)
    for n in nodes:
        if n.diff is not None and any(d and x in active for x, d in zip(n.inputs, n.diff)):
            active.update(n.outputs)
    grads: dict = {}

    def add(v, g):
        if g.dtype is not v.dtype:
            g = g.to(v.dtype)
        prev = grads.get(v)
        grads[v] = g if prev is None else prev + g

    prev_grad, prev_tracer = STATE.grad_enabled, STATE.tracer
    STATE.grad_enabled, STATE.tracer = False, builder
    try:
        for r, s in zip(roots, seeds):
            if isinstance(r, Value) and r in active:
                add(r, s)
        for n in reversed(nodes):
            if n.diff is None or not any(o in grads for o in n.outputs):
                continue
            if not any(d and x in active for x, d in zip(n.inputs, n.diff)):
                continue
            builder._where = n.where
            in_grads = _vjp(n, [grads.get(o) for o in n.outputs], builder)
            for x, gx, d in zip(n.inputs, in_grads, n.diff):
                if d and gx is not None and isinstance(x, Value) and x in active:
                    add(x, gx)
    finally:
        STATE.grad_enabled, STATE.tracer = prev_grad, prev_tracer
    return [grads.get(w) for w in wrt]


def _vjp(n: Node, out_grads, builder) -> tuple:
    if isinstance(n.op, OpDef):
        g = out_grads[0]
        return tuple(n.op.vjp(_NodeView(n, builder), g))
    if n.op is CUSTOM_FN:
        return _custom_vjp(n, out_grads, builder)
    raise AssertionError(f"autodiff: no VJP for IR op {n.op.name}")


class _NodeView:
    """What a VJP rule reads from its node (`n.x(i)`, `n.out`, `n.shape(i)`, ...), over IR values."""

    def __init__(self, node: Node, builder: AbstractTracer):
        self.node = node
        self.builder = builder
        self.attrs = node.attrs
        self.op = node.op
        self.edges = tuple(True if d else None for d in node.diff)
        self.in_meta = tuple((x.shape, x.dtype) if isinstance(x, Value) else x for x in node.inputs)

    def x(self, i):
        x = self.node.inputs[i]
        return _proxy(self.builder, x) if isinstance(x, Value) else x

    @property
    def out(self):
        return _proxy(self.builder, self.node.out)

    def shape(self, i):
        return self.in_meta[i][0]

    def dtype(self, i):
        return self.in_meta[i][1]

    def name(self) -> str:
        return self.node.op.name


def _proxy(builder, v: Value):
    cache = builder.__dict__.setdefault("_proxies", {})
    t = cache.get(v)
    if t is None:
        t = cache[v] = builder.proxy(v)
    return t


def _custom_vjp(n: Node, out_grads, builder) -> tuple:
    """The user's backward, run on proxies of the values its forward saved."""
    from ...creation import zeros
    a = n.attrs
    ctx = FunctionCtx()
    ctx._fn_cls = a["fn"]
    shapes = [None] * a["n_args"]
    for pos, v in zip(a["arg_positions"], n.inputs):
        shapes[pos] = v.shape
    ctx._input_shapes = tuple(shapes)
    ctx.needs_input_grad = a["needs_input_grad"]
    ctx.materialize_grads = a["materialize_grads"]
    saved = tuple(_proxy(builder, v) if v is not None else None for v in a["saved"])
    ctx._saved = saved
    ctx._versions = tuple(t._version[0] if t is not None else None for t in saved)
    for k, v in a["ctx_plain"].items():
        setattr(ctx, k, v)
    for k, v in a["ctx_tensors"].items():
        setattr(ctx, k, _proxy(builder, v))
    grads = [None] * a["n_outputs"]
    for pos, g, v in zip(a["out_positions"], out_grads, n.outputs):
        grads[pos] = g if g is not None or not ctx.materialize_grads else zeros(v.shape, dtype=v.dtype)
    result = ctx._input_grads(a["fn"].backward(ctx, *grads))
    return tuple(result[pos] for pos in a["arg_positions"]) + (None,) * len(n.outputs)


def _zeros(builder, w: Value) -> Value:
    from ...creation import zeros
    prev, STATE.tracer = STATE.tracer, builder
    try:
        return builder.value_of(zeros(w.shape, dtype=w.dtype))
    finally:
        STATE.tracer = prev


def _renamed(n: Node, rename: dict) -> Node:
    if not rename:
        return n
    if any(isinstance(x, Value) and x in rename for x in n.inputs):
        return n.replace(inputs=tuple(rename.get(x, x) if isinstance(x, Value) else x for x in n.inputs))
    return n
