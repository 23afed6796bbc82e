"""Backend "cuda": `tt.compile` on an NVIDIA GPU (DESIGN.md "Backends").

The same pipeline as the LLVM backend (jit/llvm_backend.py, which this subclasses): fuse ->
plan memory and lower to loop-level kernels; then `codegen.cuda_c` renders the program to one CUDA
module and `runtime.cuda_engine` loads it (pycuda, imported lazily) into one device arena.

Every extern op becomes device steps (`device_steps`):
- matmul: float32/float64/float16/bfloat16 through the tiled `codegen.cuda_matmul.MatmulSpec` (halves
  accumulate in float32), operands read in place through their strides and batch strides, batch dims
  that do not fold into one stride given per dim (e.g. (B,1,..) @ (H,..)); integer and bool matmuls
  as an int64 reduction kernel (`cuda_steps.int_matmul_kernel`);
- normal random numbers (`cuda_steps.RandSpec`: the CPU's counter-based stream, same bits; uniform
  draws are the `random` op inside the fused kernels) and randperm (`cuda_sort`: the stream's words
  sorted on the device, the CPU's permutation);
- `cat`, `slice_scatter` (strided copy kernels); index_put with any index tensors (`cuda_index`: a
  scatter kernel, or with accumulate a device sort of the positions and an in-order sum per
  destination, deterministic and equal to the CPU's);
- cumsum (a running sum per row, in float32 for float16 as eager does) and argmax/argmin (two
  reductions per row).
Anything a device step does not take (an operand layout it cannot read, buffers that share memory, an
argmax of an empty tensor, which must raise) stays an `ExternCall` and runs its numpy kernel on the
host between kernels, with device->host and host->device copies of its buffers
(`CUDAProgram._host_step`): slow but correct, and `explain()` counts them. Steps may add scratch
buffers (the sort's); `build` places them after the planned arena.

The executable takes and returns numpy arrays: inputs are copied into the arena, every kernel
runs, and the outputs come back in fresh arrays. A failed in-kernel check (an index out of range)
raises after the run and returns nothing, so the caller commits nothing.
"""
from __future__ import annotations

import math

import numpy as np

from codegen.kernel import ExternCall, IndexMap, Kernel, Program
from runtime.memory import MemoryPlan, align_up

from .llvm_backend import LLVMBackend, LLVMExecutable
from .passes.fuse import EXTERN


class CUDACompileError(RuntimeError):
    """Fusion, lowering or CUDA code generation failed; the message carries the IR."""


def unavailable_reason() -> str | None:
    """Why backend "cuda" cannot run here (None when it can)."""
    import importlib.util
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed (pip install 'tracetorch[cuda]')"
    import tracetorch.cuda
    if not tracetorch.cuda.is_available():
        return "no CUDA device is available (tt.cuda.is_available() is False)"
    return None


class CUDAExecutable(LLVMExecutable):
    """callable(list of input arrays) -> list of fresh arrays for `graph.results()`."""
    source_title, source_suffix = "CUDA C", ".cu"

    @staticmethod
    def source_text(compiled) -> str:
        return compiled.rendered.source

    @staticmethod
    def temporary(compiled, buf):
        from runtime.cuda_engine import _driver
        out = np.empty(buf.shape, buf.dtype.np)
        if buf.nbytes:
            _driver().memcpy_dtoh(out, compiled.address[buf])
        return out

    def __call__(self, inputs: list) -> list:
        for a in inputs:
            if type(a) is not np.ndarray and not np.isscalar(a):
                return self.call_device(inputs)
        return self._call(inputs)

    def call_device(self, inputs: list, addresses: list | None = None) -> list:
        """Run on device arrays (host arrays among `inputs`, e.g. a CPU generator's state, are copied over);
        results are fresh DeviceArrays, nothing comes back to the host. `addresses`: the device address of
        each input as its program buffer (the eager path passes layout-adjusted ones)."""
        from ..device_array import DeviceArray
        lw = self.lowered
        ins = []
        for k in lw.input_positions:
            a = inputs[k]
            if type(a) is not DeviceArray:
                a = DeviceArray.from_host(np.asarray(a))
            elif addresses is None and (a.ptr % 16 or not a.is_contiguous()):
                a = a.copy()
            ins.append(a)
        ptrs = [addresses[k] for k in lw.input_positions] if addresses is not None else [a.ptr for a in ins]
        consts = self._device_constants
        if consts is None:
            consts = self._device_constants = [DeviceArray.from_host(c) for c in lw.constants]
        outs = [DeviceArray.empty(b.shape, b.dtype.np) for b in self.compiled.program.outputs]
        self.compiled.run_device(ptrs + [c.ptr for c in consts], [o.ptr for o in outs])
        results = []
        for kind, x in lw.results:
            if kind == "output":
                results.append(outs[x])
            elif kind == "input":
                a = inputs[x]
                results.append(a if type(a) is DeviceArray else DeviceArray.from_host(np.asarray(a)))
            else:
                results.append(DeviceArray.from_host(x))
        return results

    _device_constants = None

    def explain(self) -> str:
        steps = self.compiled.program.steps
        host = sum(isinstance(s, ExternCall) for s in steps)
        on_device = sum(g.kind == EXTERN for g in self.lowered.groups) - host
        return (super().explain() + f"\ncuda: {self.compiled.launches_per_call} launches per call; "
                f"{on_device} extern op(s) run on the device, {host} extern call(s) run on the host "
                "(with copies)")


