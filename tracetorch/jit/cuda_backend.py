"""Backend "cuda": `tt.compile` on an NVIDIA GPU (DESIGN.md "Backends").

The same pipeline as the LLVM backend (jit/llvm_backend.py, which this subclasses): fuse ->
plan memory and lower to loop-level kernels; then `codegen.cuda_c` renders the program to one CUDA
module and `runtime.cuda_engine` loads it (pycuda, imported lazily) into one device arena.

Extern ops that become device steps (`device_steps`): float32/float64 matmuls, batched too, whose
operands are plain, transposed or strided views of their buffers (`codegen.cuda_matmul.MatmulSpec`);
random numbers (`codegen.cuda_steps.RandSpec`: the CPU's counter-based stream, same bits); `cat`,
`slice_scatter` (strided copy kernels), index_put without accumulate along one dim with a 1-D
index (a copy and a scatter kernel: writes through non-slice views with autograd), cumsum (a running
sum per row) and argmax/argmin (two reductions per row). The rest stays an
`ExternCall` and runs its numpy kernel on the host between kernels, with device->host and
host->device copies of its buffers (`CUDAProgram._host_step`): slow but correct, and `explain()`
counts them. Those are index_put with accumulate (scatter-add: atomics) or several index tensors,
randperm (an argsort), float16 cumsum (numpy rounds each partial sum to half), integer and
float16/bfloat16 matmuls, and matmuls whose batch dims do not fold into one stride (e.g. (B,1,..) @
(1,H,..)).

The executable takes and returns numpy arrays: inputs are copied into the arena, every kernel
runs, and the outputs come back in fresh arrays. A failed in-kernel check (an index out of range)
raises after the run and returns nothing, so the caller commits nothing.
"""
from __future__ import annotations

import math

import numpy as np

from codegen.kernel import ExternCall, IndexMap, Kernel, Program
from tracetorch.dtypes import float16, float32, float64

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
        return self.engine.compile(device_steps(lowered), lowered.plan)


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
    from codegen.cuda_matmul import MatmulSpec
    node = g.extern
    out = step.outputs[0]
    if out.dtype not in (float32, float64) or len(g.extern_inputs) != 2:
        return None
    (a_buf, a_map), (b_buf, b_map) = _operands(lowered, g)
    a_in, b_in = (x for x in node.inputs if hasattr(x, "shape"))
    if a_map is None or b_map is None or a_buf.dtype is not out.dtype or b_buf.dtype is not out.dtype:
        return None
    *batch, m, n = node.out.shape
    k = a_in.shape[-1]
    if 0 in (m, n, k) or 0 in batch:
        return None
    a = _matrix(a_map, tuple(a_in.shape), tuple(batch))
    b = _matrix(b_map, tuple(b_in.shape), tuple(batch))
    if a is None or b is None:
        return None
    (ta, a_strides, sa, oa), (tb, b_strides, sb, ob) = a, b
    try:
        return [MatmulSpec(step.name, a_buf, b_buf, out, m, n, k, batch=math.prod(batch), trans_a=ta, trans_b=tb,
                           a_batch_stride=sa, b_batch_stride=sb, a_offset=oa, b_offset=ob, a_strides=a_strides,
                           b_strides=b_strides)]
    except (ValueError, IndexError, TypeError):
        return None


def _matrix(m: IndexMap, shape: tuple, batch: tuple):
    """How MatmulSpec reads an operand of `shape` (batch dims broadcast to `batch`) through `m`:
    (transposed load order, (row, column) element strides, batch stride, offset), or None when its batch
    dims do not fold into one stride."""
    rows, cols = shape[-2:]
    strides = (m.strides[-2] if rows > 1 else 0, m.strides[-1] if cols > 1 else 0)
    trans = strides[0] == 1 and strides[1] != 1           # columns contiguous: load the tile column-wise
    own = (0,) * (len(batch) - (len(shape) - 2)) + tuple(m.strides[:-2])
    own_sizes = (1,) * (len(batch) - (len(shape) - 2)) + tuple(shape[:-2])
    stride, inner = None, 1
    for size, own_size, c in reversed(tuple(zip(batch, own_sizes, own))):
        if size > 1:
            c = c if own_size > 1 else 0
            if stride is None:
                stride = c // inner if c % inner == 0 else -1
            if stride < 0 or c != stride * inner:
                return None
        inner *= size
    return trans, strides, stride or 0, m.offset


