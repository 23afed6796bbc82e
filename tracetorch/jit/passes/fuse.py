"""Fusion (DESIGN.md pass 4): group the nodes of a pure graph into kernels.

`fuse(graph)` returns `FusionGroup`s in a valid execution order. Each group
becomes one loop-level kernel (lowering) or one extern call:

- **elementwise**: a chain (a DAG) of elementwise ops over one iteration
  space, with every view (reshape, permute, expand, slice) and broadcast
  folded into the index arithmetic of its loads (`positions`), and every
  value that other groups or the caller need written out (multi-output).
- **reduction**: reductions over the same iteration space and dims, with
  their elementwise producers as prologue (recomputed inside the reduction
  loop, never written to memory) and their consumers as epilogue: values
  over the kept dims ("row outputs", e.g. `log(sum)`) and values over the
  whole space computed after the reductions of their row ("elementwise
  outputs", e.g. softmax's `exp(x - max) / sum`). Row patterns are then
  recognised: max + sum of exp(x - max) become one `SoftmaxStats` pass and
  sum + sum of squared deviations one `Moments` pass, so softmax,
  log_softmax and layer norm read their input twice at most (statistics,
  then outputs). Reductions whose innermost dim is kept (bias gradients)
  stay alone: the template accumulates whole rows, contiguous.
- **extern**: ops the kernels cannot express, run by their registry eager
  kernel (numpy) between kernels: matmul (numpy's BLAS, the choice Inductor
  makes on CPU; its consumers such as bias add and activation fuse into the
  next kernel), index_put/scatter-add, cumsum, arg-reductions, normal
  random numbers, sort-like ops, cat and slice_scatter. Inputs that are views
  reach them as strided numpy views, without a copy. A matmul read only
  transposed computes the transposed product instead (weight gradients),
  so its reader gets contiguous rows.

Uniform random numbers (`rand`) are elementwise: draw i of a call is a hash
of (seed, offset + i), the scalar op `random` of the element's flat index in
rand's own output (like `arange`), so a dropout mask is computed inside the
kernel that uses it and never written to memory.

Gathers (`index`) are loads at data-dependent positions: bounds-checked in
the kernel (`CheckedIndex`; an out-of-range index raises IndexError after
the call, before anything is committed).

How nodes are grouped (greedy, in graph order): a node joins the group of
one of its producers when the value fits that group's iteration space
(for a reduction group: the whole space or its kept dims), when every
reduction result it reads is read at its own row, and when the join keeps
the group graph acyclic; otherwise it starts a group. A producer value from
another group is recomputed in place when it has no other consumer or is
cheap (a few arithmetic ops, or a scalar), else written to memory once
(realized) and loaded. Graph results, extern inputs and values read at a
different position than they were computed are realized.

Horizontal fusion: afterwards, independent groups over the same iteration
space (e.g. the optimizer updates of parameters of one shape, or all the
scalar bookkeeping of Adam) merge into one multi-output kernel. On the CPU
the program's single native entry function already removes per-kernel call
costs, so the gain is smaller than on a GPU: one loop instead of several
(one fork-join across threads for big kernels, shared loads, fewer
functions to compile).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from codegen.kernel import Arg, Const, Expr, Load, Op, Var, substitute, walk_exprs
from codegen.scalar import const, lower, random
from codegen.templates import FLAT_INDEX, Moments, Reduction, SoftmaxStats
from tracetorch.dtypes import float64, int64

from ..ir import Graph, Node, Value
from .positions import (Coord, Space, broadcast, contiguous_strides, expand_source, flat_index, permute_source,
                        reshape_source, slice_source)

ELEMENTWISE, REDUCTION, EXTERN = "elementwise", "reduction", "extern"
VIEW_OPS = ("reshape", "permute", "expand", "slice")
COMBINES = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}
INLINE_COST = 10           # recompute a shared producer in each consumer kernel up to this cost
SCALAR_INLINE_COST = 60    # ... and a scalar (loop-invariant, hoisted out of the loop by LLVM) up to this
_OP_COST = {"exp": 6, "log": 6, "tanh": 6, "sin": 6, "cos": 6, "pow": 6, "sigmoid": 6, "log1p": 6, "expm1": 6,
            "sqrt": 2, "rsqrt": 2, "div": 2, "reciprocal": 2, "floor_divide": 3, "remainder": 3,
            "rand": 6, "index": INLINE_COST + 1}
# A gather is never cheap to recompute: its bounds check keeps the consumer's loop from vectorizing (an
# embedding lookup recomputed in every layer norm of a GPT's residual stream cost 10x the layer norm).
UPGRADE_MAX_SERIAL = 1 << 16   # elementwise work a full reduction (one thread) may take over


class _Illegal(Exception):
    """A node cannot join this group (a reduction result read away from its row)."""


@dataclass(frozen=True)
class Access:
    """What an `Arg` of a group's expressions loads: `value` at element index `flat` (a Coord over
    the group's iteration space; general coordinates may contain Args of other accesses)."""
    value: Value
    flat: Coord


