"""Grad mode switches (per thread, like PyTorch): usable as context managers and decorators."""
from __future__ import annotations

import functools
import inspect

from ..ops.dispatch import STATE


def is_grad_enabled() -> bool:
    return STATE.grad_enabled


def _decorate(fn, mode):
    """fn run under a fresh `mode()` context. A generator function's body runs under one at each
    resumption, as PyTorch's decorators do (a plain wrapper's mode ends before the first `next`)."""
    if not inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with mode():
                return fn(*args, **kwargs)
        return wrapper

    @functools.wraps(fn)
    def generator(*args, **kwargs):
        gen = fn(*args, **kwargs)
        resume = functools.partial(gen.send, None)
        while True:
            try:
                with mode():
                    item = resume()
            except StopIteration as stop:
                return stop.value
            try:
                sent = yield item
            except GeneratorExit:
                with mode():
                    gen.close()
                raise
            except BaseException as exc:
                resume = functools.partial(gen.throw, exc)
            else:
                resume = functools.partial(gen.send, sent)
    return generator


class _GradMode:
    mode = True

    def __new__(cls, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:     # @no_grad without parentheses
            return cls()(args[0])
        return super().__new__(cls)

    def __enter__(self):
        self.prev = STATE.grad_enabled
        STATE.grad_enabled = self.mode
        return self

    def __exit__(self, *exc):
        STATE.grad_enabled = self.prev
        return False

    def __call__(self, fn):
        return _decorate(fn, self.__class__)


class no_grad(_GradMode):
    """Disable gradient recording inside the block."""
    mode = False


class enable_grad(_GradMode):
    """Enable gradient recording inside the block (e.g. inside no_grad)."""
    mode = True


class set_grad_enabled(_GradMode):
    """Set grad mode to `mode` now (like torch) and restore it when used as a context."""

    def __init__(self, mode: bool):
        self.prev = STATE.grad_enabled
        self.mode = bool(mode)
        STATE.grad_enabled = self.mode

    def __enter__(self):
        return self

    def __call__(self, fn):
        STATE.grad_enabled = self.prev
        return _decorate(fn, lambda: set_grad_enabled(self.mode))


class inference_mode(no_grad):
    """Alias of no_grad (tracetorch has no separate inference tensors)."""

    def __init__(self, mode: bool = True):
        self.mode = not mode
