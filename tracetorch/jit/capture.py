"""One traced call: run the function eagerly under a Tracer and describe what it did.

The result, a `Trace`, holds the raw graph (storage semantics, before any
pass) whose outputs are everything a replay must produce: the user's result
tensors and numbers, new `.grad` bindings and the values of value guards;
plus the static guards, the input sources and the output structure.

Tensors created during the call that are still alive afterwards, other than
the results, the new grads and what autograd keeps for the results'
backward, have *escaped* into Python state (Adam creating `exp_avg` on its
first step, a cache filled on the first call). A replay would not recreate
them, so such a trace is not cached: the call itself is correct (it ran
eagerly) and the next call traces again, now finding that state as captured
inputs. This costs one extra trace when state is created lazily (the
alternative, TinyJit's "first call is a warm-up", costs it always and does
not notice state created later); a function that creates state on every
call ends up running eagerly after `cache_size_limit` traces, with a warning
naming the line that created it. Telling escaped tensors from dead ones in
reference cycles is kept cheap: a tensor that a reachable optimizer's state
or module holds has escaped for sure; other survivors face a collection of
the young generations, and a full one (~10 ms) only if some survive that.
"""
from __future__ import annotations

import functools
import gc
import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from ..ops import REGISTRY
from ..ops.dispatch import STATE, apply
from ..tensor import Tensor
from . import pytree
from .guards import (BindingGuard, ConstantGuard, DisjointGuard, GradGuard, SameObjectGuard, SpecGuard, TensorGuard,
                     _short, global_guards, state_guards)
from .ir import COPY_, DETACH, Graph, Node, Value
from .reach import reach
from .scalars import _plain, _Traced
from .sources import ArgSource, CapturedSource
from .tracer import Tracer

CONSTANT = REGISTRY["constant"]


@dataclass(frozen=True)
class OutputLeaf:
    kind: str               # "value" (a program output), "input" (an input tensor object), "scalar",
                            # "view" (a view of an input tensor, made again from it after the run)
    index: int = -1         # output position ("value", "scalar")
    pytype: type = float    # "scalar": the Python type returned
    source: object = None   # "input", "view" of an input: where that tensor object is found at call time
    base: int = -1          # "view" of a result: the position of that result's leaf
    views: tuple = ()       # "view": (op, other operands, attrs) of each view op from the base, in order
    spent: str = ""         # "value": the grad_fn name of a result whose graph a backward in the call used

    def view_of(self, base):
        """The result of a "view" leaf: its view ops run eagerly on `base` (so it shares the input's
        storage and version counter, and autograd records them, as when traced)."""
        t = base
        for op, operands, attrs in self.views:
            t = t.detach() if op is DETACH else apply(op, t, *operands, **attrs)
        return t


class Call:
    """One call's arguments, flattened: `spec` is compared by guards, `leaves` (a sequence) are its
    tensors. A plain slotted class: every compiled call makes one."""
    __slots__ = ("args", "kwargs", "leaves", "spec")

    def __init__(self, args: tuple, kwargs: dict, leaves, spec: tuple):
        self.args, self.kwargs, self.leaves, self.spec = args, kwargs, leaves, spec

    @staticmethod
    def of(args, kwargs) -> "Call":
        if not kwargs:                          # the common case, tensors only: no walk
            for a in args:
                if type(a) is not Tensor:
                    break
            else:
                return Call(args, kwargs, args, _tensor_args_spec(len(args)))
        leaves, spec = pytree.flatten((args, kwargs))
        return Call(args, kwargs, leaves, spec)


@functools.lru_cache(maxsize=None)
def _tensor_args_spec(n: int) -> tuple:
    return pytree.flatten(((Tensor._make(None, None),) * n, {}))[1]


