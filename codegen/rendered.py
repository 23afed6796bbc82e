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
    """What a failed check id means: the exception to raise and its message."""
    error: type
    message: str


@dataclass(frozen=True)
class RenderedProgram:
    ir: str                               # LLVM IR text (module name "tracetorch": the runtime renames it)
    entry: str                            # void program(ptr table, ptr err)
    kernel_entries: tuple[str, ...]       # per kernel (program.kernels order): void (ptr table, ptr err, i64, i64)
    checks: tuple[Check, ...]             # error flag value i+1 -> checks[i]
