"""`apply`: the one door every primitive op goes through.

Eager execution, autograd recording and tracing all hook in here, so an op
added to the registry is immediately runnable, differentiable and traceable.
"""
from __future__ import annotations

import threading

import numpy as np

from ..dtypes import NP_TO_DTYPE, bfloat16, float16, float32, round_bfloat16
from .registry import ELEMENTWISE, REDUCE, SCAN, Aval, OpDef

_HALF_IN_FLOAT32 = frozenset((ELEMENTWISE, REDUCE, SCAN))


class _ThreadState(threading.local):
    """Per-thread switches, as in PyTorch: grad mode and the active tracer."""

    def __init__(self):
        self.grad_enabled = True
        self.tracer = None


STATE = _ThreadState()


class _BOUND:
    """Classes defined above this layer, bound once at import (avoids import cycles)."""
    Tensor = None
    Node = None


class DEVICE:
    """Set by tracetorch.device_array when the first device tensor is made; until then `apply` checks no
    operand's device (the CPU path pays one attribute test)."""
    apply = None        # tracetorch.jit.cuda_eager.apply_on_device
    array = None        # tracetorch.device_array.DeviceArray


class OpError(RuntimeError):
    pass


def describe(x) -> str:
    dt = getattr(x, "_dtype", None)
    if dt is not None:
        return f"Tensor(shape={tuple(x._data.shape)}, dtype={dt.name})"
    return repr(x)


def apply(op: OpDef, *inputs, **attrs):
    """Run primitive `op` eagerly, record it for autograd and for an active tracer."""
    Tensor = _BOUND.Tensor
    args = [x._data if isinstance(x, Tensor) else x for x in inputs]
    if DEVICE.apply is not None:
        for a in args:
            if type(a) is DEVICE.array:
                return DEVICE.apply(op, inputs, args, attrs)
    tracer = STATE.tracer
    try:
        if tracer is None:
            data = op.eager(*args, **attrs)
        else:           # a tracer may evaluate differently (numbers it follows, or symbolically)
            data = tracer.evaluate(op, inputs, args, attrs)
    except (IndexError, ValueError, TypeError, RuntimeError, MemoryError, ArithmeticError) as e:
        raise _op_error(op, inputs, attrs, e) from e
    if type(data) is not np.ndarray:
        data = np.asarray(data)
    dtype = NP_TO_DTYPE[data.dtype.type]
    if dtype is float32:
        want = attrs.get("dtype")
        if want is bfloat16 or (want is None and _has_bf16(inputs)):
            dtype = bfloat16
            if not op.view:     # a view holds bfloat16 values already; rounding copies, cutting it off its base
                data = round_bfloat16(data)
    elif computes_in_float32(op, attrs, dtype):
        data = in_float32(op, args, attrs)
    return finish(op, inputs, attrs, Tensor._make(data, dtype),
                  op.view and inputs and data.base is not None and np.may_share_memory(data, args[0]))


def finish(op: OpDef, inputs, attrs, out, is_view: bool):
    """What every primitive's result goes through (on any device): the view link to its base, the
    autograd Node, the tracer's record."""
    if is_view:
        src = inputs[0]
        out._base = src._base if src._base is not None else src
        out._version = src._version
        out._view_ops = src._view_ops + ((op, attrs),)
    state = STATE
    if state.grad_enabled and op.vjp is not None and out._dtype.is_floating_point:   # int results end the graph
        for x in inputs:
            if isinstance(x, _BOUND.Tensor) and x.requires_grad:
                _BOUND.Node.record(op, inputs, attrs, out)
                break
    if state.tracer is not None:
        state.tracer.record(op, inputs, attrs, out)
    return out


def computes_in_float32(op: OpDef, attrs, dtype) -> bool:
    """Whether a float16 result of `op` is computed in float32 and rounded once (`in_float32`)."""
    return dtype is float16 and op.kind in _HALF_IN_FLOAT32 and "dtype" not in attrs


def in_float32(op, args, attrs) -> np.ndarray:
    """A float16 op computed in float32 and rounded once, as PyTorch does ("opmath"): a Python scalar
    beyond float16's range (x / 1e5) and long accumulations (cumsum) stay accurate."""
    wide = [a.astype(np.float32) if type(a) is np.ndarray and a.dtype == np.float16 else a for a in args]
    return np.asarray(op.eager(*wide, **attrs)).astype(np.float16)


def _has_bf16(inputs) -> bool:
    for x in inputs:
        if getattr(x, "_dtype", None) is bfloat16:
            return True
    return False


def _op_error(op, inputs, attrs, e):
    e = _infer_error(op, inputs, attrs) or e
    # the builtin class, not numpy's subclass (some, like _UFuncNoLoopError, can't be built from a message)
    kind = next((k for k in (IndexError, ValueError, TypeError, MemoryError) if isinstance(e, k)), RuntimeError)
    if kind is ValueError and "array is too big" in str(e):    # numpy's refusal of a size beyond the address space
        kind = MemoryError
    shown = ", ".join(describe(x) for x in inputs)
    extra = ", ".join(f"{k}={v!r}" for k, v in attrs.items() if not isinstance(v, np.ndarray))
    msg = f"{op.name}({shown}{', ' if extra and shown else ''}{extra}): {e}"
    return kind(msg)


def _infer_error(op, inputs, attrs):
    """The op's shape/dtype inference explains a failed kernel in PyTorch's words (numpy's are obscure)."""
    avals = [Aval(tuple(x._data.shape), x._dtype) if isinstance(x, _BOUND.Tensor) else x for x in inputs]
    try:
        op.infer(*avals, **attrs)
    except (IndexError, ValueError, TypeError, RuntimeError) as e:
        return e
    except Exception:
        return None
    return None
