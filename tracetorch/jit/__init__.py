"""The tracing JIT: `tt.compile`, its IR, guards, passes and backends.

Reading order: ir.py (the IR), tracer.py (recording), capture.py (one traced
call), guards.py / reach.py / sources.py (what a trace assumed and reads),
passes/ (functionalize, autodiff, simplification; pipeline.py gives the
order), program.py (running a compiled trace), compile.py (the decorator,
its cache and the trace tree), interp.py / backends.py (execution),
check.py, explain.py, logs.py.

Semantics, in short (DESIGN.md "Tracing and guards" has the contract):

- The first call of a new kind runs eagerly under the tracer; its result is
  the eager result. Later calls whose guards pass run the compiled program.
- Tensors are read by reference: arguments, and captured tensors (parameters,
  buffers, optimizer state, generator state) found through closures,
  globals and `self`. In-place writes, `.grad` writes, optimizer updates and
  running statistics are applied only after a whole run succeeded.
- Python runs only while tracing: `print`, `list.append`, attribute
  assignments happen on traced calls only. A tensor created in a call and
  stored in Python state (not returned) makes that trace uncacheable (see
  capture.py); `mode="eager"` or TRACETORCH_DISABLE=1 turns compilation off.
- Numbers read from tensors: `.item()`/`.tolist()` give traced numbers
  (guards only on how they are used, see scalars.py); `bool(t)`, `int(t)`,
  `float(t)` guard their value or outcome; boolean-mask indexing, `nonzero`
  and `.numpy()` guard the tensor's values (an error with `fullgraph=True`).
- Not tracked: aliasing between *different* input tensors created before the
  call (a view passed as an argument and its base captured), numbers that
  leave through `math.*`/numpy (baked in; `check=True` finds them), and
  higher-order gradients inside a compiled region.
"""
from .backends import register_backend  # noqa: F401
from .check import CheckError  # noqa: F401
from .compile import CompileError, CompiledFunction, CompiledModule, CompileWarning, compile  # noqa: F401
from .ir import Graph, Node, Value  # noqa: F401
from .tracer import GraphBreak  # noqa: F401
from .transforms import grad, value_and_grad  # noqa: F401
