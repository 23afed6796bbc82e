"""Backend "llvm": the CPU backend behind `tt.compile` (DESIGN.md "Backends / LLVM").

compile(graph): fuse (passes.fuse) -> plan memory and lower to loop-level
kernels (lowering) -> one LLVM module, optimized at O3 for the host CPU and
linked by the process-wide engine (runtime.llvm_engine), which shares the
code of identical programs, caches object code on disk (a second process
compiles no LLVM) and splits big kernels across all cores.

The executable is a function of arrays, as the backend protocol asks
(jit/backends.py): it passes the graph inputs (and the program's constants)
to the compiled program in one call and returns fresh arrays (from the
runtime's caching allocator, never the arena), except for donated
write-backs (`donated`): those are stored into the target input's own array
and returned as it, so committing them costs no copy. A data-dependent index out
of range raises IndexError after the call, before the program commits
anything.
"""
from __future__ import annotations

import os
import time
import weakref
from collections import Counter
from operator import is_

import numpy as np

from codegen.kernel import ExternCall

from . import lowering_cache
from .ir import Graph, Value
from .lowering import LoweredProgram, can_fail, group_of, lower_program
from runtime.host import gemm_lanes
from runtime.interrupts import FinishedInterrupt
from runtime.memory import storage_root

from .passes.fuse import REDUCTION, fuse


class LLVMCompileError(RuntimeError):
    """Fusion, lowering or code generation failed; the message carries the IR."""


class LLVMBackend:
    name = "llvm"
    compile_error = LLVMCompileError       # subclasses (jit/cuda_backend.py) swap these two
    executable = None                      # set to LLVMExecutable below
    donates_writebacks = True              # kernels may store write-backs straight into their targets

    def __init__(self, engine=None):
        self._engine = engine

    @property
    def engine(self):
        if self._engine is None:
            from runtime.llvm_engine import default_engine
            self._engine = default_engine()
        return self._engine

    def compile(self, graph: Graph, donate: bool = False) -> "LLVMExecutable":
        """`donate`: kernels may store write-backs straight into their target inputs (the caller
        guarantees no check of its own can fail after the run: see Program.run)."""
        t0 = time.perf_counter()
        stage = ["fusion"]
        try:
            lowered = self.lowered(graph, donate, stage)
            stage[0] = "code generation"
            compiled = self.build(lowered)
        except Exception as e:
            raise self.compile_error(f"{self.name} backend: {stage[0]} of {graph.name!r} failed: "
                                     f"{type(e).__name__}: {e}\n\n"
                                     f"optimized IR:\n{graph.text()}") from e
        return self.executable(self, graph, lowered, compiled, time.perf_counter() - t0)


    def prefetch(self, graph: Graph) -> None:
        """Start compiling `graph` on the CPU in the background, for a `compile(graph)` soon (the engine's
        `prefetch`). Only a head start: a failure here shows in that compile."""
        if self.name != "llvm":
            return
        try:
            self.engine.prefetch(self.lowered(graph, False, ["fusion"]).program)
        except Exception:
            pass

    def lowered(self, graph: Graph, donate: bool, stage: list):
        """Fusion and lowering of `graph` (`stage[0]` names the one running), or, for the CPU backend
        with a disk cache, what an earlier process cached of them (jit/lowering_cache: a warm start
        then runs neither)."""
        options = (self.name, donate and self.donates_writebacks, self.serial_scatter, self.generated_matmuls,
                   self.cpu_forms)

        def lower():
            groups = fuse(graph)
            stage[0] = "lowering"
            return lower_program(graph, groups, donate=options[1], scatter=options[2], matmuls=options[3],
                                 cpu_forms=options[4])
        cache = getattr(self.engine, "cache", None) if self.name == "llvm" else None
        key = lowering_cache.graph_key(graph, options, self.engine.target) if cache is not None else None
        if key is None:
            return lower()
        found = lowering_cache.load(cache, key, lower)
        if found is not None:
            return found
        lowered = lower()
        lowering_cache.store(cache, key, lowered)
        return lowered

    @property
    def serial_scatter(self) -> bool:
        """index_put as one serial scatter kernel (lowering): right for the CPU, not for a subclass
        targeting a GPU, where a single thread would run it (that one keeps the extern call)."""
        return self.name == "llvm"

    @property
    def cpu_forms(self) -> bool:
        """Kernels shaped for CPU threads (lowering's `cpu_forms`: cat as a copy kernel, partial sums of
        long column reductions); the CUDA subclass keeps its device steps."""
        return self.name == "llvm"

    @property
    def generated_matmuls(self) -> int:
        """The vector width (floats) of generated GEMM kernels (codegen.llvm_gemm) for float32 matmuls,
        or 0 for numpy's BLAS: x86-64 hosts with AVX-512 (16) or AVX2 and FMA (8), where they ran faster
        than OpenBLAS; `$TRACETORCH_GEMM=0` turns them off."""
        if self.name != "llvm" or os.environ.get("TRACETORCH_GEMM", "1").strip() in ("0", ""):
            return 0
        return gemm_lanes()

    def build(self, lowered: LoweredProgram):
        """The engine's compiled program of `lowered` (a subclass may rewrite steps first)."""
        return self.engine.compile(lowered.program, lowered.plan)


