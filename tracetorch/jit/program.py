"""A compiled program: one trace, lowered and compiled, and how to run it.

Running it on a call:

1. read every input from its source (by reference: the current `_data` of
   each argument, captured tensor or `.grad`);
2. run the executable (a pure function of the arrays);
3. check the value guards on its outputs: a failure raises
   `ValueGuardFailed` *before anything is committed*;
4. commit: copy each write-back into its target tensor (bumping its version)
   and rebind the `.grad` of parameters whose grad the trace replaced;
5. build the results: fresh tensors owned by the caller (an array that
   aliases an input, another result or read-only memory is copied), the very
   input tensor object where the function returned one, a view of it made
   again by the same view ops where it returned one (`x[0]`, `x.t()`: writes
   into it reach the input, as eagerly), Python numbers for
   traced numbers; outputs that need gradients get a grad_fn that runs the
   compiled backward program.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.interrupts import FinishedInterrupt
from runtime.memory import storage_root

from ..autograd.function import Function, FunctionCtx, connect
from ..autograd.graph import Node
from ..ops.dispatch import STATE
from ..ops.registry import RANDOM
from ..tensor import Tensor
from . import logs, pytree
from .backends import resolve
from .capture import Trace
from .guards import compile_commit, compile_guards
from .interp import InterpExecutable
from .ir import Graph, Value
from .passes.pipeline import lower, lower_with_backward


class ValueGuardFailed(Exception):
    """A value guard did not hold: the run is abandoned (nothing was committed)."""

    def __init__(self, position: int, outcome, spec):
        super().__init__(f"value guard {position} failed: {spec.describe()}, got {_show(outcome)}")
        self.position = position
        self.outcome = outcome
        self.spec = spec


@dataclass(eq=False)
class BackwardPlan:
    executable: object
    graph: Graph
    input_residuals: tuple          # forward input positions the backward reads (saved by reference)
    n_outputs: int                  # forward graph outputs before the computed residuals
    diff_outputs: tuple             # output positions with a grad_fn
    diff_inputs: tuple              # input positions gradients flow to
    missing: tuple                  # positions in diff_inputs with no gradient


@dataclass(eq=False)
class Program:
    name: str
    raw: Graph
    graph: Graph
    executable: object
    sources: tuple
    guards: tuple
    value_guards: tuple             # (ValueGuardSpec, result position)
    out_spec: tuple
    out_leaves: tuple
    grad_bindings: tuple            # (parameter's source, result position or None)
    writebacks: tuple               # (source position, result position)
    backward: BackwardPlan | None
    compile_seconds: float
    joint: Graph | None = None
    donated: dict = field(default_factory=dict)     # executable.donated: input index -> result position
    precheck: object = None         # inputs -> every value-guarded value, run before the program (or None)
    _dtypes: list | None = None
    _dtypes_of: Graph | None = None
    _path: tuple | None = None

    def __post_init__(self):
        # inputs_if_fits(call): what read_inputs(call) returns if every static guard holds, else None
        self.inputs_if_fits = compile_guards(self.guards, self.sources, self.name)
        lone = len(self.out_leaves) == 1 and self.out_spec == pytree.TENSOR and self.out_leaves[0].kind == "value"
        self._lone_result = self.out_leaves[0].index if lone else None     # the function returns one new tensor
        self._plain = self._plain_run(self.executable)

    def _plain_run(self, executable):
        """(executable, its list -> list call, the result's dtype) when a run is nothing but running it and
        wrapping its one owned result (no checks, write-backs or gradients: W4), else None."""
        if (self._lone_result is None or self.precheck is not None or self.value_guards or self.writebacks
                or self.grad_bindings or self.backward is not None or not getattr(executable, "results_owned", False)):
            return None
        return executable, getattr(executable, "call_list", executable), self.result_dtypes[self._lone_result]

    # ------------------------------------------------------------ running
    def read_inputs(self, call) -> list:
        return [src.tensor(call.leaves)._data for src in self.sources]

    def run(self, call, inputs: list | None = None):
        """The stages of the module docstring, each skipped when this program has nothing for it to do.
        `inputs`: read_inputs(call), when the caller has them already."""
        if inputs is None:
            inputs = self.read_inputs(call)
        plain = self._plain
        try:
            if plain is not None and plain[0] is self.executable:      # (a test may have swapped the executable)
                return Tensor._make(plain[1](inputs)[self._lone_result], plain[2])
            if self.precheck is not None:               # value guards that depend on small inputs only
                self.check_values(self.precheck(inputs), in_guard_order=True)
            results = self.executable(inputs)
        except FinishedInterrupt as stop:           # Ctrl-C after donated write-backs began: finish the call
            self.commit(call, owned(stop.results, inputs, self.donated_results))
            raise
        except Exception as e:
            if hasattr(e, "failed_kernel"):          # a run-time check: name the user's line, as eagerly
                _name_lines(e, self.executable)
            raise
        if self.value_guards and self.precheck is None:
            self.check_values(results)
        if not getattr(self.executable, "results_owned", False):
            results = owned(results, inputs, self.donated_results)
        if self.writebacks or self.grad_bindings:
            self.commit(call, results)
        return self.outputs(call, results, inputs)

    @functools.cached_property
    def donated_results(self) -> frozenset:
        """Result positions a backend stored straight into their write-back target (not copied)."""
        return frozenset(self.donated.values())

    def check_values(self, results, in_guard_order: bool = False) -> None:
        """Raise ValueGuardFailed at the first value guard not holding. Guard k's value is the result at
        its position, or `results[k]` when they come `in_guard_order` (the precheck's)."""
        for k, ((spec, pos), expected) in enumerate(zip(self.value_guards, self.value_path())):
            got = outcome_of(spec.kind, results[k if in_guard_order else pos])
            if got != expected:
                raise ValueGuardFailed(k, got, spec)

    def value_path(self) -> tuple:
        """The outcomes this trace assumed, in order (its position in the trace tree)."""
        if self._path is None:
            self._path = tuple(outcome_of(spec.kind, spec.expected) for spec, _ in self.value_guards)
        return self._path

    def commit(self, call, results) -> None:
        fast = self._commit_donated
        try:
            if fast(call, results):
                return
        except KeyboardInterrupt:       # Ctrl-C mid-commit: finish it the general way (idempotent), then stop
            self._commit(call, results)
            raise
        self._commit(call, results)

    @functools.cached_property
    def _commit_donated(self):
        """`commit` when every write-back was donated (the usual training step), generated
        (`guards.compile_commit`)."""
        return compile_commit(self.writebacks, self.grad_bindings, self.sources, Tensor._make,
                              self.result_dtypes, self.name)

    def _commit(self, call, results) -> None:
        targets = [(self.sources[s].tensor(call.leaves), results[r]) for s, r in self.writebacks]
        for t, arr in targets:
            if arr is not t._data and not t._data.flags.writeable:    # (a donated one is written already)
                raise RuntimeError(f"{self.name}: cannot write back into a read-only tensor of shape "
                                   f"{tuple(t.shape)}")
        try:
            self._write(call, targets, results)
        except KeyboardInterrupt:       # Ctrl-C mid-commit: finish the writes (they are idempotent), then stop
            self._write(call, targets, results)
            raise

    def _write(self, call, targets, results) -> None:
        for t, arr in targets:
            if arr is t._data:                      # a donated write-back is in place already
                pass
            elif type(t._data) is np.ndarray and type(arr) is np.ndarray:
                np.copyto(t._data, arr)
            else:                               # a device result or target: device-to-device copy
                from ..device_array import assign
                assign(t, Tensor._make(arr, t._dtype))
            t._version[0] += 1
        dtypes = self.result_dtypes
        for owner, pos in self.grad_bindings:
            p = owner.tensor(call.leaves)
            if p is not None:
                p._grad = None if pos is None else Tensor._make(results[pos], dtypes[pos])

    @property
    def result_dtypes(self) -> list:
        key = self.graph
        if self._dtypes_of is not key:          # cached per graph (tests may swap the graph in)
            self._dtypes, self._dtypes_of = [v.dtype for v in key.results()], key
        return self._dtypes

    def outputs(self, call, results, inputs):
        dtypes = self.result_dtypes
        lone = self._lone_result
        if lone is not None and self.backward is None:
            t = Tensor._make(results[lone], dtypes[lone])
            return t if not self.out_leaves[0].spent else _spent(t, self.out_leaves[0].spent)
        made: dict = {}
        leaves = []
        for leaf in self.out_leaves:
            if leaf.kind == "input":
                leaves.append(leaf.source.tensor(call.leaves))
            elif leaf.kind == "view":
                leaves.append(None)             # below, once its base has its grad_fn
            elif leaf.kind == "scalar":
                leaves.append(leaf.pytype(results[leaf.index].item()))
            else:
                t = made.get(leaf.index)
                if t is None:
                    t = made[leaf.index] = Tensor._make(results[leaf.index], dtypes[leaf.index])
                    if leaf.spent:
                        _spent(t, leaf.spent)
                leaves.append(t)
        if self.backward is not None and STATE.grad_enabled:
            self._connect_backward(call, made, results, inputs)
        if self._has_views:
            views: dict = {}            # id(leaf) -> its view: a view returned twice is one object
            for k, leaf in enumerate(self.out_leaves):
                if leaf.kind == "view":
                    t = views.get(id(leaf))
                    if t is None:
                        base = leaf.source.tensor(call.leaves) if leaf.source is not None else leaves[leaf.base]
                        t = views[id(leaf)] = leaf.view_of(base)
                    leaves[k] = t
        return pytree.unflatten(self.out_spec, leaves)

    @functools.cached_property
    def _has_views(self) -> bool:
        return any(leaf.kind == "view" for leaf in self.out_leaves)

    def _connect_backward(self, call, made, results, inputs):
        plan = self.backward
        wrt = tuple(self.sources[i].tensor(call.leaves) for i in plan.diff_inputs)
        outs = tuple(made[i] for i in plan.diff_outputs)
        ctx = FunctionCtx()
        ctx._fn_cls = CompiledBackward
        ctx._input_shapes = tuple(tuple(t.shape) for t in wrt)
        ctx.needs_input_grad = tuple(t.requires_grad for t in wrt)
        ctx.plan = plan
        ctx.program_name = self.name
        saved_inputs = tuple(self.sources[i].tensor(call.leaves) for i in plan.input_residuals)
        ctx._saved = tuple(inputs[i] for i in plan.input_residuals) + tuple(results[plan.n_outputs:
                                                                                   len(self.graph.outputs)])
        ctx.saved_versions = tuple((t, t._version[0]) for t in saved_inputs)
        connect(CompiledBackward, ctx, wrt, outs if len(outs) > 1 else outs[0])


class SpentNode(Node):
    """grad_fn of a result whose graph a backward inside the compiled call already used (`loss.backward();
    return loss`): it requires grad, as eagerly, and a second backward through it raises PyTorch's error."""
    __slots__ = ("traced_name",)

    def __init__(self, traced_name: str):
        super().__init__(None, {}, (), ())
        self.traced_name = traced_name
        self.freed = True

    def name(self) -> str:
        return self.traced_name


def _spent(t: Tensor, name: str) -> Tensor:
    if STATE.grad_enabled:
        t.requires_grad = True
        t._grad_fn = SpentNode(name)
    return t


class CompiledBackward(Function):
    """grad_fn of a compiled function's outputs: runs the backward program on the saved residuals."""

    @staticmethod
    def backward(ctx, *grads):
        if STATE.grad_enabled:
            raise RuntimeError(f"{ctx.program_name}: double backward (create_graph=True) through a compiled "
                               "function is not supported; use mode='eager' for higher-order gradients")
        if ctx._freed:
            ctx.saved_tensors       # raises PyTorch's "backward through the graph a second time" error
        for t, version in ctx.saved_versions:
            if t._version[0] != version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an inplace "
                    f"operation: [{t._dtype.name} tensor of shape {list(t.shape)}], which is used by the compiled "
                    f"function {ctx.program_name}, is at version {t._version[0]}; expected version {version} "
                    "instead.")
        plan = ctx.plan
        arrays = list(ctx._saved) + [g._data for g in grads]
        res = iter(plan.executable(arrays))
        owned_results = getattr(plan.executable, "results_owned", False)
        out = []
        wrt_dtypes = [v.dtype for v in plan.graph.outputs]
        k = 0
        for i in range(len(plan.diff_inputs)):
            if i in plan.missing:
                out.append(None)
                continue
            arr = next(res)
            if not owned_results and (not arr.flags.writeable or not arr.flags.owndata):
                arr = np.array(arr) if type(arr) is np.ndarray else arr.copy()
            out.append(Tensor._make(arr, wrt_dtypes[k]))
            k += 1
        return tuple(out)


def build_program(trace: Trace, backend_name, *, name: str) -> Program:
    """Lower a trace through the pass pipeline and compile it with the backend."""
    t0 = time.perf_counter()
    if trace.on_device and backend_name == "auto":
        backend_name = "cuda"
    backend = resolve(backend_name)
    if trace.on_device and backend.name != "cuda":
        raise RuntimeError(f"tt.compile(backend={backend_name!r}): the function works on cuda tensors; use "
                           "backend='cuda' or 'auto'")
    raw = trace.raw
    joint = None
    plan = None
    if trace.diff_outputs and trace.diff_inputs:
        joint, split, missing = lower_with_backward(raw, trace.diff_outputs, trace.diff_inputs)
        graph = split.forward
        bgraph = split.backward
        plan = BackwardPlan(backend.compile(bgraph), bgraph, split.input_residuals, split.n_outputs,
                            tuple(trace.diff_outputs), tuple(trace.diff_inputs), tuple(missing))
    else:
        graph = lower(raw)
    sources = tuple(trace.sources)
    if plan is None:
        graph, sources = _drop_unused_inputs(graph, sources)
    precheck = _precheck(graph, trace.value_guards) if trace.value_guards else None
    if precheck is not None and graph.writebacks and hasattr(backend, "prefetch"):
        backend.prefetch(precheck)            # compiled meanwhile: it is needed if the program donates
    if getattr(backend, "donates_writebacks", False):
        # donated write-backs are stored during the run: only when no value guard can fail after it
        executable = backend.compile(graph, donate=not trace.value_guards or precheck is not None)
    else:
        executable = backend.compile(graph)
    if not getattr(executable, "donated", None):
        precheck = None                     # nothing stored early: checking after the run costs less
    elif precheck is not None:
        precheck = _precheck_executable(precheck, backend)
    n_out = len(graph.outputs)
    pos = {v: k for k, v in enumerate(graph.inputs)}
    writebacks = tuple((pos[dst], n_out + k) for k, (dst, _) in enumerate(graph.writebacks))
    program = Program(name, raw, graph, executable, sources, tuple(trace.guards),
                      tuple(trace.value_guards), trace.out_spec, tuple(trace.out_leaves), tuple(trace.grad_bindings),
                      writebacks, plan, time.perf_counter() - t0, joint,
                      dict(getattr(executable, "donated", None) or {}), precheck)
    logs.program_compiled(program)
    return program


# ---------------------------------------------------------------- helpers
def _name_lines(error: Exception, executable) -> None:
    """Add to the message of a compiled run's failed check (which names its kernel) the user's lines of
    the ops that can fail it, as the error of an eager run points at the user's line."""
    lines = executable.lines_of(error) if hasattr(executable, "lines_of") else []
    if lines and len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}, from {' or '.join(lines)}",)


