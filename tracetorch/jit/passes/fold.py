"""Constant folding: a node whose inputs are all known at compile time becomes a constant.

Known values start at the creation ops (`full`, `arange`, `constant`); a node
computed only from them (and Python scalars) is evaluated now with the same
kernel the interpreter would run and replaced by a `constant` node that keeps
its output value. Random ops are never folded, and neither is anything whose
result is larger than `MAX_ELEMENTS` (a constant that large costs more memory
than the op costs time).
"""
from __future__ import annotations

from ...ops import REGISTRY
from ...ops.registry import CREATION, RANDOM, OpDef
from ..interp import run_kernel
from ..ir import Graph, Node, Value

CONSTANT = REGISTRY["constant"]
MAX_ELEMENTS = 4096


def known_constants(g: Graph) -> dict:
    """Value -> array for the outputs of small creation ops."""
    known = {}
    for n in g.nodes:
        if isinstance(n.op, OpDef) and n.op.kind == CREATION and n.out.numel <= MAX_ELEMENTS:
            known[n.out] = run_kernel(n.op, [], n.attrs, n.out.dtype)
    return known


def fold(g: Graph) -> Graph:
    known: dict = {}
    nodes = []
    changed = False
    for n in g.nodes:
        op = n.op
        if not isinstance(op, OpDef) or op.kind == RANDOM or n.out.numel > MAX_ELEMENTS or len(n.outputs) != 1:
            nodes.append(n)
            continue
        if op.kind == CREATION:
            known[n.out] = run_kernel(op, [], n.attrs, n.out.dtype)
            nodes.append(n)
            continue
        if all(x in known for x in n.inputs if isinstance(x, Value)):
            args = [known[x] if isinstance(x, Value) else x for x in n.inputs]
            value = run_kernel(op, args, n.attrs, n.out.dtype)
            known[n.out] = value
            nodes.append(Node(CONSTANT, (), n.outputs, {"value": value.copy(), "dtype": n.out.dtype}, n.where))
            changed = True
            continue
        nodes.append(n)
    return g.replace(nodes=tuple(nodes)) if changed else g
