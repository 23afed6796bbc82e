"""The tracer: runs a function eagerly and records every primitive into an IR graph.

Tracing is eager execution with `STATE.tracer` set (per thread): values
exist, Python control flow runs, and the hooks of the core call back here:

    apply()              -> record(op, inputs, attrs, out)   one node per primitive
    Tensor._assign       -> record_mutation(t, new)          a `copy_` effect node
    Tensor.detach        -> record_alias(src, t)             a `detach` alias node
    Tensor.grad get/set  -> on_grad_read / on_grad_write     `.grad` as program state
    item()/bool()/...    -> on_value(t, kind, value)         traced numbers, value guards
    run_backward         -> run_backward(...)                one `backward` node
    Function.apply       -> custom_function(...)             forward ops + a `custom_fn` node

Tensor identity is the key: `values[id(t)]` is the IR value a tensor object
currently names, with a weak reference to that object: a tensor that died
and whose id a new tensor reuses is recognised as new. So intermediates die
as soon as the traced code drops them, as in eager mode, and their memory is
reused (keeping every tensor of a trace alive until its end cost a page fault
per fresh 4 KiB: most of the tracing overhead of a training step). A tensor
the trace did not produce and that is not an argument is a *captured input*,
read by reference on every call.

The recorded graph keeps storage semantics (a `copy_` writes into a value
and all its aliases); the functionalize pass makes it SSA. In *abstract*
mode (used by the autodiff pass to run VJP rules on IR values) `evaluate`
returns a zero-stride placeholder instead of running the kernel.
"""
from __future__ import annotations

import os
import sys
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import dtypes as D
from ..autograd.grad_mode import no_grad
from ..ops import REGISTRY
from ..ops.dispatch import STATE, apply
from ..ops.registry import CREATION, Aval
from ..tensor import Tensor
from .ir import BACKWARD, COPY_, CUSTOM_FN, DETACH, Node, Value
from .scalars import TracedFloat, TracedInt, _plain, _Traced, is_traced
from .sources import ArgSource, CapturedSource, GradSource

CAST, CLONE, CONSTANT = REGISTRY["cast"], REGISTRY["clone"], REGISTRY["constant"]
_FULL_VALUE_KINDS = {"numpy": "`.numpy()` / `np.asarray(t)`", "mask": "a boolean mask index",
                     "nonzero": "`nonzero()`", "tolist": "`.tolist()`"}


class GraphBreak(RuntimeError):
    """Something the trace cannot represent under `fullgraph=True` (or at all)."""


@dataclass(frozen=True)
class ValueGuardSpec:
    """A fact about computed values that the trace relied on (checked after each run)."""
    value: Value            # the tensor whose content is checked
    expected: object        # bool outcome, exact number, or a full array
    kind: str               # "outcome" | "equal" | "array"
    why: str
    where: str

    def describe(self) -> str:
        shown = "array" if self.kind == "array" else repr(self.expected)
        return f"{self.why} at {self.where or '?'}: expected {shown}"


@dataclass
class GradSlot:
    """What the trace did with one parameter's `.grad`."""
    param: Tensor
    first_read: object = None           # the tensor (or None) `.grad` held at its first read, if read first
    read: bool = False
    written: bool = False


