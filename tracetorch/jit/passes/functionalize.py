"""Functionalize: in-place writes become SSA values plus write-backs.

The traced graph has storage semantics: `dst.copy_(src)` changes `dst` and
every value that aliases its storage (outputs of nodes marked `aliases`:
views and `detach`). One walk over the nodes keeps, per storage root, its
current SSA value:

- a write to `dst` (root r, view path P = the movement ops from r to dst)
  gives r a new value: `src` itself when P is empty, else r with the region
  replaced, by `slice_scatter` for a single slice, otherwise by `index_put`
  at the flat positions P selects (computed now by running the movement
  ops' own kernels on an index table, as eager autograd does);
- reading an alias whose root was written after the alias was made replays
  P on the root's current value (a fresh view of the new storage);
- at the end, every graph input whose root has a new value gets a
  write-back `(input, new value)`, applied by the program after the run.

Writes through views of *different* captured tensors that shared storage
before the call are not related here: each captured tensor is its own root.
"""
from __future__ import annotations

import numpy as np

from ... import dtypes as D
from ...ops import REGISTRY
from ...ops.registry import Aval
from ..ir import COPY_, DETACH, Graph, Node, Value

SLICE, SLICE_SCATTER, INDEX_PUT, RESHAPE, CONSTANT = (REGISTRY[n] for n in
                                                      ("slice", "slice_scatter", "index_put", "reshape", "constant"))


def functionalize(g: Graph) -> Graph:
    return _Functionalizer().run(g)


class _Functionalizer:
    def __init__(self):
        self.nodes: list[Node] = []
        self.current: dict = {}     # root -> its current SSA value
        self.version: dict = {}     # root -> writes so far
        self.alias: dict = {}       # alias value -> (root, path of (op, attrs, diff))
        self.fresh: dict = {}       # alias value -> (root version, SSA value of its latest derivation)
        self.diff_written: set = set()

    def run(self, g: Graph) -> Graph:
        for n in g.nodes:
            if n.op is COPY_:
                self.write(n)
            elif n.aliases:
                self.view(n)
            else:
                self.nodes.append(n.replace(inputs=tuple(self.read(x) for x in n.inputs)))
        writebacks = [(dst, self.read(new)) for dst, new in g.writebacks]
        done = {dst for dst, _ in writebacks}
        for v in g.inputs:
            new = self.current.get(v, v)
            if new is not v and v not in done:
                writebacks.append((v, new))
        outputs = tuple(self.read(v) for v in g.outputs)       # may replay views: emits nodes
        return g.replace(nodes=tuple(self.nodes), outputs=outputs, writebacks=tuple(writebacks))

    # ------------------------------------------------------------ reads
    def root_of(self, v: Value):
        return self.alias.get(v, (v, ()))

    def read(self, v):
        if not isinstance(v, Value):
            return v
        if v in self.alias:
            root, path = self.alias[v]
            ver = self.version.get(root, 0)
            ver_made, value = self.fresh[v]
            if ver_made != ver:
                value = self.replay(self.read(root), path, v, root in self.diff_written)
                self.fresh[v] = (ver, value)
            return value
        return self.current.get(v, v)

    def view(self, n: Node):
        src = n.inputs[0]
        root, path = self.root_of(src)
        node = n.replace(inputs=tuple(self.read(x) for x in n.inputs))
        self.nodes.append(node)
        v = n.out
        self.alias[v] = (root, path + ((n.op, n.attrs, n.diff),))
        self.fresh[v] = (self.version.get(root, 0), v)

    def replay(self, base: Value, path, like: Value, diff_written: bool) -> Value:
        """`base` seen through the movement ops of `path` (new nodes)."""
        cur = base
        where = ""
        for k, (op, attrs, diff) in enumerate(path):
            if k == len(path) - 1:
                shape, dtype = like.shape, like.dtype
            elif op is DETACH:
                shape, dtype = cur.shape, cur.dtype
            else:
                shape, dtype = op.infer(Aval(cur.shape, cur.dtype), **attrs)
            out = Value(tuple(shape), dtype)
            d = diff if op is DETACH else ((True,) if diff_written else diff)
            self.nodes.append(Node(op, (cur,), (out,), attrs, where, d, True))
            cur = out
        return cur

    # ------------------------------------------------------------ writes
    def write(self, n: Node):
        dst, src = n.inputs
        root, path = self.root_of(dst)
        value = self.read(src)
        moves = tuple((op, attrs) for op, attrs, _ in path if op is not DETACH)
        if not moves:
            new = value
        else:
            new = self.scatter(self.read(root), moves, value, n)
        self.current[root] = new
        self.version[root] = self.version.get(root, 0) + 1
        if n.diff is not None:
            self.diff_written.add(root)

    def scatter(self, base: Value, moves, value, n: Node) -> Value:
        """base with the region `moves` selects replaced by `value`."""
        d2 = None if n.diff is None else (True, True)
        if len(moves) == 1 and moves[0][0] is SLICE:
            out = Value(base.shape, base.dtype)
            self.nodes.append(Node(SLICE_SCATTER, (base, value), (out,), dict(moves[0][1]), n.where, d2))
            return out
        numel = base.numel
        positions = np.arange(numel, dtype=np.int64).reshape(base.shape)
        for op, attrs in moves:
            positions = op.eager(positions, **attrs)
        positions = np.ascontiguousarray(positions).reshape(-1)
        d1 = None if n.diff is None else (True,)
        pos = self.emit(CONSTANT, (), (positions.shape, D.int64), {"value": positions, "dtype": D.int64}, n.where)
        flat = self.emit(RESHAPE, (base,), ((numel,), base.dtype), {"shape": (numel,)}, n.where, d1)
        src = value
        if isinstance(value, Value):
            src = self.emit(RESHAPE, (value,), ((value.numel,), value.dtype), {"shape": (value.numel,)}, n.where, d1)
        put = self.emit(INDEX_PUT, (flat, src, pos), ((numel,), base.dtype), {"dims": (0,), "accumulate": False},
                        n.where, None if n.diff is None else (True, True, False))
        return self.emit(RESHAPE, (put,), (base.shape, base.dtype), {"shape": base.shape}, n.where, d1)

    def emit(self, op, inputs, aval, attrs, where, diff=None) -> Value:
        out = Value(tuple(aval[0]), aval[1])
        self.nodes.append(Node(op, inputs, (out,), attrs, where, diff))
        return out
