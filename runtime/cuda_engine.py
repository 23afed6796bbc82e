"""The CUDA engine: compile a `Program` to one CUDA module once, then run it with prepared launches.

Compile: `codegen.cuda_c.render_program` gives one source module for the whole program; pycuda's
`SourceModule` runs nvcc on it once and keeps the cubin in its on-disk cache (keyed by source, options
and nvcc version), so a second process loads the cubin without running nvcc. Identical programs share
one loaded module in a process.

Memory: one device allocation per compiled program (the arena): the temporaries at the offsets of the
program's `MemoryPlan`, then a slot for every input and output, then the int32 error flag. Addresses
never move, so launches take precomputed integers.

Run: `CUDAProgram(*arrays)` copies the inputs into their slots, launches every kernel in order with
`prepared_call` (ExternCall steps run on the host on copies of their buffers), then copies the outputs
and the error flag (adjacent in the arena) back in one transfer into a fresh host buffer; a failed
check raises its exception (IndexError for an index out of range) and returns nothing.

pycuda is optional: it is imported inside functions, so this module imports without it.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codegen.cuda_c import NVCC_OPTIONS, RenderedCuda, render_program
from codegen.kernel import ExternCall, Kernel, Program

from .disk_cache import default_directory
from .memory import MemoryPlan, align_up, sequential_plan

SLOT_ALIGN = 256      # inputs and outputs start 256-byte aligned (vector loads need 16)


_DRIVER = None


def _driver():
    """pycuda.driver with a current context (the device's primary context unless one was current)."""
    global _DRIVER
    if _DRIVER is None:
        import pycuda.driver as drv
        drv.init()
        if drv.Context.get_current() is None:
            import pycuda.autoprimaryctx  # noqa: F401  (retains and pushes the primary context; pops it at exit)
        _DRIVER = drv
    return _DRIVER


@dataclass
class CUDAStats:
    compiles: int = 0             # SourceModule builds in this process (nvcc, or a pycuda disk-cache hit)
    memory_hits: int = 0          # programs whose module was already loaded in this process
    compile_seconds: float = 0.0


class CUDAEngine:
    """Compiles programs for the current CUDA device; loaded modules are shared between identical programs."""

    def __init__(self, cache_dir: str | None = None, options: tuple[str, ...] = NVCC_OPTIONS):
        drv = _driver()
        device = drv.Context.get_device()
        major, minor = device.compute_capability()
        self.arch = f"sm_{major}{minor}"          # codegen.cuda_c.ARCH (sm_90) is what CI compiles for
        self.sm_count = device.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)
        self.options = list(options)
        self.cache_dir = str(cache_dir or default_directory().parent / "cuda")
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        self.stats = CUDAStats()
        self._modules: dict[str, object] = {}
        self._lock = threading.Lock()

    def compile(self, program: Program, plan: MemoryPlan | None = None) -> CUDAProgram:
        rendered = render_program(program)
        return CUDAProgram(self, program, rendered, self.module(rendered.source),
                           plan or sequential_plan(program.temps))

    def module(self, source: str):
        """The loaded module of `source` (nvcc runs only on a miss of both this process and pycuda's disk cache)."""
        with self._lock:
            module = self._modules.get(source)
            if module is not None:
                self.stats.memory_hits += 1
                return module
            from pycuda.compiler import SourceModule
            t0 = time.perf_counter()
            module = SourceModule(source, no_extern_c=True, options=self.options, arch=self.arch,
                                  cache_dir=self.cache_dir)
            self.stats.compiles += 1
            self.stats.compile_seconds += time.perf_counter() - t0
            self._modules[source] = module
            return module


