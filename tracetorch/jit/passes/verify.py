"""The IR verifier: structural and type checks, run after every pass in tests.

Checks that every value is defined once and before use, that every
registry op's output has the shape and dtype its `infer` gives for the
inputs, that write-backs pair an input with a value of its shape and dtype,
and (for graphs that reached the backend, `pure=True`) that no IR-only op
is left.
"""
from __future__ import annotations

from ...ops.registry import Aval, OpDef
from ..ir import IROp, Graph, Value, format_node


class IRError(AssertionError):
    pass


def verify(g: Graph, *, pure: bool = False, after: str = "") -> Graph:
    ctx = f" after {after}" if after else ""
    defined = set()
    for v in g.inputs:
        if v in defined:
            raise IRError(f"{g.name}{ctx}: input {v} listed twice")
        defined.add(v)
    for n in g.nodes:
        line = format_node(n)
        for x in n.inputs:
            if isinstance(x, Value) and x not in defined:
                raise IRError(f"{g.name}{ctx}: `{line}` uses {x} before it is defined")
        for v in n.outputs:
            if v in defined:
                raise IRError(f"{g.name}{ctx}: `{line}` redefines {v}")
            defined.add(v)
        if isinstance(n.op, IROp):
            if pure:
                raise IRError(f"{g.name}{ctx}: IR-only op left in a backend graph: `{line}`")
            continue
        if not isinstance(n.op, OpDef):
            raise IRError(f"{g.name}{ctx}: `{line}`: {n.op!r} is not a registry op")
        avals = [Aval(x.shape, x.dtype) if isinstance(x, Value) else x for x in n.inputs]
        try:
            want = n.op.infer(*avals, **n.attrs)
        except Exception as e:
            raise IRError(f"{g.name}{ctx}: `{line}`: inference fails: {e}") from e
        if tuple(want.shape) != n.out.shape or want.dtype is not n.out.dtype:
            raise IRError(f"{g.name}{ctx}: `{line}`: infer gives {tuple(want.shape)} {want.dtype.name}, the value "
                          f"says {n.out.shape} {n.out.dtype.name}")
        if n.diff is not None and len(n.diff) != len(n.inputs):
            raise IRError(f"{g.name}{ctx}: `{line}`: diff flags do not match the inputs")
    for v in g.outputs:
        if isinstance(v, Value) and v not in defined:
            raise IRError(f"{g.name}{ctx}: output {v} is not defined")
    inputs = set(g.inputs)
    for dst, new in g.writebacks:
        if dst not in inputs:
            raise IRError(f"{g.name}{ctx}: write-back target {dst} is not an input")
        if new not in defined:
            raise IRError(f"{g.name}{ctx}: write-back value {new} is not defined")
        if dst.shape != new.shape or dst.dtype is not new.dtype:
            raise IRError(f"{g.name}{ctx}: write-back {new} -> {dst} changes shape or dtype")
    return g
