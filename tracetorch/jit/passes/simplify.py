"""Algebraic simplification: rules as data.

`RULES[op name]` lists functions `rule(node, ctx) -> Value | None`; a rule
that returns a value says "this node's output is that value" and the node
goes (DCE removes what it no longer needs). Rules only fire when the result
has exactly the node's shape and dtype, and only for identities that hold
exactly (x * 1, x / 1, x + 0 (up to the sign of a zero), cast to the same
dtype, a reshape to the same shape, clone in a functional program, ...;
never x * 0, which is not 0 for inf or nan).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Value
from .fold import known_constants


class _Ctx:
    def __init__(self, g: Graph):
        self.known = known_constants(g)
        self.producer: dict = {}

    def scalar(self, x):
        """x's value if it is a Python number or a constant tensor with one repeated value."""
        if isinstance(x, (bool, int, float)):
            return x
        arr = self.known.get(x)
        if arr is not None and arr.size and np.all(arr == arr.flat[0]):
            return arr.flat[0].item()
        return None


def _same(x, n) -> bool:
    return isinstance(x, Value) and x.shape == n.out.shape and x.dtype is n.out.dtype


def _identity_operand(unit, positions=(0, 1)):
    """op(x, unit) -> x (and op(unit, x) -> x when position 1 is allowed)."""
    def rule(n, ctx):
        a, b = n.inputs[0], n.inputs[1]
        if 0 in positions and _same(a, n) and _is(ctx.scalar(b), unit):
            return a
        if 1 in positions and _same(b, n) and _is(ctx.scalar(a), unit):
            return b
        return None
    return rule


def _is(value, unit) -> bool:
    return value is not None and not isinstance(value, bool) and value == unit


def _same_input(n, ctx):
    return n.inputs[0] if _same(n.inputs[0], n) else None


def _identity_permute(n, ctx):
    return n.inputs[0] if tuple(n.attrs["dims"]) == tuple(range(len(n.attrs["dims"]))) else None


def _double_negation(n, ctx):
    p = ctx.producer.get(n.inputs[0])
    if p is not None and p.op.name == "neg" and _same(p.inputs[0], n):
        return p.inputs[0]
    return None


def _where_same_branches(n, ctx):
    c, a, b = n.inputs
    if a is b and _same(a, n):
        return a
    cond = ctx.known.get(c) if isinstance(c, Value) else None
    if cond is not None and cond.size:
        if np.all(cond) and _same(a, n):
            return a
        if not np.any(cond) and _same(b, n):
            return b
    return None


def _scatter_of_own_slice(n, ctx):
    """slice_scatter(b, slice(b, region), region) -> b: writing back what was just read."""
    base, src = n.inputs
    p = ctx.producer.get(src)
    if p is not None and p.op.name == "slice" and p.inputs[0] is base and p.attrs == n.attrs:
        return base
    return None


def _empty_reduction(n, ctx):
    return n.inputs[0] if not n.attrs["dims"] and _same(n.inputs[0], n) else None


RULES = {
    "add": [_identity_operand(0)],
    "sub": [_identity_operand(0, positions=(0,))],
    "mul": [_identity_operand(1)],
    "div": [_identity_operand(1, positions=(0,))],
    "pow": [_identity_operand(1, positions=(0,))],
    "neg": [_double_negation],
    "cast": [_same_input],
    "clone": [_same_input],
    "reshape": [_same_input],
    "expand": [_same_input],
    "slice": [_same_input],
    "slice_scatter": [_scatter_of_own_slice],
    "permute": [_identity_permute],
    "where": [_where_same_branches],
    "sum": [_empty_reduction],
}


def simplify(g: Graph) -> Graph:
    ctx = _Ctx(g)
    rename: dict = {}
    nodes = []
    for n in g.nodes:
        if any(isinstance(x, Value) and x in rename for x in n.inputs):
            n = n.replace(inputs=tuple(rename.get(x, x) if isinstance(x, Value) else x for x in n.inputs))
        replacement = None
        for rule in RULES.get(n.op.name, ()):
            replacement = rule(n, ctx)
            if replacement is not None:
                break
        if replacement is not None:
            rename[n.out] = rename.get(replacement, replacement)
            continue
        nodes.append(n)
        for v in n.outputs:
            ctx.producer[v] = n
    if not rename:
        return g
    return g.replace(nodes=tuple(nodes), outputs=tuple(rename.get(v, v) for v in g.outputs),
                     writebacks=tuple((d, rename.get(v, v)) for d, v in g.writebacks))
