"""The LLVM CPU engine: compile a `Program` to native code once, then call it cheaply.

Compile: render the program to LLVM IR (codegen.llvm_ir), name the module by
its cache key, optimize at O3 for the host CPU (new pass manager, loop and
SLP vectorization), emit an object file. Object code is cached on disk
(`runtime.disk_cache`), so a second process links the cached object and runs
no LLVM optimization or code generation at all. A small index maps a hash
of the program itself (`runtime.program_key`) to its object's key and entry
points, so a program seen before (in this process or on disk) is not even
rendered to IR again.

Load: the object is linked into an ORC LLJIT as its own library (with the
current process's symbols, for libm); the library's resource tracker frees
the code when nothing holds it any more (MCJIT would keep it forever).

Call: `CompiledProgram(*inputs)` validates the inputs, writes their
addresses into the program's buffer table (temporaries' addresses, in the
arena, were written once), takes the outputs from a caching allocator and,
for a program whose kernels are all small and which has no extern steps,
makes ONE foreign call to the generated `program(table, err)` entry. Big
kernels split their outer loop across threads; extern steps (e.g. matmul
through numpy) run in Python between kernels. After the call the int32
error flag is checked and a failed check raises its exception.
"""
from __future__ import annotations

import ctypes
import json
import threading
import time
import weakref
from dataclasses import dataclass, field

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from codegen.kernel import ExternCall, Loop, Program, Store, walk_stmts
from codegen.llvm_ir import Check, RenderedProgram, render_program

from .disk_cache import DiskCache, cache_key
from .interrupts import FinishedInterrupt
from .memory import Arena, BufferPool, MemoryPlan, sequential_plan
from .parallel import ThreadTeam, default_threads
from .program_key import program_key

_EXCEPTIONS = {e.__name__: e for e in (IndexError, ValueError, ZeroDivisionError, TypeError, ArithmeticError)}



PARALLEL_MIN_WORK = 1 << 18   # innermost iterations below which a kernel runs on one thread (a fork-join
                              # costs ~15-20 us; 2^18 simple iterations take ~100 us on one core)
ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
RANGE_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)

_llvm_ready = False


def _init_llvm() -> None:
    global _llvm_ready
    if not _llvm_ready:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _llvm_ready = True


def host_target_machine() -> llvm.TargetMachine:
    """A target machine for the host CPU at -O3. One per user: MCJIT/ORC may take ownership."""
    _init_llvm()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(), opt=3, jit=True)


@dataclass
class EngineStats:
    compiles: int = 0          # modules optimized and compiled by LLVM in this process
    disk_hits: int = 0         # modules loaded from the on-disk cache
    memory_hits: int = 0       # programs whose code was already loaded in this process
    compile_seconds: float = 0.0
    load_seconds: float = 0.0  # all time in compile(): rendering, hashing, loading (and LLVM when it compiles)
    timings: dict = field(default_factory=dict)