@dataclass
class Trace:
    raw: Graph
    sources: list
    guards: list
    value_guards: list              # (ValueGuardSpec, output position)
    out_spec: tuple
    out_leaves: list
    grad_bindings: list             # (parameter's source, output position or None)
    diff_outputs: list              # output positions that need gradients across the boundary
    diff_inputs: list               # input positions that require grad
    result: object                  # what the eager run returned: this call's result
    uncacheable: str | None = None
    uncacheable_where: str = ""
    node_values: list = field(default_factory=list)
    seconds: float = 0.0
    on_device: bool = False         # a cuda tensor is an input or is made inside: "auto" picks backend cuda
    uncacheable_kind: str = "state created during the call"     # the guard-failure key it is counted under


def capture(fn, call: Call, *, name: str, self_obj=None, reach_fn=None, fullgraph=False,
            record_values=False) -> Trace:
    """Run `fn(*call.args, **call.kwargs)` under a tracer. `reach_fn` (default fn) is the function
    whose closures and globals are searched for state to guard."""
    t0 = time.perf_counter()
    arg_names = _parameter_names(fn)
    named = [(n, a) for n, a in zip(arg_names, call.args)]
    found = reach(reach_fn or fn, self_obj, named)
    guards = [SpecGuard(call.spec)] + global_guards() + state_guards(found)
    tracer = Tracer(found.tensor_names, fullgraph=fullgraph, record_values=record_values)
    leaf_names = pytree.leaf_names(call.spec, "args")
    leaf_names = _readable_arg_names(leaf_names, arg_names)
    for i, t in enumerate(call.leaves):
        if tracer.knows(t):                 # the same tensor passed twice: one input, and a guard
            first = next(s for s, x in zip(tracer.sources, tracer.input_tensors) if x is t)
            guards.append(SameObjectGuard(first.index, i, (first.name, leaf_names[i])))
            continue
        tracer.add_input(t, ArgSource(i, leaf_names[i]), leaf_names[i])
    with tracer:
        result = fn(*call.args, **call.kwargs)
        out_objs, out_spec, out_leaves, outputs, diff_outputs = _outputs(tracer, result)
    if any(isinstance(o, _Traced) for o in out_objs):       # the caller gets plain numbers, as on replay
        result = pytree.unflatten(out_spec, [_plain(o) if isinstance(o, _Traced) else o for o in out_objs])
    grad_bindings, grads_now = _grads(tracer, found, guards, outputs)
    value_guards = []
    for spec in tracer.value_guards:
        value_guards.append((spec, len(outputs)))
        outputs.append(spec.value)
    guards += [TensorGuard(src, tuple(t._data.shape), t._dtype, bool(t.requires_grad), type(t._data))
               for src, t in zip(tracer.sources, tracer.input_tensors)]
    on_device = getattr(tracer, "made_device_tensors", False) or any(
        type(t._data) is not np.ndarray for t in tracer.input_tensors)
    guards += [BindingGuard(found.bindings[id(t)][0], found.bindings[id(t)][1], src.ref)
               for src, t in zip(tracer.sources, tracer.input_tensors)
               if isinstance(src, CapturedSource) and id(t) in found.bindings]
    input_arrays = [t._data for t in tracer.input_tensors]
    hidden_writes = tracer.unrecorded_writes()
    mutated = _written_roots(tracer.nodes)
    created = tracer.created
    diff_inputs = [k for k, rg in enumerate(tracer.input_requires_grad) if rg]
    nodes, inputs, sources = list(tracer.nodes), list(tracer.inputs), list(tracer.sources)
    node_values = tracer.node_values
    tracer.release()
    del tracer          # from here on, only the results and the user's state keep trace tensors alive

    inputs, sources, diff_inputs, guards, constants, uncacheable = _drop_dead_captures(
        inputs, sources, diff_inputs, guards, input_arrays, mutated)
    uncacheable_where = ""
    if hidden_writes and uncacheable is None:
        uncacheable = (f"{', '.join(hidden_writes)} changed outside tracetorch ops during the call (storage "
                       "rebound with `.data =`, or written directly, as manual_seed does)")
    escaped = _escaped(created, out_objs, grads_now, _held_by_state(found))
    if escaped and uncacheable is None:
        uncacheable = (f"a tensor created at {escaped} outlived the call outside its results (it escaped into "
                       "Python state, e.g. optimizer state created on the first step)")
        uncacheable_where = escaped
    uncacheable_kind = "state created during the call"
    disjoint, shared = _disjoint_guards(inputs, sources, mutated, call)
    guards += disjoint
    if shared and uncacheable is None:
        uncacheable, uncacheable_kind = shared, "arguments share memory"
    changed = _changed_constants(guards)
    if changed and uncacheable is None:
        uncacheable, uncacheable_kind = changed, "Python state changed during the call"
    raw = Graph(tuple(inputs), tuple(constants + nodes), tuple(outputs), name=name)
    return Trace(raw, sources, guards, value_guards, out_spec, out_leaves, grad_bindings, diff_outputs,
                 diff_inputs, result, uncacheable, uncacheable_where, node_values, time.perf_counter() - t0,
                 on_device, uncacheable_kind)


