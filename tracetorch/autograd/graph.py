"""Eager reverse mode: the recorded graph and the backward walk.

Each differentiable op run with grad enabled records a `Node` that points to
the nodes (or leaf tensors) of its inputs. `run_backward` walks the nodes in
reverse topological order, calling each op's VJP, which is written with
tracetorch ops, so with `create_graph=True` the backward pass is itself
recorded and can be differentiated again.
"""
from __future__ import annotations

import sys

import numpy as np

from ..ops.dispatch import STATE, _BOUND


class Node:
    """One recorded op application: `grad_fn` of its output tensor."""

    __slots__ = ("op", "attrs", "edges", "saved", "versions", "out_saved", "in_meta",
                 "retained", "hooks", "freed", "__weakref__")

    def __init__(self, op, attrs, edges, in_meta):
        self.op = op
        self.attrs = attrs
        self.edges = edges          # per input: Node, leaf Tensor, or None
        self.in_meta = in_meta      # per input: (shape, dtype) or the Python scalar
        self.saved = None
        self.versions = None
        self.out_saved = None
        self.retained = None
        self.hooks = None
        self.freed = False

    def name(self) -> str:
        """The node's name, as `grad_fn.name()` in PyTorch."""
        return _pascal(self.op.name) + "Backward"

    def __repr__(self) -> str:
        return f"<{self.name()}>"

    # --- recording -------------------------------------------------------
    @staticmethod
    def record(op, inputs, attrs, out):
        Tensor = _BOUND.Tensor
        edges = []
        meta = []
        for x in inputs:
            if isinstance(x, Tensor):
                meta.append((x._data.shape, x._dtype))
                if x.requires_grad:
                    edges.append(x._grad_fn if x._grad_fn is not None else x)
                else:
                    edges.append(None)
            else:
                meta.append(x)
                edges.append(None)
        node = Node(op, attrs, tuple(edges), tuple(meta))
        if op.saves:
            saved = [None] * len(inputs)
            versions = [None] * len(inputs)
            for i in op.saves:
                if i == "out":
                    alias = Tensor._make(out._data, out._dtype)
                    alias._version = out._version
                    alias._grad_fn = node
                    alias.requires_grad = True
                    node.out_saved = (alias, out._version[0])
                elif i < len(inputs):
                    x = inputs[i]
                    saved[i] = x
                    if isinstance(x, Tensor):
                        versions[i] = x._version[0]
            node.saved = saved
            node.versions = versions
        out.requires_grad = True
        out._grad_fn = node
        return node

    # --- what VJPs read ---------------------------------------------------
    def x(self, i):
        """Saved input `i`, checked against in-place modification since the forward."""
        self._check_freed()
        t = self.saved[i]
        v = self.versions[i]
        if v is not None and t._version[0] != v:
            raise _modified_error(t, self, v)
        return t

    @property
    def out(self):
        self._check_freed()
        alias, v = self.out_saved
        if alias._version[0] != v:
            raise _modified_error(alias, self, v)
        return alias

    def shape(self, i) -> tuple:
        return self.in_meta[i][0]

    def dtype(self, i):
        return self.in_meta[i][1]

    def _check_freed(self):
        if self.freed:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access saved tensors "
                "after they have already been freed). Saved intermediate values of the graph are freed "
                "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
                "backward through the graph a second time or if you need to access saved tensors after "
                "calling backward.")

    def free(self):
        if self.op.saves:
            self.saved = None
            self.out_saved = None
            self.freed = True

    def apply_vjp(self, grad):
        if self.freed:
            self._check_freed()
        return self.op.vjp(self, grad)


class CustomNode(Node):
    """grad_fn of a user `autograd.Function`: its backward replaces differentiation."""

    __slots__ = ("ctx", "fn_cls")

    def __init__(self, fn_cls, ctx, edges, in_meta):
        super().__init__(None, {}, edges, in_meta)
        self.fn_cls = fn_cls
        self.ctx = ctx

    def name(self) -> str:
        return self.fn_cls.__name__ + "Backward"

    def free(self):
        self.ctx._free()
        self.freed = True

    def apply_vjp(self, grad):
        self._check_freed()
        return self.ctx._run_backward(grad)


