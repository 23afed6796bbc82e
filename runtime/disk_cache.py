"""Object code cached on disk, so a second process compiles no LLVM at all.

Location: `$TRACETORCH_CACHE_DIR/llvm/` if the variable is set, else
`~/.cache/tracetorch/llvm/`. Per program, `<key>.o` (its object code; a
program of several modules adds `<key>.1.o` ... for the others), where a
system linker exists `<key>.so` (all of them linked into one shared object,
which a warm start loads without LLVM), and a small `<key>.json` index entry
(entry points and checks); the key is the program key (`runtime.program_key`:
the program's content, the renderer's source, the host CPU and toolchain).
The GEMM library and the native team are keyed alike by what makes them
(host target, renderer source, their IR). The CPU backend also keeps the
lowered programs of graphs (`<graph key>.lowered`: tracetorch.jit.lowering_cache).
An entry holds a header (magic,
payload length, SHA-256 of the payload) and the payload; an entry that is
truncated or corrupt fails the check, is deleted and the caller rebuilds it
(relinks a shared object, recompiles object code). Writes go to a temporary
file renamed into place, so concurrent processes never see a partial entry.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

FORMAT = b"TTOBJ1"
CODE_MODEL = "pic small, wide math"   # how object code is generated (runtime.llvm_compiler, codegen.llvm_ir): part of every key
_HEADER_LEN = len(FORMAT) + 1 + 16 + 1 + 64 + 1   # magic, space, length (16 hex), space, sha256, newline


def default_directory() -> Path:
    root = os.environ.get("TRACETORCH_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "tracetorch"
    return base / "llvm"


class DiskCache:
    """Object files by key. `directory=None` uses `default_directory()` (read at construction)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_directory()
        self.hits = self.misses = self.corrupt = 0

    def path(self, key: str, suffix: str = ".o") -> Path:
        return self.directory / f"{key}{suffix}"

    def load(self, key: str, suffix: str = ".o") -> bytes | None:
        """The object code (or, with another suffix, the shared object or index entry) stored under
        `key`, or None (missing, truncated or corrupt: deleted)."""
        path = self.path(key, suffix)
        try:
            blob = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        data = _unpack(blob)
        if data is None:
            self.corrupt += 1
            self.misses += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None
        self.hits += 1
        return data

    def store(self, key: str, data: bytes, suffix: str = ".o") -> None:
        """Write an entry atomically; a cache that cannot be written is skipped, not an error."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key[:16]}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(_pack(data))
            os.replace(tmp, self.path(key, suffix))
        except OSError:
            pass


def _pack(data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest().encode()
    return FORMAT + b" " + f"{len(data):016x}".encode() + b" " + digest + b"\n" + data


def _unpack(blob: bytes) -> bytes | None:
    if len(blob) < _HEADER_LEN or not blob.startswith(FORMAT + b" "):
        return None
    header, data = blob[:_HEADER_LEN], blob[_HEADER_LEN:]
    try:
        length = int(header[len(FORMAT) + 1:len(FORMAT) + 17], 16)
    except ValueError:
        return None
    digest = header[len(FORMAT) + 18:len(FORMAT) + 18 + 64]
    if length != len(data) or hashlib.sha256(data).hexdigest().encode() != digest:
        return None
    return data