PRECHECK_MAX_ELEMENTS = 1 << 16      # per value: a pre-check repeats work the program does anyway
PRECHECK_MAX_NODES = 32


def _precheck(graph: Graph, value_guards) -> Graph | None:
    """A graph of the nodes computing every value-guarded result from the inputs, when all of
    them depend only on small inputs through a few small, non-random nodes (an optimizer's
    `momentum != 0` on its 0-d hyperparameters, a loss's range check of the labels): checked before
    the run, such guards fail before anything is computed, so a program that stores write-backs into
    their targets during the run stays safe. Else None."""
    results = graph.results()
    producers = graph.producers()
    inputs = set(graph.inputs)
    needed: set = set()
    stack = [results[pos] for _, pos in value_guards]
    while stack:
        v = stack.pop()
        if not isinstance(v, Value) or v in needed:
            continue
        if math.prod(v.shape) > PRECHECK_MAX_ELEMENTS:
            return None
        needed.add(v)
        if v in inputs:
            continue
        node = producers.get(v)
        if node is None or node.op.kind == RANDOM:
            return None
        stack.extend(node.value_inputs())
    nodes = tuple(n for n in graph.nodes if any(v in needed for v in n.outputs))
    if len(nodes) > PRECHECK_MAX_NODES:
        return None
    guarded = tuple(results[pos] for _, pos in value_guards)
    return graph.replace(nodes=nodes, outputs=guarded, writebacks=(), name=graph.name + "_precheck")


