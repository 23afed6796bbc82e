"""A content hash of a loop-level `Program`: the key under which its compiled code is found again.

The engine keys object code by the LLVM IR it compiled (`disk_cache.cache_key`);
rendering that IR is the costliest step of a warm start. This key is computed
from the program itself, so a warm start can find its object without
rendering: it covers everything the renderer reads (the buffer table, the
steps in order, every kernel's name and statements, with shared expressions
written once), and the renderer's own source, so editing the code generator
never returns code it did not generate.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import codegen
from codegen.kernel import (Accumulator, Arg, Assign, CheckedIndex, Const, ExternCall, Kernel, Let, Load, Loop,
                            MatmulKernel, Op, Program, Reduce, Store, Var)

_RENDERER_FILES = ("kernel.py", "llvm_ir.py", "llvm_gemm.py", "llvm_math.py", "memo.py", "rendered.py", "scalar.py",
                   "verify.py")      # every codegen module llvm_ir reads


def _renderer_version() -> str:
    h = hashlib.sha256()
    root = Path(codegen.__file__).parent
    for name in _RENDERER_FILES:
        h.update((root / name).read_bytes())
    return h.hexdigest()


RENDERER_VERSION = _renderer_version()


def program_key(program: Program, target: str) -> str:
    """SHA-256 of the program's content, the renderer's source and `target` (CPU, features, versions)."""
    out: list[str] = [RENDERER_VERSION, target, program.name]
    slot = {b: i for i, b in enumerate(program.buffers)}
    for b in program.buffers:
        out.append(f"B{b.name}:{b.dtype.name}:{b.shape}")
    out.append(f"I{len(program.inputs)}O{len(program.outputs)}")
    for step in program.steps:
        if isinstance(step, ExternCall):
            out.append(f"X{step.name}:{[slot[b] for b in step.inputs]}:{[slot[b] for b in step.outputs]}")
        elif isinstance(step, MatmulKernel):
            out.append(f"M{step.name}:{slot[step.a]}:{slot[step.b]}:{slot[step.out]}:{step.batch}:{step.m}:"
                       f"{step.n}:{step.k}:{step.a_map}:{step.b_map}:{step.lanes}")
        else:
            _kernel(step, slot, out)
    h = hashlib.sha256()
    h.update("\n".join(out).encode())
    return h.hexdigest()


def _kernel(kernel: Kernel, slot: dict, out: list) -> None:
    out.append(f"K{kernel.name}")
    ids: dict = {}

    def expr(e) -> str:
        hit = ids.get(id(e))
        if hit is not None:
            return hit[1]
        if isinstance(e, Const):
            text = f"C{e.value!r}:{e.dtype.name}"
        elif isinstance(e, Var):
            text = f"V{e.name}:{e.dtype.name}"
        elif isinstance(e, Arg):
            text = f"A{e.name}:{e.dtype.name}"
        elif isinstance(e, Load):
            text = f"L{slot[e.buffer]}[{expr(e.index)}]"
        elif isinstance(e, CheckedIndex):
            text = f"Q{expr(e.index)}:{e.size}:{e.what}"
        elif isinstance(e, Op):
            text = f"O{e.op}:{e.dtype.name}({','.join(expr(a) for a in e.args)})"
        else:
            raise TypeError(f"program_key: unknown expression {e!r}")
        name = f"%{len(ids)}"
        ids[id(e)] = (e, name)              # keep e alive: its id must not be reused during the walk
        out.append(f"{name}={text}")
        return name

    def stmt(s) -> None:
        if isinstance(s, Loop):
            out.append(f"for {s.var} {s.extent} {{")
            for x in s.body:
                stmt(x)
            out.append("}")
        elif isinstance(s, Let):
            out.append(f"let {s.name}={expr(s.value)}")
        elif isinstance(s, Accumulator):
            out.append(f"acc {s.name}={expr(s.init)}")
        elif isinstance(s, Assign):
            out.append(f"set {s.name}={expr(s.value)}")
        elif isinstance(s, Reduce):
            out.append(f"red {s.name} {s.combine} {expr(s.value)}")
        elif isinstance(s, Store):
            out.append(f"st {slot[s.buffer]}[{expr(s.index)}]={expr(s.value)}")
        else:
            raise TypeError(f"program_key: unknown statement {s!r}")

    stmt(kernel.outer)