class CUDABackend(LLVMBackend):
    name = "cuda"
    compile_error = CUDACompileError
    executable = CUDAExecutable
    donates_writebacks = False             # inputs are copied into the device arena: nothing to donate

    @property
    def engine(self):
        if self._engine is None:
            reason = unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"tt.compile(backend='cuda'): {reason}")
            from runtime.cuda_engine import default_engine
            self._engine = default_engine()
        return self._engine

    def build(self, lowered):
        program = device_steps(lowered)
        return self.engine.compile(program, with_scratch(lowered.plan, program))


def with_scratch(plan: MemoryPlan, program: Program) -> MemoryPlan:
    """`plan` with the temporaries device steps added (e.g. a sort's buffers) placed after its arena."""
    offsets, nbytes, end = dict(plan.offsets), dict(plan.nbytes), align_up(plan.size)
    for buf in program.temps:
        if buf.name not in offsets:
            offsets[buf.name], nbytes[buf.name] = end, buf.nbytes
            end = align_up(end + max(buf.nbytes, 1))
    return plan if end == align_up(plan.size) else MemoryPlan(offsets, nbytes, end)


def device_steps(lowered) -> Program:
    """The lowered program with the extern calls the device can run replaced by device steps (see the
    module docstring); anything else, and a step whose buffers share memory, stays an ExternCall."""
    program = lowered.program
    group_of = {g.index: g for g in lowered.groups}
    steps = []
    for k, step in enumerate(program.steps):
        g = group_of.get(k)
        replaced = None
        if isinstance(step, ExternCall) and g is not None and g.kind == EXTERN:
            make = _DEVICE_STEPS.get(g.extern.op.name)
            replaced = make(lowered, g, step) if make is not None else None
            if replaced is not None:
                bufs = {b.name for s in replaced for b in _step_buffers(s)}
                try:            # a device step's buffers must not share memory (a host call copies them)
                    lowered.plan.check_disjoint(sorted(bufs), step.name)
                except ValueError:
                    replaced = None
        steps += replaced if replaced is not None else [step]
    return Program(program.name, tuple(steps), program.inputs, program.outputs, program.updated)


def _step_buffers(step):
    return step.buffers if isinstance(step, Kernel) else step.inputs + step.outputs


def _operands(lowered, g):
    """Per value input of the extern node: (its Buffer, IndexMap over the input's own shape) or None
    (not affine)."""
    out = []
    for base, flat in g.extern_inputs:
        out.append((lowered.buffer_of[base], IndexMap(tuple(flat.coeffs), flat.const) if flat.affine else None))
    return out


