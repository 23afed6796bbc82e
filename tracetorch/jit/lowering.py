"""Lowering (DESIGN.md pass 6): fusion groups -> one `codegen.kernel.Program` and its memory plan.

Every value a group writes or loads gets a `Buffer`: graph inputs and
constants are program inputs, graph results program outputs (fresh arrays
for the caller), everything else a temporary placed in the arena by the
memory planner (`passes.memplan`; an elementwise kernel may update a dying
input in place). With `donate`, a write-back computed by an elementwise
kernel is stored straight into its target input (`_donations` says when that
is safe), and other write-backs are copied into their targets by the
program's last kernels (`_final_copies`), so the caller commits them without
a copy. Then each group becomes a kernel through the templates of
`codegen.templates` (its expressions already built by fusion; here their
`Arg`s get buffers and index maps) or an `ExternCall` that runs the op's
numpy kernel on (strided views of) its input buffers.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from codegen.kernel import (Arg, Buffer, CheckedIndex, Const, Expr, ExternCall, IndexMap, Load, MatmulKernel, Op,
                            Program, substitute, walk_exprs)
from codegen.templates import SUM_BLOCK, FLAT_INDEX, cat_kernel, elementwise_kernel, reduction_kernel, scatter_kernel
from runtime.memory import MemoryPlan, align_up

from ..ops.registry import INDEX
from .interp import run_kernel
from .ir import Graph, Value
from .passes.fuse import ELEMENTWISE, EXTERN, FusionGroup, kernels_before_fusion
from .passes.memplan import ArenaPlan, StepUse, plan_memory


@dataclass
class LoweredProgram:
    program: Program
    plan: MemoryPlan                 # the runtime's plan (offsets by buffer name)
    arena: ArenaPlan                 # the planner's view (slots, lifetimes, in-place pairs)
    groups: list
    input_positions: tuple           # program input k <- graph input index (then the constants)
    constants: tuple                 # arrays passed as the trailing program inputs
    results: tuple                   # per graph result: ("output", k) | ("input", i) | ("const", array)
    donated: dict                    # graph input index -> graph result position stored into that input
    buffer_of: dict                  # Value -> Buffer
    kernels_before_fusion: int
    bytes_moved: int
    copied: tuple = ()               # graph input indices of `donated` stored by the final copy kernels

    @property
    def kernels_after_fusion(self) -> int:
        return len(self.program.steps)

    @property
    def intermediate_bytes(self) -> int:
        """What the intermediates would take with a buffer each (explain()'s "vs")."""
        return self.arena.total_bytes


def lower_program(graph: Graph, groups: list, *, inplace: bool = True, donate: bool = False,
                  name: str | None = None, scatter: bool = False, matmuls: int = 0,
                  cpu_forms: bool = False) -> LoweredProgram:
    """`scatter`: lower index_put to a serial scatter kernel where it can (`_scatter_kernel`), not to an
    extern call of numpy's kernel (np.add.at took ~0.5 ms for an embedding gradient of 512 rows).
    `cpu_forms`: kernels shaped for CPU threads (the CUDA backend has its own): cat as a copy kernel
    (`_cat_kernel`), not numpy's concatenate; a column reduction over many rows with no kept outer dim
    split into partial sums per chunk of rows (`codegen.templates._row_chunks`), not one serial pass.
    `matmuls`: lower float32 matmuls to generated GEMM kernels (`_matmul_kernel`) of vectors of that many
    floats (`runtime.host.gemm_lanes`), not to numpy's BLAS (0)."""
    name = name or graph.name
    input_index = {v: i for i, v in enumerate(graph.inputs)}
    constants: dict = {}                      # Value -> array
    for n in graph.nodes:
        if n.op.name == "constant":
            constants[n.out] = np.array(n.attrs["value"], dtype=n.out.dtype.np)
    donations = _donations(graph, groups, input_index) if donate else {}     # new Value -> target input
    copies = _final_copies(graph, groups, input_index, donations) if donate else {}     # the same, copied last

    # ---------------------------------------------------------------- which values need a buffer
    loaded: dict = {}
    for g in groups:
        for v in g.inputs:
            loaded.setdefault(v)
    for dst in list(donations.values()) + list(copies.values()):
        loaded.setdefault(dst)
    results = graph.results()
    result_values = [r for r in results if r not in input_index and r not in constants and r not in donations
                     and r not in copies]
    outputs = list(dict.fromkeys(result_values))
    written = [v for g in groups for v in g.outputs]
    temps = [v for v in dict.fromkeys(written) if v not in set(outputs) and v not in donations]
    temp_set = set(temps)

    # ---------------------------------------------------------------- memory plan over the schedule
    steps = []
    for g in groups:
        reads = tuple(v for v in g.inputs if v in temp_set)
        writes = tuple(v for v in g.outputs if v in temp_set)
        donating = any(v in donations for v in g.outputs)
        pairs = _inplace_pairs(g, reads, writes) if inplace and not donating else ()
        steps.append(StepUse(reads, writes, pairs))
    if copies:
        steps.append(StepUse(tuple(copies), (), ()))
    arena = plan_memory(steps, {v: _nbytes(v) for v in temps})

    buffer_of: dict = {}
    prog_inputs, input_positions = [], []
    for v in loaded:
        if v in input_index:
            buffer_of[v] = Buffer(f"in{input_index[v]}_{_hint(v)}", v.dtype, tuple(v.shape))
            prog_inputs.append(buffer_of[v])
            input_positions.append(input_index[v])
    const_arrays = []
    for v in loaded:
        if v in constants:
            buffer_of[v] = Buffer(f"const{len(const_arrays)}_{_hint(v)}", v.dtype, tuple(v.shape))
            prog_inputs.append(buffer_of[v])
            const_arrays.append(constants[v])
    prog_outputs = []
    for k, v in enumerate(outputs):
        buffer_of[v] = Buffer(f"out{k}_{_hint(v)}", v.dtype, tuple(v.shape))
        prog_outputs.append(buffer_of[v])
    slot_buffers: dict = {}
    for v in temps:
        slot = arena.slot_of[v]
        buf = slot_buffers.get(slot)
        if buf is None:
            buf = slot_buffers[slot] = Buffer(f"t{slot}_{_hint(v)}", v.dtype, tuple(v.shape))
        buffer_of[v] = buf
    for src, dst in donations.items():
        buffer_of[src] = buffer_of[dst]

    # ---------------------------------------------------------------- kernels and extern calls
    overwrites = {w: r for r, w in arena.inplace} | donations      # output -> the input whose memory it takes
    scratch: list = []                  # (group, buffer) of reductions' scratch rows, past the arena (`_scratch`)
    program_steps = []
    for g in groups:
        step = _lower_group(g, buffer_of, overwrites, scatter, matmuls, cpu_forms,
                            _scratch(scratch, g) if cpu_forms else None)
        program_steps += step if isinstance(step, tuple) else [step]
    program_steps += _copy_kernels(copies, buffer_of)
    donations = donations | copies
    updated = tuple(dict.fromkeys(buffer_of[dst] for dst in donations.values()))
    program = Program(name, tuple(program_steps), tuple(prog_inputs), tuple(prog_outputs), updated)
    offsets, sizes = {}, {}
    for slot, buf in slot_buffers.items():
        offsets[buf.name] = arena.offsets[slot]
        sizes[buf.name] = buf.nbytes
    end = max(arena.size, 0)
    if scratch:                         # each group's, used by its own kernels only: all groups share one region
        base, used = align_up(end), {}
        for owner, buf in scratch:
            offsets[buf.name], sizes[buf.name] = base + used.get(owner, 0), buf.nbytes
            used[owner] = align_up(used.get(owner, 0) + buf.nbytes)
        end = base + max(used.values())
    plan = MemoryPlan(offsets, sizes, end)
    out_pos = {v: k for k, v in enumerate(outputs)}
    result_plan = []
    for r in results:
        if r in donations:
            result_plan.append(("input", input_index[donations[r]]))
        elif r in input_index:
            result_plan.append(("input", input_index[r]))
        elif r in constants:
            result_plan.append(("const", constants[r]))
        else:
            result_plan.append(("output", out_pos[r]))
    moved = sum(step_bytes(s) for s in program.steps)
    donated = {input_index[dst]: results.index(src) for src, dst in donations.items()}
    return LoweredProgram(program, plan, arena, groups, tuple(input_positions), tuple(const_arrays),
                          tuple(result_plan), donated, buffer_of, kernels_before_fusion(graph), moved,
                          tuple(input_index[dst] for dst in copies.values()))


# ---------------------------------------------------------------- one group
def _scratch(buffers: list, g: FusionGroup):
    """The `scratch` function a reduction template gets: a new buffer for `g`, noted in `buffers`."""
    def scratch(shape, dtype) -> Buffer:
        buffers.append((g.name, Buffer(f"scratch{len(buffers)}_{g.name}", dtype, tuple(shape))))
        return buffers[-1][1]
    return scratch


def _lower_group(g: FusionGroup, buffer_of: dict, overwrites: dict, scatter: bool = False,
                 matmuls: int = 0, cpu_forms: bool = False, scratch=None):
    if g.kind == EXTERN:
        if scatter and _scatter_form(g.extern):
            return _scatter_kernel(g, buffer_of)
        if cpu_forms and _cat_form(g, buffer_of):
            return _cat_kernel(g, buffer_of)
        kernel = _matmul_kernel(g, buffer_of, matmuls) if matmuls else None
        return kernel if kernel is not None else _extern_call(g, buffer_of)
    inputs = {name: (buffer_of[acc.value], _index(g, acc, buffer_of)) for name, acc in g.args.items()}
    order = _store_order(g, overwrites)
    if order is None:
        raise ValueError(f"{g.name}: outputs stored over their inputs' memory read each other's inputs")
    outs = [(buffer_of[v], g.exprs[v]) for v in order]
    try:
        if g.kind == ELEMENTWISE:
            return elementwise_kernel(g.name, g.space, inputs, outs)
        elem = [(b, e) for (b, e), v in zip(outs, order) if tuple(v.shape) == g.space]
        row = [(b, e) for (b, e), v in zip(outs, order) if tuple(v.shape) != g.space]
        return reduction_kernel(g.name, g.space, g.reduce_dims, inputs, g.stages, row, elem, scratch,
                                SUM_BLOCK if cpu_forms else 0)
    except Exception as e:
        raise type(e)(f"lowering {g.describe()}: {e}") from e


def _index(g: FusionGroup, acc, buffer_of):
    """An IndexMap when the element index is affine in the loop indices, else a function of them."""
    flat = acc.flat
    if flat.affine:
        return IndexMap(tuple(flat.coeffs), flat.const)

    def index(at, flat=flat):
        return _bind_index(g, flat, at, buffer_of)
    return index


def _bind_index(g: FusionGroup, flat, at, buffer_of):
    mapping = {f"@i{k}": a for k, a in enumerate(at)}
    for node in walk_exprs(flat.expr):
        if node == FLAT_INDEX:
            mapping[node.name] = IndexMap.contiguous(g.space).index(at)
        elif isinstance(node, Arg) and node.name in g.args and node.name not in mapping:
            inner = g.args[node.name]
            idx = (IndexMap(tuple(inner.flat.coeffs), inner.flat.const).index(at) if inner.flat.affine
                   else _bind_index(g, inner.flat, at, buffer_of))
            mapping[node.name] = Load(buffer_of[inner.value], idx)
    return substitute(flat.expr, mapping)


def _inplace_pairs(g: FusionGroup, reads, writes) -> tuple:
    """(input, output) pairs an elementwise kernel may compute in place: the input is read only at
    the element the output is written to, and they have one dtype and size."""
    if g.kind != ELEMENTWISE:
        return ()
    identity = IndexMap.contiguous(g.space)
    size = math.prod(g.space)
    pairs = []
    for r in reads:
        maps = {(tuple(a.flat.coeffs), a.flat.const) if a.flat.affine else None
                for a in g.args.values() if a.value is r}
        if len(maps) != 1 or None in maps or math.prod(r.shape) != size:
            continue
        if next(iter(maps)) != (identity.strides, 0):
            continue
        for w in writes:
            if w.dtype is r.dtype and math.prod(w.shape) == size:
                pairs.append((r, w))
    return tuple(pairs)


def _store_order(g: FusionGroup, overwrites: dict) -> list | None:
    """g's outputs in an order to store them: an output stored over the memory of an input (computed
    in place, or a donated write-back) comes after every other output that reads that input, so all
    of them see its old element. None if no order works (two such outputs read each other's input).
    An elementwise kernel loads such inputs before storing anything (`elementwise_kernel`): any order."""
    if g.kind == ELEMENTWISE:
        return list(g.outputs)
    reads = {v: _reads(g, g.exprs[v]) for v in g.outputs}
    pending, order = list(g.outputs), []
    while pending:
        ready = next((v for v in pending if overwrites.get(v) is None or not any(
            overwrites[v] in reads[w] for w in pending if w is not v)), None)
        if ready is None:
            return None
        order.append(ready)
        pending.remove(ready)
    return order


def _reads(g: FusionGroup, expr) -> set:
    """Values an expression of g loads, including through data-dependent indices."""
    seen, stack = set(), [expr]
    while stack:
        for node in walk_exprs(stack.pop()):
            if isinstance(node, Arg) and node.name in g.args:
                acc = g.args[node.name]
                if acc.value not in seen:
                    seen.add(acc.value)
                    if not acc.flat.affine:
                        stack.append(acc.flat.expr)
    return seen


def _donations(graph: Graph, groups: list, input_index: dict) -> dict:
    """{new value: target input} for the write-backs a kernel may store straight into their target.

    Safe when: an elementwise kernel computes the new value and reads the target only at the element it
    writes (or not at all); no later step reads the target; neither the value nor the target's old value
    is another result; and the kernel comes after every step that may fail (a bounds check, an integer
    division, an extern that checks values): the program stops at the first failure, so a failed call
    still leaves the targets untouched. The caller passes a private copy of a target whose array it
    cannot hand over (`Program.run`)."""
    count = Counter(graph.results())
    targets = Counter(dst for dst, _ in graph.writebacks)
    writer = {v: k for k, g in enumerate(groups) for v in g.outputs}
    last_read = {}
    for k, g in enumerate(groups):
        for v in g.inputs:
            last_read[v] = k
    chosen = {}
    for dst, src in graph.writebacks:
        k = writer.get(src)
        if k is None or dst not in input_index or targets[dst] != 1 or count[src] != 1 or dst in count:
            continue                    # (a target whose old value is itself a result must stay intact)
        g = groups[k]
        if (g.kind != ELEMENTWISE or tuple(src.shape) != tuple(dst.shape) or src.dtype is not dst.dtype
                or tuple(src.shape) != tuple(g.space) or last_read.get(dst, -1) > k):
            continue
        if dst in g.inputs and not _inplace_pairs(g, (dst,), (src,)):
            continue
        chosen[src] = dst
    for k, g in enumerate(groups):          # a kernel whose donated outputs read each other's targets
        mine = {v: chosen[v] for v in g.outputs if v in chosen}
        while mine and _store_order(g, mine) is None:
            del chosen[next(iter(mine))]
            mine = {v: chosen[v] for v in g.outputs if v in chosen}
    last_failing = max((k for k, g in enumerate(groups) if _may_fail(g)), default=-1)
    return {v: dst for v, dst in chosen.items() if writer[v] > last_failing}


def _final_copies(graph: Graph, groups: list, input_index: dict, donations: dict) -> dict:
    """{new value: target input} for the other write-backs the program copies into their targets in its
    last kernels, after every step that may fail and every read of the targets, so the caller commits
    them without a copy either (W5's optimizer state updated by reduction kernels; 0-d step counters).
    Same conditions as `_donations` on results: neither the value nor the target's old value is another
    result."""
    count = Counter(graph.results())
    targets = Counter(dst for dst, _ in graph.writebacks)
    written = {v for g in groups for v in g.outputs}
    return {src: dst for dst, src in graph.writebacks
            if src not in donations and src in written and dst in input_index and targets[dst] == 1
            and count[src] == 1 and dst not in count and src.dtype is dst.dtype
            and tuple(src.shape) == tuple(dst.shape)}


def _copy_kernels(copies: dict, buffer_of: dict) -> list:
    """One elementwise kernel per shape storing every value of `copies` of that shape into its target."""
    by_shape: dict = {}
    for src, dst in copies.items():
        by_shape.setdefault(tuple(src.shape), []).append((buffer_of[src], buffer_of[dst]))
    kernels = []
    for k, (shape, pairs) in enumerate(by_shape.items()):
        inputs = {f"v{j}": (src, IndexMap.contiguous(shape)) for j, (src, _) in enumerate(pairs)}
        outputs = [(dst, Arg(f"v{j}", src.dtype)) for j, (src, dst) in enumerate(pairs)]
        kernels.append(elementwise_kernel(f"writeback{k}", shape, inputs, outputs))
    return kernels


def _may_fail(g: FusionGroup) -> bool:
    """Whether the step may stop the program with an error (an index check, an integer division,
    an extern op not known never to fail)."""
    if g.kind == EXTERN:
        return g.extern.op.name not in _NEVER_FAILING_EXTERNS
    if any(not acc.flat.affine for acc in g.args.values()):        # gathers: bounds-checked indices
        return True
    exprs = list(g.exprs.values()) + [f for stage in g.stages for f in vars(stage).values() if isinstance(f, Expr)]
    return any(isinstance(node, CheckedIndex) or (isinstance(node, Op) and node.op in _CHECKED_INT_OPS
                                                  and not node.dtype.is_floating_point and not _safe(node))
               for e in exprs for node in walk_exprs(e))


def _safe(node: Op) -> bool:
    """An integer division by a nonzero constant, or a power with a constant exponent >= 0 (index
    arithmetic: positions rebuilt from the flat index): it cannot fail."""
    d = node.args[1]
    return isinstance(d, Const) and (d.value >= 0 if node.op == "pow" else d.value != 0)


_CHECKED_INT_OPS = ("floordiv", "mod", "pow")       # division by zero, negative powers
# extern ops whose numpy kernels raise only on shapes (checked when traced), never on values
_NEVER_FAILING_EXTERNS = frozenset({"matmul", "rand", "randperm", "cat", "slice_scatter", "cumsum", "argmax",
                                    "argmin", "full", "arange", "constant"})


# ---------------------------------------------------------------- index_put as a scatter kernel
_SCATTER_DTYPES = ("float32", "float64", "int32", "int64")


def _scatter_form(node) -> bool:
    """index_put with one integer index tensor, values of x's dtype (a plain dtype: no rounding to
    emulate) and every input a tensor: what `scatter_kernel` computes exactly as numpy does."""
    if node.op.name != "index_put" or len(node.attrs["dims"]) != 1 or len(node.inputs) != 3:
        return False
    x, v, idx = node.inputs
    if not all(isinstance(a, Value) for a in node.inputs) or not x.shape:
        return False
    return (x.dtype.name in _SCATTER_DTYPES and v.dtype is x.dtype and node.out.dtype is x.dtype
            and not idx.dtype.is_floating_point and idx.dtype.name != "bool")


def _scatter_kernel(g: FusionGroup, buffer_of: dict):
    node = g.extern
    x, v, idx = node.inputs
    (xb, xf), (vb, vf), (ib, i_f) = g.extern_inputs
    access = [(buffer_of[b], IndexMap(tuple(f.coeffs), f.const)) for b, f in ((xb, xf), (ib, i_f), (vb, vf))]
    note = (f"index_put: a serial scatter kernel (copy, then one update per index in order"
            f"{', rows vectorized' if node.attrs['dims'][0] < len(x.shape) - 1 else ''}), not numpy's kernel")
    g.notes = [n for n in g.notes if not n.startswith("index_put:")] + [note]
    return scatter_kernel(g.name, buffer_of[node.out], *access, node.attrs["dims"][0],
                          (tuple(x.shape), tuple(idx.shape), tuple(v.shape)), node.attrs["accumulate"])


# ---------------------------------------------------------------- cat as a copy kernel
def _cat_form(g: FusionGroup, buffer_of: dict) -> bool:
    """A cat the copy kernel takes: pieces of the output's dtype read through affine layouts, none in
    the output's memory, and a nonempty output."""
    node = g.extern
    if node.op.name != "cat" or not all(isinstance(x, Value) for x in node.inputs) or not node.out.shape:
        return False
    out = buffer_of[node.out]
    return (math.prod(node.out.shape) > 0 and all(x.dtype is node.out.dtype for x in node.inputs)
            and all(flat.affine and buffer_of[b] is not out for b, flat in g.extern_inputs))


def _cat_kernel(g: FusionGroup, buffer_of: dict):
    node = g.extern
    pieces = [(buffer_of[b], IndexMap(tuple(flat.coeffs), flat.const), tuple(x.shape))
              for x, (b, flat) in zip(node.inputs, g.extern_inputs)]
    note = "cat: a copy kernel (one loop nest per piece), not numpy's concatenate"
    g.notes = [n for n in g.notes if not n.startswith("cat:")] + [note]
    g.lowered_as = "copy"
    return cat_kernel(g.name, buffer_of[node.out], pieces, node.attrs["dim"])


# ---------------------------------------------------------------- generated matmuls
MATMUL_NOTE = ("matmul: generated GEMM kernel ({isa}, {form} split across cores); "
               "its consumers fuse into the next kernel")


def _matmul_kernel(g: FusionGroup, buffer_of: dict, lanes: int) -> MatmulKernel | None:
    """A float32 matmul of matrices (batched, broadcast) as a `MatmulKernel` reading its operands
    through their strided layouts; None where the generated GEMM does not take it (vectors, other
    dtypes, `MatmulKernel.takes`, an output in an operand's memory)."""
    node = g.extern
    if node.op.name != "matmul" or len(g.extern_inputs) != 2:
        return None
    (a, a_flat), (b, b_flat) = g.extern_inputs
    x, y = node.inputs[:2]
    out = node.out
    if not all(v.dtype.name == "float32" for v in (x, y, out)) or len(x.shape) < 2 or len(y.shape) < 2:
        return None
    if not (a_flat.affine and b_flat.affine):
        return None
    (m, k), n = x.shape[-2:], y.shape[-1]
    batch = tuple(out.shape[:-2])

    def batched(flat, shape) -> IndexMap:      # strides over (*batch, rows, cols): broadcast dims read 0
        lead = len(batch) - (len(shape) - 2)
        strides = [0] * lead + [0 if size == 1 else c for c, size in zip(flat.coeffs[:-2], shape[:-2])]
        return IndexMap(tuple(strides) + tuple(flat.coeffs[-2:]), flat.const)

    a_map, b_map = batched(a_flat, x.shape), batched(b_flat, y.shape)
    a_buf, b_buf, out_buf = buffer_of[a], buffer_of[b], buffer_of[out]
    if not MatmulKernel.takes(batch, m, n, k, a_map.strides, b_map.strides) or out_buf in (a_buf, b_buf):
        return None
    kernel = MatmulKernel(g.name, a_buf, b_buf, out_buf, batch, m, n, k, a_map, b_map, lanes)
    note = matmul_note(kernel)
    g.notes = [note if n.startswith("matmul:") else n for n in g.notes]
    g.lowered_as = "gemm"
    return kernel


def matmul_note(kernel: MatmulKernel) -> str:
    """What explain() says of a generated GEMM: its form."""
    panels = f"{kernel.shape.panel}-column panels"
    if kernel.dot_form:
        form = f"a dot product per element: C has at most {kernel.DOT_COLUMNS} columns; row slices"
    elif kernel.b_in_place:
        form = f"{panels} (B read in place: at most {kernel.shape.row_block} rows)"
    else:
        form = panels
    return MATMUL_NOTE.format(isa="AVX-512" if kernel.lanes == 16 else "AVX2", form=form)


# ---------------------------------------------------------------- extern calls
def _extern_call(g: FusionGroup, buffer_of: dict) -> ExternCall:
    node = g.extern
    in_bufs = tuple(buffer_of[b] for b, _ in g.extern_inputs)
    out_bufs = tuple(buffer_of[v] for v in node.outputs)
    return ExternCall(g.name, _extern_fn(node, g.extern_inputs), in_bufs, out_bufs)


def _extern_fn(node, layouts):
    """fn(*input buffer arrays, *output arrays): the op's numpy kernel on views of its inputs."""
    op, attrs = node.op, node.attrs
    values = [x for x in node.inputs if isinstance(x, Value)]
    shapes = [tuple(x.shape) for x in values]
    views = []
    for x_shape, (base, flat) in zip(shapes, layouts):
        contiguous = IndexMap.contiguous(x_shape)
        identity = flat.affine and flat.const == 0 and math.prod(base.shape) == math.prod(x_shape) and tuple(
            c for c, s in zip(flat.coeffs, x_shape) if s != 1) == tuple(
            c for c, s in zip(contiguous.strides, x_shape) if s != 1)
        views.append(None if identity else (x_shape, tuple(flat.coeffs), flat.const))
    pattern = [isinstance(x, Value) for x in node.inputs]
    n_in = len(values)
    out_dtype = node.out.dtype
    fast_matmul = op.name == "matmul" and out_dtype.np in (np.float32, np.float64) and \
        out_dtype.name in ("float32", "float64")
    # slice_scatter of one dtype: straight into the output (the registry's kernel copies into a new array)
    scatter_key = tuple(map(slice, attrs["starts"], attrs["stops"], attrs["steps"])) \
        if op.name == "slice_scatter" and n_in == 2 and all(x.dtype is out_dtype for x in values) else None
    # cat of one dtype: straight into the output too
    cat_dim = attrs["dim"] if op.name == "cat" and all(x.dtype is out_dtype for x in values) else None

    def view(arr, spec, shape):
        if spec is None:                    # the whole buffer, in order
            return arr if arr.shape == shape else arr.reshape(shape)
        x_shape, coeffs, offset = spec      # a strided view of the (contiguous) buffer's memory, no copy
        if 0 in x_shape:
            return np.empty(x_shape, arr.dtype)
        item = arr.itemsize
        return np.ndarray(x_shape, arr.dtype, buffer=arr, offset=offset * item,
                          strides=tuple(c * item for c in coeffs))

    def run(*arrays):
        ins = [view(a, spec, shape) for a, spec, shape in zip(arrays[:n_in], views, shapes)]
        outs = arrays[n_in:]
        if fast_matmul:
            np.matmul(ins[0], ins[1], out=outs[0])
            return
        if scatter_key is not None:
            np.copyto(outs[0], ins[0])
            outs[0][scatter_key] = ins[1]
            return
        if cat_dim is not None:
            np.concatenate(ins, axis=cat_dim, out=outs[0])
            return
        it = iter(ins)
        args = [next(it) if is_value else x for x, is_value in zip(node.inputs, pattern)]
        data = run_kernel(op, args, attrs, out_dtype)
        np.copyto(outs[0], data, casting="unsafe")

    run.__name__ = f"extern_{op.name}"
    return run


# ---------------------------------------------------------------- helpers
def _nbytes(v: Value) -> int:
    return math.prod(v.shape) * v.dtype.np.itemsize


def _hint(v: Value) -> str:
    import re
    base = re.sub(r"\W+", "_", v.name or "").strip("_")[:24]
    return f"{base}_{v.id}" if base else f"v{v.id}"


def can_fail(node, error: type) -> bool:
    """Whether the kernel code of `node` has a run-time check raising `error` (the renderers' checks):
    data-dependent indexing (IndexError), integer division (ZeroDivisionError)."""
    if error is IndexError:
        return node.op.kind == INDEX
    return (error is ZeroDivisionError and node.op.name in ("floor_divide", "remainder")
            and not node.outputs[0].dtype.is_floating_point)


def group_of(step_name: str, groups: dict):
    """The fusion group (of `groups`, by name) a step comes from: named like it, or like it plus suffixes
    ("k12_reduce_sum" for its "k12_reduce_sum_partials"); None for write-back copies."""
    name = step_name
    while name:
        group = groups.get(name)
        if group is not None:
            return group
        name = name.rpartition("_")[0]
    return None


def step_bytes(step) -> int:
    """Bytes of the distinct buffers a step touches (each counted once)."""
    if isinstance(step, ExternCall):
        return sum(b.nbytes for b in set(step.inputs) | set(step.outputs))
    return sum(b.nbytes for b in step.buffers)


__all__ = ["LoweredProgram", "lower_program"]
