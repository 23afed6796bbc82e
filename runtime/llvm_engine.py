"""The LLVM CPU engine: compile a `Program` to native code once, then call it cheaply.

Compile: render the program to LLVM IR (codegen.llvm_ir; a big program as
several modules, each rendered and compiled by whichever of this process and
its forked children takes it: runtime.compile_jobs), name each module by its
cache key (the program key: `runtime.program_key`), optimize at O3 for the
host CPU (new pass manager, loop and SLP vectorization), emit
position-independent object code (`runtime.llvm_compiler`, the only module
that imports llvmlite.binding).
Where a system linker exists (`runtime.shared_object`), the object is also
linked into a shared object, in the background: the process that compiled it
has LLVM loaded and links it by ORC at once (the linker took ~25 ms a module,
~0.1 s of W3's cold start), later processes load the shared object. Both are
cached on disk (`runtime.disk_cache`); `wait_for_links()` (also run at exit)
waits for the shared objects still being linked.
A small index maps a hash of the program itself (`runtime.program_key`,
with a host fingerprint read without LLVM: `runtime.host`) to its object's
key and entry points, so a program seen before (in this process or on disk)
is not even rendered to IR again.

Warm start: a process whose programs are all in the disk cache loads their
shared objects with the system's dynamic loader and never imports LLVM
(~45 ms saved); it compiles no LLVM at all in any case.

Load: a shared object is loaded with dlopen and closed when nothing holds it;
without one (no linker, linking failed, no memfd), the object is linked into
an ORC LLJIT as its own library (with the current process's symbols, for
libm), whose resource tracker frees the code when nothing holds it any more
(MCJIT would keep it forever).

Call: `CompiledProgram(*inputs)` validates the inputs, writes their
addresses into the program's buffer table (temporaries' addresses, in the
arena, were written once), takes the outputs from a caching allocator and,
for a program whose kernels are all small and which has no extern steps,
makes ONE foreign call to the generated `program(table, err)` entry. Big
kernels split their outer loop across threads (runtime.native_team); extern steps (e.g. matmul
through numpy) run in Python between kernels; each run of serial kernels between them is one call
of `program_segment`. After the call the int32 error flag is checked and a failed check raises
its exception. Modules with matmuls call the GEMM library (codegen.llvm_gemm), loaded once.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import math
import os
import pickle
import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from codegen.kernel import Accumulator, ExternCall, Load, Loop, MatmulKernel, Op, Program
from codegen.rendered import GEMM_EXPORTS, GEMM_TABLE, Check, RenderedProgram

from .compile_jobs import Later, compile_all
from .disk_cache import CODE_MODEL, DiskCache
from .host import host_fingerprint
from .interrupts import FinishedInterrupt
from .memory import Arena, BufferPool, MemoryPlan, sequential_plan
from . import native_team, profiler
from .parallel import ThreadTeam, default_threads
from .program_key import RENDERER_VERSION, program_key
from .shared_object import LINK_TIMEOUT_S, LinkError, SharedLibrary, find_linker, link_shared

_EXCEPTIONS = {e.__name__: e for e in (IndexError, ValueError, ZeroDivisionError, TypeError, ArithmeticError)}



PARALLEL_MIN_COST = 1 << 22   # estimated operations (`kernel_cost`) below which a kernel runs on one thread:
                              # a fork-join of Python threads cost ~20 us on the 2-core machine (the native
                              # team: ~2 us while its worker spins, ~18 us once it sleeps), so threads
                              # pay from ~50 us of serial work up; 1 << 23 left W3's [1024, 512] ReLU and
                              # momentum kernels serial (W3 B=1024 16.3 -> 15.8 ms with 1 << 22), 1 << 21
                              # makes W6 slower (exp over 2^18 elements still runs on one thread)
PARALLEL_MIN_BYTES = 1 << 20  # buffer bytes a kernel touches from which it runs on threads whatever its cost:
                              # one core streams ~10 GB/s here, two ~20, so a memory-bound kernel of 1 MiB
                              # and up pays for the fork-join (exp over [512, 512]: 86 -> 44 us; W3 B=1024's
                              # [1024, 512] ReLU kernels 0.21 -> 0.11 ms each); 512 KiB slowed W3 B=128
_OP_COST = {"exp": 10, "log": 10, "log1p": 10, "expm1": 10, "tanh": 12, "sigmoid": 12, "sin": 10, "cos": 10,
            "pow": 20, "div": 4, "sqrt": 4, "rsqrt": 4, "floordiv": 4, "mod": 4, "random": 12}
_PENDING_LINKS: weakref.WeakSet = weakref.WeakSet()     # background links of every engine (threads)


@atexit.register
def _finish_links() -> None:
    """At exit, let the shared objects being linked reach the cache (a short cold run's would be lost)."""
    for thread in list(_PENDING_LINKS):
        thread.join(LINK_TIMEOUT_S)


ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
RANGE_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


def module_keys(key: str, count: int) -> list[str]:
    """The cache keys (and LLVM module names) of an object's modules: the object's own key for the
    first, `<key>.<i>` for the others."""
    return [key] + [f"{key}.{i}" for i in range(1, count)]


def library_ir(lanes: int) -> str:
    """codegen.llvm_gemm.library_ir, imported on first use (a warm start renders no IR)."""
    from codegen.llvm_gemm import library_ir as render
    return render(lanes)


def render_program(program: Program) -> RenderedProgram:
    """codegen.llvm_ir.render_program, imported on first use: a warm start never renders IR."""
    from codegen.llvm_ir import render_program as render
    return render(program)


def plan_modules(program: Program):
    from codegen.llvm_ir import plan_modules as plan
    return plan(program)


def render_module(program: Program, plan, m: int):
    from codegen.llvm_ir import render_module as render
    return render(program, plan, m)


def rendered_program(program: Program, plan, checks: list) -> RenderedProgram:
    from codegen.llvm_ir import rendered_program as assemble
    return assemble(program, plan, checks)


@dataclass
class EngineStats:
    compiles: int = 0          # modules optimized and compiled by LLVM in this process
    disk_hits: int = 0         # modules loaded from the on-disk cache
    memory_hits: int = 0       # programs whose code was already loaded in this process
    links: int = 0             # shared objects made by the system linker
    shared_loads: int = 0      # modules loaded as shared objects (the dynamic loader; no LLVM)
    orc_links: int = 0         # modules linked by ORC (no shared object: LLVM is loaded)
    compile_seconds: float = 0.0
    load_seconds: float = 0.0  # all time in compile(): rendering, hashing, loading (and LLVM when it compiles)
    timings: dict = field(default_factory=dict)


class LLVMEngine:
    """Compiles programs for the host CPU; shares loaded code between identical programs.

    `linker`: the command that links shared objects ("auto": `find_linker()`, looked up when first
    needed; None: none are made, every module is linked by ORC). Cached shared objects are loaded
    whenever the platform can.
    """

    def __init__(self, cache: DiskCache | None = None, use_disk_cache: bool = True, threads: int | None = None,
                 unroll: bool = False, linker="auto"):
        self.unroll = unroll
        self.cache = (cache or DiskCache()) if use_disk_cache else None
        self.stats = EngineStats()
        self.shared_objects = SharedLibrary.supported()
        self.linker = linker if self.shared_objects else None
        self.link_error: str | None = None      # why linking was turned off in this process, if it was
        self._compiler = None                    # runtime.llvm_compiler.LLVMCompiler, made when first needed
        self._target: str | None = None
        # key -> loaded code, shared by identical programs; freed once no CompiledProgram holds it
        self._loaded_libraries: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._programs: dict = {}     # program key -> (object key, rendered program without IR text)
        self._lock = threading.Lock()
        self._compiler_lock = threading.Lock()
        self._team = None
        self._gemm: dict = {}                    # lanes -> the GEMM library's loaded code, once a module needs it
        self._later: dict = {}                   # key -> compile_jobs.Later: its object, compiled in a child
        self._links: list = []                   # threads linking shared objects for later processes
        self.team_error: str | None = None      # why the native team could not be made, if it could not
        self.threads = threads or default_threads()
        self.pool = BufferPool()

    @property
    def team(self):
        """The fork-join team of parallel kernels: a NativeTeam where the platform has one (unless
        `$TRACETORCH_NATIVE_TEAM` is 0), else a ThreadTeam. Made anew in a forked child."""
        team = self._team
        if self._team_stale():
            self._team = team = self._make_team()
        return team

    def _team_stale(self) -> bool:
        """Whether `team` makes a new team: none yet in this process (a forked child's was its parent's)."""
        return self._team is None or getattr(self._team, "pid", None) not in (None, os.getpid())

    @staticmethod
    def _native_team_enabled() -> bool:
        return native_team.supported() and os.environ.get("TRACETORCH_NATIVE_TEAM", "1").strip() not in ("0", "")

    def parallel(self, kernel) -> bool:
        """Whether `kernel` runs on the team, in slices (else serially on the calling thread)."""
        return self.threads > 1 and kernel.extent >= 2 and worth_threads(kernel)

    def _make_team(self):
        if self._native_team_enabled():
            try:
                return native_team.NativeTeam(self, self.threads)
            except Exception as e:           # no code for it here: Python threads do the same job
                self.team_error = f"{type(e).__name__}: {e}"
        return ThreadTeam(self.threads)

    @property
    def compiler(self):
        """The LLVM side (runtime.llvm_compiler): importing it loads LLVM, so only a cache miss does."""
        with self._compiler_lock:
            if self._compiler is None:
                from .llvm_compiler import LLVMCompiler
                self._compiler = LLVMCompiler(self.unroll)
            return self._compiler

    @property
    def target(self) -> str:
        """The host and toolchain part of program keys: a fingerprint read without LLVM where there is
        one (runtime.host), else LLVM's host CPU, features and versions."""
        if self._target is None:
            fingerprint = host_fingerprint()
            if fingerprint is not None:
                self._target = f"{fingerprint}, unroll={self.unroll}, {CODE_MODEL}"
            else:
                c = self.compiler
                self._target = f"{c.cpu} {c.features} {c.versions}"
        return self._target

    # ------------------------------------------------------------ compiling
    def compile(self, program: Program, plan: MemoryPlan | None = None) -> CompiledProgram:
        t0 = time.perf_counter()
        self._prefetch(program)
        pkey = program_key(program, self.target)
        found = self._programs.get(pkey) or self._load_index(pkey)
        # the program's objects are keyed by its program key
        if found is not None:                  # seen before: its object is found without rendering the IR
            rendered, count = found
            library = self._library(pkey, lambda: self._render_objects(program, pkey)[0], rendered.exports,
                                    count=count)
        else:                                  # its modules are rendered (and compiled) in parallel
            made: dict = {}
            layout = plan_modules(program)
            count = layout.count

            def make():
                later = self._later.pop(pkey, None)       # compiled by a child meanwhile (`prefetch`)
                if later is not None:
                    self.stats.compiles += count
                    objs, made["rendered"] = pickle.loads(later.result())
                else:
                    objs, made["rendered"] = self._render_objects(program, pkey, layout)
                return objs
            library = self._library(pkey, make, rendered_program(program, layout, []).exports, count=count)
            rendered = made.get("rendered") or render_program(program)     # (objects found: render for checks)
            self._store_index(pkey, rendered, count)
        if rendered.gemm:
            self._link_gemm(library, rendered.gemm)
        self._programs[pkey] = (RenderedProgram((), rendered.entry, rendered.kernel_entries, rendered.checks,
                                                rendered.gemm, rendered.segment), count)
        self.stats.load_seconds += time.perf_counter() - t0
        return CompiledProgram(self, program, rendered, library, plan or sequential_plan(program.temps))

    def prefetch(self, program: Program) -> None:
        """Start compiling `program` in a forked child, for a `compile` of it soon, unless this process or
        the disk cache holds it already: so that two programs compile at once (a pre-check while the
        program it guards compiles). Its modules are rendered and compiled one after the other there."""
        pkey = program_key(program, self.target)
        with self._lock:
            if pkey in self._programs or pkey in self._later or \
                    (self.cache and self.cache.path(pkey, ".json").exists()):
                return
            layout = plan_modules(program)
            self.compiler                       # (LLVM loaded before the fork: the child needs it)
            self._later[pkey] = Later(lambda: pickle.dumps(self._render_objects(program, pkey, layout, here=True)))

    def _load_index(self, pkey: str):
        """(rendered program without its IR text, number of modules) stored for a program key, or None."""
        blob = self.cache.load(pkey, ".json") if self.cache else None
        if blob is None:
            return None
        try:
            d = json.loads(blob)
            checks = {int(cid): Check(_EXCEPTIONS[name], message, *kernel) for cid, name, message, *kernel in d["checks"]}
            return RenderedProgram((), d["entry"], tuple(d["kernel_entries"]), checks, int(d["gemm"]),
                                             str(d["segment"])), int(d["modules"])
        except (ValueError, KeyError, TypeError):
            return None

    def _store_index(self, pkey: str, rendered: RenderedProgram, count: int) -> None:
        if self.cache is None:
            return
        d = {"entry": rendered.entry, "kernel_entries": list(rendered.kernel_entries),
             "checks": [[cid, c.error.__name__, c.message, c.kernel] for cid, c in rendered.checks.items()],
             "gemm": rendered.gemm,
             "segment": rendered.segment, "modules": count}
        self.cache.store(pkey, json.dumps(d).encode(), ".json")

    def _gemm_key(self, lanes: int) -> str:
        text = f"{self.target}\0{RENDERER_VERSION}\0{lanes}\0no passes"
        return "gemm-" + hashlib.sha256(text.encode()).hexdigest()

    def _prefetch(self, program: Program) -> None:
        """The libraries a program needs that neither this process nor the disk cache holds are compiled
        by forked children meanwhile (`ir_library` takes their objects), so that their LLVM time overlaps
        the program's own: the GEMM library (~0.2 s) for matmuls, the native team (~40 ms) for
        parallel kernels."""
        wanted = []
        lanes = program.gemm_lanes
        if lanes and lanes not in self._gemm:
            wanted.append((self._gemm_key(lanes), lambda: library_ir(lanes), False))
        if self._team_stale() and self._native_team_enabled() and any(map(self.parallel, program.kernels)):
            key, ir = native_team.team_library(self.target)
            wanted.append((key, lambda: ir, True))
        with self._lock:
            for key, make_ir, optimize in wanted:
                if key in self._later or key in self._loaded_libraries or \
                        (self.cache and any(self.cache.path(key, suffix).exists() for suffix in (".o", ".so"))):
                    continue
                self._later[key] = Later(partial(self._object_of, make_ir, key, optimize))

    def _object_of(self, make_ir, key: str, optimize: bool) -> bytes:
        """The object code of the IR `make_ir()` gives (one module, named `key`)."""
        return self.compiler.object_code(make_ir(), key, optimize)

    def _link_gemm(self, library, lanes: int) -> None:
        """Fill a loaded module's GEMM table with the functions of the GEMM library for vectors of `lanes`
        floats (compiled, or loaded from the disk cache, once per process; kept loaded as long as the engine)."""
        gemm = self._gemm.get(lanes)
        if gemm is None:
            key = self._gemm_key(lanes)
            # no IR passes: its IR is already what the machine code should be, and O3 made it slower
            # (128x512x784: 260 -> 311 GFLOP/s without them; 0.045 s less compile time)
            gemm = self._gemm[lanes] = self.ir_library(key, lambda: library_ir(lanes), GEMM_EXPORTS, optimize=False)
        table = (ctypes.c_void_p * len(GEMM_EXPORTS)).from_address(library[GEMM_TABLE])
        table[:] = [gemm[name] for name in GEMM_EXPORTS]

    def ir_library(self, key: str, texts, exports: tuple[str, ...], optimize: bool = True):
        """`_library` of IR (one text, or a function giving it): the GEMM library, the native team."""
        def make():
            later = self._later.pop(key, None)      # compiled by a child meanwhile (`_prefetch`)
            if later is not None:
                self.stats.compiles += 1
                return [later.result()]
            return self.object_codes((texts() if callable(texts) else texts,), key, optimize)
        return self._library(key, make, exports)

    def _library(self, key: str, make_objects, exports: tuple[str, ...], count: int = 1):
        """The loaded code of object `key`, made of `count` modules: a SharedLibrary or an ORC resource
        tracker (`lib[name]` is an export's address either way). In this process, else a cached shared
        object, else the cached objects (or `make_objects()`'s, compiled now) linked into a shared
        object, else linked by ORC."""
        with self._lock:
            lib = self._loaded_libraries.get(key)
            if lib is not None:
                self.stats.memory_hits += 1
                return lib
            lib = self._cached_shared_library(key, exports)
            if lib is None:
                keys = module_keys(key, count)
                objs = [self.cache.load(k) for k in keys] if self.cache else [None]
                if None in objs:                # compiled now: LLVM is loaded, ORC links it at once
                    objs = make_objects()
                    assert len(objs) == count, (key, len(objs), count)
                    if self.cache:
                        for k, obj in zip(keys, objs):
                            self.cache.store(k, obj)
                        self._link_later(key, objs, exports)
                else:
                    self.stats.disk_hits += 1
                    lib = self._link_shared(key, objs, exports)
                if lib is None:
                    lib = self.compiler.link(objs, exports, key)
                    self.stats.orc_links += 1
            self._loaded_libraries[key] = lib
            return lib

    def _render_objects(self, program: Program, key: str, plan=None,
                        here: bool = False) -> tuple[list[bytes], RenderedProgram]:
        """(object code of each of the program's modules, the RenderedProgram without IR text): each
        module is rendered and compiled by whichever process takes it from the queue of
        runtime.compile_jobs, so rendering (W6: ~0.7 s of Python) is split across the cores too.
        `here`: all in this process, uncounted (a `prefetch` child's work: the compile taking it counts)."""
        plan = plan or plan_modules(program)
        compiler = self.compiler
        names = module_keys(key, plan.count)

        def build(i: int) -> bytes:
            text, checks = render_module(program, plan, i)
            return pickle.dumps((compiler.object_code(text, names[i], True), checks))
        built = [pickle.loads(b) for b in (map(build, range(plan.count)) if here else
                                           self._compile_all(build, list(plan.weights)))]
        return [obj for obj, _ in built], rendered_program(program, plan, [checks for _, checks in built])

    def _cached_shared_library(self, key: str, exports: tuple[str, ...]) -> SharedLibrary | None:
        if not (self.cache and self.shared_objects):
            return None
        data = self.cache.load(key, ".so")
        if data is None:
            return None
        try:
            lib = SharedLibrary(data, exports)
        except (OSError, AttributeError):       # cannot be loaded here (or lacks an export): ORC instead
            return None
        self.stats.disk_hits += 1
        self.stats.shared_loads += 1
        return lib

    def _link_later(self, key: str, objs: list[bytes], exports: tuple[str, ...]) -> None:
        """Link, check and cache the shared object of `objs` on a thread, for the processes that load it
        later (this one runs the ORC copy)."""
        if not self.shared_objects or self.linker is None:
            return
        thread = threading.Thread(target=self._link_shared, args=(key, objs, exports, False), daemon=True,
                                  name="tracetorch-link")
        self._links.append(thread)
        _PENDING_LINKS.add(thread)
        thread.start()

    def wait_for_links(self) -> None:
        """Wait until the shared objects this engine is linking in the background are in the cache."""
        while self._links:
            self._links.pop().join(LINK_TIMEOUT_S)

    def _link_shared(self, key: str, objs: list[bytes], exports: tuple[str, ...],
                     keep: bool = True) -> SharedLibrary | None:
        """Link `objs` into a shared object, load it and cache it. None if the linker fails (then no
        more linking in this process) or its output cannot be loaded here (this module goes to ORC).
        `keep` false: the loaded library is only a check that it loads, closed again (None)."""
        linker = self.linker
        if linker == "auto":
            linker = self.linker = find_linker()
        if linker is None:
            return None
        t0 = time.perf_counter()
        try:
            data = link_shared(objs, linker, background=not keep)
        except LinkError as e:
            self.link_error = str(e)
            self.linker = None
            return None
        try:
            lib = SharedLibrary(data, exports)
        except (OSError, AttributeError) as e:       # e.g. a symbol the loader cannot resolve
            self.link_error = f"{type(e).__name__}: {e}"
            return None
        self.stats.links += 1
        self.stats.shared_loads += keep
        self.stats.timings["link"] = time.perf_counter() - t0
        if self.cache:
            self.cache.store(key, data, ".so")
        return lib if keep else None

    def object_codes(self, texts: tuple[str, ...], key: str, optimize: bool = True) -> list[bytes]:
        """Optimize (O3, vectorizers on; unless not `optimize`) and compile each module's IR text to an
        object file for the host (named by `module_keys`); several at once in forked children
        (runtime.compile_jobs)."""
        compiler = self.compiler
        names = module_keys(key, len(texts))
        return self._compile_all(lambda i: compiler.object_code(texts[i], names[i], optimize), [len(t) for t in texts])

    def _compile_all(self, build, sizes: list[int]) -> list[bytes]:
        """compile_jobs.compile_all(build, sizes), counted in the stats (one compile per module)."""
        t0 = time.perf_counter()
        out = compile_all(build, sizes)
        self.stats.compiles += len(sizes)
        self.stats.compile_seconds += time.perf_counter() - t0
        self.stats.timings = dict(self.compiler.timings)
        return out

    def assembly(self, program: Program) -> str:
        """The optimized machine code of a program, as text (for inspecting vectorization)."""
        return "\n".join(self.compiler.assembly(text) for text in render_program(program).modules)


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


def kernel_cost(kernel) -> int:
    """Estimated scalar operations of a whole kernel: per statement run, one for the statement plus its
    loads and the operations of its value (transcendentals weighted by their polynomial's length);
    index arithmetic is not counted (LLVM strength-reduces it)."""
    if isinstance(kernel, MatmulKernel):
        return 2 * kernel.work                 # a multiply and an add per product
    return _stmt_cost(kernel.outer)


def worth_threads(kernel) -> bool:
    """Whether a fork-join pays for `kernel`: enough operations, or (not a GEMM: its operations are
    counted exactly) enough memory traffic that one core's bandwidth is the limit."""
    if kernel_cost(kernel) >= PARALLEL_MIN_COST:
        return True
    return not isinstance(kernel, MatmulKernel) and sum(b.nbytes for b in kernel.buffers) >= PARALLEL_MIN_BYTES


def _slice_align(kernel, threads: int) -> int:
    """What a parallel kernel's slices are multiples of. A loop over elements: 64, whole vectors per
    thread. A GEMM of one matrix: one run of units per thread (a slice packs all of A for its panels,
    or all of B for its rows: 8 slices of a [1024, 784] @ [784, 512] by panels read A 8 times,
    260 -> 205 GFLOP/s). Else 1."""
    if isinstance(kernel, MatmulKernel):
        return 1 if math.prod(kernel.batch) > 1 else -(-kernel.extent // threads)
    return 64 if not any(isinstance(s, Loop) for s in kernel.outer.body) else 1


SCALAR_LOOP_WEIGHT = 8          # an innermost loop shorter than a vector runs scalar: its operations cost
                                # this many vectorized ones (W3 B=1024's cross-entropy over rows of 10:
                                # 0.105 ms on one thread, estimated at 20 us)


def _stmt_cost(stmt) -> int:
    if isinstance(stmt, Loop):
        weight = SCALAR_LOOP_WEIGHT if stmt.extent < 16 and not any(isinstance(s, Loop) for s in stmt.body) else 1
        return weight * stmt.extent * sum(_stmt_cost(s) for s in stmt.body)
    value = getattr(stmt, "value", None) if not isinstance(stmt, Accumulator) else stmt.init
    cost, seen, stack = 1, set(), [value] if value is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Load):
            cost += 1                    # not its index: address arithmetic
            continue
        if isinstance(node, Op):
            cost += _OP_COST.get(node.op, 1)
        stack.extend(node.children())
    return cost


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
                 library, plan: MemoryPlan):
        self.engine, self.program, self.rendered = engine, program, rendered
        self._library = library              # keeps the code alive
        missing = [b.name for b in program.temps if b.name not in plan.offsets]
        if missing:
            raise ValueError(f"program {program.name!r}: the memory plan has no place for {missing}")
        for kernel in program.kernels:
            plan.check_disjoint([b.name for b in kernel.buffers], f"kernel {kernel.name!r}")
        self.arena = Arena(plan)
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
        self._outputs = engine.pool.outputs([(b.shape, b.dtype.np, b.nbytes) for b in program.outputs])
        self._last_inputs: list = [None] * len(program.inputs)
        self._entry = ENTRY_TYPE(library[rendered.entry])
        self._ranges = [RANGE_TYPE(library[name]) for name in rendered.kernel_entries]
        self._segment = RANGE_TYPE(library[rendered.segment]) if rendered.segment else None
        self._plan = self._plan_steps()      # a step per kernel or extern call: what profiles time
        self._steps = self._merged(self._plan)   # what a run calls
        self._forced_steps = None            # the steps a profile runs when self._plan is None
        self._extern_sources: dict = {}

    def _plan_steps(self, force: bool = False) -> list | None:
        """None: one call to the entry (unless `force`). Else steps run in order: (kind, fn, a, b, stores
        into an input, index in program.steps); a serial step is fn(table, err, a, b) (a kernel: 0,
        extent), a parallel one runs fn over range(a) in slices that are multiples of b."""
        kernels = self.program.kernels
        parallel = [self.engine.parallel(k) for k in kernels]
        if not force and not any(parallel) and len(kernels) == len(self.program.steps):
            return None
        inputs = set(self.program.inputs)
        team = self.engine.team if any(parallel) else None
        steps, n = [], 0
        for index, step in enumerate(self.program.steps):
            if isinstance(step, ExternCall):
                steps.append(("extern", step, 0, 0, bool(inputs.intersection(step.outputs)), index))
                continue
            fn, extent = self._ranges[n], step.extent
            writes = bool(inputs.intersection(step.written))
            if parallel[n]:
                steps.append(("parallel", team.entry(fn), extent, _slice_align(step, self.engine.threads), writes,
                              index))
            elif extent > 0:
                steps.append(("serial", fn, 0, extent, writes, index))
            n += 1
        return steps

    def _merged(self, plan: list | None) -> list | None:
        """`plan` with each run of two or more serial kernels made one call of the module's segment entry
        (kernels first..last-1, numbered in program.kernels order), where it has one."""
        if plan is None or self._segment is None:
            return plan
        number = {index: n for n, index in
                  enumerate(i for i, s in enumerate(self.program.steps) if not isinstance(s, ExternCall))}
        steps: list = []
        run: list = []
        for step in plan + [None]:
            if step is not None and step[0] == "serial":
                run.append(step)
                continue
            if len(run) == 1:
                steps.append(run[0])
            elif run:
                steps.append(("serial", self._segment, number[run[0][5]], number[run[-1][5]] + 1,
                              any(s[4] for s in run), run[0][5]))
            run = []
            if step is not None:
                steps.append(step)
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
            outputs = self._outputs.arrays(table, self._n_inputs)
            recorder = profiler.STATE.recorder
            if recorder is not None:
                self._run_profiled(outputs, recorder)
            elif self._steps is None:
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

    def _stepwise(self) -> list:
        """The steps one per kernel or extern call: the plan, or for a program that is one entry call,
        its kernels in order (planned once)."""
        if self._plan is not None:
            return self._plan
        if self._forced_steps is None:
            self._forced_steps = self._plan_steps(force=True)
        return self._forced_steps

    def _run_profiled(self, outputs: list, recorder) -> None:
        """`_run_steps` timing each step (a program that is one entry call runs kernel by kernel here)."""
        steps = self._stepwise()
        times: list = []
        t0 = time.perf_counter_ns()
        try:
            self._run_steps(outputs, steps, times)
        finally:
            recorder.add_run(self, times, time.perf_counter_ns() - t0)

    def _run_steps(self, outputs: list, steps=None, times: list | None = None) -> None:
        """Every step in order, stopping at the first failure. From the first step that stores into an
        input on, Ctrl-C is held until the run ends (then raised as FinishedInterrupt with the outputs).
        `times`: appends (step index, ns) per step run (a profile)."""
        head = (self._table_addr, self._err_addr)
        writing = interrupted = False
        clock = time.perf_counter_ns
        for kind, fn, a, b, writes_input, index in (self._steps if steps is None else steps):
            writing = writing or writes_input
            if times is not None:
                t0 = clock()
            try:
                if kind == "serial":
                    fn(*head, a, b)
                elif kind == "parallel":
                    self.engine.team.run(fn, head, a, b)
                else:
                    if self.engine._team is not None:
                        self.engine._team.rest()     # its workers would spin on cores the BLAS wants
                    self._extern(fn, self._last_inputs, outputs)
            except KeyboardInterrupt:
                if not writing:
                    raise
                interrupted = True
            if times is not None:
                times.append((index, clock() - t0))
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
        raise self.rendered.checks[code].exception(self.program.name)

    def step_kinds(self) -> dict:
        """program.steps index -> how it runs: serial, parallel (split across the team) or extern."""
        return {index: kind for kind, _, _, _, _, index in self._stepwise()}

    def run_kernel_by_kernel(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Like __call__, but forces the step-by-step path (tests compare both)."""
        saved = self._steps
        self._steps = self._stepwise()
        try:
            return self(*inputs)
        finally:
            self._steps = saved
