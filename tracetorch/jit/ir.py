"""The IR: an SSA graph of typed values produced by op applications.

A `Graph` is what the tracer records and what every pass maps to a new
graph: `inputs` (program parameters), `nodes` in execution order, `outputs`,
and `writebacks` (input value -> its new value, applied by the program only
after the whole run succeeded). Every node names a registry op (`OpDef`) or
one of the few IR-only ops below, which exist only between tracing and the
passes that remove them:

    copy_      an in-place write `dst.copy_(src)`: storage semantics; the
               functionalize pass turns it into SSA values and write-backs
    detach     an alias that stops gradients (autodiff reads it; removed after)
    backward   `loss.backward()` inside the region: one node whose outputs are
               the gradients; the autodiff pass expands it with VJP rules
    custom_fn  the outputs of a user `autograd.Function`: an identity whose
               VJP is the user's backward (removed after autodiff)

Values, nodes and graphs are frozen dataclasses compared by identity; a pass
builds new ones. `Graph.text()` prints Python with shapes and the user's
source line per node (in the spirit of JAX's jaxprs and Thunder's traces):
with each op name bound to `apply(REGISTRY[name], ...)`, the text runs as is
(constants of more than 8 elements are elided). `Graph.to_dot()` draws it.
"""
from __future__ import annotations

import itertools
import keyword
import re
from dataclasses import dataclass, field

import numpy as np

from ..dtypes import DType

_ids = itertools.count()


@dataclass(frozen=True, eq=False)
class Value:
    """One SSA value: a tensor of known shape and dtype (`name` is a printing hint)."""
    shape: tuple
    dtype: DType
    name: str = ""
    id: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        return f"%{self.id}:{type_str(self)}"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True, eq=False)
class IROp:
    """An op that exists only in the IR (see the module docstring); never reaches a backend."""
    name: str
    doc: str = ""
    kind: str = "ir"
    view: bool = False
    vjp = None

    def __repr__(self) -> str:
        return f"<ir op {self.name}>"


COPY_ = IROp("copy_", "dst.copy_(src): write src into dst's storage (and every alias of it)")
DETACH = IROp("detach", "an alias of the input that gradients do not flow through")
BACKWARD = IROp("backward", "gradients of roots (seeded) w.r.t. `wrt` values: expanded by autodiff")
CUSTOM_FN = IROp("custom_fn", "identity on a user autograd.Function's outputs; its VJP is the user's backward")
IR_OPS = (COPY_, DETACH, BACKWARD, CUSTOM_FN)


@dataclass(frozen=True, eq=False)
class Node:
    """`outputs = op(*inputs, **attrs)`.

    inputs: Values or Python scalars (constant operands).
    where: the user's source line that ran the op ("file.py:12 in fn").
    diff: per input, whether eager autograd differentiated through it (None:
        the op was not recorded for autograd: grad mode off, or no input
        required grad). The autodiff pass follows exactly these edges.
    aliases: the output shares input 0's storage (a view or detach): writes
        through one are seen by the other (the functionalize pass needs this).
    """
    op: object
    inputs: tuple
    outputs: tuple
    attrs: dict = field(default_factory=dict)
    where: str = ""
    diff: tuple | None = None
    aliases: bool = False

    @property
    def out(self) -> Value:
        return self.outputs[0]

    @property
    def name(self) -> str:
        return self.op.name

    def value_inputs(self):
        return [x for x in self.inputs if isinstance(x, Value)]

    def replace(self, **changes) -> "Node":
        fields = dict(op=self.op, inputs=self.inputs, outputs=self.outputs, attrs=self.attrs, where=self.where,
                      diff=self.diff, aliases=self.aliases)
        fields.update(changes)
        return Node(**fields)


@dataclass(frozen=True, eq=False)
class Graph:
    inputs: tuple
    nodes: tuple
    outputs: tuple
    writebacks: tuple = ()          # ((input Value, new Value), ...)
    name: str = "graph"

    def results(self) -> tuple:
        """What a backend's executable returns: the outputs, then every write-back's new value."""
        return tuple(self.outputs) + tuple(new for _, new in self.writebacks)

    def replace(self, **changes) -> "Graph":
        fields = dict(inputs=self.inputs, nodes=self.nodes, outputs=self.outputs, writebacks=self.writebacks,
                      name=self.name)
        fields.update(changes)
        return Graph(**fields)

    def producers(self) -> dict:
        return {v: n for n in self.nodes for v in n.outputs}

    def uses(self) -> dict:
        """Value -> number of uses by nodes, outputs and write-backs."""
        count: dict = {}
        for n in self.nodes:
            for x in n.inputs:
                if isinstance(x, Value):
                    count[x] = count.get(x, 0) + 1
        for v in self.results():
            count[v] = count.get(v, 0) + 1
        return count

    def op_counts(self) -> dict:
        counts: dict = {}
        for n in self.nodes:
            counts[n.op.name] = counts.get(n.op.name, 0) + 1
        return counts

    def text(self, *, source_lines: bool = True) -> str:
        return format_graph(self, source_lines=source_lines)

    __str__ = text

    def to_dot(self) -> str:
        return graph_to_dot(self)


