"""What a compiled function can reach besides its arguments.

A trace may depend on state it was never passed: the `training` flag and
Python attributes of modules, an optimizer's flags and which state it holds,
Python constants in closures and globals, and in the attributes, items and
elements of the plain objects and containers found there (`cfg.lr`,
`hp["scale"]`, a scheduler's `last_epoch`). We find that state by walking from
the function's `self`, arguments, closure cells and the globals its code
names (and, a couple of levels deep, the functions, objects and containers
found there). The walk also names captured tensors (`model.fc.weight`,
`opt.state[model.fc.weight].exp_avg`, `rng.offset`) for the IR printer and
guard messages, and records for each module, optimizer and tensor found
through a closure cell, a global or an attribute how to read that path again
(`bindings`): a captured tensor is read by reference, and a guard checks that
the name it was reached by still holds that very object (a global rebound to
a new tensor is a new trace, not a stale read).

nn and optim are imported by others; we look them up in `sys.modules` so
that the compiler never imports them itself.
"""
from __future__ import annotations

import sys
import types
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..tensor import Tensor
from .pytree import held_by_identity

_MAX_DEPTH = 3
_SCALARS = (int, float, bool, str, type(None))


@dataclass
class Reach:
    modules: list = field(default_factory=list)        # (name, Module)
    optimizers: list = field(default_factory=list)     # (name, Optimizer)
    constants: list = field(default_factory=list)      # (name, read() -> value, value)
    tensor_names: dict = field(default_factory=dict)   # id(tensor) -> name
    bindings: dict = field(default_factory=dict)       # id(obj) -> (name, read() -> what that name holds now)


def module_class():
    mod = sys.modules.get("tracetorch.nn.module")
    return getattr(mod, "Module", None)


def optimizer_class():
    mod = sys.modules.get("tracetorch.optim.optimizer")
    return getattr(mod, "Optimizer", None)


def is_constant(v) -> bool:
    if type(v) in _SCALARS or isinstance(v, np.generic):        # numpy scalars too (`cfg.lr = np.float32(.1)`)
        return True
    return type(v) is tuple and len(v) <= 16 and all(is_constant(e) for e in v)


def reach(fn, self_obj=None, named_args=()) -> Reach:
    """Walk from `fn` (and `self_obj`, and `(name, value)` arguments) to reachable state."""
    walker = _Walker()
    if self_obj is not None:
        walker.visit("self", self_obj, 0, _fixed(self_obj))
    for name, value in named_args:     # an opaque argument is guarded as the same object: read it again
        walker.visit(name, value, 0, _fixed(value) if held_by_identity(value) else None)
    walker.visit_function(fn, 0)
    walker.name_optimizer_tensors()
    if self_obj is not None:
        walker.result.bindings.pop(id(self_obj), None)     # `self` is the instance the cache belongs to
    from .. import random as R
    gen = R.default_generator
    walker.result.tensor_names.setdefault(id(gen.seed_t), "rng.seed")
    walker.result.tensor_names.setdefault(id(gen.offset_t), "rng.offset")
    return walker.result


