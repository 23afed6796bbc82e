"""Algebraic simplification: rules as data.

`RULES[op name]` lists functions `rule(node, ctx) -> Value | None`; a rule
that returns a value says "this node's output is that value" and the node
goes (DCE removes what it no longer needs). Rules only fire when the result
has exactly the node's shape and dtype, and only for identities that hold
exactly (x * 1, x / 1, x + 0 (up to the sign of a zero), cast to the same
dtype, a reshape to the same shape, clone in a functional program, ...;
never x * 0, which is not 0 for inf or nan). A rule may also return a new
`Node` computing the node's own output another way; the rules then run on
that node in turn.

Gradients of slices (q, k, v split off one projection) come out of autodiff
as a sum of slice_scatters into zeros: with disjoint regions the sum is one
chain of slice_scatters (`_sum_of_disjoint_scatters`), and a chain whose
regions tile the whole tensor along one dim is a `cat` of the pieces
(`_tiling_scatters`): one copy instead of a zero-filled copy per piece and
an add of all of them.
"""
from __future__ import annotations

import numpy as np

from ...ops import REGISTRY
from ..ir import Graph, Node, Value
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


def _permute_of_permute(n, ctx):
    """permute(permute(x, d1), d2) -> permute(x, d1[d2]) (the identity rule may then drop it): a
    Linear's weight gradient comes out of autodiff as the transpose of the transpose of (g^T x)."""
    p = ctx.producer.get(n.inputs[0])
    if p is None or p.op.name != "permute":
        return None
    inner = tuple(p.attrs["dims"])
    return Node(n.op, (p.inputs[0],), n.outputs, {"dims": tuple(inner[d] for d in n.attrs["dims"])}, n.where)


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


def _zeros_chain(x, ctx):
    """The (region, src) pairs of a chain of slice_scatters onto a zero-filled `full`, base first; None if
    x is not one or its regions overlap. A bare zero `full` is the empty chain."""
    p = ctx.producer.get(x)
    if p is None:
        return None
    if p.op.name == "full":
        return [] if _is(ctx.scalar(p.attrs.get("value")), 0) or p.attrs.get("value") is False else None
    if p.op.name != "slice_scatter" or (isinstance(p.inputs[1], Value) and p.inputs[1].dtype is not x.dtype):
        return None
    below = _zeros_chain(p.inputs[0], ctx)
    if below is None:
        return None
    region = _region(p.attrs)
    if any(_overlap(region, r) for r, _ in below):
        return None
    return below + [(region, p.inputs[1])]


def _region(attrs):
    return tuple(zip(attrs["starts"], attrs["stops"], attrs["steps"]))


def _overlap(a, b) -> bool:
    """Whether two strided regions (per dim start, stop, step) share an element: only when every dim's
    index sets meet (tested exactly, by enumeration of the shorter one)."""
    for (s1, e1, k1), (s2, e2, k2) in zip(a, b):
        r1, r2 = range(s1, e1, k1), range(s2, e2, k2)
        short, other = (r1, r2) if len(r1) <= len(r2) else (r2, r1)
        if not any(i in other for i in short):
            return False
    return True


def _sum_of_disjoint_scatters(n, ctx):
    """add(chain over zeros, slice_scatter(zeros, b, R)) with R disjoint from the chain's regions ->
    slice_scatter(chain, b, R): each element is one addend plus zeros (exact up to the sign of a zero)."""
    a, b = n.inputs
    if not (_same(a, n) and _same(b, n)):
        return None
    chains = _zeros_chain(a, ctx), _zeros_chain(b, ctx)
    for chain, (below, above) in ((a, chains), (b, chains[::-1])):
        if below is None or above is None or len(above) != 1:
            continue
        (region, src), = above
        if isinstance(src, Value) and not any(_overlap(region, r) for r, _ in below):
            piece = ctx.producer[a if chain is b else b]
            return Node(piece.op, (chain, src), n.outputs, dict(piece.attrs), n.where)
    return None


def _tiling_scatters(n, ctx):
    """A chain of slice_scatters onto zeros whose regions, each a whole tensor but along one dim, tile
    that dim -> cat of the pieces along it."""
    chain = _zeros_chain(n.out, ctx)
    if not chain or len(chain) < 2:
        return None
    shape = n.out.shape
    dims = {d for region, _ in chain for d, (s, e, k) in enumerate(region) if (s, e, k) != (0, shape[d], 1)}
    if len(dims) != 1:
        return None
    (dim,) = dims
    pieces = sorted(chain, key=lambda c: c[0][dim][0])
    at = 0
    for region, src in pieces:
        s, e, k = region[dim]
        want = tuple(e - s if d == dim else shape[d] for d in range(len(shape)))
        if k != 1 or s != at or not isinstance(src, Value) or tuple(src.shape) != want:
            return None
        at = e
    if at != shape[dim]:
        return None
    return Node(REGISTRY["cat"], tuple(src for _, src in pieces), n.outputs, {"dim": dim}, n.where)


def _empty_reduction(n, ctx):
    return n.inputs[0] if not n.attrs["dims"] and _same(n.inputs[0], n) else None


RULES = {
    "add": [_identity_operand(0), _sum_of_disjoint_scatters],
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
    "slice_scatter": [_scatter_of_own_slice, _tiling_scatters],
    "permute": [_identity_permute, _permute_of_permute],
    "where": [_where_same_branches],
    "sum": [_empty_reduction],
}


def simplify(g: Graph) -> Graph:
    ctx = _Ctx(g)
    rename: dict = {}
    changed = False
    nodes = []
    for n in g.nodes:
        if any(isinstance(x, Value) and x in rename for x in n.inputs):
            n = n.replace(inputs=tuple(rename.get(x, x) if isinstance(x, Value) else x for x in n.inputs))
        replacement = None
        while True:                         # rules see n as the producer of its outputs
            for v in n.outputs:
                ctx.producer[v] = n
            for rule in RULES.get(n.op.name, ()):
                replacement = rule(n, ctx)
                if replacement is not None:
                    break
            if not isinstance(replacement, Node):
                break
            n, replacement, changed = replacement, None, True
        if replacement is not None:
            rename[n.out] = rename.get(replacement, replacement)
            del ctx.producer[n.out]
            continue
        nodes.append(n)
    if not rename and not changed:
        return g
    return g.replace(nodes=tuple(nodes), outputs=tuple(rename.get(v, v) for v in g.outputs),
                     writebacks=tuple((d, rename.get(v, v)) for d, v in g.writebacks))