class LLVMExecutable:
    """callable(list of input arrays) -> list of arrays for `graph.results()`."""
    source_title, source_suffix = "LLVM IR", ".ll"     # what `dump` and `diagnose` show of the generated code

    def __init__(self, backend: LLVMBackend, graph: Graph, lowered: LoweredProgram, compiled, seconds: float):
        self.backend, self.graph, self.lowered, self.compiled = backend, graph, lowered, compiled
        self.compile_seconds = seconds
        self.kernels = lowered.kernels_after_fusion
        self.kernels_before_fusion = lowered.kernels_before_fusion
        self.kernels_after_fusion = lowered.kernels_after_fusion
        self.bytes_moved = lowered.bytes_moved
        self.planned_peak_bytes = lowered.plan.size      # the arena and the split reductions' scratch
        self.intermediate_bytes = lowered.intermediate_bytes
        self.donated = dict(lowered.donated)    # graph input index -> result position stored into it
        # results_owned: the results (but the donated ones) share memory with no input and no other result
        # and are writeable (fresh arrays from the runtime's pool): the program need not check them (owned())
        self._call, self.results_owned = _caller(compiled, lowered, len(graph.inputs))
        self.call_list = self._call             # the same as calling self, one Python frame shorter
        if hasattr(compiled, "program"):        # tt.compiler.profile names its steps by our fusion groups
            compiled.executable_ref = weakref.ref(self)

    def __call__(self, inputs: list):
        """The results (a sequence of arrays) for `graph.results()`."""
        return self._call(inputs)

    def lines_of(self, error: Exception) -> list[str]:
        """The user's lines (in graph order) of the ops that can fail the run-time check `error` reports:
        those in its kernel (`error.failed_kernel`), else anywhere in the graph."""
        candidates = [n for n in self.graph.nodes if can_fail(n, type(error))]
        group = group_of(getattr(error, "failed_kernel", ""), {g.name: g for g in self.lowered.groups})
        if group is not None:          # its nodes, and the producers it recomputes instead of loading
            producers, loaded = self.graph.producers(), set(group.inputs)
            inside = set(map(id, group.nodes))
            stack = [v for n in group.nodes for v in n.inputs]
            while stack:
                v = stack.pop()
                n = producers.get(v) if isinstance(v, Value) and v not in loaded else None
                if n is not None and id(n) not in inside:
                    inside.add(id(n))
                    stack.extend(n.inputs)
            candidates = [n for n in candidates if id(n) in inside] or candidates
        return list(dict.fromkeys(n.where for n in candidates if n.where))

    # ------------------------------------------------------------ reports
    def explain(self) -> str:
        lw = self.lowered
        externs = sum(1 for s in lw.program.steps if isinstance(s, ExternCall))
        arena = lw.arena
        scratch = lw.plan.size - max(arena.size, 0)
        lines = [
            f"{self.backend.name}: {self.kernels} kernels after fusion ({externs} extern calls), "
            f"{self.kernels_before_fusion} before (one per non-view op)",
            f"memory plan: planned arena peak {_bytes(lw.plan.size)} vs {_bytes(arena.total_bytes)} for all "
            f"{len(arena.slot_of)} intermediates with a buffer each ({len(arena.inplace)} computed in place"
            + (f"; {_bytes(scratch)} of reductions' scratch rows past them)" if scratch > 0 else ")"),
            f"bytes moved per call: {_bytes(self.bytes_moved)}",
            f"compile: {self.compile_seconds * 1e3:.1f} ms",
            f"write-backs: {len(self.donated) - len(lw.copied)} stored by the kernels computing them, "
            f"{len(lw.copied)} copied in by the last kernels, "
            f"{len(self.graph.writebacks) - len(self.donated)} copied by the caller after the run",
            "fusion groups (in execution order):",
        ]
        for g in lw.groups:
            lines.append(f"  {g.describe()}")
            if g.kind == REDUCTION:
                lines.append(f"      stages: {', '.join(_stage_str(s) for s in g.stages)}")
            if g.inlined:
                lines.append(f"      recomputes {len(g.inlined)} cheap value(s) that another kernel also computes, "
                             "instead of loading them")
            outs = ", ".join(f"{lw.buffer_of[v].name}" for v in g.outputs)
            ins = ", ".join(dict.fromkeys(lw.buffer_of[v].name for v in g.inputs))
            lines.append(f"      reads {ins or '-'}; writes {outs or '-'}")
            for note in g.notes:
                lines.append(f"      {note}")
        return "\n".join(lines)

    def dump(self, directory: str, stem: str) -> None:
        base = os.path.join(directory, stem)
        with open(base + ".kernels.txt", "w") as f:
            f.write(str(self.lowered.program) + "\n")
        with open(base + self.source_suffix, "w") as f:
            f.write(self.source_text(self.compiled))
        with open(base + ".fusion.txt", "w") as f:
            f.write(self.explain() + "\n")

    def diagnose(self, inputs: list, reference: dict) -> str:
        """Run a debug build (no memory reuse) and name the first kernel whose output differs from the
        interpreter's value (`reference`: {Value: array}), with its IR and generated code."""
        from .check import close
        from runtime.memory import sequential_plan
        lowered = lower_program(self.graph, self.lowered.groups, inplace=False, name=self.graph.name + "_debug",
                                scatter=self.backend.serial_scatter, matmuls=self.backend.generated_matmuls,
                                cpu_forms=self.backend.cpu_forms)
        program = lowered.program
        compiled = self.backend.engine.compile(program, sequential_plan(program.temps))
        arrays = [inputs[i] for i in lowered.input_positions] + list(lowered.constants)
        outs = compiled(*arrays)
        by_buffer = dict(zip(program.outputs, outs))
        for g in lowered.groups:
            for v in g.outputs:
                want = reference.get(v)
                if want is None:
                    continue
                buf = lowered.buffer_of[v]
                got = by_buffer.get(buf)
                if got is None:
                    got = self.temporary(compiled, buf)
                if not close(got, want, v.dtype.name):
                    by_name = {h.name: h for h in lowered.groups}
                    steps = "\n".join(str(s) for s in program.steps       # (a split reduction has two)
                                      if group_of(s.name, by_name) is g)
                    return (f"first differing kernel: {g.describe()}\n  its output {buf.name} "
                            f"differs from the interpreter's value of {v}\n\nkernel IR:\n{steps}\n\n"
                            f"{self.source_title} of the program:\n{self.source_text(compiled)}")
        return "every kernel output matches the interpreter (the difference is in how results are returned)"

    @staticmethod
    def source_text(compiled) -> str:
        return compiled.ir_text()

    @staticmethod
    def temporary(compiled, buf):
        """The value a debug run left in temporary `buf`."""
        return compiled.arena.view(buf.name, buf.dtype.np, buf.shape)