def _disjoint_guards(inputs, sources, mutated, call):
    """([DisjointGuard per written argument], None), or ([], why) when a written argument shares memory
    with another input: the trace made them separate inputs, so its program would read stale data."""
    guards = []
    for value, src in zip(inputs, sources):
        if not isinstance(src, ArgSource) or value not in mutated:
            continue
        guard = DisjointGuard(src, tuple(s for s in sources if s is not src
                                         and isinstance(s, (ArgSource, CapturedSource))))
        other = guard.clash(call)
        if other is not None:
            return [], (f"{src.describe()} shares memory with {other.describe()} and the call writes it: "
                        "a program reads each input separately, so such calls run traced (eagerly)")
        guards.append(guard)
    return guards, None


def _changed_constants(guards) -> str | None:
    """A Python constant the trace read that the call itself changed (`sched.last_epoch` of a scheduler
    stepped inside, a global counter): a replay would not change it, so such a trace is never replayed."""
    for g in guards:
        if isinstance(g, ConstantGuard) and not g.check(None):
            return (f"{g.name} changed during the call ({g.expected!r} -> {_short(repr(g.read()), 60)}): a "
                    "compiled call that changes Python state runs traced every time; change it outside the compiled "
                    "function (step an lr scheduler after the call), or keep it in a tensor")
    return None


def _view_leaf(tracer, obj, v, out_objs, results) -> OutputLeaf | None:
    """A "view" leaf when result `obj` is a view, made by view ops alone (`x[0]`, `y.t()`), of an input
    tensor or of a result returned before it: returned as a copy, writes into it would not reach its
    base as they do eagerly."""
    inputs = {x: k for k, x in enumerate(tracer.inputs) if tracer.input_tensors[k]._version is obj._version}
    bases = {x: k for x, k in results.items() if out_objs[k]._version is obj._version}
    if not inputs and not bases:
        return None
    producers = {n.outputs[0]: n for n in tracer.nodes if n.aliases and len(n.outputs) == 1}
    views = []
    while v not in inputs and v not in bases:
        n = producers.get(v)
        if n is None or not n.inputs or any(isinstance(x, Value) for x in n.inputs[1:]):
            return None
        views.append((n.op, tuple(n.inputs[1:]), dict(n.attrs)))
        v = n.inputs[0]
    views = tuple(reversed(views))
    if v in inputs:
        return OutputLeaf("view", source=tracer.sources[inputs[v]], views=views)
    return OutputLeaf("view", base=bases[v], views=views)