class _Walker:
    def __init__(self):
        self.result = Reach()
        self.seen: set = set()
        self.Module = module_class()
        self.Optimizer = optimizer_class()

    def visit(self, name: str, obj, depth: int, read):
        """`read()` (None for arguments) returns what the path `name` holds at a later call."""
        if id(obj) in self.seen or depth > _MAX_DEPTH:
            return
        if isinstance(obj, Tensor):
            self.result.tensor_names.setdefault(id(obj), name)
            if read is not None:
                self.result.bindings.setdefault(id(obj), (name, read))
            return
        if is_constant(obj):
            if read is not None and depth > 0:     # an attribute, item or element: `cfg.lr`, `hp["scale"]`
                self.result.constants.append((name, read, obj))
            return
        if isinstance(obj, (types.ModuleType, type)):
            return
        self.seen.add(id(obj))
        if self.Module is not None and isinstance(obj, self.Module):
            self.add_module(name, obj)
            if read is not None:
                self.result.bindings[id(obj)] = (name, read)
        elif self.Optimizer is not None and isinstance(obj, self.Optimizer):
            self.add_optimizer(name, obj)
            if read is not None:
                self.result.bindings[id(obj)] = (name, read)
        elif isinstance(obj, types.FunctionType):
            self.visit_function(obj, depth + 1)
        elif isinstance(obj, types.MethodType):
            self.visit(name, obj.__self__, depth, _attr(read, "__self__") if read else None)
            self.visit_function(obj.__func__, depth + 1)
        elif hasattr(obj, "_tt_compiled_target"):        # a compiled function or module
            target, owner = obj._tt_compiled_target()
            if owner is not None:
                self.visit(name, owner, depth, None)
            self.visit(name, target, depth, None)
        elif isinstance(obj, (list, tuple)) and len(obj) <= 64:
            for i, v in enumerate(obj):
                self.visit(f"{name}[{i}]", v, depth + 1, _item(read, i) if read else None)
        elif isinstance(obj, dict) and len(obj) <= 64:
            for k, v in obj.items():
                self.visit(f"{name}[{k!r}]", v, depth + 1, _item(read, k) if read else None)
        elif hasattr(obj, "__dict__"):
            for k, v in list(vars(obj).items()):
                self.visit(f"{name}.{k}", v, depth + 1, _attr(read, k) if read else None)

    def visit_function(self, fn, depth: int):
        code = getattr(fn, "__code__", None)
        if code is None or depth > _MAX_DEPTH or ("code", id(code)) in self.seen:
            return
        self.seen.add(("code", id(code)))
        for var, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:          # an empty cell
                continue
            if is_constant(value):
                self.result.constants.append((f"{fn.__qualname__}: closure variable {var}",
                                              _cell_reader(cell), value))
            else:
                self.visit(var, value, depth, _cell_reader(cell))
        globs = getattr(fn, "__globals__", {})
        for name in _names_used(code):
            if name not in globs:
                continue
            value = globs[name]
            if is_constant(value):
                self.result.constants.append((f"global {name} (in {fn.__module__})", _global_reader(globs, name),
                                              value))
            else:
                self.visit(name, value, depth, _global_reader(globs, name))

    def add_module(self, name: str, module):
        for sub_name, sub in module.named_modules():
            full = f"{name}.{sub_name}" if sub_name else name
            self.seen.add(id(sub))
            self.result.modules.append((full, sub))
        for p_name, p in module.named_parameters():
            self.result.tensor_names.setdefault(id(p), f"{name}.{p_name}")
        for b_name, b in module.named_buffers():
            self.result.tensor_names.setdefault(id(b), f"{name}.{b_name}")

    def add_optimizer(self, name: str, opt):
        self.result.optimizers.append((name, opt))

    def name_optimizer_tensors(self):
        """Hyperparameters and state named after the parameters (once the modules are named)."""
        for name, opt in self.result.optimizers:
            self._name_optimizer(name, opt)

    def _name_optimizer(self, name: str, opt):
        names = self.result.tensor_names
        one = len(opt.param_groups) == 1
        for gi, group in enumerate(opt.param_groups):
            prefix = name if one else f"{name}.param_groups[{gi}]"
            for key, t in getattr(group, "tensors", {}).items():
                for k, ti in enumerate(t if isinstance(t, tuple) else (t,)):
                    names.setdefault(id(ti), f"{prefix}.{key}" + (f"[{k}]" if isinstance(t, tuple) else ""))
            for pi, p in enumerate(dict.__getitem__(group, "params")):
                p_name = names.get(id(p), f"{prefix}.params[{pi}]")
                for key, v in (opt.state.get(p) or {}).items():
                    if isinstance(v, Tensor):
                        names.setdefault(id(v), f"{name}.state[{p_name}].{key}")


def _names_used(code) -> set:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names_used(c)
    return names


def _cell_reader(cell):
    def read():
        try:
            return cell.cell_contents
        except ValueError:
            return _EMPTY
    return read


def _global_reader(globs, name):
    return lambda: globs.get(name, _EMPTY)


def _fixed(obj):
    try:
        ref = weakref.ref(obj)
    except TypeError:
        return lambda: obj
    return ref


def _attr(read, key):
    return lambda: getattr(read(), key, _EMPTY)


def _item(read, key):
    def get():
        container = read()
        try:
            return container[key]
        except (KeyError, IndexError, TypeError):
            return _EMPTY
    return get


_EMPTY = object()
