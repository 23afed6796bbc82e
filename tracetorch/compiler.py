"""`tt.compiler`: inspecting and resetting compiled functions.

    tt.compiler.explain(fn, *args)   guards, IR, write-backs, backend report (text)
    tt.compiler.reset()              forget every compiled program (all functions)
    with tt.compiler.profile() as p: time per call and per kernel of the compiled calls in the block
"""
from __future__ import annotations

from .jit.check import CheckError  # noqa: F401
from .jit.compile import LIVE_COMPILED_FUNCTIONS, CompileError, CompileWarning, compile  # noqa: F401
from .jit.profile import Profile, profile  # noqa: F401
from .jit.tracer import GraphBreak  # noqa: F401


def explain(fn, *args, **kwargs) -> str:
    """Explain how `fn` (compiled or not) compiles for these arguments; traces it if needed."""
    if not hasattr(fn, "explain"):
        fn = compile(fn)
    return fn.explain(*args, **kwargs)


def reset() -> None:
    """Drop every cached trace of every compiled function (they retrace on their next call)."""
    for f in list(LIVE_COMPILED_FUNCTIONS):
        f.reset()


__all__ = ["explain", "reset", "profile", "Profile", "CheckError", "CompileError", "CompileWarning", "GraphBreak"]