def _rand_step(lowered, g, step):
    from codegen.cuda_steps import RandSpec
    (seed, seed_map), (offset, offset_map) = _operands(lowered, g)
    if seed_map is None or offset_map is None:
        return None
    try:
        return [RandSpec(step.name, seed, offset, step.outputs[0], normal=bool(g.extern.attrs["normal"]),
                         seed_at=seed_map.offset, offset_at=offset_map.offset)]
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
    """index_put without accumulate along one dim with a 1-D index: a copy of the base, then a scatter
    kernel (accumulate=True needs atomics: it stays on the host)."""
    from codegen.cuda_steps import copy_kernel, row_major, scatter_kernel
    node, out = g.extern, step.outputs[0]
    dims = node.attrs["dims"]
    if node.attrs["accumulate"] or len(dims) != 1:
        return None
    values = iter(_operands(lowered, g))
    operands = [next(values) if hasattr(x, "shape") else (x, None) for x in node.inputs]
    (base_buf, base_map), (v, v_map), (idx_buf, idx_map) = operands
    x, v_in, idx = node.inputs
    if base_map is None or idx_map is None or len(idx.shape) != 1 or (hasattr(v_in, "shape") and v_map is None):
        return None
    dim = dims[0]
    kernels = [copy_kernel(f"{step.name}_base", out.shape, out, row_major(out.shape), base_buf, base_map)]
    if idx.shape[0] == 0 or 0 in out.shape:
        return kernels
    if hasattr(v_in, "shape"):             # v broadcast to the region (pre, j, post)
        region = tuple(out.shape[:dim]) + (idx.shape[0],) + tuple(out.shape[dim + 1:])
        lead = len(region) - len(v_in.shape)
        v_map = IndexMap((0,) * lead + tuple(0 if s == 1 else st for s, st in zip(v_in.shape, v_map.strides)),
                         v_map.offset)
    kernels.append(scatter_kernel(f"{step.name}_put", out, dim, idx.shape[0], idx_buf, idx_map, v, v_map))
    return kernels


def _cumsum_step(lowered, g, step):
    """A running sum per row; float16 stays on the host (numpy rounds the running sum to half each step)."""
    from codegen.cuda_steps import cumsum_kernel
    ((x_buf, x_map),), out = _operands(lowered, g), step.outputs[0]
    if x_map is None or out.dtype is float16 or not out.shape or 0 in out.shape:
        return None
    return [cumsum_kernel(step.name, out, g.extern.attrs["dim"], x_buf, x_map)]


def _arg_step(lowered, g, step):
    from codegen.cuda_steps import arg_kernel
    node, out = g.extern, step.outputs[0]
    ((x_buf, x_map),) = _operands(lowered, g)
    shape = tuple(node.inputs[0].shape)
    if x_map is None or not shape or 0 in shape:
        return None
    dim = node.attrs["dim"]
    dims = tuple(range(len(shape))) if dim is None else (dim,)
    combine = "max" if node.op.name == "argmax" else "min"
    return [arg_kernel(step.name, combine, out, x_buf, x_map, shape, dims)]


_DEVICE_STEPS = {"matmul": _matmul_step, "rand": _rand_step, "cat": _cat_step, "slice_scatter": _slice_scatter_step,
                 "index_put": _index_put_step, "cumsum": _cumsum_step, "argmax": _arg_step, "argmin": _arg_step}


BACKEND = CUDABackend()
__all__ = ["CUDABackend", "CUDAExecutable", "CUDACompileError", "BACKEND", "unavailable_reason", "device_steps"]