def _precheck_executable(graph: Graph, backend):
    """The pre-check compiled for the CPU when the program is (one native call: ~3 us where numpy's
    kernels took 15-50 us per training step); else, or if that fails, the interpreter."""
    if getattr(backend, "name", None) == "llvm":
        try:
            return backend.compile(graph)
        except backend.compile_error as e:
            logs.log("recompiles", f"{graph.name}: pre-check runs in the interpreter ({e.args[0].splitlines()[0]})")
    return InterpExecutable(graph)


def _drop_unused_inputs(graph: Graph, sources: tuple):
    """Inputs nothing reads (a `.grad` only tested for None, a tensor only passed through) are not read.
    Their guards stay."""
    used = {x for n in graph.nodes for x in n.inputs} | set(graph.results()) | {d for d, _ in graph.writebacks}
    keep = [k for k, v in enumerate(graph.inputs) if v in used]
    if len(keep) == len(graph.inputs):
        return graph, sources
    return graph.replace(inputs=tuple(graph.inputs[k] for k in keep)), tuple(sources[k] for k in keep)


def outcome_of(kind: str, value):
    """A hashable form of a guarded value (bool outcome, exact number, or array content)."""
    if type(value).__name__ == "DeviceArray":
        value = value.get()
    if kind == "outcome":
        return bool(value)
    if kind == "equal":
        v = value.item() if isinstance(value, np.ndarray) else value
        return "nan" if v != v else v          # NaN is a repeatable outcome too (nan != nan)
    arr = np.asarray(value)
    return (arr.shape, arr.dtype.str, arr.tobytes())


