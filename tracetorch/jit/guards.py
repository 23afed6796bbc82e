"""Guards: the facts a trace assumed, checked before its program may run.

Static guards are checked before a run, from the call's arguments and the
program state: the argument structure and Python constants (`SpecGuard`),
every input tensor's shape, dtype, device and requires_grad, and that a
captured tensor is still alive (`TensorGuard`), whether a parameter has a
`.grad` (`GradGuard`), the `training` flag, Python attributes and tensor
identities of every reachable Module and the flags and state of every
reachable Optimizer (`ObjectGuard`), Python constants in closures and
globals (`ConstantGuard`), grad mode and the default dtype (`GlobalGuard`).

Value guards (`tracer.ValueGuardSpec`) are facts about computed values (the
branch a `bool(t)` took); they are program outputs, checked after a run and
before anything is committed (see program.py).

Each guard has a `subject` (what it is about: counted in `.stats()` and named
in the cache-limit warning), `describe()` (what it expects) and
`actual(leaves)` (what a failing call had).
"""
from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import dtypes as D
from ..ops.dispatch import STATE
from .reach import Reach, is_constant


class Guard:
    subject = "?"

    def check(self, call) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        return self.subject

    def actual(self, call) -> str:
        return "different"

    def failure_key(self, call) -> str:
        """What failed, for `.stats()['guard_failures']` and the cache-limit warning."""
        return self.subject

    def code(self, bind) -> list:
        """`check` as Python statements that `return None` where it fails (see `compile_guards`);
        `bind(obj, hint)` names an object the statements use."""
        return [f"if not {bind(self, 'guard')}.check(call): return None"]


@dataclass(frozen=True, eq=False)
class SpecGuard(Guard):
    spec: tuple
    where: str = ""

    subject = "argument structure / Python constants"

    def check(self, call) -> bool:
        return call.spec == self.spec

    def code(self, bind) -> list:
        return [f"if not (call.spec == {bind(self.spec, 'spec')}): return None"]

    def describe(self) -> str:
        return f"arguments match {_call_text(self.spec)} (T: a tensor; other values are constants)"

    def actual(self, call) -> str:
        return _call_text(call.spec)


@dataclass(frozen=True, eq=False)
class TensorGuard(Guard):
    source: object
    shape: tuple
    dtype: object
    requires_grad: bool
    storage: type = np.ndarray      # np.ndarray on the CPU, DeviceArray on cuda

    @property
    def subject(self) -> str:
        return f"shape/dtype/requires_grad of {self.source.describe()}"

    def check(self, call) -> bool:
        t = self.source.tensor(call.leaves)
        return (t is not None and t._data.shape == self.shape and t._dtype is self.dtype
                and t.requires_grad == self.requires_grad and type(t._data) is self.storage)

    def code(self, bind) -> list:
        shape, dtype, storage = bind(self.shape, "shape"), bind(self.dtype, "dtype"), bind(self.storage, "storage")
        return [f"t = {self.source.expression(bind)}",
                f"if t is None or not (t._data.shape == {shape} and t._dtype is {dtype} "
                f"and t.requires_grad == {self.requires_grad!r} and type(t._data) is {storage}): return None"]

    def describe(self) -> str:
        device = "cpu" if self.storage is np.ndarray else "cuda:0"
        return (f"{self.source.describe()}: shape {self.shape}, {self.dtype.name}, {device}, "
                f"requires_grad={self.requires_grad}")

    def actual(self, call) -> str:
        t = self.source.tensor(call.leaves)
        if t is None:
            return "gone (the tensor was freed, or the .grad is None)"
        return f"shape {tuple(t._data.shape)}, {t._dtype.name}, {t.device}, requires_grad={t.requires_grad}"


def overlaps(a, b) -> bool:
    """Whether two storages may share memory (bounds only: disjoint interleaved views count as shared)."""
    if type(a) is np.ndarray and type(b) is np.ndarray:
        return np.may_share_memory(a, b)
    return getattr(a, "block", a) is getattr(b, "block", b)       # device arrays: the same allocation


