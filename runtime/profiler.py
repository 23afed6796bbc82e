"""Where a profile's timings go while `tt.compiler.profile()` is active.

Compiled programs (runtime.llvm_engine) time each of their steps and compiled
functions (tracetorch.jit.compile) each call, but only while a `Recorder` is
installed here: with none, the cost is one attribute read per call. The
report is built elsewhere (tracetorch/jit/profile.py): this module only
collects, for all threads, under one lock.
"""
from __future__ import annotations

import threading


class Recorder:
    """Step times per compiled program and call times per compiled function, in nanoseconds."""

    def __init__(self):
        self._lock = threading.Lock()
        self.steps: dict = {}      # id(program) -> [program, runs, {step index: total ns}, total ns of its runs]
        self.calls: dict = {}      # id(function) -> [function, calls, total ns, traced calls, their total ns]

    def add_run(self, program, times: list, total_ns: int) -> None:
        """One run of `program`: `times`, (step index, ns) of the steps it ran."""
        with self._lock:
            entry = self.steps.get(id(program))
            if entry is None:
                entry = self.steps[id(program)] = [program, 0, {}, 0]
            entry[1] += 1
            entry[3] += total_ns
            per_step = entry[2]
            for index, ns in times:
                per_step[index] = per_step.get(index, 0) + ns

    def add_call(self, function, ns: int, traced: bool) -> None:
        """One call of a compiled function; `traced`: it traced and compiled (timed apart from the runs)."""
        with self._lock:
            entry = self.calls.get(id(function))
            if entry is None:
                entry = self.calls[id(function)] = [function, 0, 0, 0, 0]
            if traced:
                entry[3] += 1
                entry[4] += ns
            else:
                entry[1] += 1
                entry[2] += ns


class _State:
    recorder: Recorder | None = None


STATE = _State()
