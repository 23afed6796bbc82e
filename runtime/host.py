"""What compiled code depends on besides the program, read without loading LLVM.

The engine keys its program index (`runtime.program_key`) by the program and a
description of the host CPU and the LLVM build. LLVM's own answer (host CPU
name and features, LLVM version) needs llvmlite.binding, whose import is most
of a warm start's cost; this fingerprint is read from `/proc/cpuinfo` (the
first CPU's entry without its per-core and clock fields: vendor, family, model,
flags) and from llvmlite's version and shared library (path, size, mtime), in
well under a millisecond. Where `/proc/cpuinfo` cannot be read it is None, and
the engine asks LLVM.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform

_VOLATILE = {"processor", "cpu mhz", "bogomips", "physical id", "siblings", "core id", "cpu cores", "apicid",
             "initial apicid", "microcode", "bugs", "power management"}   # per core, per boot or clock: not the ISA


@functools.lru_cache(maxsize=None)
def host_fingerprint() -> str | None:
    """A hash of the CPU's identity and the llvmlite build, or None where /proc/cpuinfo is missing."""
    cpu = _cpu_entry()
    if not cpu:
        return None
    import llvmlite                      # the package only (its version); not llvmlite.binding
    h = hashlib.sha256()
    for part in (platform.machine(), cpu, llvmlite.__version__, _llvmlite_library(os.path.dirname(llvmlite.__file__))):
        h.update(part.encode())
        h.update(b"\0")
    return f"host {h.hexdigest()}"


def gemm_lanes() -> int:
    """The vector width (floats) the generated GEMM uses on this host: 16 with AVX-512, 8 with AVX2
    and FMA, 0 without them (numpy's BLAS then)."""
    flags = cpu_flags()
    if "avx512f" in flags:
        return 16
    return 8 if {"avx2", "fma"} <= flags else 0


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The first CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    for line in (_cpu_entry() or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def _cpu_entry() -> str | None:
    """`_first_entry` of /proc/cpuinfo, read once; None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return _first_entry(f)
    except OSError:
        return None


def _first_entry(lines) -> str:
    """The first CPU's `key: value` lines (up to the first blank line), volatile keys left out."""
    kept = []
    for line in lines:
        if not line.strip():
            break
        key = line.split(":", 1)[0].strip().lower()
        if key not in _VOLATILE:
            kept.append(" ".join(line.split()))
    return "\n".join(kept)


def _llvmlite_library(package_dir: str) -> str:
    """Path, size and mtime of llvmlite's shared library (the LLVM build), as text."""
    binding = os.path.join(package_dir, "binding")
    parts = [binding]
    try:
        for name in sorted(os.listdir(binding)):
            if name.startswith("libllvmlite"):
                st = os.stat(os.path.join(binding, name))
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        pass
    return ";".join(parts)
