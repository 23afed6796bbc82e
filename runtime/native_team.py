"""Fork-join in native code: worker threads that wait for kernels without Python.

Why: `runtime.parallel.ThreadTeam` hands each slice to a Python thread through
a queue and an event: ~25 us per parallel kernel (60 us at the 90th
percentile) on the 2-core machine, most of a small kernel's time, paid ~50
times per W6 step. Here the job is a few words in a shared block, published by
bumping a generation counter: the workers, parked in native code (a Python
thread each, whose ctypes call never returns and holds no GIL), see it within
a microsecond while they spin, or are woken by a futex once they slept.

Protocol (one state block per team; hot words on their own cache lines):
- `tt_team_run(state, fn, table, err, extent, step)`: the caller stores the
  job, sets `pending` to the number of workers, increments `gen` (sequentially
  consistent) and wakes sleepers if any; runs slice 0 itself; then waits for
  `pending` to reach 0 (pause, then sched_yield). Worker k runs slice
  [k*step, min((k+1)*step, extent)) if it is not empty, then decrements
  `pending` (release: its stores are seen by the caller's acquire load).
- `tt_team_worker(state, k)`: waits for `gen` to move: spins `spin` pause
  iterations, then counts itself in `sleepers` and futex-waits on `gen` (the
  kernel re-checks the value, so no wake-up is lost: the caller bumps `gen`
  before it reads `sleepers`). A `stop` word ends the loop (close()).
- The spin lasts ~1 ms, longer than the serial stretches of a training step and
  the Python work between two steps: a worker that slept costs the next
  parallel kernel its wake-up (~60 us under KVM here; with a 50 us spin W3 B=128
  took 1.96 ms, with 300 us 1.83, W5 1.04 -> 0.95). `rest()` (a spin of 0, seen
  at the worker's next poll) sends it to sleep before work that needs the core,
  an extern step's OpenBLAS threads above all; `tt_team_run` restores the spin
  from its default word.

Linux on x86-64 and AArch64 only (futex system call numbers); elsewhere the
engine keeps ThreadTeam. A team belongs to the process that made it: after
fork the engine makes a new one (its workers did not survive the fork). At
exit the workers are stopped before the interpreter tears down (and could
free) the code they wait in.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import sys
import threading
import time

_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
_PAUSE = {"x86_64": ("declare void @llvm.x86.sse2.pause()", "call void @llvm.x86.sse2.pause()"),
          "aarch64": ("declare void @llvm.aarch64.hint(i32)", "call void @llvm.aarch64.hint(i32 1)")}
CHUNKS_PER_THREAD = 4             # a job's slices: claimed one at a time, so a late worker stalls no one
SPIN_US = 1000                    # how long an idle worker spins before it sleeps
STATE_BYTES = 384                 # gen @0, claim @64, sleepers @128, job @192.., stop @256, spin @264,
                                  # default spin @272, done @320
EXPORTS = ("tt_team_run", "tt_team_worker", "tt_team_stop", "tt_team_pause")
RUN_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_int64, ctypes.c_int64)
WORKER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
STOP_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
PAUSE_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int64)


def _arch() -> str | None:
    m = platform.machine().lower()
    m = {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)
    return m if sys.platform.startswith("linux") and m in _PAUSE else None


def supported() -> bool:
    return _arch() is not None


def team_library(target: str) -> tuple[str, str]:
    """(cache key, LLVM IR) of the team's code on this host, for an engine whose program keys end in
    `target`: what a NativeTeam loads, and what the engine compiles ahead in a child
    (`LLVMEngine._prefetch`)."""
    ir = team_ir(_arch())
    return "team-" + hashlib.sha256(f"{target}\0{ir}".encode()).hexdigest(), ir


def team_ir(arch: str) -> str:
    """The LLVM IR of the team's four entry points for `arch`."""
    futex = _FUTEX[arch]
    pause_decl, pause = _PAUSE[arch]
    return f"""; tracetorch native team (runtime/native_team.py)
{pause_decl}
declare i64 @syscall(i64, ...)
declare i32 @sched_yield()

define void @tt_team_pause(i64 %n) noinline nounwind {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  {pause}
  %i1 = add i64 %i, 1
  %more = icmp slt i64 %i1, %n
  br i1 %more, label %loop, label %done
done:
  ret void
}}

define void @tt_team_run(ptr %state, ptr %fn, ptr %table, ptr %err, i64 %extent, i64 %chunk) nounwind {{
entry:
  %claim = getelementptr i8, ptr %state, i64 64
  %sleepers = getelementptr i8, ptr %state, i64 128
  %done = getelementptr i8, ptr %state, i64 320
  %spinw = getelementptr i8, ptr %state, i64 264
  %spindw = getelementptr i8, ptr %state, i64 272
  %spind = load atomic i64, ptr %spindw monotonic, align 8
  store atomic i64 %spind, ptr %spinw monotonic, align 8
  %chunks1 = add i64 %extent, %chunk
  %chunks2 = sub i64 %chunks1, 1
  %chunks = udiv i64 %chunks2, %chunk
  call void @tt_team_publish(ptr %state, ptr %fn, ptr %table, ptr %err, i64 %extent, i64 %chunk, i64 %chunks)
  %g0 = load i32, ptr %state
  %g = add i32 %g0, 1
  %g64 = zext i32 %g to i64
  %tag = shl i64 %g64, 32
  store atomic i64 %tag, ptr %claim seq_cst, align 8
  %old = atomicrmw add ptr %state, i32 1 seq_cst
  %s = load atomic i32, ptr %sleepers seq_cst, align 4
  %any = icmp sgt i32 %s, 0
  br i1 %any, label %wake, label %take
wake:
  %w = call i64 (i64, ...) @syscall(i64 {futex}, ptr %state, i64 129, i64 2147483647)
  br label %take
take:
  %c0 = atomicrmw add ptr %claim, i64 1 acq_rel
  %c = and i64 %c0, 4294967295
  %left = icmp ult i64 %c, %chunks
  br i1 %left, label %run, label %wait
run:
  call void @tt_team_chunk(ptr %fn, ptr %table, ptr %err, i64 %extent, i64 %chunk, i64 %c)
  %d = atomicrmw add ptr %done, i64 1 release
  br label %take
wait:
  %n = phi i64 [0, %take], [%n1, %yield], [%n1, %spin]
  %finished = load atomic i64, ptr %done acquire, align 8
  %all = icmp eq i64 %finished, %chunks
  br i1 %all, label %out, label %again
again:
  %n1 = add i64 %n, 1
  %polite = icmp ugt i64 %n, 4096
  br i1 %polite, label %yield, label %spin
yield:
  %y = call i32 @sched_yield()
  br label %wait
spin:
  {pause}
  br label %wait
out:
  ret void
}}

define internal void @tt_team_publish(ptr %state, ptr %fn, ptr %table, ptr %err, i64 %extent, i64 %chunk, i64 %chunks) alwaysinline nounwind {{
entry:
  %jfn = getelementptr i8, ptr %state, i64 192
  %jtable = getelementptr i8, ptr %state, i64 200
  %jerr = getelementptr i8, ptr %state, i64 208
  %jextent = getelementptr i8, ptr %state, i64 216
  %jchunk = getelementptr i8, ptr %state, i64 224
  %jchunks = getelementptr i8, ptr %state, i64 232
  %done = getelementptr i8, ptr %state, i64 320
  store atomic ptr %fn, ptr %jfn monotonic, align 8
  store atomic ptr %table, ptr %jtable monotonic, align 8
  store atomic ptr %err, ptr %jerr monotonic, align 8
  store atomic i64 %extent, ptr %jextent monotonic, align 8
  store atomic i64 %chunk, ptr %jchunk monotonic, align 8
  store atomic i64 %chunks, ptr %jchunks monotonic, align 8
  store atomic i64 0, ptr %done seq_cst, align 8
  ret void
}}

define internal void @tt_team_chunk(ptr %fn, ptr %table, ptr %err, i64 %extent, i64 %chunk, i64 %c) alwaysinline nounwind {{
entry:
  %lo = mul i64 %c, %chunk
  %end = add i64 %lo, %chunk
  %over = icmp sgt i64 %end, %extent
  %hi = select i1 %over, i64 %extent, i64 %end
  call void %fn(ptr %table, ptr %err, i64 %lo, i64 %hi)
  ret void
}}

define void @tt_team_worker(ptr %state, i64 %index) nounwind {{
entry:
  %claim = getelementptr i8, ptr %state, i64 64
  %sleepers = getelementptr i8, ptr %state, i64 128
  %jfn = getelementptr i8, ptr %state, i64 192
  %jtable = getelementptr i8, ptr %state, i64 200
  %jerr = getelementptr i8, ptr %state, i64 208
  %jextent = getelementptr i8, ptr %state, i64 216
  %jchunk = getelementptr i8, ptr %state, i64 224
  %jchunks = getelementptr i8, ptr %state, i64 232
  %jstop = getelementptr i8, ptr %state, i64 256
  %jspin = getelementptr i8, ptr %state, i64 264
  %done = getelementptr i8, ptr %state, i64 320
  br label %next
next:
  %last = phi i32 [0, %entry], [%g, %finish]
  br label %poll
poll:
  %n = phi i64 [0, %next], [%n1, %spinning], [%n1, %sleep]
  %g = load atomic i32, ptr %state acquire, align 4
  %moved = icmp ne i32 %g, %last
  br i1 %moved, label %job, label %idle
idle:
  %n1 = add i64 %n, 1
  %spin = load atomic i64, ptr %jspin monotonic, align 8
  %tired = icmp ugt i64 %n, %spin
  br i1 %tired, label %sleep, label %spinning
spinning:
  {pause}
  br label %poll
sleep:
  %a = atomicrmw add ptr %sleepers, i32 1 seq_cst
  %lastw = zext i32 %last to i64
  %r = call i64 (i64, ...) @syscall(i64 {futex}, ptr %state, i64 128, i64 %lastw, ptr null)
  %b = atomicrmw sub ptr %sleepers, i32 1 seq_cst
  br label %poll
job:
  %stop = load atomic i64, ptr %jstop monotonic, align 8
  %stopping = icmp ne i64 %stop, 0
  br i1 %stopping, label %quit, label %work
work:
  %fn = load atomic ptr, ptr %jfn monotonic, align 8
  %table = load atomic ptr, ptr %jtable monotonic, align 8
  %err = load atomic ptr, ptr %jerr monotonic, align 8
  %extent = load atomic i64, ptr %jextent monotonic, align 8
  %chunk = load atomic i64, ptr %jchunk monotonic, align 8
  %chunks = load atomic i64, ptr %jchunks monotonic, align 8
  %g64 = zext i32 %g to i64
  %tag = shl i64 %g64, 32
  br label %take
take:
  %old = load atomic i64, ptr %claim acquire, align 8
  %oldtag = and i64 %old, -4294967296
  %same = icmp eq i64 %oldtag, %tag
  %c = and i64 %old, 4294967295
  %left = icmp ult i64 %c, %chunks
  %mine = and i1 %same, %left
  br i1 %mine, label %try, label %finish
try:
  %new = add i64 %old, 1
  %pair = cmpxchg ptr %claim, i64 %old, i64 %new acq_rel acquire
  %ok = extractvalue {{ i64, i1 }} %pair, 1
  br i1 %ok, label %run, label %take
run:
  call void @tt_team_chunk(ptr %fn, ptr %table, ptr %err, i64 %extent, i64 %chunk, i64 %c)
  %d = atomicrmw add ptr %done, i64 1 release
  br label %take
finish:
  br label %next
quit:
  ret void
}}

define void @tt_team_stop(ptr %state, i64 %workers) nounwind {{
entry:
  %jstop = getelementptr i8, ptr %state, i64 256
  store atomic i64 1, ptr %jstop monotonic, align 8
  %g = atomicrmw add ptr %state, i32 1 seq_cst
  %w = call i64 (i64, ...) @syscall(i64 {futex}, ptr %state, i64 129, i64 2147483647)
  ret void
}}
"""


