"""Backend "interp": runs the IR node by node with the registry's eager kernels.

It is the reference every pass and every other backend is tested against:
the same numpy kernels eager mode runs, in the graph's order, so a program
run here matches eager execution bit for bit. Intermediate arrays are
dropped after their last use.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import bfloat16, round_bfloat16
from ..ops.dispatch import computes_in_float32, in_float32
from .ir import Graph, Value, format_node


def run_kernel(op, args, attrs, dtype) -> np.ndarray:
    """One op on numpy arrays, exactly as `apply` runs it eagerly (bfloat16 rounding, float16 computed
    in float32, included)."""
    if computes_in_float32(op, attrs, dtype):
        return in_float32(op, args, attrs)
    data = op.eager(*args, **attrs)
    if type(data) is not np.ndarray:
        data = np.asarray(data)
    if dtype is bfloat16 and data.dtype == np.float32:
        data = round_bfloat16(data)
    return data


class InterpExecutable:
    """callable(list of input arrays) -> list of arrays for `graph.results()`."""

    def __init__(self, graph: Graph):
        self.graph = graph
        slot = {v: i for i, v in enumerate(graph.inputs)}
        for n in graph.nodes:
            for v in n.outputs:
                slot[v] = len(slot)
        self.n_slots = len(slot)
        self.n_inputs = len(graph.inputs)
        last_use: dict = {}
        for k, n in enumerate(graph.nodes):
            for x in n.inputs:
                if isinstance(x, Value):
                    last_use[slot[x]] = k
        keep = {slot[v] for v in graph.results() if isinstance(v, Value)} | set(range(self.n_inputs))
        self.steps = []
        for k, n in enumerate(graph.nodes):
            args = tuple((True, slot[x]) if isinstance(x, Value) else (False, x) for x in n.inputs)
            free = tuple(s for s in {slot[x] for x in n.inputs if isinstance(x, Value)}
                         if last_use.get(s) == k and s not in keep)
            self.steps.append((n, n.op, args, n.attrs, slot[n.out], n.out.dtype, free))
        self.result_slots = [slot[v] for v in graph.results()]
        self.kernels = len(self.steps)

    def __call__(self, inputs: list) -> list:
        return self.run(inputs)

    def run(self, inputs: list, on_node=None) -> list:
        env = [None] * self.n_slots
        env[:self.n_inputs] = inputs
        for node, op, args, attrs, out, dtype, free in self.steps:
            try:
                data = run_kernel(op, [env[a] if is_slot else a for is_slot, a in args], attrs, dtype)
            except Exception as e:          # the eager error, with the IR node and the user's line
                raise _with_context(e, f"{format_node(node)}  (traced at {node.where or '?'})") from e
            env[out] = data
            if on_node is not None:
                on_node(node, data)
            for s in free:
                env[s] = None
        return [env[s] for s in self.result_slots]

    def explain(self) -> str:
        return f"interp: {self.kernels} kernels (one numpy call per node, no fusion)"


def _with_context(e: Exception, where: str) -> Exception:
    # the class eager mode raises (dispatch._op_error): a builtin one, as numpy's subclasses (its
    # MemoryError) can't be built from a message
    kind = next((k for k in (IndexError, ValueError, TypeError, MemoryError) if isinstance(e, k)), RuntimeError)
    return kind(f"{e}\n  in compiled node: {where}")


class InterpBackend:
    name = "interp"

    def compile(self, graph: Graph) -> InterpExecutable:
        return InterpExecutable(graph)


BACKEND = InterpBackend()
