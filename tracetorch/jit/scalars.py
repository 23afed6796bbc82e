"""Python numbers read out of tensors while tracing (`.item()`, `.tolist()`).

A number that leaves the tensor world could change on every call, so a trace
may not silently freeze it, but guarding its exact value would make a step
that merely logs its loss recompile every call. So `.item()` returns a
`TracedFloat` / `TracedInt`: it behaves as the number it is, and remembers a
0-d "shadow" tensor in the trace that holds the same value. What happens to
it decides what the program needs:

- arithmetic (`+ - * / **`, `abs`, unary minus) returns another traced number
  whose shadow is computed in the trace (float64 / int64, as Python computes);
- used as an operand of a tensor op, its shadow becomes that input: no guard;
- returned from the compiled function, it is recomputed from the program's
  output on every call: no guard;
- printed or formatted (`print`, f-strings, `repr`): no guard;
- compared (`<`, `==`, ...) or tested (`if x:`): a value guard on the
  *outcome* (a later call whose comparison goes the other way abandons the
  run and takes or records another trace);
- converted to a plain number (`int()`, `float()`, `round()`, `__index__`,
  `//`, `%`) or used as an op attribute (a shape, a fill value): a value
  guard on the exact value.

`float(t)` and `int(t)` cannot return traced numbers (Python turns what
`__float__`/`__int__` return into an exact float/int), so they guard the exact
value; prefer `.item()` or tensor ops for numbers that change every call.

Known hole: functions that read the C value directly (`math.exp(x)`, numpy)
return plain numbers the tracer cannot see; such a value used later is baked
into the trace. `check=True` reports the divergence this causes.
"""
from __future__ import annotations

import operator

from ..ops.dispatch import STATE


def _plain(x):
    if isinstance(x, TracedFloat):
        return float.__float__(x)
    if isinstance(x, TracedInt):
        return int.__int__(x)
    return x


