"""`tt.grad` and `tt.value_and_grad`: gradients as functions, through the same autodiff pass.

`value_and_grad(fn)` is a compiled function whose body is the eager recipe
(make the arguments leaves, run fn, `autograd.grad`); inside the compiled
region `autograd.grad` becomes one `backward` node that the autodiff pass
expands with the VJP rules, so the result is one program computing the value
and the gradients. Options of `tt.compile` pass through (`backend=`,
`mode="eager"`, ...).
"""
from __future__ import annotations

import functools

from ..autograd import grad as autograd_grad
from ..autograd.grad_mode import enable_grad, is_grad_enabled
from ..creation import zeros_like
from ..tensor import Tensor
from .compile import compile


def value_and_grad(fn, argnums=0, has_aux: bool = False, **compile_options):
    """fn(*args) -> scalar tensor (or (scalar, aux) with has_aux); returns (value, grads) where
    grads has the structure of `argnums` (one tensor for an int, a tuple for a tuple)."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def value_and_grad_fn(*args, **kwargs):
        args = list(args)
        # an argument that is itself differentiated (by an outer tt.grad, or autograd) stays connected:
        # the gradients are computed with a graph, so tt.grad(tt.grad(f)) is the second derivative
        nested = is_grad_enabled() and any(isinstance(args[i], Tensor) and args[i].requires_grad for i in nums)
        for i in nums:
            if not isinstance(args[i], Tensor) or not args[i].is_floating_point():
                raise TypeError(f"tt.grad: argument {i} must be a floating-point tensor, got "
                                f"{type(args[i]).__name__}")
            # a fresh value (a clone when nested): the gradient counts only fn's uses of the argument
            args[i] = args[i].clone() if nested and args[i].requires_grad else args[i].detach().requires_grad_(True)
        with enable_grad():
            out = fn(*args, **kwargs)
        value, aux = out if has_aux else (out, None)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise TypeError("tt.grad: the function must return a scalar tensor"
                            + (" (as the first of (value, aux))" if has_aux else ""))
        wrt = [args[i] for i in nums]
        if value.requires_grad:
            grads = autograd_grad(value, wrt, allow_unused=True, materialize_grads=True, create_graph=nested)
        else:                   # the value does not depend on them: zero gradients, as torch.func.grad
            grads = [zeros_like(a) for a in wrt]
        g = grads[0] if isinstance(argnums, int) else tuple(grads)
        if not nested:
            value = value.detach()
        return ((value, aux) if has_aux else value), g

    functools.update_wrapper(value_and_grad_fn, fn, assigned=("__module__", "__name__", "__doc__"))
    value_and_grad_fn.__qualname__ = f"value_and_grad({getattr(fn, '__qualname__', 'fn')})"
    return compile(value_and_grad_fn, **compile_options)


def grad(fn, argnums=0, has_aux: bool = False, **compile_options):
    """The gradient of scalar-valued fn w.r.t. argument(s) `argnums` (with has_aux: (grads, aux))."""
    inner = value_and_grad(fn, argnums, has_aux, **compile_options)

    @functools.wraps(fn)
    def grad_only(*args, **kwargs):
        out, g = inner(*args, **kwargs)
        return (g, out[1]) if has_aux else g

    grad_only.stats = inner.stats
    grad_only.explain = inner.explain
    grad_only.compiled = inner
    return grad_only
