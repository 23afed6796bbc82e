"""`tt.compile`: the decorator, its per-function (per-instance) cache, the trace tree and stats.

A call to a compiled function:

1. outside any trace (a compiled function called while another one is being
   traced is simply inlined into that trace), with compilation enabled;
2. static guards pick the cached programs that may run (most recently used
   first); the first one runs; if a value guard fails, the run is abandoned
   (nothing committed) and the program whose recorded outcomes agree with the
   ones just observed runs instead: the cached programs form a *trace tree*
   keyed by the outcomes of their value guards;
3. if none fits, the function is traced (run eagerly under the tracer: the
   call's result is the eager result), lowered, compiled and cached;
4. after `cache_size_limit` traces, one warning names the guard that keeps
   failing and the function runs eagerly from then on.

A compiled method or Module keeps one cache per instance (`__get__` binds a
per-instance `CompiledFunction`). Tracing and caching take a lock; a cached
call takes none: the cache is a tuple replaced whole, each program checks its
guards with one generated function (guards.compile_guards) and calls are
counted per thread. Tracing state itself is per thread.
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import warnings
from threading import get_ident
from time import perf_counter_ns
import weakref
from collections import Counter

from runtime.profiler import STATE as PROFILING

from ..ops.dispatch import STATE
from . import logs
from .backends import resolve
from .capture import Call, capture
from .guards import first_failure
from .program import ValueGuardFailed, build_program

_MODES = ("default", "eager", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LIVE_COMPILED_FUNCTIONS: "weakref.WeakSet" = weakref.WeakSet()     # for tt.compiler.reset()


class CompileError(RuntimeError):
    """Lowering or code generation failed; the message carries the IR. The call that traced ran
    eagerly (its effects are applied): `.result` is its result, `.ir` the traced graph."""

    def __init__(self, message: str, *, ir=None, result=None):
        super().__init__(message)
        self.ir = ir
        self.result = result


class CompileWarning(UserWarning):
    pass


class CompiledFunction:
    """The callable `tt.compile(fn)` returns: `.stats()`, `.explain(*args)`, `.graph`, `.reset()`."""

    def __init__(self, fn, options: dict, *, self_ref=None, reach_fn=None, name=None):
        self.fn = fn
        self.options = options
        self._self_ref = self_ref
        self._reach_fn = reach_fn or fn
        self.name = name or getattr(fn, "__qualname__", getattr(fn, "__name__", "fn"))
        self.ir_name = _identifier(self.name.rsplit(".", 1)[-1])       # the IR's `def <name>(...)`
        self._lock = threading.RLock()
        self._programs: tuple = ()          # replaced, never mutated: a call reads it without the lock
        self._generation = 0                # bumped after a program is cached
        self._instances: dict = {}         # id(instance) -> (reference to it, its bound CompiledFunction)
        self._gave_up: str | None = None
        self._last_program = None
        self._failures: Counter = Counter()
        self._failure_detail: dict = {}
        self._stats = _new_stats()
        self._call_counts: dict = {}        # thread id -> [calls, cache hits] (see __call__)
        try:
            functools.update_wrapper(self, fn)
        except (AttributeError, TypeError):
            pass
        LIVE_COMPILED_FUNCTIONS.add(self)

    # ------------------------------------------------------------ binding
    def __get__(self, obj, objtype=None):
        if obj is None or self._self_ref is not None:
            return self
        entry = self._instances.get(id(obj))
        if entry is None or entry[0]() is not obj:
            with self._lock:
                entry = self._instances.get(id(obj))
                if entry is None or entry[0]() is not obj:
                    ref = _instance_ref(obj, self._instances)
                    entry = (ref, CompiledFunction(self.fn, self.options, self_ref=ref, name=self.name))
                    self._instances[id(obj)] = entry
        return entry[1]

    def _target(self):
        if self._self_ref is None:
            return self.fn
        obj = self._self_ref()
        if obj is None:
            raise ReferenceError(f"{self.name}: the instance this compiled method belongs to was freed")
        return self.fn.__get__(obj, type(obj))

    def _tt_compiled_target(self):
        return self.fn, (self._self_ref() if self._self_ref is not None else None)

    # ------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        target = self.fn if self._self_ref is None else self._target()
        if self.options["mode"] == "eager" or compilation_disabled() or STATE.tracer is not None:
            return target(*args, **kwargs)
        served_by = None                # the cached program that ran
        recorder = PROFILING.recorder   # tt.compiler.profile() is on: time the whole call
        if recorder is not None:
            start = perf_counter_ns()
        try:
            if self._gave_up is not None:       # (counted as a call below, as every call is)
                self._stats["fallbacks"] += 1
                return target(*args, **kwargs)
            call = Call.of(args, kwargs)
            generation, programs = self._generation, self._programs     # in this order (see _trace)
            while True:
                if self.options["check"]:
                    program, _ = _first_fitting(programs, call)
                    if program is not None:
                        from .check import run_checked
                        result = run_checked(self, program, call, target)
                        if result is not _NOT_CHECKED:
                            return result
                served_by, result = self._run_cached(call, programs)
                if served_by is not None:
                    return result
                with self._lock:
                    if self._generation != generation:      # another thread cached a trace meanwhile
                        generation, programs = self._generation, self._programs
                        continue
                    for program in programs:
                        guard = first_failure(program.guards, call)
                        if guard is not None:
                            self._note_static_failure(guard, call)
                    return self._trace(call, target)
        finally:
            # count the call in this thread's [calls, cache hits]: only this thread writes them, so no lock
            # is taken (`stats()` adds up the threads'); a cache hit moves its program to the front
            counts = self._call_counts.get(get_ident())
            if counts is None:
                counts = self._call_counts.setdefault(get_ident(), [0, 0])
            counts[0] += 1
            if recorder is not None:
                recorder.add_call(self, perf_counter_ns() - start, traced=served_by is None)
            if served_by is not None:
                counts[1] += 1
                cached = self._programs
                if cached and cached[0] is not served_by:
                    self._move_to_front(served_by)

    def _run_cached(self, call, programs):
        """(program, result): run the first program whose static guards pass (most recently used first);
        on a value-guard failure, the one whose recorded outcomes agree with the ones just observed (the
        trace tree). (None, None) if none fits."""
        tried = []
        for program in programs:        # (_first_fitting, inlined: W4-style calls are dominated by this path)
            inputs = program.inputs_if_fits(call)
            if inputs is not None:
                break
        else:
            program = None
        while program is not None:
            try:
                return program, program.run(call, inputs)
            except ValueGuardFailed as fail:
                self._note_value_failure(fail)
                tried.append(program)
                path = program.value_path()[:fail.position] + (fail.outcome,)
                program, inputs = _first_fitting([p for p in programs if p not in tried
                                                  and p.value_path()[:fail.position + 1] == path], call)
        return None, None

    def _move_to_front(self, program) -> None:
        with self._lock:
            cached = self._programs
            if program in cached:
                self._programs = (program,) + tuple(p for p in cached if p is not program)

    def _note_static_failure(self, guard, call):
        detail, key = guard.actual(call), guard.failure_key(call)
        with self._lock:
            self._stats["guard_failures"][key] += 1
            self._failures[key] += 1
            self._failure_detail[key] = (f"{guard.describe()}; found {detail}",
                                         getattr(guard, "where", "") or self._where())
        logs.log("guards", f"{self.name}: guard failed: {guard.describe()}; found {detail}")

    def _note_value_failure(self, fail: ValueGuardFailed):
        with self._lock:
            key = fail.spec.why
            self._stats["guard_failures"][key] += 1
            self._stats["value_guard_misses"] += 1
            self._failures[key] += 1
            self._failure_detail[key] = (str(fail), fail.spec.where)
        logs.log("guards", f"{self.name}: {fail}")

    def _where(self) -> str:
        code = getattr(inspect.unwrap(self.fn), "__code__", None)
        if code is None:
            return "?"
        return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno} ({self.name})"

    def _trace(self, call, target):
        with self._lock:
            if self._stats["traces"] >= self.options["cache_size_limit"]:
                self._give_up()
                self._stats["fallbacks"] += 1
                return target(*call.args, **call.kwargs)
            reason = ", ".join(f"{k}" for k in self._failures) or "first call"
            logs.log("recompiles", f"{self.name}: trace #{self._stats['traces'] + 1} ({reason})")
            obj = self._self_ref() if self._self_ref is not None else None
            try:
                trace = capture(target, call, name=self.ir_name, self_obj=obj, reach_fn=self._reach_fn,
                                fullgraph=self.options["fullgraph"])
            except BaseException:
                self._stats["failed_traces"] += 1    # the call raised (bad input): nothing cached, and it does
                raise                                # not count toward cache_size_limit
            self._stats["traces"] += 1
            self._stats["trace_seconds"] += trace.seconds
            if trace.uncacheable is not None:
                self._stats["uncached_traces"] += 1
                key = trace.uncacheable_kind
                self._failures[key] += 1
                self._failure_detail[key] = (trace.uncacheable, trace.uncacheable_where or self._where())
                logs.log("recompiles", f"{self.name}: not cached: {trace.uncacheable}")
                return trace.result
            try:
                program = build_program(trace, self.options["backend"], name=self.ir_name)
            except Exception as e:
                if self.options["fallback"]:
                    warnings.warn(f"tt.compile: compiling {self.name} failed ({e}); running it eagerly",
                                  CompileWarning, stacklevel=_user_stacklevel())
                    self._gave_up = f"compilation failed: {e}"
                    return trace.result
                raise CompileError(f"tt.compile: compiling {self.name} failed: {e}\n(this call ran eagerly: its "
                                   "effects are applied and its result is the error's `.result`; fallback=True "
                                   f"runs eagerly with a warning instead)\n\ntraced IR:\n{trace.raw.text()}",
                                   ir=trace.raw, result=trace.result) from e
            self._stats["compiles"] += 1
            self._stats["compile_seconds"] += program.compile_seconds
            self._stats["nodes"] = len(program.graph.nodes)
            self._stats["kernels"] = getattr(program.executable, "kernels", len(program.graph.nodes))
            for key in ("kernels_before_fusion", "kernels_after_fusion", "bytes_moved", "planned_peak_bytes"):
                if hasattr(program.executable, key):
                    self._stats[key] = getattr(program.executable, key)
            self._programs = (program,) + self._programs
            self._generation += 1       # after: a call reads the generation, then the programs
            self._last_program = program
            return trace.result

    def _give_up(self):
        if self._gave_up is not None:
            return
        if self._failures:
            key, _ = self._failures.most_common(1)[0]
            detail, where = self._failure_detail[key]
        else:
            key, detail, where = "?", "", self._where()
        self._gave_up = key
        warnings.warn(f"tt.compile: {self.name} reached cache_size_limit={self.options['cache_size_limit']} "
                      f"traces; the guard that keeps failing: {key} ({detail}) at {where}. Running it eagerly "
                      "from now on (raise cache_size_limit, or make that value a tensor).",
                      CompileWarning, stacklevel=_user_stacklevel())

    # ------------------------------------------------------------ introspection
    def stats(self) -> dict:
        with self._lock:
            s = dict(self._stats)
            s["guard_failures"] = dict(self._stats["guard_failures"])
            counts = list(self._call_counts.values())
            s["calls"], s["cache_hits"] = sum(c[0] for c in counts), sum(c[1] for c in counts)
            s["cache_entries"] = len(self._programs)
            s["eager_since_limit"] = self._gave_up is not None
            return s

    @property
    def graph(self):
        """The optimized IR of the last trace (None before the first call)."""
        p = self._last_program
        return None if p is None else p.graph

    @property
    def programs(self) -> list:
        return list(self._programs)

    def explain(self, *args, **kwargs) -> str:
        from .explain import explain_compiled
        return explain_compiled(self, args, kwargs)

    def reset(self) -> None:
        with self._lock:
            self._programs = ()
            self._generation += 1
            self._gave_up = None
            self._last_program = None
            self._failures.clear()
            self._failure_detail.clear()
            self._stats = _new_stats()
            self._call_counts = {}
            for _, bound in list(self._instances.values()):
                bound.reset()

    def __repr__(self) -> str:
        return f"<compiled {self.name} (backend={self.options['backend']!r})>"


class CompiledModule:
    """`tt.compile(module)`: an nn.Module (as PyTorch's OptimizedModule) holding the original as its
    submodule `_orig_mod`, so a parent module sees its parameters, buffers, state (keys prefixed
    `_orig_mod.`) and train/eval flags, and `nn.Sequential` takes it. Calls (and `forward`) go through
    the compiled `module.__call__`; other attributes are the original's. The class made is a subclass
    of this one and of nn.Module (`_compiled_module_class`: the compiler does not import nn itself)."""

    def __init__(self, module, options: dict):
        super().__init__()                               # nn.Module's, next in the made class's MRO
        self._orig_mod = module
        fn = CompiledFunction(type(module).__call__, options, self_ref=weakref.ref(module),
                              reach_fn=type(module).forward, name=type(module).__name__)
        object.__setattr__(self, "_compiled", fn)

    def __call__(self, *args, **kwargs):
        return self._compiled(*args, **kwargs)

    def forward(self, *args, **kwargs):
        return self._compiled(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)            # nn.Module's (its own `_orig_mod`)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if modules is None or "_orig_mod" not in modules:
                raise
            return getattr(modules["_orig_mod"], name)

    def __setattr__(self, name, value):
        modules = self.__dict__.get("_modules")
        if modules is None or "_orig_mod" not in modules or name in ("_orig_mod", "training"):
            super().__setattr__(name, value)
        else:
            setattr(modules["_orig_mod"], name, value)

    def __getitem__(self, key):
        return self._orig_mod[key]

    def __len__(self):
        return len(self._orig_mod)

    def __iter__(self):
        return iter(self._orig_mod)

    def _tt_compiled_target(self):
        return self._orig_mod.forward, self._orig_mod

    def stats(self) -> dict:
        return self._compiled.stats()

    def explain(self, *args, **kwargs) -> str:
        return self._compiled.explain(*args, **kwargs)

    @property
    def graph(self):
        return self._compiled.graph

    def reset(self) -> None:
        self._compiled.reset()


@functools.lru_cache(maxsize=None)
def _compiled_module_class(module_class):
    return type("CompiledModule", (CompiledModule, module_class), {"__module__": __name__})


def compile(fn=None, *, backend="auto", mode="default", check: bool = False, fullgraph: bool = False,
            cache_size_limit: int = 8, fallback: bool = False, dynamic=None, options=None):
    """Compile a function or Module by tracing it (see tracetorch/jit/compile.py and DESIGN.md).

    backend: "auto" | "interp" | "llvm" | "cuda" (whatever is registered; "auto" picks the best).
    mode="eager" turns compilation off (as does the environment variable TRACETORCH_DISABLE=1).
    check=True runs compiled and eager side by side on every cached call and raises CheckError
    naming the first divergent node. fullgraph=True makes a trace that would depend on tensor
    *values* an error (`.numpy()`, boolean masks, `int(t)`) instead of a value guard; branches on a
    tensor (`if loss > 0:`) stay allowed: each outcome gets its own trace. After `cache_size_limit`
    traces the function warns once and runs eagerly. fallback=True runs eagerly (with a warning)
    when the backend fails to compile a trace. `dynamic` and `options` are accepted for PyTorch
    compatibility and ignored. Python side effects (print, list.append) happen only while tracing.
    """
    if mode not in _MODES:
        raise ValueError(f"tt.compile: unknown mode {mode!r} (expected 'default' or 'eager')")
    if not isinstance(cache_size_limit, int) or cache_size_limit < 1:
        raise ValueError(f"tt.compile: cache_size_limit must be a positive int, got {cache_size_limit!r}")
    resolve(backend)
    opts = dict(backend=backend, mode="eager" if mode == "eager" else "default", check=bool(check),
                fullgraph=bool(fullgraph), cache_size_limit=cache_size_limit, fallback=bool(fallback))
    if fn is None:
        return lambda f: _wrap(f, opts)
    return _wrap(fn, opts)


def _wrap(fn, opts):
    from .reach import module_class
    Module = module_class()
    if isinstance(fn, CompiledFunction):
        fn = fn.fn
    if isinstance(fn, CompiledModule):
        fn = fn._orig_mod
    if Module is not None and isinstance(fn, Module):
        return _compiled_module_class(Module)(fn, opts)
    if inspect.ismethod(fn):
        return CompiledFunction(fn.__func__, opts, self_ref=weakref.ref(fn.__self__),
                                name=fn.__func__.__qualname__)
    if not callable(fn):
        raise TypeError(f"tt.compile expects a function or a Module, got {type(fn).__name__}")
    return CompiledFunction(fn, opts)


def _user_stacklevel() -> int:
    """The `stacklevel` that points a warning at the caller's line, past this module's frames (a compiled
    Module's call adds one)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _instance_ref(obj, instances: dict):
    """A reference to the instance a compiled method is bound to, keyed by identity, not equality (two
    equal instances are two caches; an unhashable dataclass is fine): a weak one that drops its entry
    when the instance dies, or, for an instance without weak references (`__slots__`), a strong one."""
    key = id(obj)

    def drop(ref):
        if instances.get(key, (None,))[0] is ref:
            instances.pop(key, None)
    try:
        return weakref.ref(obj, drop)
    except TypeError:
        return lambda: obj


def _new_stats() -> dict:
    # "calls" and "cache_hits" are counted per thread (CompiledFunction.__call__), filled in by stats()
    return {"calls": 0, "traces": 0, "failed_traces": 0, "compiles": 0, "cache_hits": 0, "guard_failures": Counter(),
            "value_guard_misses": 0, "uncached_traces": 0, "fallbacks": 0, "checked_calls": 0, "nodes": 0,
            "kernels": 0,
            "compile_seconds": 0.0, "trace_seconds": 0.0}


def _identifier(name: str) -> str:
    import re
    out = re.sub(r"\W+", "_", name.replace("<locals>.", "")).strip("_")
    return out or "fn"


def _first_fitting(programs, call):
    """(the first of `programs` whose static guards all hold, its inputs for `call`), or (None, None)."""
    for p in programs:
        inputs = p.inputs_if_fits(call)
        if inputs is not None:
            return p, inputs
    return None, None


_DISABLE = "TRACETORCH_DISABLE"
_ENVIRON = os.environ
try:        # os.environ's own dict and how it spells the key and "1" (bytes on POSIX)
    _ENVIRON_DATA, _DISABLE_KEY, _DISABLE_ON = _ENVIRON._data, _ENVIRON.encodekey(_DISABLE), _ENVIRON.encodevalue("1")
except AttributeError:
    _ENVIRON_DATA = None


def compilation_disabled() -> bool:
    """`os.environ.get("TRACETORCH_DISABLE") == "1"`, read on every call (it may be set at run time),
    but from os.environ's dict directly: os.environ.get encodes the key and costs ~0.6 us a call."""
    if _ENVIRON_DATA is not None and os.environ is _ENVIRON:
        return _ENVIRON_DATA.get(_DISABLE_KEY) == _DISABLE_ON
    return os.environ.get(_DISABLE) == "1"


_NOT_CHECKED = object()      # check mode did not apply (a value guard failed): run normally