# ---------------------------------------------------------------- printing
_SHORT = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16", "int64": "i64", "int32": "i32",
          "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool"}


def type_str(v: Value) -> str:
    return f"{_SHORT.get(v.dtype.name, v.dtype.name)}[{', '.join(map(str, v.shape))}]"


class Namer:
    """Printable, unique Python identifiers for the values of one graph."""

    def __init__(self):
        self.names: dict = {}
        self.taken: set = set()

    def __call__(self, v) -> str:
        if not isinstance(v, Value):
            return _format_const(v)
        name = self.names.get(v)
        if name is None:
            base = re.sub(r"\W+", "_", v.name).strip("_") if v.name else ""
            if not base or base[0].isdigit() or keyword.iskeyword(base):
                base = f"v{v.id}" if not base else "_" + base
            name = base
            k = 1
            while name in self.taken:
                name = f"{base}_{k}"
                k += 1
            self.taken.add(name)
            self.names[v] = name
        return name


def _format_const(x) -> str:
    if isinstance(x, DType):
        return f"tt.{x.name}"
    if isinstance(x, np.ndarray):
        if x.size <= 8:
            return f"array({x.tolist()!r}, {x.dtype})"
        return f"array(<{x.dtype}{list(x.shape)}>)"
    if isinstance(x, tuple):
        inner = ", ".join(_format_const(e) for e in x)
        return f"({inner},)" if len(x) == 1 else f"({inner})"
    if isinstance(x, float):
        return repr(float(x))
    if isinstance(x, IROp) or hasattr(x, "__name__"):
        return getattr(x, "__name__", repr(x))
    return repr(x)


def format_node(n: Node, name=None) -> str:
    name = name or Namer()
    args = [name(x) for x in n.inputs]
    if n.op.name == "copy_":
        return f"{args[0]}.copy_({args[1]})"
    args += [f"{k}={_format_const(v)}" for k, v in n.attrs.items() if not k.startswith("_")]
    lhs = ", ".join(name(v) for v in n.outputs)
    call = f"{n.op.name}({', '.join(args)})"
    return f"{lhs} = {call}" if lhs else call


def format_graph(g: Graph, *, source_lines: bool = True) -> str:
    name = Namer()
    params = [f"{name(v)}: {type_str(v)}" for v in g.inputs]
    header = f"def {g.name}({', '.join(params)}):"
    if len(header) > 100:
        header = f"def {g.name}(\n" + "".join(f"        {p},\n" for p in params) + "):"
    lines = [header]
    body = []
    for n in g.nodes:
        stmt = format_node(n, name)
        types = ", ".join(type_str(v) for v in n.outputs)
        note = types + (f"  {n.where}" if source_lines and n.where else "")
        body.append((stmt, note))
    for dst, new in g.writebacks:
        body.append((f"{name(dst)}.copy_({name(new)})", "write-back after the run"))
    width = min(max((len(s) for s, _ in body), default=0), 72)
    for stmt, note in body:
        lines.append(f"    {stmt.ljust(width)}  # {note}" if note else f"    {stmt}")
    outs = ", ".join(name(v) for v in g.outputs)
    lines.append(f"    return ({outs}{',' if len(g.outputs) == 1 else ''})")
    return "\n".join(lines)


def graph_to_dot(g: Graph) -> str:
    """Graphviz source: inputs as ellipses, nodes as boxes, edges along data flow."""
    name = Namer()
    lines = [f'digraph "{g.name}" {{', "  rankdir=TB;", '  node [fontname="monospace", fontsize=10];']
    producer = {}
    for v in g.inputs:
        lines.append(f'  "{name(v)}" [shape=ellipse, label="{name(v)}\\n{type_str(v)}"];')
        producer[v] = name(v)
    for i, n in enumerate(g.nodes):
        nid = f"n{i}"
        label = n.op.name + "".join(f"\\n{type_str(v)}" for v in n.outputs)
        lines.append(f'  {nid} [shape=box, label="{label}"];')
        for x in n.inputs:
            if isinstance(x, Value) and x in producer:
                lines.append(f'  "{producer[x]}" -> {nid};')
        for v in n.outputs:
            producer[v] = nid
    for k, v in enumerate(g.outputs):
        lines.append(f'  out{k} [shape=doubleoctagon, label="output {k}"];')
        if v in producer:
            lines.append(f'  "{producer[v]}" -> out{k};')
    for dst, new in g.writebacks:
        if new in producer:
            lines.append(f'  "{producer[new]}" -> "{name(dst)}" [style=dashed, label="write-back"];')
    lines.append("}")
    return "\n".join(lines)