def _drop_dead_captures(inputs, sources, diff_inputs, guards, input_arrays, mutated):
    """Captured tensors that died with the call were temporaries made outside tracetorch ops (an index
    list turned into a tensor): they become constants of the graph, not inputs."""
    dead = [k for k, s in enumerate(sources) if isinstance(s, CapturedSource) and s.ref() is None]
    if not dead:
        return inputs, sources, diff_inputs, guards, [], None
    uncacheable = None
    constants = []
    for k in dead:
        if inputs[k] in mutated:
            uncacheable = f"a temporary tensor {sources[k].name} (made outside tracetorch ops) was modified in place"
        constants.append(Node(CONSTANT, (), (inputs[k],), {"value": np.array(input_arrays[k]),
                                                           "dtype": inputs[k].dtype}))
    keep = [k for k in range(len(sources)) if k not in dead]
    remap = {old: new for new, old in enumerate(keep)}
    gone = [sources[k] for k in dead]
    guards = [g for g in guards if not (isinstance(g, TensorGuard) and g.source in gone)
              and not (isinstance(g, BindingGuard) and any(g.ref is s.ref for s in gone))]
    return ([inputs[k] for k in keep], [sources[k] for k in keep], [remap[k] for k in diff_inputs if k in remap],
            guards, constants, uncacheable)


def _outputs(tracer, result):
    """The result's leaves as program outputs: (objects, spec, OutputLeafs, output values, diff positions)."""
    out_objs, out_spec = pytree.flatten(result, (Tensor, _Traced))
    outputs, out_leaves, diff_outputs = [], [], []
    input_pos = {id(t): k for k, t in enumerate(tracer.input_tensors)}
    seen: dict = {}             # id(tensor) -> its leaf: a tensor returned twice is one object, as eagerly
    results: dict = {}          # Value -> position of its "value" leaf (a base for views of it)
    for obj in out_objs:
        if isinstance(obj, Tensor):
            if id(obj) in seen:
                out_leaves.append(seen[id(obj)])
                continue
            if id(obj) in input_pos:
                out_leaves.append(OutputLeaf("input", source=tracer.sources[input_pos[id(obj)]]))
                continue
            v = tracer.value_of(obj)
            leaf = _view_leaf(tracer, obj, v, out_objs, results)
            if leaf is None:
                spent = ""
                if obj.requires_grad and STATE.grad_enabled and v not in tracer.backward_roots:
                    diff_outputs.append(len(outputs))
                elif obj.requires_grad and obj.grad_fn is not None:      # `loss.backward(); return loss`
                    spent = obj.grad_fn.name()
                leaf = OutputLeaf("value", len(outputs), spent=spent)
                results[v] = len(out_leaves)
                outputs.append(v)
            seen[id(obj)] = leaf
            out_leaves.append(leaf)
        else:
            pytype = float if isinstance(obj, float) else int
            out_leaves.append(OutputLeaf("scalar", len(outputs), pytype))
            if obj._tracer is tracer:
                outputs.append(tracer.value_of(obj.shadow()))
            else:                       # a traced number from another (finished) trace: a constant
                outputs.append(tracer.value_of(_constant(pytype(_plain(obj)))))
    return out_objs, out_spec, out_leaves, outputs, diff_outputs


def _grads(tracer, found, guards, outputs):
    """`.grad` as program state: guards on what the trace read, outputs for what it rebound."""
    bindings, grads_now = [], []
    for slot in tracer.grad_slots.values():
        p = slot.param
        owner = tracer.owner_source(p)
        if slot.read and slot.first_read is None:
            guards.append(GradGuard(owner, _param_name(found, p), False))
        if not slot.written:
            continue
        g = p._grad
        grads_now.append(g)
        if g is None:
            bindings.append((owner, None))
        elif not (slot.read and g is slot.first_read):
            bindings.append((owner, len(outputs)))
            outputs.append(tracer.value_of(g))
    return bindings, grads_now


def _parameter_names(fn) -> tuple:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    names = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names += [f"{p.name}{i}" for i in range(16)]
    return tuple(names)


