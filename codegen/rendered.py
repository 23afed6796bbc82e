"""What rendering a program produces besides its code: entry points and the meaning of its checks.

Kept apart from `llvm_ir` (which imports llvmlite) so that the runtime can load
cached code, and the CUDA renderer can name checks, without importing LLVM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


def unique_symbol(name: str, taken: set) -> str:
    """`name` as a C/LLVM identifier not in `taken` (which it joins)."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    while s in taken:
        s += "_"
    taken.add(s)
    return s


@dataclass(frozen=True)
class Check:
    """What a failed check id means: the exception to raise, its message, and the kernel whose check it
    is (the jit adds the user's lines of that kernel's ops that can fail it)."""
    error: type
    message: str
    kernel: str = ""

    def exception(self, program: str) -> Exception:
        """The exception a run of `program` raises when this check failed (`failed_kernel` set)."""
        error = self.error(f"{self.message} (program {program!r})")
        error.failed_kernel = self.kernel
        return error


# The GEMM library (codegen.llvm_gemm.library_ir): a module with matmuls exports GEMM_TABLE, an array of
# pointers that the loader fills with the addresses of the library's GEMM_EXPORTS, in this order.
GEMM_TABLE = "tt_gemm_table"
GEMM_PARTS = ("driver", "pack_a_rows", "pack_a_cols", "pack_b_rows", "pack_b_cols", "micro_slim", "micro_wide")
GEMM_EXPORTS = tuple(f"tt_gemm.{part}" for part in GEMM_PARTS)


MODULE_HEADER = "; tracetorch module {} of {}"   # starts each module's text in `RenderedProgram.ir` when several


@dataclass(frozen=True)
class RenderedProgram:
    modules: tuple[str, ...]              # LLVM IR text of each module (named "tracetorch": the runtime renames
                                          # them); a big program is several, compiled at once (llvm_engine)
    entry: str                            # void program(ptr table, ptr err)
    kernel_entries: tuple[str, ...]       # per kernel (program.kernels order): void (ptr table, ptr err, i64, i64)
    checks: dict                          # error flag value -> its Check (module m's: m * CHECK_STRIDE + 1, ...)
    gemm: int = 0                         # it calls the GEMM library of vectors of that many floats through
                                          # its GEMM_TABLE (0: no matmul)
    segment: str = ""                     # void (ptr table, ptr err, i64 first, i64 last): kernels first..last-1

    @property
    def ir(self) -> str:
        """All the program's IR as one text: its module's, or each module's after a header line."""
        if len(self.modules) == 1:
            return self.modules[0]
        n = len(self.modules)
        return "\n".join(f"{MODULE_HEADER.format(i + 1, n)}\n{text}" for i, text in enumerate(self.modules))

    @property
    def exports(self) -> tuple[str, ...]:
        """The symbols the runtime looks up in the loaded module."""
        return ((self.entry,) + self.kernel_entries + ((self.segment,) if self.segment else ())
                + ((GEMM_TABLE,) if self.gemm else ()))
