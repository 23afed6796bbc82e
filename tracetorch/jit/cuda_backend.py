"""Backend "cuda": `tt.compile` on an NVIDIA GPU (DESIGN.md "Backends").

The same pipeline as the LLVM backend (jit/llvm_backend.py, which this subclasses): fuse ->
plan memory and lower to loop-level kernels; then `codegen.cuda_c` renders the program to one CUDA
module and `runtime.cuda_engine` loads it (pycuda, imported lazily) into one device arena.

Matmuls: a 2-D float32 matmul whose operands are whole buffers, plain or transposed, becomes a
device step (`codegen.cuda_matmul.MatmulSpec`). Every other extern op (other matmuls, ops the
kernels cannot express) stays an `ExternCall` and runs its numpy kernel on the host between
kernels, with device->host and host->device copies of its buffers (`CUDAProgram._host_step`):
slow but correct, and `explain()` counts them.

The executable takes and returns numpy arrays: inputs are copied into the arena, every kernel
runs, and the outputs come back in fresh arrays. A failed in-kernel check (an index out of range)
raises after the run and returns nothing, so the caller commits nothing.
"""
from __future__ import annotations

import numpy as np

from codegen.kernel import ExternCall, Program

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
                f"{on_device} extern matmul(s) run on the device, {host} extern call(s) run on the host "
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
        return self.engine.compile(device_matmuls(lowered), lowered.plan)


def device_matmuls(lowered) -> Program:
    """The lowered program with each eligible float32 2-D matmul ExternCall replaced by a `MatmulSpec` step."""
    from codegen.cuda_matmul import MatmulSpec
    from tracetorch.dtypes import float32
    program = lowered.program
    steps = list(program.steps)
    for g in lowered.groups:
        step, node = steps[g.index], g.extern
        if g.kind != EXTERN or not isinstance(step, ExternCall) or node.op.name != "matmul":
            continue
        if node.out.dtype is not float32 or len(g.extern_inputs) != 2 or len(node.out.shape) != 2:
            continue
        (a_val, a_map), (b_val, b_map) = g.extern_inputs
        a_in, b_in = (x for x in node.inputs if hasattr(x, "shape"))
        if len(a_in.shape) != 2 or len(b_in.shape) != 2:
            continue
        (m, k), (_, n) = a_in.shape, b_in.shape
        if 0 in (m, n, k):
            continue
        a_layout, b_layout = _layout(a_map, (m, k)), _layout(b_map, (k, n))
        a_buf, b_buf = lowered.buffer_of[a_val], lowered.buffer_of[b_val]
        if None in (a_layout, b_layout) or a_buf.size != m * k or b_buf.size != k * n:
            continue
        if a_buf.dtype is not float32 or b_buf.dtype is not float32:
            continue
        try:                  # a device step's buffers must not share memory (a host call copies them)
            lowered.plan.check_disjoint([a_buf.name, b_buf.name, step.outputs[0].name], step.name)
        except ValueError:
            continue
        steps[g.index] = MatmulSpec(step.name, a_buf, b_buf, step.outputs[0], m, n, k,
                                    trans_a=a_layout, trans_b=b_layout)
    return Program(program.name, tuple(steps), program.inputs, program.outputs)


def _layout(flat, shape) -> bool | None:
    """False: the operand is its buffer row-major; True: its buffer holds the transpose; None: neither."""
    if not flat.affine or flat.const != 0:
        return None
    rows, cols = shape
    coeffs = tuple(flat.coeffs)
    if _same(coeffs, (cols, 1), shape):
        return False
    if _same(coeffs, (1, rows), shape):
        return True
    return None


def _same(coeffs, want, shape) -> bool:
    return all(c == w for c, w, s in zip(coeffs, want, shape) if s != 1)


BACKEND = CUDABackend()
__all__ = ["CUDABackend", "CUDAExecutable", "CUDACompileError", "BACKEND", "unavailable_reason"]