def _readable_arg_names(names, arg_names):
    """`args[0][0][1]` -> `batch[1]` using the function's parameter names."""
    out = []
    for n in names:
        if n.startswith("args[0]["):
            rest = n[len("args[0]["):]
            i = int(rest.split("]", 1)[0])
            tail = rest.split("]", 1)[1]
            out.append((arg_names[i] if i < len(arg_names) else f"arg{i}") + tail)
        elif n.startswith("args[1]["):
            out.append(n[len("args[1]["):].replace("']", "", 1).strip("'"))
        else:
            out.append(n)
    return out


def _param_name(found, p) -> str:
    return found.tensor_names.get(id(p), "a parameter")


def _constant(x):
    from ..creation import tensor
    return tensor(x)


def _written_roots(nodes) -> set:
    """Values written by `copy_`, directly or through an alias."""
    root: dict = {}
    written = set()
    for n in nodes:
        if n.aliases:
            src = n.inputs[0]
            root[n.out] = root.get(src, src)
        elif n.op is COPY_:
            dst = n.inputs[0]
            written.add(root.get(dst, dst))
    return written


def _escaped(created, outputs, grads, held=frozenset()) -> str | None:
    """Where a tensor created during the trace that is still alive, but not a result, was made.
    `held`: ids of tensors that reachable state holds now (alive for sure: no collection needed)."""
    alive = [(ref, where) for ref, where in created if ref() is not None]
    if not alive:
        return None
    allowed = _kept_by_results(outputs, grads)
    suspects = [(ref, where) for ref, where in alive if id(ref()) not in allowed]
    for ref, where in suspects:
        if id(ref()) in held:
            return where or "?"
    # Cycles (autograd nodes <-> tensors) may hold dead ones. They were made during the call, so
    # collecting the young generations (well under a millisecond) usually frees them; a full
    # collection (a walk over the whole heap, ~10 ms) only when some still look alive.
    for generation in (1, 2):
        if not suspects:
            break
        gc.collect(generation)
        suspects = [(ref, where) for ref, where in suspects if ref() is not None and id(ref()) not in allowed]
    return suspects[0][1] or "?" if suspects else None


def _held_by_state(found) -> set:
    """ids of the tensors that the reachable optimizers' state and modules' attributes and buffers
    hold now: state created during the call (an optimizer's momentum) is found here without a
    garbage collection."""
    held = set()
    for _, opt in found.optimizers:
        for state in opt.state.values():
            if isinstance(state, dict):
                held.update(id(v) for v in state.values() if isinstance(v, Tensor))
    for _, m in found.modules:
        for v in [*vars(m).values(), *getattr(m, "_buffers", {}).values()]:
            if isinstance(v, Tensor):
                held.add(id(v))
    return held


def _kept_by_results(outputs, grads) -> set:
    """ids of tensors the results keep alive legitimately: themselves, their bases, their autograd graphs."""
    from ..autograd.graph import Node as GradNode
    seen_nodes: set = set()
    allowed: set = set()
    stack = [t for t in list(outputs) + list(grads) if isinstance(t, Tensor)]
    nodes = []
    while stack or nodes:
        if stack:
            t = stack.pop()
            if id(t) in allowed:
                continue
            allowed.add(id(t))
            if t._base is not None:
                stack.append(t._base)
            if t._grad_fn is not None:
                nodes.append(t._grad_fn)
            continue
        node = nodes.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        for e in node.edges:
            if isinstance(e, GradNode):
                nodes.append(e)
            elif isinstance(e, Tensor):
                stack.append(e)
        stack.extend(x for x in (node.saved or ()) if isinstance(x, Tensor))
        ctx = getattr(node, "ctx", None)
        if ctx is not None:
            stack.extend(x for x in ctx._saved if isinstance(x, Tensor))
            stack.extend(x for x in vars(ctx).values() if isinstance(x, Tensor))
    return allowed


__all__ = ["Call", "Trace", "OutputLeaf", "capture"]