class _Traced:
    """Shared behaviour; `_snap[_index]` (lazily materialized as `_shadow`) is the value in the trace."""

    def _attach(self, tracer, snap, index, shadow=None):
        self._tracer = tracer
        self._snap = snap
        self._index = index
        self._shadow = shadow
        tracer.track_scalar(self)
        return self

    def _detach(self) -> None:
        self._tracer = self._snap = self._shadow = None

    def _active(self) -> bool:
        t = self._tracer
        return t is not None and STATE.tracer is t

    def shadow(self):
        """The 0-d tensor in the trace holding this number (float64 or int64)."""
        if self._shadow is None:
            snap = self._snap
            self._shadow = snap if snap.dim() == 0 else snap[self._index]
        return self._shadow

    # ------------------------------------------------------------ arithmetic
    def _arith(self, other, pyop, reflected=False):
        if isinstance(other, _Traced) or (isinstance(other, (int, float)) and not isinstance(other, bool)):
            a, b = (other, self) if reflected else (self, other)
            value = pyop(_plain(a), _plain(b))
            if not self._active() or not isinstance(value, (int, float)):
                return value
            from ..autograd.grad_mode import no_grad
            as_float = isinstance(value, float)
            with no_grad():
                out = pyop(_operand(a, as_float), _operand(b, as_float))
            return traced_number(self._tracer, value, out)
        if isinstance(other, bool):
            return self._arith(int(other), pyop, reflected)
        return NotImplemented

    def __add__(self, o):
        return self._arith(o, operator.add)

    def __radd__(self, o):
        return self._arith(o, operator.add, True)

    def __sub__(self, o):
        return self._arith(o, operator.sub)

    def __rsub__(self, o):
        return self._arith(o, operator.sub, True)

    def __mul__(self, o):
        return self._arith(o, operator.mul)

    def __rmul__(self, o):
        return self._arith(o, operator.mul, True)

    def __truediv__(self, o):
        return self._arith(o, operator.truediv)

    def __rtruediv__(self, o):
        return self._arith(o, operator.truediv, True)

    def __neg__(self):
        return self._arith(-1, operator.mul)

    def __pos__(self):
        return self

    def __abs__(self):
        value = abs(_plain(self))
        if not self._active():
            return value
        from ..autograd.grad_mode import no_grad
        with no_grad():
            return traced_number(self._tracer, value, self.shadow().abs())

    # ------------------------------------------------------------ guards on outcomes
    def _compare(self, other, pyop, symbol):
        if not (isinstance(other, (int, float))):
            return NotImplemented
        outcome = pyop(_plain(self), _plain(other))
        if self._active():
            from ..autograd.grad_mode import no_grad
            as_float = isinstance(_plain(self), float) or isinstance(_plain(other), float)
            with no_grad():
                test = pyop(_operand(self, as_float), _operand(other, as_float))
            self._tracer.guard_outcome(test, bool(outcome), f"a number from the trace compared with `{symbol}`")
        return outcome

    def __lt__(self, o):
        return self._compare(o, operator.lt, "<")

    def __le__(self, o):
        return self._compare(o, operator.le, "<=")

    def __gt__(self, o):
        return self._compare(o, operator.gt, ">")

    def __ge__(self, o):
        return self._compare(o, operator.ge, ">=")

    def __eq__(self, o):
        return self._compare(o, operator.eq, "==")

    def __ne__(self, o):
        return self._compare(o, operator.ne, "!=")

    def __bool__(self):
        outcome = _plain(self) != 0
        if self._active():
            from ..autograd.grad_mode import no_grad
            with no_grad():
                test = self.shadow() != 0
            self._tracer.guard_outcome(test, outcome, "a number from the trace tested for truth")
        return outcome

    def concretize(self, why: str):
        """This number leaves the trace as a constant: guard its exact value; return it plain."""
        value = _plain(self)
        if self._active():
            self._tracer.guard_equal(self.shadow(), value, why)
        return value

    def __int__(self):
        return int(self.concretize("a number from the trace converted with int()"))

    def __float__(self):
        return float(self.concretize("a number from the trace converted with float()"))

    def __index__(self):
        return int(self.concretize("a number from the trace used as an index or size"))

    def __round__(self, ndigits=None):
        return round(self.concretize("a number from the trace rounded"), ndigits)

    def __trunc__(self):
        return int(self.concretize("a number from the trace truncated"))

    def __floor__(self):
        import math
        return math.floor(self.concretize("a number from the trace floored"))

    def __ceil__(self):
        import math
        return math.ceil(self.concretize("a number from the trace ceiled"))

    def __floordiv__(self, o):
        return self.concretize("a number from the trace used with //") // _plain(o)

    def __rfloordiv__(self, o):
        return _plain(o) // self.concretize("a number from the trace used with //")

    def __mod__(self, o):
        return self.concretize("a number from the trace used with %") % _plain(o)

    def __rmod__(self, o):
        return _plain(o) % self.concretize("a number from the trace used with %")

    def __pow__(self, o):
        return self._arith(o, operator.pow)

    def __rpow__(self, o):
        return self._arith(o, operator.pow, True)

    def __reduce__(self):
        return (type(_plain(self)), (_plain(self),))

    def __copy__(self):
        return _plain(self)

    def __deepcopy__(self, memo):
        return _plain(self)


class TracedFloat(_Traced, float):
    __hash__ = float.__hash__

    def __repr__(self):
        return float.__repr__(self)


class TracedInt(_Traced, int):
    __hash__ = int.__hash__

    def __repr__(self):
        return int.__repr__(self)

    def __pow__(self, o):       # int ** int may be a float or a huge int: a constant
        if isinstance(o, float):
            return self._arith(o, operator.pow)
        return self.concretize("a number from the trace used with **") ** _plain(o)


def _operand(x, as_float: bool):
    """x as an operand of shadow arithmetic: its shadow tensor (float64 when the result is a float)."""
    from .. import dtypes as D
    if isinstance(x, _Traced):
        s = x.shadow()
        return s.to(D.float64) if as_float else s
    return float(x) if as_float else x


def traced_number(tracer, value, shadow):
    """A traced number of value's Python type whose trace value is the 0-d tensor `shadow`."""
    cls = TracedFloat if isinstance(value, float) else TracedInt
    return cls(value)._attach(tracer, None, None, shadow)


def is_traced(x) -> bool:
    return isinstance(x, _Traced)