@dataclass(frozen=True, eq=False)
class DisjointGuard(Guard):
    """An argument the program writes shares no memory with its other inputs. The program reads each
    input as an array of its own, so `f(x, x[0])` or `f(x, x)` replaying a trace made with separate
    tensors would read what the write through the first left unchanged in the second."""
    written: object             # the ArgSource of a written argument
    others: tuple               # the sources of the other tensor inputs

    @property
    def subject(self) -> str:
        return f"{self.written.describe()} shares no memory with another input"

    def clash(self, call):
        """The first other input sharing memory with the written argument, or None."""
        data = self.written.tensor(call.leaves)._data
        for s in self.others:
            other = s.tensor(call.leaves)
            if other is not None and overlaps(data, other._data):
                return s
        return None

    def check(self, call) -> bool:
        return self.clash(call) is None

    def code(self, bind) -> list:
        fn = bind(overlaps, "overlaps")
        return [f"d = {self.written.expression(bind)}._data"] + [
            f"if {fn}(d, {s.expression(bind)}._data): return None" for s in self.others]

    def actual(self, call) -> str:
        s = self.clash(call)
        return "no overlap" if s is None else f"it shares memory with {s.describe()}"


@dataclass(frozen=True, eq=False)
class GradGuard(Guard):
    owner: object           # the ArgSource or CapturedSource the parameter is found by
    name: str
    present: bool

    @property
    def subject(self) -> str:
        return f"{self.name}.grad is {'set' if self.present else 'None'}"

    def check(self, call) -> bool:
        p = self.owner.tensor(call.leaves)
        return p is not None and (p._grad is not None) == self.present

    def code(self, bind) -> list:
        return [f"p = {self.owner.expression(bind)}",
                f"if p is None or not ((p._grad is not None) == {self.present!r}): return None"]

    def describe(self) -> str:
        return f"{self.name}.grad is {'not None' if self.present else 'None'}"

    def actual(self, call) -> str:
        p = self.owner.tensor(call.leaves)
        return "parameter freed" if p is None else ("not None" if p._grad is not None else "None")


@dataclass(frozen=True, eq=False)
class ObjectGuard(Guard):
    """A Module's or Optimizer's Python-visible state, by snapshot. `version`: a one-element list that
    changes whenever that kind of state may have changed (modules: nn.module.STATE_VERSION), so the
    compiled guards compare snapshots only after it moved."""
    ref: weakref.ref
    name: str
    snapshot: Callable
    expected: tuple
    version: list | None = None

    @property
    def subject(self) -> str:
        return f"state of {self.name}"

    def check(self, call) -> bool:
        obj = self.ref()
        return obj is not None and self.snapshot(obj) == self.expected

    def code(self, bind) -> list:
        snapshot, expected = bind(self.snapshot, "snapshot"), bind(self.expected, "expected")
        return [f"o = {bind(self.ref, 'ref')}()",
                f"if o is None or not ({snapshot}(o) == {expected}): return None"]

    def describe(self) -> str:
        return f"{self.name}: {self.snapshot.__doc__.strip()} as traced ({_short(self.expected)})"

    def actual(self, call) -> str:
        obj = self.ref()
        return "freed" if obj is None else _short(_diff(self.expected, self.snapshot(obj)))

    def failure_key(self, call) -> str:
        obj = self.ref()
        parts = getattr(self.snapshot, "parts", None)
        if obj is None or parts is None:
            return self.subject
        now = self.snapshot(obj)
        for part, a, b in zip(parts, self.expected, now):
            if a != b:
                if isinstance(part, tuple):         # attribute names
                    changed = [k for k, x, y in zip(part, a, b) if x != y]
                    return ", ".join(f"{self.name}.{k}" for k in changed) or self.subject
                return f"{part} of {self.name}"
        return self.subject


@dataclass(frozen=True, eq=False)
class ConstantGuard(Guard):
    name: str
    read: Callable
    expected: object

    @property
    def subject(self) -> str:
        return self.name

    def check(self, call) -> bool:
        now = self.read()
        return bool(now == self.expected) or (_is_nan(self.expected) and _is_nan(now))

    def code(self, bind) -> list:
        if _is_nan(self.expected):                  # nan == nan is False: a NaN constant holds while NaN
            return [f"if not {bind(_is_nan, 'is_nan')}({bind(self.read, 'read')}()): return None"]
        return [f"if not ({bind(self.read, 'read')}() == {bind(self.expected, 'expected')}): return None"]

    def describe(self) -> str:
        return f"{self.name} == {self.expected!r}"

    def actual(self, call) -> str:
        return repr(self.read())


def _is_nan(v) -> bool:
    return isinstance(v, (float, np.floating)) and v != v


class GlobalGuard(ConstantGuard):
    """A process-wide setting the trace depends on (grad mode, the default dtype): same check as a constant."""


def first_failure(guards, call):
    for g in guards:
        if not g.check(call):
            return g
    return None