def _show(outcome) -> str:
    if isinstance(outcome, tuple) and len(outcome) == 3 and isinstance(outcome[2], bytes):
        return f"different values (shape {outcome[0]})"
    return repr(outcome)


def owned(results: list, inputs: list, keep=frozenset()) -> list:
    """Results the caller may own: copy any array sharing memory with an input or an earlier result,
    or that is read-only (a broadcast view). Positions in `keep` (donated write-backs: their target's
    own array) are left as they are."""
    taken = None
    out = []
    for k, r in enumerate(results):
        if k in keep:
            out.append(r)
            continue
        if type(r) is not np.ndarray:           # device results: fresh, except an input returned as is
            out.append(r.copy() if any(r is a for a in inputs) or any(r is o for o in out) else r)
            continue
        if taken is None and (r.base is not None or not r.flags.writeable
                              or any(r is a for a in inputs) or any(r is o for o in out)):
            taken = {id(storage_root(a)) for a in inputs} | {id(storage_root(o)) for o in out}
        if taken is not None:
            root = storage_root(r)
            if id(root) in taken or not r.flags.writeable:
                r = root = np.array(r)
            taken.add(id(root))
        out.append(r)
    return out




__all__ = ["Program", "ValueGuardFailed", "build_program", "CompiledBackward"]