@dataclass(eq=False)
class FusionGroup:
    """One kernel (or extern call) of the program."""
    kind: str                                   # "elementwise" | "reduction" | "extern"
    space: tuple                                # iteration space (extern: the output shape)
    reduce_dims: tuple = ()
    nodes: list = field(default_factory=list)   # graph nodes computed here, in graph order
    outputs: list = field(default_factory=list)  # values written (results, and values other groups load)
    inlined: list = field(default_factory=list)  # values of other groups recomputed here
    notes: list = field(default_factory=list)    # fusion decisions, for explain()
    args: dict = field(default_factory=dict)     # Arg name -> Access
    exprs: dict = field(default_factory=dict)    # member Value -> Expr at its own (identity) position
    stages: list = field(default_factory=list)   # reduction: Reduction/SoftmaxStats/Moments stages
    extern: Node | None = None
    extern_inputs: tuple = ()                    # extern: per value input, (base Value, Coord layout)
    lowered_as: str | None = None                # what lowering made of an extern group, if not a call
    deps: set = field(default_factory=set)      # groups whose outputs this one loads
    index: int = 0
    name: str = ""
    space_obj: Space | None = field(default=None, repr=False)
    memo: dict = field(default_factory=dict, repr=False)      # (Value, position) -> Expr, while fusing
    arg_keys: dict = field(default_factory=dict, repr=False)  # (Value, flat Coord) -> Arg, while fusing

    @property
    def inputs(self) -> list:
        """Values read from memory (graph inputs, constants, other groups' outputs), first use first."""
        if self.kind == EXTERN:
            return list(dict.fromkeys(b for b, _ in self.extern_inputs))
        return list(dict.fromkeys(a.value for a in self.args.values()))

    @property
    def column(self) -> bool:
        return self.kind == REDUCTION and _is_column(self.space, self.reduce_dims)

    def describe(self) -> str:
        ops = ", ".join(n.op.name for n in self.nodes)
        where = f"{list(self.space)}" + (f" reduce dims {list(self.reduce_dims)}" if self.reduce_dims else "")
        return f"{self.name} [{self.lowered_as or self.kind} over {where}]: {ops or '(copy)'}"


# ---------------------------------------------------------------- entry point
def fuse(graph: Graph) -> list[FusionGroup]:
    """The fusion groups of a pure graph, in execution order."""
    return _Fuser(swap_transposed_matmuls(graph)).run()


def swap_transposed_matmuls(graph: Graph) -> Graph:
    """A matmul read only through a transpose of its last two dims computes b^T a^T instead, straight
    into the layout its reader wants: weight gradients come out of autodiff as (x^T g)^T, and the
    optimizer update then reads them contiguously instead of with a stride of a whole row."""
    from tracetorch.ops import REGISTRY
    users: dict = {}
    for n in graph.nodes:
        for x in n.inputs:
            if isinstance(x, Value):
                users.setdefault(x, []).append(n)
    results = set(graph.results())
    swap: dict = {}
    for n in graph.nodes:
        if n.op.name != "matmul" or n.out in results or len(users.get(n.out, ())) != 1:
            continue
        (t,) = users[n.out]
        rank = len(n.out.shape)
        dims = tuple(range(rank - 2)) + (rank - 1, rank - 2)
        if t.op.name == "permute" and tuple(t.attrs["dims"]) == dims and min(len(x.shape) for x in n.inputs) >= 2:
            swap[n] = t
    if not swap:
        return graph
    permute, matmul = REGISTRY["permute"], REGISTRY["matmul"]
    dropped = set(swap.values())
    nodes = []
    for n in graph.nodes:
        if n in dropped:
            continue
        t = swap.get(n)
        if t is None:
            nodes.append(n)
            continue
        a, b = n.inputs
        at, bt = _transposed(a), _transposed(b)        # each over its own last two dims (batch broadcasting)
        nodes += [Node(permute, (b,), (bt,), {"dims": _last_two_swapped(b)}, n.where),
                  Node(permute, (a,), (at,), {"dims": _last_two_swapped(a)}, n.where),
                  Node(matmul, (bt, at), t.outputs, {}, n.where)]
    return graph.replace(nodes=tuple(nodes))


def _last_two_swapped(v: Value) -> tuple:
    rank = len(v.shape)
    return tuple(range(rank - 2)) + (rank - 1, rank - 2)