class _Source:
    """Python source of one generated function and the objects it names (`bind`)."""

    def __init__(self):
        self.objects: dict = {}         # id -> (identifier, object)

    def bind(self, obj, hint: str) -> str:
        if id(obj) not in self.objects:
            self.objects[id(obj)] = (f"{hint}{len(self.objects)}", obj)
        return self.objects[id(obj)][0]

    def function(self, signature: str, body: list, filename: str) -> Callable:
        """The function `def <signature>:` with `body` (unindented lines); `.source` is its text."""
        source = "\n    ".join([f"def {signature}:"] + body) + "\n"
        namespace = {ident: obj for ident, obj in self.objects.values()}
        exec(compile(source, filename, "exec"), namespace)
        fn = namespace[signature.partition("(")[0]]
        fn.source = source
        return fn


def compile_guards(guards, sources=(), name: str = "a program") -> Callable:
    """One function `(call) -> list | None`: the arrays of `sources` (a program's inputs) when every guard
    holds for `call`, else None (`first_failure` says which one fails). Generated from each guard's
    `code` and each source's `expression`, so a cached call checks its guards (W3 has 36) and reads its
    inputs without a Python call per guard or input. `.source` is its text."""
    gen = _Source()
    bind = gen.bind
    lines = ["leaves = call.leaves"]
    versioned = [g for g in guards if getattr(g, "version", None) is not None]
    for g in guards:
        if g in versioned:
            if g is versioned[0]:
                lines += _versioned_block(versioned, bind)
            continue
        lines += g.code(bind)
    lines.append(f"return [{', '.join(f'{src.expression(bind)}._data' for src in sources)}]")
    return gen.function("inputs_if_fits(call)", lines, f"<guards of {name}>")


def compile_commit(writebacks, grad_bindings, sources, make, dtypes, name: str = "a program") -> Callable:
    """One function `(call, results) -> bool` committing a run whose write-backs were all donated (each
    result is its target's own array, written by the kernels): it bumps each target's version counter
    and binds the parameters' gradients (`make(array, dtype)` a tensor), with no Python call per target
    (W5: 131 write-backs and 28 gradients, ~60 -> ~20 us). False, having done nothing, when a result is
    not its target's array (a private copy was made): the caller's general commit copies then."""
    gen = _Source()
    bind = gen.bind
    lines = ["leaves = call.leaves"]
    targets = [(f"t{k}", s, r) for k, (s, r) in enumerate(writebacks)]
    lines += [f"{t} = {sources[s].expression(bind)}" for t, s, _ in targets]
    lines += [f"if results[{r}] is not {t}._data: return False" for t, _, r in targets]
    lines += [f"{t}._version[0] += 1" for t, _, _ in targets]
    for owner, pos in grad_bindings:
        value = "None" if pos is None else f"{bind(make, 'make')}(results[{pos}], {bind(dtypes[pos], 'dtype')})"
        lines += [f"p = {owner.expression(bind)}", f"if p is not None: p._grad = {value}"]
    lines.append("return True")
    return gen.function("commit_donated(call, results)", lines, f"<commit of {name}>")


def _versioned_block(guards, bind) -> list:
    """The snapshot guards sharing one version counter, compared only when the counter moved since they
    last all held (the version is read first: a change landing meanwhile moves it again). Each object's
    liveness is checked every call."""
    version, seen = bind(guards[0].version, "version"), bind([None], "seen")
    lines = [f"if {bind(g.ref, 'ref')}() is None: return None" for g in guards]
    lines += [f"v = {version}[0]", f"if v != {seen}[0]:"]
    lines += ["    " + line for g in guards for line in g.code(bind)]
    lines.append(f"    {seen}[0] = v")
    return lines


# ---------------------------------------------------------------- snapshots, as data
_NO_HOOKS: dict = {}        # an empty mapping, never written


def module_snapshot(keys):
    def snapshot(m):
        """training flag, Python attributes, parameter/buffer/submodule/hook identities"""
        d = m.__dict__
        hooks = tuple(map(id, d.get("_forward_pre_hooks", _NO_HOOKS).values())) + \
            tuple(map(id, d.get("_forward_hooks", _NO_HOOKS).values()))
        return (tuple(map(d.get, keys)), tuple(map(id, d["_parameters"].values())),
                tuple(map(id, d["_buffers"].values())), tuple(map(id, d["_modules"].values())), hooks)
    snapshot.parts = (keys, "parameters", "buffers", "submodules", "forward hooks")
    return snapshot