def _matmul_step(lowered, g, step):
    from codegen.cuda_index import broadcast_map
    from codegen.cuda_matmul import MatmulSpec
    from codegen.cuda_steps import copy_kernel, int_matmul_kernel, row_major
    node = g.extern
    out = step.outputs[0]
    if len(g.extern_inputs) != 2:
        return None
    (a_buf, a_map), (b_buf, b_map) = _operands(lowered, g)
    a_in, b_in = (x for x in node.inputs if hasattr(x, "shape"))
    if a_map is None or b_map is None or a_buf.dtype is not out.dtype or b_buf.dtype is not out.dtype:
        return None
    *batch, m, n = node.out.shape
    k = a_in.shape[-1]
    if 0 in (m, n) or 0 in batch:
        return []                                                  # an empty result
    if k == 0:                                                     # sums of nothing
        return [copy_kernel(step.name, out.shape, out, row_major(out.shape), 0)]
    if not out.dtype.is_floating_point:
        rank = len(out.shape)
        return [int_matmul_kernel(step.name, out, a_buf, broadcast_map(a_map, a_in.shape, rank), b_buf,
                                  broadcast_map(b_map, b_in.shape, rank), k)]
    ta, a_strides, a_batch, oa = _matrix(a_map, tuple(a_in.shape), tuple(batch))
    tb, b_strides, b_batch, ob = _matrix(b_map, tuple(b_in.shape), tuple(batch))
    sa, sb = _fold(a_batch, batch), _fold(b_batch, batch)
    if sa is not None and sb is not None:
        batching = dict(a_batch_stride=sa, b_batch_stride=sb)
    else:
        batching = dict(batch_dims=tuple((size, ca, cb) for size, ca, cb in zip(batch, a_batch, b_batch) if size > 1))
    try:
        return [MatmulSpec(step.name, a_buf, b_buf, out, m, n, k, batch=math.prod(batch), trans_a=ta, trans_b=tb,
                           a_offset=oa, b_offset=ob, a_strides=a_strides, b_strides=b_strides, **batching)]
    except (ValueError, IndexError, TypeError):
        return None


def _matrix(m: IndexMap, shape: tuple, batch: tuple):
    """How MatmulSpec reads an operand of `shape` (batch dims broadcast to `batch`) through `m`:
    (transposed load order, (row, column) element strides, its stride per dim of `batch` (0: broadcast),
    offset)."""
    rows, cols = shape[-2:]
    strides = (m.strides[-2] if rows > 1 else 0, m.strides[-1] if cols > 1 else 0)
    trans = strides[0] == 1 and strides[1] != 1           # columns contiguous: load the tile column-wise
    own = tuple(0 if size == 1 else c for size, c in zip(shape[:-2], m.strides[:-2]))
    return trans, strides, (0,) * (len(batch) - len(own)) + own, m.offset


def _fold(strides: tuple, batch: tuple):
    """The one stride of the flattened batch index that gives these per-dim strides, or None."""
    stride, inner = None, 1
    for size, c in reversed(tuple(zip(batch, strides))):
        if size > 1:
            if stride is None:
                stride = c
            if c != stride * inner:
                return None
        inner *= size
    return stride or 0


def _rand_step(lowered, g, step):
    from codegen.cuda_steps import RandSpec
    (seed, seed_map), (offset, offset_map) = _operands(lowered, g)
    if seed_map is None or offset_map is None or not g.extern.attrs["normal"]:
        return None
    try:
        return [RandSpec(step.name, seed, offset, step.outputs[0], seed_at=seed_map.offset,
                         offset_at=offset_map.offset)]
    except TypeError:
        return None


def _cat_step(lowered, g, step):
    """One copy kernel per input, into its slab of the output."""
    from codegen.cuda_steps import copy_kernel, row_major
    out, dim = step.outputs[0], g.extern.attrs["dim"]
    full = row_major(out.shape)
    kernels, start = [], 0
    for j, ((buf, m), x) in enumerate(zip(_operands(lowered, g), g.extern.inputs)):
        if m is None:
            return None
        size = x.shape[dim]
        if size:
            dst = IndexMap(full.strides, start * full.strides[dim])
            kernels.append(copy_kernel(f"{step.name}_{j}", x.shape, out, dst, buf, m))
        start += size
    return kernels


def _slice_scatter_step(lowered, g, step):
    """A copy of the base, then the source (broadcast) over the region."""
    from codegen.cuda_steps import copy_kernel, row_major
    from ..ops.movement import _slice_len
    node, out = g.extern, step.outputs[0]
    operands = _operands(lowered, g)
    if any(m is None for _, m in operands):
        return None
    attrs = node.attrs
    region = tuple(_slice_len(s, a, b, c) for s, a, b, c in zip(out.shape, attrs["starts"], attrs["stops"],
                                                                 attrs["steps"]))
    full = row_major(out.shape)
    (base_buf, base_map) = operands[0]
    kernels = [copy_kernel(f"{step.name}_base", out.shape, out, full, base_buf, base_map)]
    dst = full.slice(attrs["starts"], attrs["steps"])
    src = node.inputs[1]
    if hasattr(src, "shape"):
        src_buf, src_map = operands[1]
        lead = len(region) - len(src.shape)
        strides = (0,) * lead + tuple(0 if s == 1 else st for s, st in zip(src.shape, src_map.strides))
        kernels.append(copy_kernel(f"{step.name}_src", region, out, dst, src_buf, IndexMap(strides, src_map.offset)))
    else:
        kernels.append(copy_kernel(f"{step.name}_src", region, out, dst, src))
    if 0 in region:
        kernels.pop()
    return kernels