def _transposed(v: Value) -> Value:
    return Value(tuple(v.shape[d] for d in _last_two_swapped(v)), v.dtype, v.name)


def is_view(node: Node) -> bool:
    return node.op.name in VIEW_OPS


def kernels_before_fusion(graph: Graph) -> int:
    """One kernel per non-view primitive op (constants are data, not kernels)."""
    return sum(1 for n in graph.nodes if not is_view(n) and n.op.name != "constant")


def _is_column(space, dims) -> bool:
    """A reduction whose innermost (non-unit) dim is kept: it accumulates whole rows."""
    inner = [d for d, s in enumerate(space) if s != 1]
    return bool(inner) and inner[-1] not in dims and any(space[d] != 1 for d in dims)


class _Fuser:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer: dict = {}
        self.kind: dict = {}           # Value -> input | const | view | elem | red | ext
        self.home: dict = {}           # Value -> FusionGroup computing it
        self.realized: set = set()     # values written to memory by their home group
        self.groups: list = []
        self.consumers: dict = {}      # Value -> number of consuming nodes (through views) + result uses
        self._cost: dict = {}
        self._names = 0
        for v in graph.inputs:
            self.kind[v] = "input"
        for n in graph.nodes:
            for v in n.outputs:
                self.producer[v] = n
        self._count_consumers()

    # ------------------------------------------------------------ driver
    def run(self) -> list[FusionGroup]:
        for n in self.graph.nodes:
            name = n.op.name
            if name in VIEW_OPS:
                self.kind[n.out] = "view"
            elif name == "constant":
                self.kind[n.out] = "const"
            elif name in COMBINES and n.attrs.get("dims"):
                self.kind[n.out] = "red"
                self.place_reduction(n)
            elif n.op.kind == "elementwise" or name in ("full", "arange", "index") or _uniform_draws(n) or \
                    (name in COMBINES and not n.attrs.get("dims")):
                self.kind[n.out] = "elem"
                self.place_elementwise(n)
            else:
                for v in n.outputs:
                    self.kind[v] = "ext"
                self.place_extern(n)
        for v in self.graph.results():
            self.require(v)
        groups = [g for g in self.groups if g.kind == EXTERN or any(v in self.realized for v in g.exprs)]
        for g in groups:
            g.outputs = [v for v in g.exprs if v in self.realized] if g.kind != EXTERN else list(g.extern.outputs)
        groups = self.merge_horizontally(groups)
        kept = set(map(id, groups))
        for g in groups:     # inlined values whose own group survives are computed twice: say so in explain()
            g.inlined = [v for v in g.inlined if self.home.get(v) is not g and id(self.home.get(v)) in kept]
        groups = _schedule(groups)
        for k, g in enumerate(groups):
            g.index = k
            g.name = f"k{k}_{_short(g)}"
            if g.kind == REDUCTION:
                _recognize_row_patterns(g)
        return groups

    def require(self, v: Value) -> None:
        """A graph result: written by the program (inputs and constants are returned by the executable)."""
        kind = self.kind.get(v)
        if kind in ("input", "const"):
            return
        if kind == "view" and v not in self.home:
            self.place_elementwise(self.producer[v], copy=True)
        self.realized.add(v)

    # ------------------------------------------------------------ placement
    def new_group(self, kind, space, dims=()) -> FusionGroup:
        g = FusionGroup(kind, tuple(space), tuple(dims), index=len(self.groups), space_obj=Space(space))
        self.groups.append(g)
        return g

    def place_elementwise(self, n: Node, copy: bool = False) -> None:
        shape = n.out.shape
        for g in self.candidates(n):
            if not _fits(shape, g):
                continue
            if self.try_join(g, n, copy):
                return
        g = self.new_group(ELEMENTWISE, shape)
        if not self.try_join(g, n, copy):
            raise AssertionError(f"fusion: {n.op.name} cannot start a group")

    def place_reduction(self, n: Node) -> None:
        x = n.inputs[0]
        space, dims = tuple(x.shape), tuple(n.attrs["dims"])
        column = _is_column(space, dims)
        producers = self.candidates(n)
        same = [g for g in producers if g.kind == REDUCTION and g.space == space and g.reduce_dims == dims]
        rows = math.prod(space[d] for d in range(len(space)) if d not in dims)
        if rows > 1 and not column:
            # a reduction of the same rows elsewhere (e.g. cross-entropy's backward sum next to its forward)
            same += [g for g in reversed(self.groups) if g.kind == REDUCTION and g.space == space
                     and g.reduce_dims == dims and g not in same]
        serial_ok = rows > 1 or math.prod(space) <= UPGRADE_MAX_SERIAL
        upgrade = [g for g in producers if g.kind == ELEMENTWISE and g.space == space and not column and serial_ok]
        for g in same:
            if self.try_join(g, n):
                return
        for g in upgrade:
            if self.try_join(g, n, reduce_dims=dims):
                g.notes.append(f"{n.op.name} takes this elementwise group as its prologue")
                return
        g = self.new_group(REDUCTION, space, dims)
        if not self.try_join(g, n):
            raise AssertionError(f"fusion: {n.op.name} cannot start a group")

    def place_extern(self, n: Node) -> None:
        g = self.new_group(EXTERN, n.out.shape if n.outputs else ())
        g.extern = n
        g.nodes.append(n)
        layouts = []
        for x in n.inputs:
            if not isinstance(x, Value):
                continue
            base, flat = self.layout(x)
            if not flat.affine:
                self.place_elementwise(self.producer[x], copy=True)
                base, flat = x, flat_index(Space(x.shape), Space(x.shape).identity(), x.shape)
            layouts.append((base, flat))
            h = self.home.get(base)
            if h is not None:
                self.realized.add(base)
                g.deps.add(h)
        g.extern_inputs = tuple(layouts)
        for v in n.outputs:
            self.home[v] = g
            g.exprs[v] = None
        self.realized.update(n.outputs)
        g.notes.append(_extern_note(n))

    def layout(self, x: Value):
        """(base value, flat index over x's own shape) following views down to a materialized value."""
        space = Space(x.shape)
        pos = space.identity()
        v = x
        while self.kind.get(v) == "view" and v not in self.home:
            n = self.producer[v]
            src = n.inputs[0]
            while n.op.name == "reshape" and self.kind.get(src) == "view" and src not in self.home and \
                    self.producer[src].op.name == "reshape":
                src = self.producer[src].inputs[0]          # reshapes of reshapes: one reshape
            if n.op.name == "reshape" and not (self.kind.get(src) == "view" and src not in self.home):
                # a reshape of the materialized value keeps every element's C-order index: reading it
                # flat stays affine where the per-dim source position would not ([8, 64, C] as [512, C]
                # needs i0 // 64 and i0 % 64), which spared the copy a matmul's input took before
                return src, flat_index(space, pos, n.out.shape)
            pos = _view_source(space, n, pos)
            v = n.inputs[0]
        return v, flat_index(space, pos, v.shape)

    def candidates(self, n: Node) -> list:
        """Groups of n's computed producers (seen through views): reduction groups first."""
        found = []
        for x in n.inputs:
            if not isinstance(x, Value):
                continue
            for v in self.sources(x):
                g = self.home.get(v)
                if g is not None and g.kind != EXTERN and g not in found:
                    found.append(g)
        return sorted(found, key=lambda g: (g.kind != REDUCTION, -g.index))

    def sources(self, x: Value):
        """The non-view values a value reads, through views and unrealized members."""
        seen, stack, out = set(), [x], []
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if self.kind.get(v) == "view" and v not in self.home:
                stack.append(self.producer[v].inputs[0])
            else:
                out.append(v)
        return out

    def try_join(self, g: FusionGroup, n: Node, copy: bool = False, reduce_dims=None) -> bool:
        trial = _Trial(self, g, reduce_dims)
        try:
            if self.kind[n.out] == "red":
                x = n.inputs[0]
                value = trial.value(x, trial.space.identity())
                out_dt = n.out.dtype
                if value.dtype is not out_dt:
                    value = Op("cast", (value,), out_dt)
            else:
                value = trial.compute(n, trial.identity_for(n.out.shape), copy)
        except _Illegal:
            return False
        deps = trial.deps - {g}
        if any(self.reaches(h, g) for h in deps):
            return False
        # commit
        if reduce_dims is not None:
            g.kind, g.reduce_dims = REDUCTION, tuple(reduce_dims)
        for key, arg in trial.args.items():
            g.arg_keys[key] = arg
            g.args[arg.name] = Access(*key)
        g.deps |= deps
        g.memo.update(trial.memo)
        self.realized |= trial.realize
        for v in trial.inlined:
            if v not in g.inlined:
                g.inlined.append(v)
        g.nodes.append(n)
        self.home[n.out] = g
        if self.kind[n.out] == "red":
            name = f"s{len(g.stages)}"            # local names: identical groups give identical kernels
            g.stages.append(Reduction(name, COMBINES[n.op.name], value))
            g.exprs[n.out] = Var(name, n.out.dtype)
        else:
            g.exprs[n.out] = value
        return True

    def reaches(self, src: FusionGroup, dst: FusionGroup) -> bool:
        """Whether `src` depends (transitively) on `dst`."""
        seen, stack = set(), [src]
        while stack:
            h = stack.pop()
            if h is dst:
                return True
            if id(h) in seen:
                continue
            seen.add(id(h))
            stack.extend(h.deps)
        return False

    def fresh(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    # ------------------------------------------------------------ recompute or realize
    def _count_consumers(self) -> None:
        counts: dict = {}
        producer = self.producer

        def base_values(x, seen):
            n = producer.get(x)
            if n is not None and n.op.name in VIEW_OPS:
                yield from base_values(n.inputs[0], seen)
            else:
                yield x

        for n in self.graph.nodes:
            if n.op.name in VIEW_OPS:
                continue
            for v in {b for x in n.inputs if isinstance(x, Value) for b in base_values(x, None)}:
                counts[v] = counts.get(v, 0) + 1
        for r in self.graph.results():
            for b in base_values(r, None):
                counts[b] = counts.get(b, 0) + 1
        self.consumers = counts

    def cost(self, v: Value) -> int:
        """Arithmetic cost of recomputing v from realized values (its unrealized elementwise cone)."""
        hit = self._cost.get(v)
        if hit is not None:
            return hit
        n = self.producer.get(v)
        kind = self.kind.get(v)
        if n is None or kind in ("input", "const", "ext", "red") or v in self.realized:
            c = 0
        elif kind == "view":
            c = self.cost(n.inputs[0])
        else:
            c = _OP_COST.get(n.op.name, 1) + sum(self.cost(x) for x in n.inputs if isinstance(x, Value))
            c = min(c, 10 ** 6)
        self._cost[v] = c
        return c

    def inlinable(self, v: Value) -> bool:
        if self.kind.get(v) != "elem":
            return False
        if self.consumers.get(v, 0) <= 1:
            return True
        c = self.cost(v)
        return c <= INLINE_COST or (math.prod(v.shape) == 1 and c <= SCALAR_INLINE_COST)

    # ------------------------------------------------------------ horizontal fusion
    def merge_horizontally(self, groups: list) -> list:
        out: list = []
        for g in groups:
            key = _merge_key(g)
            target = None
            if key is not None:
                for h in out:
                    if _merge_key(h) == key and not self.reaches(g, h) and not self.reaches(h, g):
                        target = h
                        break
            if target is None:
                out.append(g)
                continue
            _rename_stages(g, len(target.stages))
            target.nodes += g.nodes
            target.outputs += g.outputs
            target.inlined += [v for v in g.inlined if v not in target.inlined]
            target.args.update(g.args)
            target.exprs.update(g.exprs)
            target.stages += g.stages
            target.deps |= g.deps
            target.notes += g.notes
            target.notes.append(f"merged horizontally with an independent group over the same space "
                                f"({', '.join(n.op.name for n in g.nodes[:4])}{', ...' if len(g.nodes) > 4 else ''})")
            for h in groups:
                if g in h.deps:
                    h.deps.discard(g)
                    h.deps.add(target)
            for v in g.exprs:
                self.home[v] = target
        return out


def _rename_stages(g: FusionGroup, first: int) -> None:
    """Number g's reduction stages from `first` (before merging it into a group that has `first` stages)."""
    if not g.stages or first == 0:
        return
    mapping = {s.name: Var(f"s{first + k}", s.value.dtype) for k, s in enumerate(g.stages)}
    g.stages = [Reduction(mapping[s.name].name, s.combine, substitute(s.value, mapping)) for s in g.stages]
    g.exprs = {v: (None if e is None else substitute(e, mapping)) for v, e in g.exprs.items()}


def _merge_key(g: FusionGroup):
    if g.kind == ELEMENTWISE:
        return (ELEMENTWISE, g.space)
    if g.kind == REDUCTION and not g.column:
        return (REDUCTION, g.space, g.reduce_dims)
    return None


def _fits(shape, g: FusionGroup) -> bool:
    if g.kind == EXTERN:
        return False
    shape = tuple(shape)
    if shape == g.space:
        return True
    if g.kind != REDUCTION:
        return False
    keep = tuple(1 if d in g.reduce_dims else s for d, s in enumerate(g.space))
    squeezed = tuple(s for d, s in enumerate(g.space) if d not in g.reduce_dims)
    return shape in (keep, squeezed)


# ---------------------------------------------------------------- evaluating values inside a group
class _Trial:
    """Builds the expression of a node inside group `g` (at positions of g's iteration space); what it
    would change (loads, realized values, dependencies) is committed only if the join is legal."""

    def __init__(self, fuser: _Fuser, g: FusionGroup, reduce_dims=None):
        self.f, self.g = fuser, g
        self.space: Space = g.space_obj
        self.dims = tuple(reduce_dims) if reduce_dims is not None else g.reduce_dims
        self.memo: dict = {}
        self.args: dict = {}
        self.realize: set = set()
        self.deps: set = set()
        self.inlined: list = []

    def identity_for(self, shape) -> tuple:
        """The position of an element of a member of `shape` computed at this iteration."""
        shape, space = tuple(shape), self.space
        if shape == space.shape:
            return space.identity()
        keep = tuple(1 if d in self.dims else s for d, s in enumerate(space.shape))
        if shape == keep:
            return tuple(space.constant(0) if d in self.dims else space.unit(d) for d in range(space.rank))
        kept = [d for d in range(space.rank) if d not in self.dims]
        return tuple(space.unit(d) for d in kept)

    def at_row(self, v: Value, pos: tuple) -> bool:
        """Whether `pos` (a position in reduction result v) is this iteration's own row."""
        shape, space = tuple(v.shape), self.space
        kept = [d for d in range(space.rank) if d not in self.dims]
        if len(shape) == space.rank:
            pairs = [(pos[d], d) for d in kept]
        elif len(shape) == len(kept):
            pairs = list(zip(pos, kept))
        else:
            return False
        return all(space.shape[d] == 1 or c.is_unit(d) for c, d in pairs)

    def value(self, v: Value, pos: tuple) -> Expr:
        key = (v, pos)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.g.memo.get(key)
        if hit is not None:
            return hit
        out = self._value(v, pos)
        self.memo[key] = out
        return out

    def _value(self, v: Value, pos: tuple) -> Expr:
        f = self.f
        kind = f.kind.get(v)
        if kind in ("input", "const"):
            return self.load(v, pos)
        home = f.home.get(v)
        if kind == "view" and home is None:
            n = f.producer[v]
            return self.value(n.inputs[0], _view_source(self.space, n, pos))
        if home is self.g:
            if kind == "red":
                if not self.at_row(v, pos):
                    raise _Illegal(f"{v} read away from its row")
                return self.g.exprs[v]
            return self.compute(f.producer[v], pos, copy=kind == "view")
        if home is None:
            raise AssertionError(f"fusion: {v} used before it is computed")
        if v in f.realized or v in self.realize:
            return self.load(v, pos)
        if f.inlinable(v):
            if v not in self.inlined:
                self.inlined.append(v)
            return self.compute(f.producer[v], pos)
        self.realize.add(v)
        return self.load(v, pos)

    def load(self, v: Value, pos: tuple) -> Expr:
        flat = flat_index(self.space, pos, v.shape)
        key = (v, flat)
        arg = self.args.get(key)
        if arg is None:
            arg = self.g.arg_keys.get(key)
        if arg is None:
            arg = Arg(self.f.fresh("a"), v.dtype)
            self.args[key] = arg
        home = self.f.home.get(v)
        if home is not None and home is not self.g:
            self.deps.add(home)
        return arg

    def compute(self, n: Node, pos: tuple, copy: bool = False) -> Expr:
        """n's value at `pos` (a position in n's output) from its inputs' values."""
        name = n.op.name
        out = n.out
        if copy or name in VIEW_OPS:
            return self.value(n.inputs[0], _view_source(self.space, n, pos))
        if name == "full":
            return const(n.attrs["value"], out.dtype)
        if name == "arange":
            return self.arange(n, pos)
        if name == "rand":
            return self.rand(n, pos)
        if name == "index":
            return self.gather(n, pos)
        if name in COMBINES:                    # a reduction over no dims: a (casting) copy
            x = self.value(n.inputs[0], pos)
            return x if x.dtype is out.dtype else Op("cast", (x,), out.dtype)
        operands = [self.value(x, broadcast(self.space, pos, x.shape)) if isinstance(x, Value) else x
                    for x in n.inputs]
        if name == "where" and not isinstance(operands[1], Expr) and not isinstance(operands[2], Expr):
            operands[1:] = [const(o, out.dtype) for o in operands[1:]]
        return lower(n.op.lowering, operands, out.dtype)

    def arange(self, n: Node, pos: tuple) -> Expr:
        a = n.attrs
        i = self.position_value(pos[0])
        dt = n.out.dtype
        if dt.is_floating_point:
            x = Op("add", (const(a["start"], float64), Op("mul", (Op("cast", (i,), float64),
                                                                    const(a["step"], float64)), float64)), float64)
        else:
            x = Op("add", (const(a["start"], int64), Op("mul", (i, const(a["step"], int64)), int64)), int64)
        return x if x.dtype is dt else Op("cast", (x,), dt)

    def rand(self, n: Node, pos: tuple) -> Expr:
        """Uniform draw `offset + i` of stream `seed`, i the flat index of `pos` in rand's OWN output (not
        the kernel's iteration space: a permuted, expanded or sliced read of the draws gets eager's)."""
        seed, offset = (self.value(x, broadcast(self.space, pos, x.shape)) for x in n.inputs)
        flat = flat_index(self.space, pos, n.out.shape)
        index = FLAT_INDEX if flat == flat_index(self.space, self.space.identity(), self.space.shape) \
            else self.position_value(flat)
        return random(Op("add", (offset, index), int64), seed, n.out.dtype)

    def position_value(self, c: Coord) -> Expr:
        """A coordinate as a value inside the kernel body (loop indices recovered from FLAT_INDEX)."""
        shape = self.space.shape
        strides = contiguous_strides(shape)
        mapping = {}
        for k, (size, stride) in enumerate(zip(shape, strides)):
            idx: Expr = FLAT_INDEX
            if stride != 1:
                idx = Op("floordiv", (idx, Const(stride, int64)), int64)
            if k > 0:
                idx = Op("mod", (idx, Const(size, int64)), int64)
            mapping[f"@i{k}"] = idx
        return substitute(c.as_expr(), mapping)

    def gather(self, n: Node, pos: tuple) -> Expr:
        """x[..., idx, ...]: the source position takes bounds-checked index values."""
        x, idx = n.inputs[0], n.inputs[1:]
        dims = tuple(n.attrs["dims"])
        bshape = tuple(np.broadcast_shapes(*(tuple(i.shape) for i in idx))) if idx else ()
        nb = len(bshape)
        consecutive = list(dims) == list(range(dims[0], dims[0] + len(dims)))
        if consecutive:
            bpos, rest = pos[dims[0]:dims[0] + nb], list(pos[:dims[0]]) + list(pos[dims[0] + nb:])
        else:
            bpos, rest = pos[:nb], list(pos[nb:])
        src = []
        it = iter(rest)
        index_of = dict(zip(dims, idx))
        for d, size in enumerate(x.shape):
            if d in index_of:
                ix = index_of[d]
                value = self.value(ix, broadcast(self.space, bpos, ix.shape))
                src.append(self.space.checked(value, size, f"index out of bounds for dimension {d} with size "
                                                           f"{size} (indexing a tensor of shape {list(x.shape)}):"))
            else:
                src.append(next(it))
        return self.value(x, tuple(src))


def _uniform_draws(n: Node) -> bool:
    """rand without normal=True, from an int64 generator state: the elementwise `random` op (normal draws
    stay an extern call: numpy's log1p and cos are not the kernels')."""
    return n.op.name == "rand" and not n.attrs["normal"] and all(
        isinstance(x, Value) and x.dtype is int64 for x in n.inputs)


def _view_source(space: Space, n: Node, pos: tuple) -> tuple:
    name = n.op.name
    x = n.inputs[0]
    if name == "reshape":
        return reshape_source(space, pos, n.out.shape, x.shape)
    if name == "permute":
        return permute_source(pos, n.attrs["dims"])
    if name == "expand":
        return expand_source(space, pos, x.shape, n.out.shape)
    if name == "slice":
        return slice_source(space, pos, n.attrs["starts"], n.attrs["steps"])
    raise AssertionError(f"not a view op: {name}")


# ---------------------------------------------------------------- order
def _schedule(groups: list) -> list:
    """A topological order of the groups (by their loads), stable in creation order."""
    import heapq
    order = {id(g): k for k, g in enumerate(groups)}
    waiting = {id(g): len({id(h) for h in g.deps if id(h) in order}) for g in groups}
    users: dict = {id(g): [] for g in groups}
    for g in groups:
        for h in {id(h): h for h in g.deps if id(h) in order}.values():
            users[id(h)].append(g)
    ready = [(order[id(g)], g) for g in groups if waiting[id(g)] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, g = heapq.heappop(ready)
        out.append(g)
        for u in users[id(g)]:
            waiting[id(u)] -= 1
            if waiting[id(u)] == 0:
                heapq.heappush(ready, (order[id(u)], u))
    if len(out) != len(groups):
        raise AssertionError("fusion: the groups depend on each other in a cycle")
    return out


def _short(g: FusionGroup) -> str:
    if g.kind == EXTERN:
        return g.extern.op.name
    names = [n.op.name for n in g.nodes if n.op.name not in VIEW_OPS]
    if g.kind == REDUCTION:
        return "reduce_" + "_".join(dict.fromkeys(n for n in names if n in COMBINES))[:40]
    return "_".join(dict.fromkeys(names))[:40] or "copy"


def _extern_note(n: Node) -> str:
    if n.op.name == "matmul":
        return "matmul: extern call into numpy's BLAS; its consumers fuse into the next kernel"
    return f"{n.op.name}: extern call (the registry's numpy kernel, run between kernels)"


# ---------------------------------------------------------------- row patterns
def _recognize_row_patterns(g: FusionGroup) -> None:
    """Turn max + sum(exp(v - max)) into SoftmaxStats and sum + sum((v - sum/n)^2) into Moments:
    two statistics in one pass over memory."""
    extent = math.prod(g.space[d] for d in g.reduce_dims)
    stages = list(g.stages)
    replace: dict = {}
    out = []
    used = set()
    for i, a in enumerate(stages):
        if i in used:
            continue
        pair = None
        for j in range(i + 1, len(stages)):
            b = stages[j]
            if j in used or not isinstance(b, Reduction):
                continue
            if _is_softmax_pair(a, b):
                pair = (j, SoftmaxStats(a.name, b.name, a.value))
                break
            if _is_moments_pair(a, b, extent):
                mean, var = a.name + "_mean", b.name + "_var"
                pair = (j, Moments(mean, var, a.value))
                dt = a.value.dtype
                n = const(extent, dt)
                replace[("div", a.name)] = Var(mean, dt)
                replace[("div", b.name)] = Var(var, dt)
                replace[("var", a.name)] = Op("mul", (Var(mean, dt), n), dt)
                replace[("var", b.name)] = Op("mul", (Var(var, dt), n), dt)
                replace[("n", a.name)] = replace[("n", b.name)] = n
                break
        if pair is None:
            out.append(a)
            continue
        j, stage = pair
        if _depends_on_between(stages, i, j):
            out.append(a)
            continue
        used.add(j)
        out.append(stage)
        g.notes.append(f"{type(stage).__name__}: stages {a.name} and {stages[j].name} share one pass over memory")
    if replace:
        out = [_rewrite_stage(s, replace) for s in out]
        g.exprs = {v: (None if e is None else _rewrite(e, replace, {})) for v, e in g.exprs.items()}
    g.stages = out


def _depends_on_between(stages, i, j) -> bool:
    """Whether stage j reads a stage strictly between i and j (then it cannot move up to i)."""
    names = {s.name for s in stages[i + 1:j] if isinstance(s, Reduction)}
    return any(isinstance(e, Var) and e.name in names for e in walk_exprs(stages[j].value))


def _is_softmax_pair(a, b) -> bool:
    if not (isinstance(a, Reduction) and a.combine == "max" and b.combine == "add"):
        return False
    if not a.value.dtype.is_floating_point:
        return False
    v = b.value
    return (isinstance(v, Op) and v.op == "exp" and isinstance(v.args[0], Op) and v.args[0].op == "sub"
            and v.args[0].args[0] == a.value and v.args[0].args[1] == Var(a.name, a.value.dtype))


def _is_moments_pair(a, b, extent: int) -> bool:
    if not (isinstance(a, Reduction) and a.combine == "add" and b.combine == "add"):
        return False
    dt = a.value.dtype
    if not dt.is_floating_point or extent == 0:
        return False
    v = b.value
    if isinstance(v, Op) and v.op == "mul" and v.args[0] == v.args[1]:
        d = v.args[0]
    elif isinstance(v, Op) and v.op == "pow" and isinstance(v.args[1], Const) and v.args[1].value == 2.0:
        d = v.args[0]
    else:
        return False
    mean = Op("div", (Var(a.name, dt), const(extent, dt)), dt)
    return isinstance(d, Op) and d.op == "sub" and d.args[0] == a.value and d.args[1] == mean


def _rewrite(e: Expr, replace: dict, done: dict) -> Expr:
    hit = done.get(id(e))
    if hit is not None:
        return hit[1]
    out = e
    if isinstance(e, Op):
        if e.op == "div" and isinstance(e.args[0], Var) and ("div", e.args[0].name) in replace \
                and e.args[1] == replace[("n", e.args[0].name)]:
            out = replace[("div", e.args[0].name)]
        else:
            args = tuple(_rewrite(a, replace, done) for a in e.args)
            out = e if all(x is y for x, y in zip(args, e.args)) else Op(e.op, args, e.dtype)
    elif isinstance(e, Var) and ("var", e.name) in replace:
        out = replace[("var", e.name)]
    elif isinstance(e, Load):
        out = Load(e.buffer, _rewrite(e.index, replace, done))
    done[id(e)] = (e, out)
    return out


def _rewrite_stage(s, replace):
    done: dict = {}
    if isinstance(s, Reduction):
        return Reduction(s.name, s.combine, _rewrite(s.value, replace, done))
    if isinstance(s, SoftmaxStats):
        return SoftmaxStats(s.max_name, s.sum_name, _rewrite(s.value, replace, done))
    return Moments(s.mean_name, s.var_name, _rewrite(s.value, replace, done))


__all__ = ["FusionGroup", "Access", "fuse", "kernels_before_fusion", "ELEMENTWISE", "REDUCTION", "EXTERN"]
