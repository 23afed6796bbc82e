"""Common subexpression elimination: one node per distinct (op, inputs, attrs).

Every node is pure after functionalization, random ones included (a draw is
a function of the generator's seed and offset values), so two nodes with
equal keys compute the same value and the second is dropped.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Value


def cse(g: Graph) -> Graph:
    seen: dict = {}
    rename: dict = {}
    nodes = []
    for n in g.nodes:
        inputs = tuple(rename.get(x, x) if isinstance(x, Value) else x for x in n.inputs)
        if inputs != n.inputs:
            n = n.replace(inputs=inputs)
        key = _key(n)
        first = seen.get(key) if key is not None else None
        if first is not None:
            rename.update(zip(n.outputs, first.outputs))
            continue
        if key is not None:
            seen[key] = n
        nodes.append(n)
    if not rename:
        return g.replace(nodes=tuple(nodes))
    return g.replace(nodes=tuple(nodes), outputs=tuple(rename.get(v, v) for v in g.outputs),
                     writebacks=tuple((d, rename.get(v, v)) for d, v in g.writebacks))


def _key(n):
    try:
        return (n.op, tuple(_freeze(x) for x in n.inputs), _freeze(n.attrs))
    except TypeError:
        return None


def _freeze(x):
    if isinstance(x, Value):
        return x
    if isinstance(x, float):
        return ("float", repr(x))           # keeps 0.0 and -0.0 (and nan) apart
    if isinstance(x, np.ndarray):
        return ("array", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, (tuple, list)):
        return (type(x).__name__,) + tuple(_freeze(e) for e in x)
    hash(x)
    return (type(x).__name__, x)