class LLVMEngine:
    """Compiles programs for the host CPU; shares loaded code between identical programs."""

    def __init__(self, cache: DiskCache | None = None, use_disk_cache: bool = True, threads: int | None = None,
                 unroll: bool = False):
        _init_llvm()
        self.unroll = unroll
        self.cpu = llvm.get_host_cpu_name()
        self.features = llvm.get_host_cpu_features().flatten()
        self.versions = (f"llvmlite {llvmlite.__version__}, LLVM {'.'.join(map(str, llvm.llvm_version_info))}, "
                         f"unroll={unroll}")
        self.cache = (cache or DiskCache()) if use_disk_cache else None
        self.stats = EngineStats()
        self._tm = host_target_machine()
        self._jit_tm = host_target_machine()      # owned by the JIT; never reused
        self._jit = llvm.create_lljit_compiler(self._jit_tm)
        # key -> loaded code, shared by identical programs; freed once no CompiledProgram holds it
        self._loaded_libraries: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._programs: dict = {}     # program key -> (object key, rendered program without IR text)
        self._libraries_linked = 0
        self._lock = threading.Lock()
        self._team: ThreadTeam | None = None
        self.threads = threads or default_threads()
        self.pool = BufferPool()

    @property
    def team(self) -> ThreadTeam:
        if self._team is None:
            self._team = ThreadTeam(self.threads)
        return self._team

    # ------------------------------------------------------------ compiling
    def compile(self, program: Program, plan: MemoryPlan | None = None) -> CompiledProgram:
        t0 = time.perf_counter()
        pkey = program_key(program, f"{self.cpu} {self.features} {self.versions}")
        found = self._programs.get(pkey) or self._load_index(pkey)
        if found is not None:                  # seen before: its object is found without rendering the IR
            key, rendered = found
            library = self._library(key, lambda: render_program(program).ir,
                                    (rendered.entry,) + rendered.kernel_entries)
        else:
            rendered = render_program(program)
            key = cache_key(rendered.ir, self.cpu, self.features, self.versions)
            library = self._library(key, rendered.ir, (rendered.entry,) + rendered.kernel_entries)
            self._store_index(pkey, key, rendered)
        self._programs[pkey] = (key, RenderedProgram("", rendered.entry, rendered.kernel_entries, rendered.checks))
        self.stats.load_seconds += time.perf_counter() - t0
        return CompiledProgram(self, program, rendered, library, plan or sequential_plan(program.temps))

    def _load_index(self, pkey: str):
        """(object key, rendered program without its IR text) stored for a program key, or None."""
        blob = self.cache.load(pkey, ".json") if self.cache else None
        if blob is None:
            return None
        try:
            d = json.loads(blob)
            checks = tuple(Check(_EXCEPTIONS[name], message) for name, message in d["checks"])
            return d["key"], RenderedProgram("", d["entry"], tuple(d["kernel_entries"]), checks)
        except (ValueError, KeyError, TypeError):
            return None

    def _store_index(self, pkey: str, key: str, rendered: RenderedProgram) -> None:
        if self.cache is None:
            return
        d = {"key": key, "entry": rendered.entry, "kernel_entries": list(rendered.kernel_entries),
             "checks": [[c.error.__name__, c.message] for c in rendered.checks]}
        self.cache.store(pkey, json.dumps(d).encode(), ".json")

    def _library(self, key: str, ir_text, exports: tuple[str, ...]) -> llvm.ResourceTracker:
        with self._lock:
            lib = self._loaded_libraries.get(key)
            if lib is not None:
                self.stats.memory_hits += 1
                return lib
            obj = self.cache.load(key) if self.cache else None
            if obj is None:
                obj = self.object_code(ir_text() if callable(ir_text) else ir_text, key)
                if self.cache:
                    self.cache.store(key, obj)
            else:
                self.stats.disk_hits += 1
            builder = llvm.JITLibraryBuilder().add_object_img(obj).add_current_process()
            for name in exports:
                builder.export_symbol(name)
            self._libraries_linked += 1               # ORC library names can never be reused
            lib = builder.link(self._jit, f"tt_{key}_{self._libraries_linked}")
            self._loaded_libraries[key] = lib
            return lib

    def object_code(self, ir_text: str, name: str) -> bytes:
        """Optimize (O3, vectorizers on) and compile IR text to an object file for the host."""
        t0 = time.perf_counter()
        mod = llvm.parse_assembly(ir_text)
        mod.name = name                      # the cache key: never "<string>" (LLVM.md)
        mod.triple = self._tm.triple
        mod.data_layout = str(self._tm.target_data)
        mod.verify()
        t1 = time.perf_counter()
        self._optimize(mod)
        t2 = time.perf_counter()
        obj = self._tm.emit_object(mod)
        t3 = time.perf_counter()
        self.stats.compiles += 1
        self.stats.compile_seconds += t3 - t0
        self.stats.timings = {"parse": t1 - t0, "optimize": t2 - t1, "codegen": t3 - t2}
        return obj

    def assembly(self, program: Program) -> str:
        """The optimized machine code of a program, as text (for inspecting vectorization)."""
        ir_text = render_program(program).ir
        mod = llvm.parse_assembly(ir_text)
        mod.triple = self._tm.triple
        mod.data_layout = str(self._tm.target_data)
        self._optimize(mod)
        return self._tm.emit_assembly(mod)

    def _optimize(self, mod: llvm.ModuleRef) -> None:
        """O3 with the loop and SLP vectorizers; loop unrolling per `self.unroll` (off by default:
        vectorized loops are still interleaved, and compiling takes ~30% less time)."""
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = self.unroll
        pb = llvm.create_pass_builder(self._tm, pto)
        pb.getModulePassManager().run(mod, pb)


