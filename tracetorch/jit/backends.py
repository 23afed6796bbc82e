"""Backends: the small protocol that turns an optimized graph into something runnable.

    backend.name: str
    backend.compile(graph: Graph) -> executable
    executable(inputs: list[np.ndarray]) -> list[np.ndarray]

`inputs` follow `graph.inputs`; the result follows `graph.results()` (the
outputs, then each write-back's new value). A backend must not write into
its inputs, with one exception: `executable.donated` ({input index: result
position}) names write-backs stored straight into their target input's array
(which is then that result; no copy to commit). The program copies any other
result that aliases an input, so results may be views; a caller that must
keep an input intact passes a copy. Optional attributes of an executable:
`results_owned` (True: the results other than the donated ones are writeable
and share memory with no input and no other result, so the program skips that
check on every call), `call_list` (the same as calling the executable, a
Python frame shorter), `kernels` (launches per
call, for `.stats()`), `explain()` (text for `.explain()`: fusion groups,
kernels, memory plan), `dump(directory, stem)` (for TRACETORCH_DUMP), and
`diagnose(inputs, reference) -> str`: when `check=True` finds the backend
disagreeing with the reference interpreter, it gets the interpreter's value
of every IR value (`{Value: array}`) and should name the first kernel whose
result differs, with its IR and generated source.

`register_backend("llvm", backend)` plugs a new one in; "auto" picks the
first available name in `AUTO_ORDER` (the LLVM backend will put itself first).
"""
from __future__ import annotations

from . import interp

BACKENDS: dict = {"interp": interp.BACKEND}
AUTO_ORDER: list = ["interp"]


def register_backend(name: str, backend, *, prefer: bool = False) -> None:
    BACKENDS[name] = backend
    if prefer and name not in AUTO_ORDER:
        AUTO_ORDER.insert(0, name)


def resolve(name: str):
    if name == "auto":
        for n in AUTO_ORDER:
            if n in BACKENDS:
                return BACKENDS[n]
    if not isinstance(name, str):
        return name            # a backend object passed directly
    try:
        return BACKENDS[name]
    except KeyError:
        if name == "cuda":
            from .cuda_backend import unavailable_reason
            raise RuntimeError(f"tt.compile: backend 'cuda' is not available: "
                               f"{unavailable_reason() or 'it was not registered'}") from None
        raise ValueError(f"tt.compile: backend {name!r} is not available (available: "
                         f"{', '.join(sorted(BACKENDS))}, or 'auto')") from None


def _register_llvm() -> None:
    """The LLVM CPU backend (jit/llvm_backend.py) is the default ("auto") wherever llvmlite is installed."""
    import importlib.util
    if importlib.util.find_spec("llvmlite") is None:
        return
    from .llvm_backend import BACKEND as LLVM
    register_backend("llvm", LLVM, prefer=True)


def _register_cuda() -> None:
    """The CUDA backend (jit/cuda_backend.py), only where pycuda imports and a device answers; "auto" never picks it."""
    from .cuda_backend import BACKEND as CUDA, unavailable_reason
    if unavailable_reason() is None:
        register_backend("cuda", CUDA)


_register_llvm()
_register_cuda()