def _caller(compiled, lowered: LoweredProgram, n_inputs: int):
    """(the per-call function, whether its results are owned): kept short, W4-style programs are
    dominated by it. Results are owned (see `results_owned`) when the engine's outputs are fresh and no
    result other than a donated one is an input or another result's output."""
    positions = lowered.input_positions
    constants = list(lowered.constants)
    plan = lowered.results
    indices = [k for kind, k in plan if kind == "output"]
    kept = set(lowered.donated.values())    # donated results are their target's own array (Program.run keeps them)
    owned = getattr(compiled, "fresh_outputs", False) and len(set(indices)) == len(indices) \
        and all(kind != "input" or pos in kept for pos, (kind, _) in enumerate(plan))
    run = getattr(compiled, "run", None) or (lambda arrays: list(compiled(*arrays)))   # run: list -> list
    if indices == list(range(len(plan))):                    # the results are the program's outputs
        if not constants and positions == tuple(range(n_inputs)):
            return run, owned
        return (lambda inputs: run([inputs[i] for i in positions] + constants)), owned
    donated = tuple(lowered.donated)
    dtypes = {i: b.dtype.np for i, b in zip(positions, compiled.program.inputs)}
    verified = [None]           # the last inputs that needed no private copy (see _donatable)

    def call(inputs):
        if donated:
            inputs = _donatable(inputs, donated, dtypes, verified)
        try:
            outs = run([inputs[i] for i in positions] + constants)
        except FinishedInterrupt as stop:      # the results still ride along: the caller commits them
            stop.results = _results(plan, stop.outputs, inputs)
            raise
        return _results(plan, outs, inputs)
    return call, owned