_DEFAULT_ENGINE: LLVMEngine | None = None


def default_engine() -> LLVMEngine:
    """The process-wide engine (created on first use)."""
    global _DEFAULT_ENGINE
    if _DEFAULT_ENGINE is None:
        _DEFAULT_ENGINE = LLVMEngine()
    return _DEFAULT_ENGINE


# ---------------------------------------------------------------- running
def _address(a: np.ndarray) -> int:
    """The data address of an array: through a ctypes view of its buffer (a fifth of the cost of
    `a.ctypes.data`, paid for each input array that changed since the last call), when it has one."""
    if a.flags.writeable and a.nbytes:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    return a.ctypes.data


class CompiledProgram:
    """A program linked and ready: call it with input arrays, get fresh output arrays.

    Inputs must be C-contiguous with the program's dtypes and shapes (non-contiguous
    ones are copied; anything else raises). The arrays of the last call stay referenced:
    passing the same array again skips resolving its address, and a held array can be
    neither freed nor resized meanwhile. Calls are serialized by a lock (one buffer table
    and one arena per program).
    """
    fresh_outputs = True        # each call's outputs: distinct pool arrays that nothing else references

    def __init__(self, engine: LLVMEngine, program: Program, rendered: RenderedProgram,
                 library: llvm.ResourceTracker, plan: MemoryPlan):
        self.engine, self.program, self.rendered = engine, program, rendered
        self._library = library              # keeps the code alive
        missing = [b.name for b in program.temps if b.name not in plan.offsets]
        if missing:
            raise ValueError(f"program {program.name!r}: the memory plan has no place for {missing}")
        for kernel in program.kernels:
            plan.check_disjoint([b.name for b in kernel.buffers], f"kernel {kernel.name!r}")
        self.arena = Arena(plan)
        self._pool = engine.pool
        buffers = program.buffers
        self._table = (ctypes.c_int64 * max(len(buffers), 1))()      # ctypes: cheaper to write than numpy
        self._table_addr = ctypes.addressof(self._table)
        self._err = (ctypes.c_int32 * 2)()
        self._err_addr = ctypes.addressof(self._err)
        self._lock = threading.Lock()
        n_in, n_out = len(program.inputs), len(program.outputs)
        for slot, buf in enumerate(buffers[n_in + n_out:], start=n_in + n_out):
            self._table[slot] = self.arena.address(buf.name)
        self._n_inputs = n_in
        self._in_specs = [(b.shape, b.dtype.np, b.name) for b in program.inputs]
        self._out_specs = [(b.shape, b.dtype.np, b.nbytes) for b in program.outputs]
        self._last_inputs: list = [None] * len(program.inputs)
        self._entry = ENTRY_TYPE(library[rendered.entry])
        self._ranges = [RANGE_TYPE(library[name]) for name in rendered.kernel_entries]
        self._steps = self._plan_steps()
        self._extern_sources: dict = {}

    def _plan_steps(self) -> list | None:
        """None: one call to the entry. Else (kind, fn, extent, align, stores into an input) steps run
        in order."""
        kernels = self.program.kernels
        parallel = [self.engine.threads > 1 and k.outer.extent >= 2 and k.work >= PARALLEL_MIN_WORK
                    for k in kernels]
        if not any(parallel) and len(kernels) == len(self.program.steps):
            return None
        inputs = set(self.program.inputs)
        steps, n = [], 0
        for step in self.program.steps:
            if isinstance(step, ExternCall):
                steps.append(("extern", step, 0, 0, bool(inputs.intersection(step.outputs))))
                continue
            fn, extent = self._ranges[n], step.outer.extent
            flat = not any(isinstance(s, Loop) for s in step.outer.body)
            writes = any(isinstance(st, Store) and st.buffer in inputs for st in walk_stmts(step.outer))
            if parallel[n]:
                steps.append(("parallel", fn, extent, 64 if flat else 1, writes))   # 64: whole vectors per thread
            elif extent > 0:
                steps.append(("serial", fn, extent, 1, writes))
            n += 1
        return steps

    def __call__(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.run(inputs))

    def run(self, inputs) -> list[np.ndarray]:
        """`self(*inputs)` as a list, for callers holding the inputs in a sequence already."""
        if len(inputs) != self._n_inputs:
            raise TypeError(f"program {self.program.name!r} takes {self._n_inputs} inputs, got {len(inputs)}")
        with self._lock:
            table, last = self._table, self._last_inputs
            for slot, a in enumerate(inputs):
                if a is last[slot]:
                    continue                         # same array as last call: its address is in the table
                shape, dtype, name = self._in_specs[slot]
                if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
                    a = self._coerce(a, dtype, name)
                if a.shape != shape:
                    raise ValueError(f"program {self.program.name!r}: input {name!r} must have shape {shape}, "
                                     f"got {a.shape}")
                table[slot] = _address(a)
                last[slot] = a                       # held: its memory cannot move or be freed meanwhile
            outputs = self._pool.arrays(self._out_specs, table, self._n_inputs)
            if self._steps is None:
                self._entry(self._table_addr, self._err_addr)
            else:
                self._run_steps(outputs)
            if self._err[0]:
                self._raise()
            return outputs

    def _coerce(self, a, dtype, name) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype != dtype:
            raise TypeError(f"program {self.program.name!r}: input {name!r} must be {dtype}, got {a.dtype}")
        return np.ascontiguousarray(a)

    def _run_steps(self, outputs: list) -> None:
        """Every step in order, stopping at the first failure. From the first step that stores into an
        input on, Ctrl-C is held until the run ends (then raised as FinishedInterrupt with the outputs)."""
        head = (self._table_addr, self._err_addr)
        writing = interrupted = False
        for kind, fn, extent, align, writes_input in self._steps:
            writing = writing or writes_input
            try:
                if kind == "serial":
                    fn(*head, 0, extent)
                elif kind == "parallel":
                    self.engine.team.run(fn, head, extent, align)
                else:
                    self._extern(fn, self._last_inputs, outputs)
            except KeyboardInterrupt:
                if not writing:
                    raise
                interrupted = True
            if self._err[0]:
                return
        if interrupted:
            raise FinishedInterrupt(tuple(outputs))

    def _extern(self, step: ExternCall, inputs: list, outputs: list) -> None:
        sources = self._extern_sources.get(id(step))
        if sources is None:          # where each buffer comes from: a call's input or output, or the arena
            program = self.program
            slot_in = {b: k for k, b in enumerate(program.inputs)}
            slot_out = {b: k for k, b in enumerate(program.outputs)}
            sources = []
            for buf in step.inputs + step.outputs:
                if buf in slot_in:
                    sources.append((0, slot_in[buf]))
                elif buf in slot_out:
                    sources.append((1, slot_out[buf]))
                else:            # arena memory never moves: one view for the program's life
                    sources.append((2, self.arena.view(buf.name, buf.dtype.np, buf.shape)))
            self._extern_sources[id(step)] = sources
        step.fn(*[inputs[x] if kind == 0 else outputs[x] if kind == 1 else x for kind, x in sources])

    def ir_text(self) -> str:
        """The program's LLVM IR (rendered again when its code came from a cache by program key)."""
        return self.rendered.ir or render_program(self.program).ir

    def _raise(self) -> None:
        code = self._err[0]
        self._err[0] = 0
        check = self.rendered.checks[code - 1]
        raise check.error(f"{check.message} (program {self.program.name!r})")

    def run_kernel_by_kernel(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Like __call__, but forces the step-by-step path (tests compare both)."""
        saved = self._steps
        self._steps = [("serial", self._ranges[i], k.outer.extent, 1, False)
                       for i, k in enumerate(self.program.kernels) if k.outer.extent > 0] if saved is None else saved
        try:
            return self(*inputs)
        finally:
            self._steps = saved