def _index_put_step(lowered, g, step):
    """A copy of the base, then a scatter kernel (or, with accumulate, the deterministic sort-and-sum of
    `codegen.cuda_index`)."""
    from codegen.cuda_index import IndexRegion, SegmentSumSpec, broadcast_map, index_keys_kernel, index_scatter_kernel
    from codegen.cuda_sort import SortPlan
    from codegen.cuda_steps import copy_kernel, row_major
    node, out = g.extern, step.outputs[0]
    values = iter(_operands(lowered, g))
    (base_buf, base_map), (v, v_map), *idx_ops = [next(values) if hasattr(x, "shape") else (x, None)
                                                  for x in node.inputs]
    x, v_in, *idx = node.inputs
    if base_map is None or any(m is None for _, m in idx_ops) or (hasattr(v_in, "shape") and v_map is None):
        return None
    kernels = [copy_kernel(f"{step.name}_base", out.shape, out, row_major(out.shape), base_buf, base_map)]
    region = IndexRegion(tuple(out.shape), tuple(node.attrs["dims"]),
                         tuple(np.broadcast_shapes(*(tuple(i.shape) for i in idx))))
    if region.positions == 0 or 0 in out.shape:
        return kernels
    indices = [(buf, broadcast_map(m, i.shape, len(region.index_shape))) for (buf, m), i in zip(idx_ops, idx)]
    if hasattr(v_in, "shape"):
        v_map = broadcast_map(v_map, v_in.shape, len(region.region))
    if not node.attrs["accumulate"]:
        return kernels + [index_scatter_kernel(f"{step.name}_put", out, region, indices, v, v_map)]
    sort = SortPlan.make(step.name, region.positions)
    return (kernels + [index_keys_kernel(f"{step.name}_keys", region, indices, sort.keys[0], sort.vals[0])]
            + sort.steps() + [SegmentSumSpec(f"{step.name}_add", region, sort.sorted_keys, sort.sorted_vals, out,
                                             v, v_map)])


def _cumsum_step(lowered, g, step):
    """A running sum per row (float16 and bfloat16 add in float32 and round at the store, as eager does);
    a 0-d cumsum is a (casting) copy."""
    from codegen.cuda_steps import copy_kernel, cumsum_kernel
    ((x_buf, x_map),), out = _operands(lowered, g), step.outputs[0]
    if x_map is None:
        return None
    if not out.shape:
        return [copy_kernel(step.name, (), out, IndexMap((), 0), x_buf, x_map)]
    if 0 in out.shape:
        return []
    return [cumsum_kernel(step.name, out, g.extern.attrs["dim"], x_buf, x_map)]


def _arg_step(lowered, g, step):
    from codegen.cuda_steps import arg_kernel, copy_kernel
    node, out = g.extern, step.outputs[0]
    ((x_buf, x_map),) = _operands(lowered, g)
    shape = tuple(node.inputs[0].shape)
    if x_map is None or 0 in shape:                 # (an empty tensor: the host call raises numpy's error)
        return None
    if not shape:
        return [copy_kernel(step.name, (), out, IndexMap((), 0), 0)]
    dim = node.attrs["dim"]
    dims = tuple(range(len(shape))) if dim is None else (dim,)
    combine = "max" if node.op.name == "argmax" else "min"
    return [arg_kernel(step.name, combine, out, x_buf, x_map, shape, dims)]


def _randperm_step(lowered, g, step):
    from codegen.cuda_sort import randperm_steps
    (seed, seed_map), (offset, offset_map) = _operands(lowered, g)
    if seed_map is None or offset_map is None:
        return None
    return randperm_steps(step.name, seed, offset, step.outputs[0], seed_map.offset, offset_map.offset)


_DEVICE_STEPS = {"matmul": _matmul_step, "rand": _rand_step, "randperm": _randperm_step, "cat": _cat_step,
                 "slice_scatter": _slice_scatter_step, "index_put": _index_put_step, "cumsum": _cumsum_step,
                 "argmax": _arg_step, "argmin": _arg_step}


BACKEND = CUDABackend()
__all__ = ["CUDABackend", "CUDAExecutable", "CUDACompileError", "BACKEND", "unavailable_reason", "device_steps",
           "with_scratch"]
