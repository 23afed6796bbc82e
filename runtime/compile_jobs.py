"""Compile several LLVM modules at once, in forked children.

Why processes: llvmlite serializes every call into LLVM behind one process-wide
lock (`llvmlite.binding.ffi`), so threads compiling two modules take as long as
one thread compiling both. A forked child has its own copy of LLVM and of the
IR texts: it compiles its share and writes the object code back through a
pipe, while this process compiles the rest (W5's step, as 4 modules on 2
cores, ~0.6 s less than as one).

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
import warnings

MAX_JOBS = 8
_LENGTH = struct.Struct("<Q")


def job_count() -> int:
    """The processes that compile at once: `$TRACETORCH_COMPILE_JOBS`, else the usable cores (<= 8)."""
    env = os.environ.get("TRACETORCH_COMPILE_JOBS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"TRACETORCH_COMPILE_JOBS={env!r}: expected a whole number of processes") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_JOBS, cores))


def compile_all(compile_one, texts: list[str], jobs: int | None = None) -> list[bytes]:
    """[compile_one(i) for each i in range(len(texts))], the work spread over `jobs` processes
    (`job_count()` by default): the texts, longest first, each go to the least loaded process; the
    first share is compiled here, the others in forked children."""
    jobs = min(job_count() if jobs is None else jobs, len(texts))
    if jobs <= 1 or not hasattr(os, "fork"):
        return [compile_one(i) for i in range(len(texts))]
    shares: list[list[int]] = [[] for _ in range(jobs)]
    loads = [0] * jobs
    for i in sorted(range(len(texts)), key=lambda i: -len(texts[i])):
        j = loads.index(min(loads))
        shares[j].append(i)
        loads[j] += len(texts[i])
    children = [child for share in shares[1:] if (child := _fork(compile_one, share)) is not None]
    done: dict[int, bytes] = {}
    try:
        for i in shares[0]:
            done[i] = compile_one(i)
        for pid, fd, share in children:
            objects = _collect(pid, fd, len(share))
            if objects is not None:
                done.update(zip(share, objects))
    finally:
        for pid, fd, _ in children:
            _reap(pid, fd)
    return [done[i] if i in done else compile_one(i) for i in range(len(texts))]


class Later:
    """One object compiled in a forked child while this process goes on (the GEMM library while the
    program that calls it renders and compiles): `result()` waits for it, or compiles it here if no
    child could do it."""

    def __init__(self, compile_one):
        self._compile_one = compile_one
        self._child = _fork(lambda i: compile_one(), [0]) if job_count() > 1 and hasattr(os, "fork") else None

    def result(self) -> bytes:
        child, self._child = self._child, None
        if child is not None:
            pid, fd, _ = child
            try:
                objects = _collect(pid, fd, 1)
            finally:
                _reap(pid, fd)
            if objects is not None:
                return objects[0]
        return self._compile_one()

    def __del__(self):
        if self._child is not None:         # never asked for: stop the child
            _reap(*self._child[:2])


def _fork(compile_one, share: list[int]):
    """(pid, read end, share) of a child compiling `share`, or None if it could not be started."""
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
            for i in share:
                obj = compile_one(i)
                _write_all(write, _LENGTH.pack(len(obj)) + obj)
            status = 0
        except BaseException:
            pass
        finally:
            os._exit(status)
    os.close(write)
    return pid, read, share


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _collect(pid: int, fd: int, count: int) -> list[bytes] | None:
    """The child's `count` objects, or None if it did not deliver them all and exit cleanly."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    objects, at = [], 0
    while at + _LENGTH.size <= len(data):
        (n,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        objects.append(data[at:at + n])
        at += n
    _, status = os.waitpid(pid, 0)
    if status != 0 or at != len(data) or len(objects) != count:
        return None
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
