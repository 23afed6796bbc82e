"""Dead code elimination: keep only the nodes the outputs and write-backs need.

After functionalization every node is pure, so a node none of whose outputs
is needed can go. Inputs always stay (the program reads its inputs by
position).
"""
from __future__ import annotations

from ..ir import Graph, Value


def dce(g: Graph) -> Graph:
    live = {v for v in g.results() if isinstance(v, Value)}
    kept = []
    for n in reversed(g.nodes):
        if any(o in live for o in n.outputs):
            kept.append(n)
            live.update(x for x in n.inputs if isinstance(x, Value))
    kept.reverse()
    return g if len(kept) == len(g.nodes) else g.replace(nodes=tuple(kept))