class Tracer:
    abstract = False

    def __init__(self, names: dict | None = None, *, fullgraph: bool = False, record_values: bool = False):
        self.nodes: list[Node] = []
        self.values: dict[int, tuple] = {}      # id(tensor) -> (Value, weakref to the tensor)
        self.keep: list = []                    # tensors that must outlive the trace (abstract proxies)
        self.inputs: list[Value] = []
        self.sources: list = []
        self.input_tensors: list = []           # the tensor read for each input at trace time
        self.input_requires_grad: list[bool] = []
        self.input_state: list = []             # (storage, version) of each input when first read
        self.recorded_writes: dict = {}         # id(version counter) -> [that counter, in-place writes recorded]
        self.created: list = []                 # (weakref, where) of tensors made by the trace
        self.value_guards: list[ValueGuardSpec] = []
        self.grad_slots: dict[int, GradSlot] = {}
        self.backward_roots: set = set()        # values whose autograd graph an inner backward consumed
        self.scalars: list = []
        self.names = names or {}
        self.fullgraph = fullgraph
        self.record_values = record_values
        self.node_values: list = []             # with record_values: each node's output at record time
        self._prev = None

    # ------------------------------------------------------------ activation
    def __enter__(self):
        self._prev = STATE.tracer
        STATE.tracer = self
        return self

    def __exit__(self, *exc):
        STATE.tracer = self._prev
        return False

    @contextmanager
    def paused(self):
        """Run eager code (an eager backward, autograd bookkeeping) without recording it."""
        prev = STATE.tracer
        STATE.tracer = None
        try:
            yield
        finally:
            STATE.tracer = prev

    # ------------------------------------------------------------ values
    def where(self) -> str:
        """The user's source line: the innermost frame outside the tracetorch package."""
        f = sys._getframe(2)
        while f is not None:
            mod = f.f_globals.get("__name__", "")
            if mod != "tracetorch" and not mod.startswith("tracetorch."):
                return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno} in {f.f_code.co_name}"
            f = f.f_back
        return ""

    def _define(self, t: Tensor, name: str = "") -> Value:
        v = Value(tuple(t._data.shape), t._dtype, name)
        self.values[id(t)] = (v, weakref.ref(t))
        return v

    def knows(self, t: Tensor) -> bool:
        """Whether this very tensor object has a value in the trace."""
        hit = self.values.get(id(t))
        return hit is not None and hit[1]() is t

    def _created(self, t: Tensor, where: str) -> Value:
        v = self._define(t)
        self.created.append((weakref.ref(t), where))
        return v

    def add_input(self, t: Tensor, source, name: str) -> Value:
        v = self._define(t, name)
        self.inputs.append(v)
        self.sources.append(source)
        self.input_tensors.append(t)
        self.input_requires_grad.append(bool(t.requires_grad))
        self.input_state.append((t._data, t._version[0]))
        return v

    def value_of(self, t: Tensor) -> Value:
        hit = self.values.get(id(t))
        if hit is None or hit[1]() is not t:
            return self._capture(t)
        return hit[0]

    def _capture(self, t: Tensor) -> Value:
        name = self.names.get(id(t)) or f"captured_{len(self.inputs)}"
        return self.add_input(t, CapturedSource(weakref.ref(t), name), name)

    def _operand(self, x, dtype_hint):
        if isinstance(x, Tensor):
            return self.value_of(x)
        if isinstance(x, _Traced) and x._tracer is self:
            shadow = x.shadow()
            dt = dtype_hint or shadow._dtype
            return self._cast_value(shadow, dt)
        return x

    def _cast_value(self, t: Tensor, dtype) -> Value:
        """The value of `t` as `dtype` (a recorded cast, without touching autograd)."""
        if t._dtype is dtype:
            return self.value_of(t)
        with no_grad():
            return self.value_of(t.to(dtype))

    # ------------------------------------------------------------ hooks from the core
    def evaluate(self, op, inputs, args, attrs):
        """The eager kernel, on plain numbers (a traced number must not look like a numpy scalar)."""
        return op.eager(*[_plain(a) if isinstance(a, _Traced) else a for a in args], **attrs)

    def record(self, op, inputs, attrs, out):
        where = self.where()
        if op.kind != CREATION and not any(isinstance(x, (Tensor, _Traced)) for x in inputs):
            op, inputs, attrs = CONSTANT, (), {"value": np.array(out._data), "dtype": out._dtype}
        hint = _scalar_dtype(op, inputs) if any(isinstance(x, _Traced) for x in inputs) else None
        ins = tuple(self._operand(x, hint) for x in inputs)
        attrs = self._plain_attrs(attrs)
        v = self._created(out, where)
        g = out._grad_fn
        if g is not None and g.out_saved is not None:     # the output as its VJP reads it (create_graph)
            alias = g.out_saved[0]
            self.values[id(alias)] = (v, weakref.ref(alias))
        diff = None if g is None else tuple(e is not None for e in g.edges)
        aliases = bool(op.view and inputs and isinstance(inputs[0], Tensor) and out._version is inputs[0]._version)
        self.nodes.append(Node(op, ins, (v,), attrs, where, diff, aliases))
        if self.record_values:
            self.node_values.append(np.array(out._data))

    def record_mutation(self, t: Tensor, new: Tensor):
        where = self.where()
        if not self.knows(t):               # first seen as the target of this write: it held the old value
            self._capture(t)
            data, version = self.input_state[-1]
            self.input_state[-1] = (data, version - 1)
        dst = self.value_of(t)
        src = self.value_of(new)
        diff = (True, True) if STATE.grad_enabled and (t.requires_grad or new.requires_grad) else None
        self.nodes.append(Node(COPY_, (dst, src), (), {}, where, diff))
        entry = self.recorded_writes.get(id(t._version))
        if entry is None:           # holding the counter keeps its id from naming another one
            entry = self.recorded_writes[id(t._version)] = [t._version, 0]
        entry[1] += 1
        if self.record_values:
            self.node_values.append(None)

    def record_alias(self, src: Tensor, t: Tensor):
        where = self.where()
        v = self._created(t, where)
        self.nodes.append(Node(DETACH, (self.value_of(src),), (v,), {}, where, None, True))
        if self.record_values:
            self.node_values.append(np.array(t._data))

    def _plain_attrs(self, attrs: dict) -> dict:
        for v in attrs.values():
            if is_traced(v) or (isinstance(v, tuple) and any(is_traced(e) for e in v)):
                return {k: self._plain_attr(v) for k, v in attrs.items()}
        return attrs

    def _plain_attr(self, v):
        if is_traced(v):
            return v.concretize("a number from the trace used as an op attribute")
        if isinstance(v, tuple):
            return tuple(self._plain_attr(e) for e in v)
        return v

    # ------------------------------------------------------------ .grad as state
    def _grad_slot(self, p: Tensor) -> GradSlot:
        slot = self.grad_slots.get(id(p))
        if slot is None:
            slot = self.grad_slots[id(p)] = GradSlot(p)
        return slot

    def owner_source(self, p: Tensor):
        """Where the tensor that owns a `.grad` is found at call time: the argument it was passed as
        (a later call passes another tensor), else the captured object itself."""
        for src, t in zip(self.sources, self.input_tensors):
            if t is p and isinstance(src, ArgSource):
                return src
        return CapturedSource(weakref.ref(p), self.names.get(id(p)) or "a parameter")

    def on_grad_read(self, p: Tensor, g):
        slot = self._grad_slot(p)
        if slot.written or slot.read:
            return
        slot.read, slot.first_read = True, g
        if g is not None and not self.knows(g):
            name = (self.names.get(id(p)) or f"param_{len(self.grad_slots)}") + ".grad"
            self.add_input(g, GradSource(self.owner_source(p), name), name)

    def on_grad_write(self, p: Tensor, g):
        slot = self._grad_slot(p)
        slot.written = True         # a write before any read: the old grad does not matter
        if g is not None:
            self.value_of(g)

    # ------------------------------------------------------------ numbers leaving the tensor world
    def on_value(self, t: Tensor, kind: str, value):
        if kind in ("float", "int"):
            # float(t) / int(t): Python converts whatever __float__/__int__ returns to an exact float/int,
            # so the number cannot be followed: guard its value
            with no_grad():
                snap = self._snapshot(t.reshape(()), float if kind == "float" else int)
            self.guard_equal(snap, value, f"`{kind}(t)` of a tensor")
            return value
        if kind == "item" and t._data.size == 1:
            if isinstance(value, bool):
                with no_grad():
                    test = t.reshape(()).to(D.bool_)
                self.guard_outcome(test, value, f"`{kind}()` of a bool tensor")
                return value
            with no_grad():
                snap = self._snapshot(t.reshape(()), float if isinstance(value, float) else int)
            cls = TracedFloat if isinstance(value, float) else TracedInt
            return cls(value)._attach(self, snap, None, snap)
        if kind == "bool":
            with no_grad():
                test = t.reshape(()).to(D.bool_)
            self.guard_outcome(test, bool(value), "a tensor tested for truth (`if t:` / `bool(t)`)")
            return value
        if kind == "index":
            with no_grad():
                snap = self._snapshot(t.reshape(()), int)
            self.guard_equal(snap, value, "a tensor used as an index (`__index__`)")
            return value
        if kind == "tolist" and t._dtype is not D.bool_ and t._data.size <= 4096:
            with no_grad():
                snap = self._snapshot(t.reshape(-1), float if t._dtype.is_floating_point else int)
            return _traced_list(self, snap, value, [0])
        self._guard_array(t, kind)
        return value

    def _snapshot(self, t: Tensor, pytype) -> Tensor:
        """A fresh copy of t's current value in float64/int64 (what Python computes with)."""
        dt = D.float64 if pytype is float else D.int64
        return apply(CLONE, t) if t._dtype is dt else apply(CAST, t, dtype=dt)

    def _guard_array(self, t: Tensor, kind: str):
        what = _FULL_VALUE_KINDS.get(kind, kind)
        where = self.where()
        if self.fullgraph:
            raise GraphBreak(f"tt.compile(fullgraph=True): {what} at {where} makes the trace depend on tensor "
                             f"values (shape {tuple(t.shape)}); compute it with tensor ops, or drop fullgraph "
                             "to guard on the values (a new trace whenever they change)")
        with no_grad():
            snap = apply(CLONE, t)
        self.value_guards.append(ValueGuardSpec(self.value_of(snap), np.array(t._data), "array",
                                                f"tensor values read by {what}", where))

    def guard_outcome(self, test: Tensor, outcome: bool, why: str):
        self.value_guards.append(ValueGuardSpec(self.value_of(test), bool(outcome), "outcome", why, self.where()))

    def guard_equal(self, shadow: Tensor, value, why: str):
        if self.fullgraph:
            raise GraphBreak(f"tt.compile(fullgraph=True): {why} at {self.where()}: the trace would depend on "
                             f"the value {value!r}")
        self.value_guards.append(ValueGuardSpec(self.value_of(shadow), value, "equal", why, self.where()))

    def track_scalar(self, s):
        self.scalars.append(s)      # int subclasses take no weak references; released with the trace

    # ------------------------------------------------------------ autograd inside the region
    def run_backward(self, tensors, grads, retain_graph, create_graph, inputs, accumulate):
        """`loss.backward()` / `autograd.grad` while tracing: the eager backward runs (paused) to
        produce values; the trace gets one `backward` node whose outputs are the gradients."""
        from ..autograd import graph as G
        if create_graph:
            raise GraphBreak("backward(create_graph=True) inside tt.compile is not supported (a `.grad` that "
                             "requires grad); use tt.autograd.grad(..., create_graph=True), or mode='eager'")
        where = self.where()
        wrt = list(inputs) if inputs is not None else _reachable_leaves(tensors)
        roots = [self.value_of(t) for t in tensors]
        seeds = [self.value_of(g) for g in grads]
        wrt_values = [self.value_of(w) for w in wrt]
        with self.paused():
            got = G.run_backward(tensors, grads, retain_graph, False, inputs=wrt) if wrt else []
        outs, grads_out = [], []
        for g in got:
            if g is None:
                grads_out.append(None)
                continue
            if self.knows(g):                   # the eager backward handed back a tensor we know
                g = Tensor._make(g._data, g._dtype)
            outs.append(self._created(g, where))
            grads_out.append(g)
        self.nodes.append(Node(BACKWARD, tuple(roots) + tuple(seeds) + tuple(wrt_values), tuple(outs),
                               {"n_roots": len(roots), "has_grad": tuple(g is not None for g in grads_out)},
                               where))
        if self.record_values:
            self.node_values.append(None)
        if not retain_graph:
            self.backward_roots.update(roots)
        if inputs is not None:
            return grads_out
        for leaf, g in zip(wrt, grads_out):
            if g is None or not leaf.requires_grad:
                continue
            for hook in leaf._hooks or ():
                r = hook(g)
                if r is not None:
                    g = r
            G._accumulate_into(leaf, g, False)
        return None

    def accumulate_grad(self, t: Tensor, g: Tensor):
        """Eager `_accumulate_into` semantics, with every step recorded."""
        with no_grad():
            old = t.grad
            if old is None:
                t.grad = g.detach().clone()
            else:
                old.add_(g)

    def custom_function(self, cls, ctx, args, kwargs):
        """A user autograd.Function: record its forward ops; its backward becomes the VJP of one
        `custom_fn` node over the outputs (traced from the user's code by the autodiff pass)."""
        from ..autograd.function import connect
        prev = STATE.grad_enabled
        STATE.grad_enabled = False
        try:
            out = cls.forward(ctx, *args, **kwargs)
        finally:
            STATE.grad_enabled = prev
        with self.paused():
            result = connect(cls, ctx, args, out)
        if not (STATE.grad_enabled and any(ctx.needs_input_grad)):
            return result
        where = self.where()
        outs = result if isinstance(result, tuple) else (result,)
        raw = out if isinstance(out, tuple) else (out,)
        arg_pos = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        diff_pos = [k for k, o in enumerate(outs) if isinstance(o, Tensor) and o._grad_fn is not None]
        in_values = tuple(self.value_of(args[i]) for i in arg_pos)
        fwd_values = tuple(self.value_of(raw[k]) for k in diff_pos)
        new_values = [self._created(outs[k], where) for k in diff_pos]
        saved = tuple(self.value_of(t) if isinstance(t, Tensor) else None for t in ctx._saved)
        extra = {k: v for k, v in vars(ctx).items() if not k.startswith("_") and k != "needs_input_grad"}
        ctx_tensors = {k: self.value_of(v) for k, v in extra.items() if isinstance(v, Tensor)}
        ctx_plain = {k: v for k, v in extra.items() if not isinstance(v, Tensor)}
        attrs = {"fn": cls, "arg_positions": tuple(arg_pos), "n_args": len(args), "out_positions": tuple(diff_pos),
                 "n_outputs": len(outs), "saved": saved, "ctx_tensors": ctx_tensors, "ctx_plain": ctx_plain,
                 "needs_input_grad": ctx.needs_input_grad, "materialize_grads": ctx.materialize_grads}
        diff = tuple(bool(args[i].requires_grad) for i in arg_pos) + (False,) * len(fwd_values)
        self.nodes.append(Node(CUSTOM_FN, in_values + fwd_values, tuple(new_values), attrs, where, diff))
        if self.record_values:
            self.node_values.append(None)
        return result

    # ------------------------------------------------------------ end of trace
    def unrecorded_writes(self) -> list:
        """Inputs changed behind the tracer's back (storage rebound with `.data =`, or written through
        `_data` as `manual_seed` does): a replay would not repeat that."""
        changed = []
        for src, t, (data, version) in zip(self.sources, self.input_tensors, self.input_state):
            writes = self.recorded_writes.get(id(t._version), (None, 0))[1]
            if t._data is not data or t._version[0] - version != writes:
                changed.append(src.describe())
        return changed

    def release(self):
        """Drop every reference the trace holds to tensors (so escape checks see the user's state)."""
        for s in self.scalars:
            s._detach()
        self.scalars.clear()
        self.values.clear()
        self.keep.clear()
        self.input_tensors.clear()
        self.grad_slots.clear()