class CUDAProgram:
    """A program loaded on the device: call it with host arrays, get fresh host arrays back.

    Calls are serialized by a lock (one arena per program)."""

    def __init__(self, engine: CUDAEngine, program: Program, rendered: RenderedCuda, module, plan: MemoryPlan):
        drv = _driver()
        self.engine, self.program, self.rendered = engine, program, rendered
        self._module = module
        missing = [b.name for b in program.temps if b.name not in plan.offsets]
        if missing:
            raise ValueError(f"program {program.name!r}: the memory plan has no place for {missing}")
        for step in program.steps:
            if not isinstance(step, ExternCall):
                buffers = step.buffers if isinstance(step, Kernel) else step.inputs + step.outputs
                plan.check_disjoint([b.name for b in buffers], f"step {step.name!r}")
        offsets, err_offset, size = arena_layout(program, plan)
        self.arena = drv.mem_alloc(size)
        base = int(self.arena)
        self.address = {buf: base + off for buf, off in offsets.items()}
        self._err = base + err_offset
        drv.memset_d32(self._err, 0, 1)
        # the outputs and the flag are adjacent: one copy brings them all back
        self._back_start = min((offsets[b] for b in program.outputs), default=err_offset)
        self._back_bytes = err_offset + 4 - self._back_start
        self._back = [(b.shape, b.dtype.np, offsets[b] - self._back_start, b.nbytes) for b in program.outputs]
        self._err_at = err_offset - self._back_start
        self._steps = []
        for step, launch in zip(program.steps, rendered.launches):
            if launch is None:
                self._steps.append(("host", step, None, None))
                continue
            fn = module.get_function(launch.symbol)
            fn.prepare("P" * (len(launch.buffers) + 1))
            args = tuple(self.address[b] for b in launch.buffers) + (self._err,)
            grid = launch.grid(engine.sm_count)
            if math.prod(grid) > 0 and launch.work > 0:
                self._steps.append(("kernel", fn, (grid, (launch.block, 1, 1)), args))
        self._lock = threading.Lock()

    def poison(self, byte: int = 0xFF) -> None:
        """Fill every buffer slot with `byte` (0xFF: float NaNs), so a kernel that skips an element shows."""
        _driver().memset_d8(int(self.arena), byte, self._err - int(self.arena))

    @property
    def launches_per_call(self) -> int:
        return sum(1 for kind, *_ in self._steps if kind == "kernel")

    def __call__(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        program = self.program
        if len(inputs) != len(program.inputs):
            raise TypeError(f"program {program.name!r} takes {len(program.inputs)} inputs, got {len(inputs)}")
        drv = _driver()
        with self._lock:
            for buf, a in zip(program.inputs, inputs):
                a = np.asarray(a)
                if a.dtype != buf.dtype.np or a.shape != buf.shape:
                    raise TypeError(f"program {program.name!r}: input {buf.name!r} must be {buf.dtype.np}"
                                    f"{list(buf.shape)}, got {a.dtype}{list(a.shape)}")
                if buf.nbytes:
                    drv.memcpy_htod(self.address[buf], np.ascontiguousarray(a))
            for kind, fn, dims, args in self._steps:
                if kind == "kernel":
                    fn.prepared_call(dims[0], dims[1], *args)
                else:
                    self._host_step(drv, fn)
            back = np.empty(self._back_bytes, np.uint8)           # fresh every call: results are the caller's
            drv.memcpy_dtoh(back, int(self.arena) + self._back_start)     # waits for the kernels
            code = int(back[self._err_at:self._err_at + 4].view(np.int32)[0])
            if code:
                drv.memset_d32(self._err, 0, 1)
                raise self.rendered.checks[code - 1].exception(program.name)
            return tuple(back[off:off + nbytes].view(dtype).reshape(shape) for shape, dtype, off, nbytes in self._back)

    def _host_step(self, drv, step, address=None) -> None:
        """An ExternCall: run its numpy function on host copies of its buffers (slow, but correct)."""
        address = address or self.address
        arrays = {}
        for buf in step.inputs + step.outputs:
            arrays[buf] = np.empty(buf.shape, buf.dtype.np)
            if buf in step.inputs and buf.nbytes:
                drv.memcpy_dtoh(arrays[buf], address[buf])
        step.fn(*[arrays[b] for b in step.inputs], *[arrays[b] for b in step.outputs])
        for buf in step.outputs:
            if buf.nbytes:
                drv.memcpy_htod(address[buf], np.ascontiguousarray(arrays[buf]))

    # ------------------------------------------------------------ device-resident calls
    def run_device(self, inputs: list[int], outputs: list[int]) -> None:
        """Run on device memory the caller owns: `inputs`/`outputs` are the device addresses of the program's
        input and output buffers (16-byte aligned, as the vector loads need). Nothing goes through the host
        but the error flag, and only for programs with checks; kernels run in the stream's order, so the
        call returns without waiting for them."""
        if len(inputs) != len(self.program.inputs) or len(outputs) != len(self.program.outputs):
            raise TypeError(f"program {self.program.name!r} takes {len(self.program.inputs)} inputs and "
                            f"{len(self.program.outputs)} outputs, got {len(inputs)} and {len(outputs)}")
        steps = self._device_steps()
        given = list(inputs) + list(outputs)
        drv = _driver()
        with self._lock:
            for kind, fn, dims, args, subs in steps:
                if kind == "kernel":
                    if subs:
                        args = list(args)
                        for pos, k in subs:
                            args[pos] = given[k]
                    fn.prepared_call(dims[0], dims[1], *args)
                else:
                    address = dict(self.address)
                    for buf, k in self._given_index.items():
                        address[buf] = given[k]
                    self._host_step(drv, fn, address)
            if self.rendered.checks:
                flag = np.zeros(1, np.int32)
                drv.memcpy_dtoh(flag, self._err)
                if flag[0]:
                    drv.memset_d32(self._err, 0, 1)
                    raise self.rendered.checks[int(flag[0]) - 1].exception(self.program.name)

    def _device_steps(self) -> list:
        """Per step: (kind, fn, dims, fixed args, [(arg position, index into inputs + outputs)])."""
        if getattr(self, "_dsteps", None) is None:
            self._given_index = {b: k for k, b in enumerate(self.program.inputs + self.program.outputs)}
            by_address = {self.address[b]: k for b, k in self._given_index.items()}
            steps = []
            for kind, fn, dims, args in self._steps:
                if kind == "kernel":
                    subs = [(pos, by_address[a]) for pos, a in enumerate(args) if a in by_address]
                    steps.append((kind, fn, dims, args, subs))
                else:
                    steps.append((kind, fn, dims, args, None))
            self._dsteps = steps
        return self._dsteps


def arena_layout(program: Program, plan: MemoryPlan) -> tuple[dict, int, int]:
    """({Buffer: byte offset}, error flag offset, arena bytes): temporaries where the plan puts them, then
    every input and output in its own SLOT_ALIGN-aligned slot, then the flag."""
    offsets = {buf: plan.offsets[buf.name] for buf in program.temps}
    end = align_up(plan.size, SLOT_ALIGN)
    for buf in program.inputs + program.outputs:
        offsets[buf] = end
        end = align_up(end + max(buf.nbytes, 1), SLOT_ALIGN)
    return offsets, end, end + SLOT_ALIGN


_DEFAULT_ENGINE: CUDAEngine | None = None


def default_engine() -> CUDAEngine:
    """The process-wide CUDA engine (created on first use; needs pycuda and a device)."""
    global _DEFAULT_ENGINE
    if _DEFAULT_ENGINE is None:
        _DEFAULT_ENGINE = CUDAEngine()
    return _DEFAULT_ENGINE
