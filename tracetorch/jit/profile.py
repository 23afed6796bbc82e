"""`tt.compiler.profile()`: where the time of compiled calls goes, kernel by kernel.

    with tt.compiler.profile() as prof:
        for _ in range(20):
            step(x, y)
    print(prof)                  # per function: calls, time per call; per kernel: time, share, GB/s, GFLOP/s
    prof.rows()                  # the same figures as dicts

While the block runs, every call of a compiled function is timed whole, and
every run of a CPU (llvm) program is timed step by step: each fused kernel,
extern call (matmul) and write-back copy, with the names `.explain()` gives
the fusion groups. Calls that trace and compile are counted apart. A
program that is normally one native call runs kernel by kernel here (a few
hundred nanoseconds more per kernel; a reduction's sums may group
differently, so results can differ in the last bits). Functions compiled for CUDA
are timed per call only: their kernels run asynchronously. Calls from every
thread are recorded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from runtime import profiler

from .lowering import group_of, step_bytes
from .passes.fuse import EXTERN


class Profile:
    """The timings of one `with tt.compiler.profile()` block (see the module docstring)."""

    def __init__(self):
        self._recorder = profiler.Recorder()
        self._active = False

    def __enter__(self) -> "Profile":
        if profiler.STATE.recorder is not None:
            raise RuntimeError("tt.compiler.profile(): another profile is already active (they do not nest)")
        profiler.STATE.recorder = self._recorder
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        if profiler.STATE.recorder is self._recorder:
            profiler.STATE.recorder = None
        self._active = False

    # ------------------------------------------------------------ figures
    def functions(self) -> list["FunctionTimes"]:
        """Per compiled function called in the block: its calls and the programs they ran."""
        with self._recorder._lock:
            calls = list(self._recorder.calls.values())
            runs = {pid: list(entry) for pid, entry in self._recorder.steps.items()}
        out, claimed = [], set()
        for fn, n, ns, traced, traced_ns in calls:
            programs = []
            for kind, compiled in _programs_of(fn):
                entry = runs.get(id(compiled))
                if entry is not None and id(compiled) not in claimed:
                    claimed.add(id(compiled))
                    programs.append(_program_times(kind, entry))
            out.append(FunctionTimes(fn.name, n, ns * 1e-9, traced, traced_ns * 1e-9, programs))
        rest = [_program_times("program", e) for pid, e in runs.items() if pid not in claimed]
        if rest:        # programs run outside any recorded call (a backward run by loss.backward())
            out.append(FunctionTimes("(programs run outside a compiled call)", 0, 0.0, 0, 0.0, rest))
        return out

    def rows(self) -> list[dict]:
        """One dict per (function, program, step): the figures `table()` prints."""
        rows = []
        for f in self.functions():
            for p in f.programs:
                for s in p.steps:
                    rows.append(dict(function=f.name, program=p.name, kind_of_program=p.kind, step=s.name,
                                     kind=s.kind, runs=p.runs, seconds=s.seconds, seconds_per_run=s.per_run,
                                     share=s.share, bytes=s.bytes, flops=s.flops, gb_per_s=s.gb_per_s,
                                     gflop_per_s=s.gflop_per_s, what=s.what))
        return rows

    def table(self, sort_by: str = "time", top: int | None = None) -> str:
        """The report: per function, per program, its steps by time (`sort_by="time"`) or in execution
        order (`"order"`); `top`: only the slowest `top` steps of each program."""
        if sort_by not in ("time", "order"):
            raise ValueError(f"profile.table: sort_by must be 'time' or 'order', got {sort_by!r}")
        if top is not None and (not isinstance(top, int) or top < 1):
            raise ValueError(f"profile.table: top must be a positive int or None, got {top!r}")
        functions = self.functions()
        if not functions:
            return "tt.compiler.profile: no compiled function ran in the block"
        lines = []
        for f in functions:
            head = f.name
            if f.calls:
                head += f": {f.calls} call{'s' * (f.calls != 1)}, {_ms(f.seconds / f.calls)} per call"
            if f.traced:
                head += (f" ({f.traced} more traced and compiled or ran checked, {f.traced_seconds:.3f} s, "
                         "not counted)")
            lines.append(head)
            if f.outside_per_call is not None:
                lines.append(f"  outside the programs (guards, inputs, results, write-backs): "
                             f"{_ms(f.outside_per_call)} per call")
            for p in f.programs:
                lines.append(f"  {p.kind} program {p.name!r}: {p.runs} run{'s' * (p.runs != 1)}, "
                             f"{_ms(p.per_run)} per run, {len(p.steps)} steps timed")
                steps = sorted(p.steps, key=lambda s: -s.seconds) if sort_by == "time" else p.steps
                shown = steps[:top] if top else steps
                lines.append(f"    {'step':<28} {'kind':<8} {'ms/run':>8} {'share':>6} {'GB/s':>6} "
                             f"{'GFLOP/s':>7}  what")
                for s in shown:
                    lines.append(f"    {s.name[:28]:<28} {s.kind:<8} {s.per_run * 1e3:8.3f} {s.share:6.1%} "
                                 f"{_rate(s.gb_per_s, 1):>6} {_rate(s.gflop_per_s, 0):>7}  {s.what}")
                if len(shown) < len(steps):
                    rest = sum(s.per_run for s in steps[len(shown):])
                    lines.append(f"    ({len(steps) - len(shown)} more steps: {_ms(rest)} per run)")
                if p.between > 0:
                    lines.append(f"    (between steps: {_ms(p.between)} per run)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        state = "active" if self._active else "finished"
        return f"<tt.compiler.profile ({state}): {len(self._recorder.calls)} functions, " \
               f"{len(self._recorder.steps)} programs>"


@dataclass
class StepTimes:
    name: str
    kind: str            # serial | parallel (split across cores) | extern (a Python-side call: BLAS)
    seconds: float       # in all runs
    per_run: float
    share: float         # of its program's run time
    bytes: int           # each buffer it touches, counted once
    flops: int           # matmuls only (0 for the rest)
    what: str

    @property
    def gb_per_s(self) -> float | None:
        return self.bytes / self.per_run * 1e-9 if self.bytes and self.per_run > 0 else None

    @property
    def gflop_per_s(self) -> float | None:
        return self.flops / self.per_run * 1e-9 if self.flops and self.per_run > 0 else None


@dataclass
class ProgramTimes:
    name: str
    kind: str            # pre-check | forward | backward | program
    runs: int
    seconds: float
    per_run: float
    between: float       # per run, not inside any step (the step loop itself)
    steps: list


@dataclass
class FunctionTimes:
    name: str
    calls: int           # served by a cached program
    seconds: float
    traced: int
    traced_seconds: float
    programs: list

    @property
    def outside_per_call(self) -> float | None:
        """Per call, the time not inside the programs its calls run (pre-check, forward): guards,
        inputs, results, write-backs. None without calls or without such a program timed."""
        inside = sum(p.seconds for p in self.programs if p.kind in ("pre-check", "forward"))
        return max(self.seconds - inside, 0.0) / self.calls if self.calls and inside else None


def profile() -> Profile:
    """A context manager timing compiled calls and their kernels (see this module's docstring)."""
    return Profile()


def _programs_of(fn):
    """(pre-check | forward | backward, engine program) of each cached trace of a compiled function."""
    for program in fn.programs:
        if program.precheck is not None:
            yield "pre-check", getattr(program.precheck, "compiled", None)
        yield "forward", getattr(program.executable, "compiled", None)
        backward = program.backward
        if backward is not None:
            yield "backward", getattr(backward.executable, "compiled", None)


def _program_times(kind: str, entry) -> ProgramTimes:
    compiled, runs, per_step, total_ns = entry
    groups = {g.name: g for g in _groups(compiled)}
    kinds = compiled.step_kinds() if hasattr(compiled, "step_kinds") else {}
    program = compiled.program
    total = total_ns * 1e-9
    steps = []
    for index, ns in sorted(per_step.items()):
        step = program.steps[index]
        group = group_of(step.name, groups)
        seconds = ns * 1e-9
        steps.append(StepTimes(step.name, kinds.get(index, "serial"), seconds, seconds / runs,
                               seconds / total if total else 0.0, step_bytes(step), _flops(group),
                               _what(step, group)))
    between = max(total - sum(s.seconds for s in steps), 0.0) / runs
    return ProgramTimes(program.name, kind, runs, total, total / runs, between, steps)


def _groups(compiled) -> list:
    ref = getattr(compiled, "executable_ref", None)
    executable = ref() if ref is not None else None
    lowered = getattr(executable, "lowered", None)
    return list(lowered.groups) if lowered is not None else []


def _flops(group) -> int:
    if group is None or group.kind != EXTERN or group.extern.op.name != "matmul":
        return 0
    node = group.extern
    return 2 * math.prod(node.out.shape) * node.inputs[0].shape[-1]


def _what(step, group) -> str:
    if group is None:
        return "write-back copy" if step.name.startswith("writeback") else step.name
    described = group.describe()
    if group.name and described.startswith(group.name + " "):
        described = described[len(group.name) + 1:]
    if _flops(group):
        a, b = group.extern.inputs[:2]
        described += f" {list(a.shape)} @ {list(b.shape)}"
    return described


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _rate(rate: float | None, digits: int) -> str:
    return "-" if rate is None else f"{rate:.{digits}f}"


__all__ = ["profile", "Profile"]
