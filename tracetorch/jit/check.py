"""`check=True`: run the compiled program and eager execution on the same state, compare, localize.

For a call that a cached program could serve, we snapshot the program's
inputs, run the program on the snapshot (committing nothing), then run the
function eagerly under a recording tracer (which commits the real state
changes, so the call's effects are exactly eager's). Outputs, write-backs
and new `.grad`s must agree to a dtype-dependent tolerance. If they do not,
the report names the first divergent node: the reference interpreter reruns
the optimized IR on the snapshot, and each node's value is compared with the
eager value of the same traced node. If every node agrees, the backend is
the culprit and the report says which result differs.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from . import pytree
from .capture import capture
from .interp import InterpExecutable
from .ir import Namer, format_node, type_str
from .program import ValueGuardFailed
from .scalars import _Traced

_TOLERANCE = {"float64": (1e-9, 1e-12), "float32": (1e-4, 1e-6), "float16": (1e-2, 1e-3),
              "bfloat16": (2e-2, 1e-2)}


class CheckError(AssertionError):
    """check=True found compiled and eager results that differ."""


def close(a, b, dtype_name: str) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if dtype_name in _TOLERANCE:
        rtol, atol = _TOLERANCE[dtype_name]
        return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(a, b))


def run_checked(compiled, program, call, target):
    from .compile import _NOT_CHECKED
    snapshot = [np.array(a, copy=True) for a in program.read_inputs(call)]
    results = program.executable([a.copy() for a in snapshot])
    try:
        program.check_values(results)
    except ValueGuardFailed:
        return _NOT_CHECKED
    trace = capture(target, call, name=compiled.ir_name, record_values=True, reach_fn=compiled._reach_fn,
                    self_obj=compiled._self_ref() if compiled._self_ref is not None else None)
    problems = _compare(program, call, results, trace.result)
    if problems:
        raise CheckError(_report(compiled, program, snapshot, results, trace, problems))
    with compiled._lock:
        compiled._stats["checked_calls"] += 1
    return trace.result


def _compare(program, call, results, eager_result) -> list:
    problems = []
    dtypes = [v.dtype.name for v in program.graph.results()]
    eager_leaves, _ = pytree.flatten(eager_result, (Tensor, _Traced))
    for k, (leaf, got) in enumerate(zip(program.out_leaves, eager_leaves)):
        if leaf.kind in ("input", "view"):
            continue
        want = got._data if isinstance(got, Tensor) else got
        if not close(results[leaf.index], want, dtypes[leaf.index]):
            problems.append((f"output {k}", leaf.index, want))
    for s, r in program.writebacks:
        t = program.sources[s].tensor(call.leaves)
        if not close(results[r], t._data, dtypes[r]):
            problems.append((f"write-back into {program.sources[s].describe()}", r, t._data))
    for owner, pos in program.grad_bindings:
        p = owner.tensor(call.leaves)
        if p is None:
            continue
        if pos is None:
            if p._grad is not None:
                problems.append(("a .grad the program sets to None", None, p._grad._data))
        elif p._grad is None or not close(results[pos], p._grad._data, dtypes[pos]):
            problems.append(("a .grad the program sets", pos, None if p._grad is None else p._grad._data))
    return problems


def _report(compiled, program, snapshot, results, trace, problems) -> str:
    lines = [f"tt.compile(check=True): {compiled.name}: compiled and eager results differ:"]
    for what, pos, want in problems:
        got = "?" if pos is None else _brief(results[pos])
        lines.append(f"  {what}: compiled {got}, eager {_brief(want)}")
    lines.append(_localize(program, snapshot, results, trace))
    return "\n".join(lines)


def _localize(program, snapshot, results, trace) -> str:
    eager = _eager_values(program, trace)
    if eager is None:
        return ("  the eager run took a different path than the cached trace (a missing guard): the traced "
                "ops differ")
    first = []
    values = {}

    def hook(node, data):
        values[node.out] = data
        want = eager.get(node.out)
        if not first and want is not None and not close(data, want, node.out.dtype.name):
            first.append((node, data, want))

    reference = InterpExecutable(program.graph).run([a.copy() for a in snapshot], on_node=hook)
    if first:
        node, got, want = first[0]
        namer = Namer()
        text = program.graph.text().replace(format_node(node, Namer()), format_node(node, Namer()) + "   # <-- here")
        return (f"  first divergent node: `{format_node(node, namer)}` ({type_str(node.out)}) at {node.where or '?'}:"
                f" the optimized IR gives {_brief(got)}, eager gives {_brief(want)}\n\n{text}")
    for k, (a, b) in enumerate(zip(results, reference)):
        dt = program.graph.results()[k].dtype.name
        if not close(a, b, dt):
            diagnose = getattr(program.executable, "diagnose", None)
            detail = ("\n" + diagnose([a.copy() for a in snapshot], values)) if diagnose is not None else ""
            return (f"  every IR node matches eager, but backend result {k} differs from the reference "
                    f"interpreter's: the backend ({type(program.executable).__name__}) is wrong{detail}")
    return "  every IR node and backend result matches the reference interpreter; the difference is in commit"


def _eager_values(program, trace):
    """Value of program.raw -> the eager value of the same traced node (None if the paths differ)."""
    theirs = trace.raw.nodes[len(trace.raw.nodes) - len(trace.node_values):]
    ours = program.raw.nodes[len(program.raw.nodes) - len(theirs):]
    if len(ours) != len(theirs) or any(a.op is not b.op for a, b in zip(ours, theirs)):
        return None
    return {n.out: v for n, v in zip(ours, trace.node_values) if v is not None and n.outputs}


def _brief(a) -> str:
    arr = np.asarray(a)
    if arr.size <= 6:
        return np.array2string(arr, precision=6, separator=", ")
    return f"array{list(arr.shape)} (first {np.array2string(arr.reshape(-1)[:4], precision=6, separator=', ')})"