def _pascal(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


def _modified_error(t, node, expected):
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: [{t._dtype.name} tensor of shape {list(t._data.shape)}], which is used by "
        f"{node.name()}, is at version {t._version[0]}; expected version {expected} instead.")


def _topo_order(roots):
    """Nodes reachable from `roots`, each after every node that feeds it a gradient."""
    order, seen = [], set()
    for root in roots:
        if root is None or id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, iter(root.edges))]
        while stack:
            node, it = stack[-1]
            for nxt in it:
                if isinstance(nxt, Node) and id(nxt) not in seen:
                    seen.add(id(nxt))
                    stack.append((nxt, iter(nxt.edges)))
                    break
            else:
                stack.pop()
                order.append(node)
    order.reverse()
    return order


def _leading_to(order, wanted: dict) -> set:
    """ids of the nodes of `order` through which a gradient reaches one of `wanted`: the only ones
    PyTorch's engine runs for autograd.grad (a node past the inputs may be freed, or be a user's backward)."""
    needed = set()
    for node in reversed(order):        # each node after the nodes it feeds
        if any(e is not None and (id(e) in wanted or id(e) in needed) for e in node.edges):
            needed.add(id(node))
    return needed


def run_backward(tensors, grads, retain_graph: bool, create_graph: bool, inputs=None, accumulate=True):
    """Propagate `grads` from `tensors` back through the graph.

    With `inputs`, returns their gradients (autograd.grad) instead of writing
    `.grad` on leaves.
    """
    if STATE.tracer is not None and not (create_graph and not accumulate):
        # inside tt.compile: one `backward` node (the tracer runs this eagerly); but the walk of an
        # autograd.grad(create_graph=True) is recorded op by op, so its gradients stay differentiable
        return STATE.tracer.run_backward(tensors, grads, retain_graph, create_graph, inputs, accumulate)
    Tensor = _BOUND.Tensor
    pending: dict[int, object] = {}     # id(node) -> accumulated grad
    roots = []
    leaf_grads: dict[int, tuple] = {}   # id(leaf) -> (leaf, grad)

    def add_grad(edge, g):
        if isinstance(edge, Node):
            k = id(edge)
            prev = pending.get(k)
            pending[k] = g if prev is None else prev + g
        else:
            k = id(edge)
            prev = leaf_grads.get(k)
            leaf_grads[k] = (edge, g if prev is None else prev[1] + g)

    for t, g in zip(tensors, grads):
        edge = t._grad_fn if t._grad_fn is not None else t
        add_grad(edge, g)
        if t._grad_fn is not None:
            roots.append(t._grad_fn)

    wanted = None
    captured = {}
    if inputs is not None:
        wanted = {}
        for t in inputs:
            key = t._grad_fn if t._grad_fn is not None else t
            wanted[id(key)] = key

    order = _topo_order(roots)
    needed = None if wanted is None else _leading_to(order, wanted)
    prev_mode = STATE.grad_enabled
    STATE.grad_enabled = create_graph
    try:
        for node in order:
            g = pending.pop(id(node), None)
            if g is None:
                continue
            if wanted is not None and id(node) in wanted:
                captured[id(node)] = g
            if needed is not None and id(node) not in needed:
                continue
            if node.hooks:
                for h in node.hooks:
                    r = h(g)
                    if r is not None:
                        g = r
            if node.retained:
                for ref in node.retained:
                    t = ref()
                    if t is not None and t._grad_fn is node:
                        _accumulate_into(t, g, create_graph)
            in_grads = node.apply_vjp(g)
            if not retain_graph:
                node.free()
            for edge, ig, meta in zip(node.edges, in_grads, node.in_meta):
                if edge is None or ig is None:
                    continue
                if not isinstance(ig, Tensor):
                    if hasattr(ig, "grads"):        # GradSlots of a multi-output Function
                        add_grad(edge, ig)
                        continue
                    raise RuntimeError(f"{node.name()} returned a {type(ig).__name__} as a gradient")
                if ig._data.shape != meta[0]:
                    raise RuntimeError(f"Function {node.name()} returned an invalid gradient - got shape "
                                       f"{list(ig._data.shape)} but expected shape compatible with {list(meta[0])}")
                if ig._dtype is not meta[1]:
                    ig = ig.to(meta[1])
                add_grad(edge, ig)
    finally:
        STATE.grad_enabled = prev_mode

    if wanted is not None:
        for k, (leaf, g) in leaf_grads.items():
            if k in wanted:
                captured[k] = g
        return [captured.get(id(t._grad_fn if t._grad_fn is not None else t)) for t in inputs]
    if accumulate:
        g = t = in_grads = ig = None        # the node loop's last references: a leaf's gradient may be stolen
        for leaf, g in leaf_grads.values():
            if leaf.requires_grad:
                if leaf._hooks:
                    for h in leaf._hooks:
                        r = h(g)
                        if r is not None:
                            g = r
                    _accumulate_into(leaf, g, create_graph)
                else:               # (owned first: an argument list being built would hold g too)
                    owned = _held_by_backward_only(g)
                    _accumulate_into(leaf, g, create_graph, owned=owned)
    return None


