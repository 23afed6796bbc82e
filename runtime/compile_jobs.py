"""Compile several LLVM modules at once, in forked children.

Why processes: llvmlite serializes every call into LLVM behind one process-wide
lock (`llvmlite.binding.ffi`), so threads compiling two modules take as long as
one thread compiling both. A forked child has its own copy of LLVM and of the
IR texts. This process and its children take the modules one at a time from a
shared queue (a pipe of module numbers); each child sends its objects back
through a pipe of its own when the queue is empty (W5's step, as 8 modules on
2 cores: 1.83 -> ~0.85 s of LLVM time).

`$TRACETORCH_COMPILE_JOBS` caps the processes (default: the cores this process
may run on, at most 8); 1 compiles everything here. A child that fails for
any reason (fork refused, killed, a compile error) costs nothing but time: its
modules are compiled here, where an error raises as usual. `Later` compiles one
object in a child while this process goes on with other work.
"""
from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys
import warnings

MAX_JOBS = 8
_INDEX = struct.Struct("<I")       # a module number in the queue
_RECORD = struct.Struct("<IQ")     # a child's result: module number, object length (then the object)


def job_count() -> int:
    """The processes that compile at once: `$TRACETORCH_COMPILE_JOBS`, else the usable cores (<= 8);
    1 off Linux (fork without exec is unsafe on macOS once system frameworks run threads)."""
    env = os.environ.get("TRACETORCH_COMPILE_JOBS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"TRACETORCH_COMPILE_JOBS={env!r}: expected a whole number of processes") from None
    if not sys.platform.startswith("linux"):
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_JOBS, cores))


def compile_all(compile_one, sizes: list[int], jobs: int | None = None) -> list[bytes]:
    """[compile_one(i) for each i in range(len(sizes))] (bytes each), the work spread over `jobs`
    processes (`job_count()` by default): this one and forked children take the modules one at a
    time from a shared queue, largest estimated `sizes` first, so the processes finish together even
    where a module's size says little about its compile time (W6's took 2 to 9 us a byte of IR)."""
    jobs = min(job_count() if jobs is None else jobs, len(sizes))
    if jobs <= 1 or not hasattr(os, "fork"):
        return [compile_one(i) for i in range(len(sizes))]
    queue = _queue(sorted(range(len(sizes)), key=lambda i: -sizes[i]))
    if queue is None:
        return [compile_one(i) for i in range(len(sizes))]
    done: dict[int, bytes] = {}
    children = []
    try:
        for _ in range(jobs - 1):
            child = _fork(compile_one, queue)
            if child is not None:
                children.append(child)      # (one by one: an interrupt between forks still reaps them)
        while (i := _take(queue)) is not None:
            done[i] = compile_one(i)
        for pid, fd in children:
            done.update(_collect(pid, fd))
    finally:
        os.close(queue)
        for pid, fd in children:
            _reap(pid, fd)
    return [done[i] if i in done else compile_one(i) for i in range(len(sizes))]


def _queue(order: list[int]):
    """The read end of a pipe holding the module numbers in `order`, or None if none can be made.
    Every process reads one number at a time: a pipe's reads take whole records here, as they are
    all written (and the write end closed) before anyone reads."""
    try:
        read, write = os.pipe()
    except OSError:
        return None
    try:
        _write_all(write, b"".join(_INDEX.pack(i) for i in order))       # < 64 KiB: never blocks
    finally:
        os.close(write)
    return read


def _take(queue: int) -> int | None:
    record = os.read(queue, _INDEX.size)
    return _INDEX.unpack(record)[0] if len(record) == _INDEX.size else None


class Later:
    """One object compiled in a forked child while this process goes on (the GEMM library while the
    program that calls it renders and compiles): `result()` waits for it, or compiles it here if no
    child could do it."""

    def __init__(self, compile_one):
        self._compile_one = compile_one
        queue = _queue([0]) if job_count() > 1 and hasattr(os, "fork") else None
        self._child = None
        if queue is not None:
            try:
                self._child = _fork(lambda i: compile_one(), queue)
            finally:
                os.close(queue)

    def result(self) -> bytes:
        child, self._child = self._child, None
        if child is not None:
            try:
                objects = _collect(*child)
            finally:
                _reap(*child)
            if 0 in objects:
                return objects[0]
        return self._compile_one()

    def __del__(self):
        if self._child is not None:         # never asked for: stop the child
            _reap(*self._child)


def _fork(compile_one, queue: int):
    """(pid, read end) of a child compiling modules from `queue` until it is empty, or None if it
    could not be started. It sends what it compiled once done: while it has work, a full pipe
    must not stop it."""
    try:
        read, write = os.pipe()
    except OSError:
        return None
    try:
        from llvmlite.binding import ffi
        lock = ffi.lib._lock           # no other thread is inside LLVM while we fork (its lock's state is copied)
    except (ImportError, AttributeError):
        lock = contextlib.nullcontext()
    try:
        with lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)        # 3.12: "process is multi-threaded"
            pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        return None
    if pid == 0:                          # the child: compile, write, and leave without Python's exit hooks
        status = 1
        try:
            os.close(read)
            out = []
            while (i := _take(queue)) is not None:
                obj = compile_one(i)
                out.append(_RECORD.pack(i, len(obj)) + obj)
            _write_all(write, b"".join(out))
            status = 0
        except BaseException:
            pass
        finally:
            os._exit(status)
    os.close(write)
    return pid, read


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _collect(pid: int, fd: int) -> dict[int, bytes]:
    """The objects a child sent, by module number: none unless it exited cleanly after sending whole
    records (the modules it took but did not deliver are compiled here)."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    objects, at = {}, 0
    while at + _RECORD.size <= len(data):
        i, n = _RECORD.unpack_from(data, at)
        at += _RECORD.size
        objects[i] = data[at:at + n]
        at += n
    _, status = os.waitpid(pid, 0)
    if status != 0 or at != len(data):
        return {}
    return objects


def _reap(pid: int, fd: int) -> None:
    """Close the pipe and make sure the child is gone (an interrupted wait leaves it running)."""
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass                                  # reaped by _collect
    except OSError:
        pass
