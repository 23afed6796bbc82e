"""The tracing JIT: `tt.compile`, its IR, guards, passes and backends.

Reading order: ir.py (the IR), tracer.py (recording), capture.py (one traced
call), guards.py / reach.py / sources.py (what a trace assumed and reads),
passes/ (functionalize, autodiff, simplification), program.py (running a
compiled trace), compile.py (the decorator, cache and trace tree),
interp.py / backends.py (execution), check.py, explain.py, logs.py.
"""
from .backends import register_backend  # noqa: F401
from .check import CheckError  # noqa: F401
from .compile import CompileError, CompiledFunction, CompiledModule, CompileWarning, compile  # noqa: F401
from .ir import Graph, Node, Value  # noqa: F401
from .tracer import GraphBreak  # noqa: F401
from .transforms import grad, value_and_grad  # noqa: F401