def _held_by_backward_only(g) -> bool:
    """Whether a leaf's summed gradient is referenced by nothing but run_backward's bookkeeping (its
    entry in leaf_grads, the loop variable, this call's argument) and owns an array nothing else references: then
    it may become `.grad` without a copy, as PyTorch's AccumulateGrad steals an unshared gradient (W3's
    eager step copied 6 gradients, ~0.9 ms of 5.7). A gradient the user holds (`x.backward(v)`), a view
    of another array or a runtime pool array (a view of its owner) is copied as before."""
    data = g._data
    if sys.getrefcount(g) != 4 or type(data) is not np.ndarray or g.requires_grad:
        return False
    if sys.getrefcount(data) != 3:                 # g, `data`, the argument
        return False
    base = data.base
    if base is None:
        return True
    # a whole C-contiguous view (a bias gradient reshaped from its sum, a weight's transposed
    # gradient) of an array only this view references: directly, or through the view's base tensor
    if (type(base) is not np.ndarray or base.base is not None or not data.flags.c_contiguous
            or not data.flags.writeable or data.nbytes != base.nbytes):
        return False
    owner = g._base
    if owner is None:
        return sys.getrefcount(base) == 3          # data.base, `base`, the argument
    return (owner._data is base and owner._base is None and sys.getrefcount(owner) == 3
            and sys.getrefcount(base) == 4)        # ... and the owner tensor's _data


def _accumulate_into(t, g, create_graph: bool, owned: bool = False):
    """`owned`: g may become t.grad as it is (see _held_by_backward_only)."""
    if g._dtype is not t._dtype:
        g = g.to(t._dtype)
    if STATE.tracer is not None:        # inside tt.compile: the same steps, recorded
        STATE.tracer.accumulate_grad(t, g)
        return
    if t.grad is None:
        if create_graph or (owned and g._base is None):
            t.grad = g
        else:           # a stolen view becomes a tensor of its own (no base, its own version counter)
            t.grad = _BOUND.Tensor._make(g._data, g._dtype) if owned else g.detach().clone()
    elif create_graph or t.grad.requires_grad:
        t.grad = t.grad + g
    else:
        if type(t.grad._data) is type(g._data) is np.ndarray:
            t.grad._data += g._data
        else:
            from ..device_array import add_into
            add_into(t.grad, g)
        t.grad._version[0] += 1

_BOUND.Node = Node