def _donatable(inputs: list, donated: tuple, dtypes: dict, verified: list) -> list:
    """`inputs`, with a private copy in place of each donated input the program may not write into:
    not a writeable C-contiguous array of the program's dtype, or sharing memory with another input.
    `verified[0]`: the last inputs found to need no copy; the same array objects again (a training
    loop) keep their dtypes, layouts and storage, so only writeability is checked (W5: 31 -> ~8 us)."""
    last = verified[0]
    if last is not None and len(last) == len(inputs) and all(map(is_, inputs, last)):
        for i in donated:
            if not inputs[i].flags.writeable:
                break
        else:
            return inputs
    verified[0] = None
    roots = [(id(a) if a.base is None else id(storage_root(a))) if type(a) is np.ndarray else id(a)
             for a in inputs]
    shared = {r for r, n in Counter(roots).items() if n > 1} if len(set(roots)) < len(roots) else ()
    out = None
    for i in donated:
        a = inputs[i]
        if type(a) is np.ndarray and (a.dtype is dtypes[i] or a.dtype == dtypes[i]) and roots[i] not in shared:
            flags = a.flags
            if flags.c_contiguous and flags.writeable:
                continue
        if out is None:
            out = list(inputs)
        out[i] = np.array(a, dtype=dtypes[i], order="C")
    if out is None:
        verified[0] = list(inputs)           # held: their ids cannot be reused while compared against
        return inputs
    return out


def _results(plan, outs, inputs) -> list:
    results = []
    for kind, x in plan:
        if kind == "output":
            results.append(outs[x])
        elif kind == "input":
            results.append(inputs[x])
        else:
            results.append(np.array(x, copy=True))
    return results


def _stage_str(s) -> str:
    name = type(s).__name__
    if name == "Reduction":
        return f"{s.name} = {s.combine}-reduce"
    if name == "SoftmaxStats":
        return f"({s.max_name}, {s.sum_name}) = softmax stats (one pass)"
    return f"({s.mean_name}, {s.var_name}) = mean and variance (one pass)"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


LLVMBackend.executable = LLVMExecutable
BACKEND = LLVMBackend()
__all__ = ["LLVMBackend", "LLVMExecutable", "LLVMCompileError", "BACKEND"]
