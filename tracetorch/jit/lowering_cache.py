"""Lowered programs cached on disk, so that a warm start runs no fusion or lowering either.

A second process finds a program's native code by program key without running
LLVM (runtime.llvm_engine), but fusion and lowering, which make that program,
were most of what its first call still cost (W5: ~0.3 s). This cache maps a key
of the graph to what running the program needs: the loop-level `Program`, its
memory plan and how the graph's inputs and results map onto it. The key covers
every node's op, operands and attributes (arrays by content), every value's
shape and dtype, the results and write-backs, the lowering options, the host
target, and the source of the whole library (an edit to any pass never returns
a program it would not make). A graph the key cannot describe exactly (an
attribute that is a Python object, say) or a program that does not pickle (an
extern call's closure) is not cached. What only reports read (the fusion
groups of `explain()`, the planner's arena) is recomputed when asked for.

Entries are `<key>.lowered` in the engine's disk cache, checksummed like its
objects: a damaged one is dropped and the graph lowered again.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle

import numpy as np

from ..dtypes import DType
from .ir import IROp, Value

SUFFIX = ".lowered"
_FIELDS = ("program", "plan", "input_positions", "constants", "results", "donated", "copied",
           "kernels_before_fusion", "bytes_moved", "intermediate_bytes")


class _Unkeyable(Exception):
    """The graph holds something the key cannot describe exactly."""


@functools.lru_cache(maxsize=None)
def source_version(root: str | None = None) -> str:
    """A fingerprint of the library's Python source (tracetorch, codegen, runtime under `root`, by default
    this checkout or installation): each file's path, size, modification time and inode. An edit or a
    reinstall changes them; Python's bytecode cache trusts size and time alike. (Hashing the files' text
    instead took 6-10 ms of every warm start here, the stat calls ~1 ms.)"""
    root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    h = hashlib.sha256()
    for package in ("tracetorch", "codegen", "runtime"):
        for directory, subdirectories, files in os.walk(os.path.join(root, package)):
            subdirectories.sort()
            where = directory[len(root):]
            for name in sorted(f for f in files if f.endswith(".py")):
                st = os.stat(os.path.join(directory, name))
                h.update(f"{where}/{name} {st.st_size} {st.st_mtime_ns} {st.st_ino}\0".encode())
    return h.hexdigest()


def graph_key(graph, options: tuple, target: str) -> str | None:
    """The cache key of lowering `graph` with `options` for `target`, or None if it cannot have one."""
    ids: dict = {}
    out = [source_version(), target, repr(options), graph.name]

    def ref(x) -> str:
        if isinstance(x, Value):
            if x not in ids:
                raise _Unkeyable(f"value {x!r} used before it is made")
            return f"%{ids[x]}"
        return _constant(x)

    def define(v: Value) -> str:
        ids[v] = len(ids)
        return f"{v.dtype.name}{tuple(v.shape)}"

    try:
        out.append("in " + " ".join(define(v) for v in graph.inputs))
        for n in graph.nodes:
            args = ",".join(ref(x) for x in n.inputs)
            attrs = ",".join(f"{k}={_constant(v)}" for k, v in sorted(n.attrs.items()))
            outs = " ".join(define(v) for v in n.outputs)
            out.append(f"{n.op.name}:{getattr(n.op, 'kind', '')}({args};{attrs}) {n.diff} {n.aliases} -> {outs}")
        out.append("out " + " ".join(ref(v) for v in graph.outputs))
        out.append("wb " + " ".join(f"{ref(a)}<-{ref(b)}" for a, b in graph.writebacks))
    except _Unkeyable:
        return None
    return hashlib.sha256("\n".join(out).encode()).hexdigest()


def _constant(x) -> str:
    """An exact text of an operand or attribute value (type included), or _Unkeyable."""
    if x is None or isinstance(x, (bool, int, str)):
        return f"{type(x).__name__}:{x!r}"
    if isinstance(x, float):
        return f"f:{x.hex()}"
    if isinstance(x, DType):
        return f"dt:{x.name}"
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__}(" + ",".join(_constant(e) for e in x) + ")"
    if isinstance(x, np.ndarray):
        data = np.ascontiguousarray(x)
        return f"a:{x.dtype.str}{x.shape}:{hashlib.sha256(data.view(np.uint8)).hexdigest()}"
    if isinstance(x, np.generic):
        return f"s:{x.dtype.str}:{x.tobytes().hex()}"
    if isinstance(x, np.dtype):
        return f"npdt:{x.str}"
    if isinstance(x, slice):
        return f"slice({_constant(x.start)},{_constant(x.stop)},{_constant(x.step)})"
    if isinstance(x, IROp):
        return f"ir:{x.name}"
    if isinstance(x, dict):
        return "{" + ",".join(f"{_constant(k)}:{_constant(v)}" for k, v in sorted(x.items(), key=repr)) + "}"
    if x is Ellipsis:
        return "..."
    raise _Unkeyable(f"{type(x).__name__} {x!r}")


def load(cache, key: str, relower):
    """The cached lowering under `key` (a `CachedLowering`), or None."""
    blob = cache.load(key, SUFFIX)
    if blob is None:
        return None
    try:
        fields = pickle.loads(blob)
        if set(fields) != set(_FIELDS):
            return None
    except Exception:                     # written by another version of a class: lower again
        return None
    return CachedLowering(fields, relower)


def store(cache, key: str, lowered) -> None:
    """Cache what running `lowered` needs; skipped (silently) for a program that does not pickle."""
    fields = {name: getattr(lowered, name) for name in _FIELDS}
    try:
        blob = pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return
    cache.store(key, blob, SUFFIX)


class CachedLowering:
    """A LoweredProgram from the cache: the fields running it needs are here; the others (fusion
    groups, the planner's arena, the buffer of each graph value) are made by lowering the graph again
    the first time one is read (`explain()`, `diagnose()`, profiles)."""

    def __init__(self, fields: dict, relower):
        self.__dict__.update(fields)
        self._relower = relower

    @property
    def kernels_after_fusion(self) -> int:
        return len(self.program.steps)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        full = self.__dict__.get("_full")
        if full is None:
            full = self.__dict__["_full"] = self._relower()
        return getattr(full, name)


__all__ = ["graph_key", "load", "store", "CachedLowering", "source_version"]
