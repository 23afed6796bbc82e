"""The part of the LLVM engine that needs LLVM itself (llvmlite.binding): IR to object code, and ORC.

Importing llvmlite.binding and starting an ORC JIT costs ~45 ms, most of a warm
start, so `runtime.llvm_engine` imports this module only when it must: to
compile IR that no cache holds, or to link object code in ORC where it got no
shared object (`runtime.shared_object`: no system linker, or linking failed).

Object code is position independent with the small code model (what C
compilers emit for shared libraries), so the same object links into a shared
object with the system linker or into ORC. ORC links with JITLink, which
places all sections of an object in one block (their 32-bit PC-relative
references stay in range) and reaches other symbols through its own GOT and
stubs; llvmlite's default, RuntimeDyld, may place sections gigabytes apart,
which is why JITs otherwise use the large code model (~5% slower kernels here:
every constant's address takes a register).
"""
from __future__ import annotations

import time

import llvmlite
import llvmlite.binding as llvm

from .disk_cache import CODE_MODEL

_llvm_ready = False


def _init_llvm() -> None:
    global _llvm_ready
    if not _llvm_ready:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _llvm_ready = True


def host_target_machine() -> llvm.TargetMachine:
    """A target machine for the host CPU at -O3, emitting position-independent code (small code
    model). One per user: MCJIT/ORC may take ownership."""
    _init_llvm()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, reloc="pic", codemodel="small")


class LLVMCompiler:
    """Compiles IR text to host object code and links objects into an ORC LLJIT."""

    def __init__(self, unroll: bool = False):
        _init_llvm()
        self.unroll = unroll
        self.cpu = llvm.get_host_cpu_name()
        self.features = llvm.get_host_cpu_features().flatten()
        self.versions = (f"llvmlite {llvmlite.__version__}, LLVM {'.'.join(map(str, llvm.llvm_version_info))}, "
                         f"unroll={unroll}, {CODE_MODEL}")
        self.timings: dict = {}
        self._tm = host_target_machine()
        self._jit = None                     # the ORC LLJIT, started on the first `link`
        self._libraries_linked = 0

    def object_code(self, ir_text: str, name: str, optimize: bool = True) -> bytes:
        """Optimize (O3, vectorizers on; not when `optimize` is false: IR written as the machine code
        should be, as the GEMM library's) and compile IR text to an object file for the host."""
        t0 = time.perf_counter()
        mod = llvm.parse_assembly(ir_text)
        mod.name = name                      # the cache key: never "<string>" (LLVM.md)
        mod.triple = self._tm.triple
        mod.data_layout = str(self._tm.target_data)
        mod.verify()
        t1 = time.perf_counter()
        if optimize:
            self._optimize(mod)
        t2 = time.perf_counter()
        obj = self._tm.emit_object(mod)
        self.timings = {"parse": t1 - t0, "optimize": t2 - t1, "codegen": time.perf_counter() - t2}
        return obj

    def assembly(self, ir_text: str) -> str:
        """The optimized machine code of IR text (for inspecting vectorization)."""
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

    def link(self, objs: list[bytes], exports: tuple[str, ...], key: str) -> llvm.ResourceTracker:
        """Link objects into the JIT as one library of their own (with the process's symbols, for libm).
        `tracker[name]` is an export's address; the code is freed when the tracker is."""
        if self._jit is None:
            self._jit_tm = host_target_machine()     # the JIT's; kept alive with it and never reused
            self._jit = llvm.create_lljit_compiler(self._jit_tm, use_jit_link=True)
        builder = llvm.JITLibraryBuilder()
        for obj in objs:
            builder.add_object_img(obj)
        builder.add_current_process()
        for name in exports:
            builder.export_symbol(name)
        self._libraries_linked += 1               # ORC library names can never be reused
        return builder.link(self._jit, f"tt_{key}_{self._libraries_linked}")
