"""`tt.autograd.Function`: a user-written forward/backward pair (Caffe's layer
interface) that composes with the rest of autograd and with tt.compile."""
from __future__ import annotations

import inspect

import numpy as np

from ..ops.dispatch import STATE
from .graph import CustomNode, Node


class FunctionCtx:
    """What forward leaves for backward: saved tensors and any attributes."""

    def __init__(self):
        self._saved = ()
        self._versions = ()
        self._freed = False
        self.needs_input_grad = ()
        self._non_differentiable = set()
        self.materialize_grads = True
        self._fn_cls = None
        self._input_shapes = ()     # per forward input: its shape, or None for a non-tensor
        self._outputs_meta = ()

    def save_for_backward(self, *tensors):
        self._saved = tensors
        self._versions = tuple(t._version[0] if t is not None else None for t in tensors)

    @property
    def saved_tensors(self):
        if self._freed:
            raise RuntimeError("Trying to backward through the graph a second time (or directly access saved "
                               "tensors after they have already been freed). Specify retain_graph=True if you "
                               "need to backward through the graph a second time.")
        for t, v in zip(self._saved, self._versions):
            if t is not None and t._version[0] != v:
                raise RuntimeError("one of the variables needed for gradient computation has been modified by an "
                                   f"inplace operation: saved tensor of shape {list(t.shape)} is at version "
                                   f"{t._version[0]}; expected version {v} instead.")
        return self._saved

    def mark_non_differentiable(self, *tensors):
        self._non_differentiable.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool):
        self.materialize_grads = value

    def mark_dirty(self, *tensors):
        pass

    def _free(self):
        self._saved = ()
        self._freed = True

    def _run_backward(self, grad):
        from ..creation import zeros
        grads = grad.grads if isinstance(grad, GradSlots) else (grad,)
        if self.materialize_grads:
            grads = tuple(g if g is not None else zeros(shape, dtype=dt)
                          for g, (shape, dt) in zip(grads, self._outputs_meta))
        return self._input_grads(self._fn_cls.backward(self, *grads))

    def _input_grads(self, result):
        """The user's backward's return as one gradient per forward input, checked as PyTorch checks
        it: extra trailing Nones are dropped, a non-tensor input takes none, and a gradient of a shape
        its input broadcasts to is summed down to the input's shape."""
        from ..math import sum_to_shape
        name = self._fn_cls.__name__ + "Backward"
        result = result if isinstance(result, tuple) else (result,)
        n = len(self._input_shapes)
        if len(result) > n and all(g is None for g in result[n:]):
            result = result[:n]
        if len(result) != n:
            raise RuntimeError(f"function {name} returned an incorrect number of gradients (expected {n}, "
                               f"got {len(result)})")
        grads = []
        for i, (g, shape) in enumerate(zip(result, self._input_shapes)):
            if g is not None and shape is None:
                raise RuntimeError(f"function {name} returned a gradient different than None at position {i + 1}, "
                                   "but the corresponding forward input was not a Variable")
            if g is not None and self.needs_input_grad[i] and tuple(g.shape) != tuple(shape):
                try:
                    expandable = np.broadcast_shapes(tuple(shape), tuple(g.shape)) == tuple(g.shape)
                except ValueError:
                    expandable = False
                if not expandable:
                    raise RuntimeError(f"Function {name} returned an invalid gradient at index {i} - got "
                                       f"{list(g.shape)} but expected shape compatible with {list(shape)}")
                g = sum_to_shape(g, shape)
            grads.append(g)
        return tuple(grads)


class GradSlots:
    """Gradients of a multi-output Function, one slot per output, merged by `+`."""

    def __init__(self, grads):
        self.grads = tuple(grads)

    def __add__(self, other):
        return GradSlots(a if b is None else b if a is None else a + b for a, b in zip(self.grads, other.grads))


class _SelectNode(Node):
    """grad_fn of output k of a multi-output Function: routes its grad into slot k."""

    __slots__ = ("k", "n_out")

    def __init__(self, parent, k, n_out, meta):
        super().__init__(None, {}, (parent,), (meta,))
        self.k, self.n_out = k, n_out

    def name(self) -> str:
        return self.edges[0].name()

    def free(self):
        pass

    def apply_vjp(self, grad):
        slots = [None] * self.n_out
        slots[self.k] = grad
        return (GradSlots(slots),)


class Function:
    """Subclass with static `forward(ctx, *args)` and `backward(ctx, *grads)`; call `.apply(*args)`."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom autograd.Function.")

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("You must implement either the backward or vjp method for your custom "
                                  "autograd.Function to use it with backward mode AD.")

    @classmethod
    def apply(cls, *args, **kwargs):
        from ..tensor import Tensor
        if kwargs:
            args, kwargs = _bind_positional(cls.forward, args, kwargs)
        ctx = FunctionCtx()
        ctx._fn_cls = cls
        ctx._input_shapes = tuple(tuple(a.shape) if isinstance(a, Tensor) else None for a in args)
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        tracer = STATE.tracer
        if tracer is not None:
            return tracer.custom_function(cls, ctx, args, kwargs)
        prev = STATE.grad_enabled
        STATE.grad_enabled = False
        try:
            out = cls.forward(ctx, *args, **kwargs)
        finally:
            STATE.grad_enabled = prev
        return connect(cls, ctx, args, out)


def _bind_positional(forward, args, kwargs):
    """Keyword arguments of `apply` bound to forward's positional parameters, as PyTorch binds them: a
    tensor passed by keyword is an input like any other, whose gradient is backward's result in its
    position (it got none). Defaults are not filled in."""
    bound = inspect.signature(forward).bind(None, *args, **kwargs)      # None stands for ctx
    return bound.args[1:], bound.kwargs


def connect(cls, ctx, args, out):
    """Give the outputs of a Function a grad_fn that calls the user's backward."""
    from ..tensor import Tensor
    if not (STATE.grad_enabled and any(ctx.needs_input_grad)):
        return out
    outs = out if isinstance(out, tuple) else (out,)
    edges = tuple((a._grad_fn if a._grad_fn is not None else a) if isinstance(a, Tensor) and a.requires_grad
                  else None for a in args)
    meta = tuple((a._data.shape, a._dtype) if isinstance(a, Tensor) else a for a in args)
    node = CustomNode(cls, ctx, edges, meta)
    ctx._outputs_meta = tuple((o._data.shape, o._dtype) if isinstance(o, Tensor) else ((), None) for o in outs)
    result = []
    for k, o in enumerate(outs):
        if not isinstance(o, Tensor) or id(o) in ctx._non_differentiable or not o._dtype.is_floating_point:
            result.append(o)
            continue
        if any(o is a for a in args):
            o = o.detach()      # an input returned as is becomes a new output tensor
        o.requires_grad = True
        o._grad_fn = node if len(outs) == 1 else _SelectNode(node, k, len(outs), (o._data.shape, o._dtype))
        result.append(o)
    return tuple(result) if isinstance(out, tuple) else result[0]