class NativeTeam:
    """`threads - 1` workers parked in native code plus the caller; same interface as ThreadTeam, but
    `run` takes the kernel's native address (`entry(fn)` turns a ctypes function into one)."""

    def __init__(self, engine, threads: int):
        arch = _arch()
        if arch is None:
            raise OSError("the native team needs Linux on x86-64 or AArch64")
        self.threads = threads
        self.pid = os.getpid()
        key, ir = team_library(engine.target)
        self._library = engine.ir_library(key, ir, EXPORTS)     # kept: the workers run its code
        self._run = RUN_TYPE(self._library["tt_team_run"])
        self._stop = STOP_TYPE(self._library["tt_team_stop"])
        self._raw = ctypes.create_string_buffer(STATE_BYTES + 64)
        base = ctypes.addressof(self._raw)
        self.state = base + (-base % 64)                      # hot words on their own cache lines
        self._spin = (ctypes.c_int64 * 2).from_address(self.state + 264)     # spin now, default spin
        self._spin[0] = self._spin[1] = _spin_iterations(PAUSE_TYPE(self._library["tt_team_pause"]), SPIN_US)
        self._lock = threading.Lock()
        self._closed = False
        worker = WORKER_TYPE(self._library["tt_team_worker"])
        self._workers = [threading.Thread(target=worker, args=(self.state, k), daemon=True,
                                          name=f"tracetorch-native-worker-{k}") for k in range(1, threads)]
        for t in self._workers:
            t.start()
        atexit.register(self.close)          # before teardown can free the code the workers wait in

    @staticmethod
    def entry(fn) -> int:
        """What `run` takes for a kernel's ctypes range function: its address."""
        return ctypes.cast(fn, ctypes.c_void_p).value

    def run(self, fn: int, head: tuple, extent: int, align: int = 1) -> None:
        """fn(*head, start, stop) over slices of range(extent), in parallel; returns when all are done.
        `head` is (table address, error flag address), as every kernel range entry takes."""
        chunk = -(-extent // (self.threads * CHUNKS_PER_THREAD))
        chunk = max(-(-chunk // align) * align, 1)
        with self._lock:
            if self._closed:
                raise RuntimeError("this native team was closed")
            self._run(self.state, fn, head[0], head[1], extent, chunk)

    def rest(self) -> None:
        """Send idle workers to sleep now instead of spinning (until the next `run`): before work
        that wants every core, such as an extern step's BLAS."""
        self._spin[0] = 0

    def close(self) -> None:
        """Stop the workers (they return from native code) and wait for them."""
        with self._lock:
            if self._closed or os.getpid() != self.pid:
                return
            self._closed = True
            self._stop(self.state, self.threads - 1)
        for t in self._workers:
            t.join()


def _spin_iterations(pause, microseconds: float) -> int:
    """How many pause instructions take about `microseconds` here (they cost 10 to 150 cycles by CPU):
    timed on 4000 of them (~0.12 ms on the Zen 3 host; 20000 gave the same rate and cost every process
    ~2 ms)."""
    n = 4000
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        pause(n)
        best = min(best, time.perf_counter() - t0)
    per_us = n / max(best * 1e6, 1e-3)
    return max(16, int(per_us * microseconds))
