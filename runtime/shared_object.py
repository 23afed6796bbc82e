"""Native code as a shared object: made by the system linker, loaded by the system's dynamic loader.

Why: a process that finds its programs' code in the disk cache then needs no
LLVM at all. Importing llvmlite.binding and starting ORC costs ~45 ms; loading
a small shared object takes well under a millisecond.

- `find_linker()`: the link command. `$TRACETORCH_LINKER` if set (a command
  line, e.g. `ld`; `none` turns shared objects off, and the engine links every
  object in ORC), else `cc` on the PATH, else None.
- `link_shared(objs, linker, background)`: position-independent object files -> one shared object
  bytes (`cc -shared ... -lm`: libm and the compiler's runtime library are
  resolved as for any C library). Raises `LinkError`.
- `SharedLibrary(data, exports)`: the bytes are written to an anonymous memory
  file (memfd) and opened with dlopen through /proc/self/fd, so no file on disk
  can be swapped or left behind. `lib[name]` is an export's address, as with an
  ORC resource tracker. The library is closed (dlclose: its code unmapped) when
  the object is garbage, and only then its memfd: dlopen finds loaded
  libraries by path and would return the old one for a new memfd that got the
  same fd number, so a path is reused only once its library is gone. Linux
  only (`SharedLibrary.supported()`); elsewhere the engine uses ORC.
"""
from __future__ import annotations

import _ctypes
import ctypes
import errno
import os
import weakref

LINK_TIMEOUT_S = 60
_MFD_EXEC = 0x0010            # Linux >= 6.3: memfd may be mapped executable even where vm.memfd_noexec says no


class LinkError(RuntimeError):
    """The system linker failed (its command and output are in the message)."""


def find_linker() -> tuple[str, ...] | None:
    """The command that links a shared object, or None (see the module docstring)."""
    import shlex
    import shutil
    env = os.environ.get("TRACETORCH_LINKER")
    if env is not None:
        return None if env.strip().lower() in ("", "none", "off", "0") else tuple(shlex.split(env))
    cc = shutil.which("cc")
    return (cc,) if cc else None


def link_shared(objs: list[bytes], linker: tuple[str, ...], background: bool = False) -> bytes:
    """Link object files into one shared object with `linker` (run in a temporary directory).
    `background`: at the lowest priority (`nice -n 19`, where there is `nice`), for a link that only
    later processes wait for: on the 2-core host the links of a cold compile took ~25 ms from the
    first runs of the programs they link.

    The directory is made and removed here, not by `tempfile.TemporaryDirectory`: that one's
    finalizer runs at interpreter exit, before `llvm_engine`'s exit hook lets a background link
    finish, and would delete the directory under the linker."""
    import shlex
    import shutil
    import subprocess
    import tempfile
    tmp = tempfile.mkdtemp(prefix="tracetorch-link-")
    try:
        sources, out = [os.path.join(tmp, f"code{i}.o") for i in range(len(objs))], os.path.join(tmp, "code.so")
        for src, obj in zip(sources, objs):
            with open(src, "wb") as f:
                f.write(obj)
        command = [*linker, "-shared", "-o", out, *sources, "-lm"]
        nice = shutil.which("nice") if background else None
        if nice:
            command = [nice, "-n", "19", *command]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=LINK_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise LinkError(f"{shlex.join(command)}: {e}") from e
        if done.returncode != 0:
            raise LinkError(f"{shlex.join(command)} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        with open(out, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class SharedLibrary:
    """A loaded shared object; `lib[name]` is the address of export `name`."""

    @staticmethod
    def supported() -> bool:
        return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")

    def __init__(self, data: bytes, exports: tuple[str, ...]):
        fd = _memfd()
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            dll = ctypes.CDLL(f"/proc/self/fd/{fd}", mode=os.RTLD_LOCAL)     # RTLD_NOW: ctypes adds it
        except BaseException:
            os.close(fd)
            raise
        try:
            self._addresses = {name: ctypes.cast(dll[name], ctypes.c_void_p).value for name in exports}
        finally:
            self._finalizer = weakref.finalize(self, _close, dll._handle, fd)
            self._finalizer.atexit = False       # at exit another thread may still run the code: leave it mapped

    def __getitem__(self, name: str) -> int:
        return self._addresses[name]


def _memfd() -> int:
    try:
        return os.memfd_create("tracetorch", os.MFD_CLOEXEC | _MFD_EXEC)
    except OSError as e:
        if e.errno != errno.EINVAL:          # a kernel older than 6.3 does not know MFD_EXEC
            raise
        return os.memfd_create("tracetorch", os.MFD_CLOEXEC)


def _close(handle: int, fd: int) -> None:
    _ctypes.dlclose(handle)                  # first: the fd's number (the path) must outlive the library
    os.close(fd)