class AbstractTracer(Tracer):
    """Records ops on placeholder tensors without running kernels (for VJP rules on IR values)."""

    abstract = True

    def __init__(self, where: str = ""):
        super().__init__()
        self._where = where
        self.producers: dict = {}               # IR value -> the node that made it (set by the autodiff walk)

    def where(self) -> str:
        return self._where

    def proxy(self, v: Value) -> Tensor:
        """A placeholder tensor standing for IR value `v`."""
        t = Tensor._make(_placeholder(v.shape, v.dtype), v.dtype)
        self.values[id(t)] = (v, weakref.ref(t))
        self.keep.append(t)
        return t

    def transposed_2d(self, t: Tensor) -> bool:
        """Whether the reference interpreter lays out the value `t` stands for as eager lays out a
        weight.t() (`ops.linalg._transposed_2d`): a 2-D permute (1, 0) of a value that is not itself a
        permute. A VJP rule then picks eager's formula, and the interpreter stays bit-for-bit with eager
        (a BLAS may round x^T g and (g^T x)^T differently: OpenBLAS's Haswell kernels do)."""
        hit = self.values.get(id(t))
        node = self.producers.get(hit[0]) if hit is not None and hit[1]() is t else None
        if node is None or node.op.name != "permute" or tuple(node.attrs.get("dims", ())) != (1, 0) \
                or not all(d > 1 for d in node.out.shape):
            return False
        source = self.producers.get(node.inputs[0])
        return source is None or source.op.name != "permute"

    def evaluate(self, op, inputs, args, attrs):
        """No kernel runs: a zero-stride placeholder of the inferred shape and dtype."""
        if op.kind != CREATION and not any(isinstance(x, Tensor) for x in inputs):
            return np.asarray(op.eager(*inputs, **attrs))      # numbers only: a constant, computed now
        avals = [Aval(tuple(x._data.shape), x._dtype) if isinstance(x, Tensor) else x for x in inputs]
        out = op.infer(*avals, **attrs)
        return _placeholder(out.shape, out.dtype)

    def _capture(self, t: Tensor) -> Value:
        """A tensor made outside `apply` (e.g. an index table): a constant of the graph."""
        v = self._define(t)
        self.nodes.append(Node(CONSTANT, (), (v,), {"value": np.array(t._data), "dtype": t._dtype}, self._where))
        return v

    def record_mutation(self, t, new):
        raise GraphBreak("an in-place write inside a VJP rule cannot be differentiated symbolically")

    def on_value(self, t, kind, value):
        raise GraphBreak(f"a VJP rule read tensor values ({kind}) while being traced symbolically")


def _placeholder(shape, dtype) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype.np), tuple(shape))


def _scalar_dtype(op, inputs):
    """The dtype a Python-number operand adopts: that of the op's other tensor operands."""
    skip_first = op.name == "where"
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and not (skip_first and i == 0):
            return x._dtype
    return None


def _traced_list(tracer, snap, value, counter):
    if isinstance(value, list):
        return [_traced_list(tracer, snap, v, counter) for v in value]
    i = counter[0]
    counter[0] += 1
    cls = TracedFloat if isinstance(value, float) else TracedInt
    return cls(value)._attach(tracer, snap, i)


def _reachable_leaves(tensors) -> list:
    """Leaf tensors requiring grad that a backward from `tensors` reaches, in a stable order."""
    from ..autograd.graph import Node as GradNode
    leaves, seen, stack = [], set(), []
    for t in tensors:
        if t._grad_fn is None:
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                leaves.append(t)
        else:
            stack.append(t._grad_fn)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for e in reversed(node.edges):
            if isinstance(e, GradNode):
                stack.append(e)
            elif isinstance(e, Tensor) and id(e) not in seen:
                seen.add(id(e))
                leaves.append(e)
    return leaves