def _module_keys(m) -> tuple:
    return tuple(sorted(k for k, v in vars(m).items() if (k == "training" or not k.startswith("_"))
                        and is_constant(v)))


def optimizer_snapshot(opt):
    """flags, parameter and hyperparameter identities, and which state tensors each parameter has"""
    state = opt.state                   # (taken on every call: list comprehensions, not generators)
    groups = []
    for group in opt.param_groups:
        params = dict.__getitem__(group, "params")
        tensors = getattr(group, "tensors", _NO_HOOKS)
        flags = tuple([(k, v) for k, v in dict.items(group) if k != "params" and k not in tensors
                       and is_constant(v)])
        hyper = tuple([(k, id(v)) for k, v in tensors.items()])
        st = tuple([_state_signature(state.get(p)) for p in params])
        groups.append((tuple(map(id, params)), flags, hyper, st))
    return tuple(groups)


def _state_signature(s):
    if not s:
        return None
    return tuple([(k, v if is_constant(v) else id(v)) for k, v in s.items()])


def state_guards(reach: Reach) -> list:
    """Guards on the reachable modules, optimizers and Python constants, as they are now."""
    guards: list = []
    for name, m in reach.modules + reach.optimizers:
        if id(m) in reach.bindings:
            path, read = reach.bindings[id(m)]
            guards.append(BindingGuard(path, read, weakref.ref(m)))
    version = getattr(sys.modules.get("tracetorch.nn.module"), "STATE_VERSION", None)
    for name, m in reach.modules:
        snap = module_snapshot(_module_keys(m))
        guards.append(ObjectGuard(weakref.ref(m), name, snap, snap(m), version))
    for name, opt in reach.optimizers:
        guards.append(ObjectGuard(weakref.ref(opt), name, optimizer_snapshot, optimizer_snapshot(opt)))
    for name, read, value in reach.constants:
        guards.append(ConstantGuard(name, read, value))
    return guards


def global_guards() -> list:
    return [GlobalGuard("grad mode enabled", _grad_enabled, STATE.grad_enabled),
            GlobalGuard("default dtype", D.get_default_dtype, D.get_default_dtype())]


def _grad_enabled():
    return STATE.grad_enabled


# ---------------------------------------------------------------- messages
def _call_text(spec) -> str:
    from .pytree import format_spec
    args, kwargs = spec[1]
    text = format_spec(args)[1:-1].rstrip(",")
    if kwargs[3]:
        text += (", " if text else "") + ", ".join(f"{k}={format_spec(s)}" for k, s in zip(kwargs[2], kwargs[3]))
    return _short(f"f({text})")


def _short(x, limit: int = 160) -> str:
    s = x if isinstance(x, str) else repr(x)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _diff(expected, got):
    """The first differing part of two nested snapshots (for readable failure messages)."""
    if isinstance(expected, tuple) and isinstance(got, tuple) and len(expected) == len(got):
        for a, b in zip(expected, got):
            if a != b:
                return _diff(a, b)
    return f"expected {expected!r}, got {got!r}"


@dataclass(frozen=True, eq=False)
class BindingGuard(Guard):
    """A name (global, closure variable, attribute path) still holds the object the trace reached."""
    name: str
    read: Callable
    ref: weakref.ref

    @property
    def subject(self) -> str:
        return f"{self.name} is the traced object"

    def check(self, call) -> bool:
        obj = self.ref()
        return obj is not None and self.read() is obj

    def code(self, bind) -> list:
        return [f"o = {bind(self.ref, 'ref')}()", f"if o is None or {bind(self.read, 'read')}() is not o: return None"]

    def describe(self) -> str:
        return f"{self.name} is the {type(self.ref()).__name__} the trace read"

    def actual(self, call) -> str:
        now = self.read()
        return "the traced object was freed" if self.ref() is None else f"another {type(now).__name__}"


@dataclass(frozen=True, eq=False)
class SameObjectGuard(Guard):
    """Two tensor arguments were one object when traced (the program reads it once)."""
    first: int
    second: int
    names: tuple

    @property
    def subject(self) -> str:
        return f"{self.names[0]} is {self.names[1]}"

    def check(self, call) -> bool:
        return call.leaves[self.first] is call.leaves[self.second]

    def code(self, bind) -> list:
        return [f"if leaves[{self.first}] is not leaves[{self.second}]: return None"]

    def describe(self) -> str:
        return f"{self.names[0]} and {self.names[1]} are the same tensor"

    def actual(self, call) -> str:
        return "different tensors"
