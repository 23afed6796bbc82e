"""The on-disk object cache: keys, integrity checks, and a warm second process compiling nothing (and,
with a system linker, not even loading LLVM)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime.disk_cache import DiskCache, default_directory
from runtime.llvm_engine import LLVMEngine
from sample_programs import two_stage_program

ROOT = Path(__file__).resolve().parents[2]


def test_roundtrip_and_miss(tmp_path):
    cache = DiskCache(tmp_path)
    assert cache.load("k" * 64) is None
    cache.store("k" * 64, b"\x7fELF object bytes")
    assert cache.load("k" * 64) == b"\x7fELF object bytes"
    assert (cache.hits, cache.misses) == (1, 1)


def test_truncated_or_corrupt_entries_are_detected_and_removed(tmp_path):
    cache = DiskCache(tmp_path)
    data = bytes(range(256)) * 40
    for damage in (lambda b: b[:-1], lambda b: b[:30], lambda b: b[:-5] + b"xxxxx", lambda b: b"junk" + b[4:]):
        cache.store("a" * 64, data)
        path = cache.path("a" * 64)
        path.write_bytes(damage(path.read_bytes()))
        assert cache.load("a" * 64) is None
        assert not path.exists()
    assert cache.corrupt == 4


def test_directory_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path))
    assert default_directory() == tmp_path / "llvm"
    monkeypatch.delenv("TRACETORCH_CACHE_DIR")
    assert default_directory() == Path.home() / ".cache" / "tracetorch" / "llvm"


def test_unwritable_cache_is_skipped(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = DiskCache(blocker / "sub")
    cache.store("b" * 64, b"data")                    # no exception
    assert cache.load("b" * 64) is None


def _check_two_stage(compiled, n):
    x = np.linspace(-1, 1, n).astype(np.float32)
    y, s = compiled(x)
    np.testing.assert_allclose(y, np.exp(x) * 0.5 + x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s, (np.exp(x) * 0.5).sum(), rtol=1e-5)


def test_corrupt_entry_is_recompiled(tmp_path):
    program = two_stage_program(100, name="corrupt_entry")
    first = LLVMEngine(cache=DiskCache(tmp_path))
    first.compile(program)
    first.wait_for_links()
    entries = [*tmp_path.glob("*.o"), *tmp_path.glob("*.so")]       # object code, and its shared object
    assert len(entries) == 1 + first.stats.links
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])
    second = LLVMEngine(cache=DiskCache(tmp_path))
    compiled = second.compile(program)
    assert second.stats.compiles == 1 and second.stats.disk_hits == 0 and second.cache.corrupt == len(entries)
    _check_two_stage(compiled, 100)


def test_corrupt_shared_object_is_relinked_from_the_cached_object(tmp_path):
    program = two_stage_program(100, name="corrupt_shared_object")
    first = LLVMEngine(cache=DiskCache(tmp_path))
    first.compile(program)
    first.wait_for_links()
    if not first.stats.links:
        pytest.skip(f"no shared objects here (linker {first.linker!r}: {first.link_error})")
    (entry,) = tmp_path.glob("*.so")
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    entry.write_bytes(bytes(blob))
    second = LLVMEngine(cache=DiskCache(tmp_path))
    compiled = second.compile(program)
    assert second.cache.corrupt == 1 and second.stats.compiles == 0 and second.stats.links == 1
    _check_two_stage(compiled, 100)
    third = LLVMEngine(cache=DiskCache(tmp_path))                   # the relinked entry is whole again
    _check_two_stage(third.compile(program), 100)
    assert third.cache.corrupt == 0 and third.stats.shared_loads == 1 and third.stats.links == 0


WARM_SCRIPT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    sys.path[:0] = [{root!r}, {tests!r}]
    import numpy as np
    from runtime.llvm_engine import LLVMEngine
    from sample_programs import two_stage_program
    engine = LLVMEngine()
    t1 = time.perf_counter()
    compiled = engine.compile(two_stage_program(1000, name="warm_start"))
    t2 = time.perf_counter()
    x = np.linspace(-1, 1, 1000).astype(np.float32)
    y, s = compiled(x)
    engine.wait_for_links()
    ok = bool(np.allclose(y, np.exp(x) * 0.5 + x, rtol=1e-6, atol=1e-6)
              and np.isclose(s, (np.exp(x) * 0.5).sum(), rtol=1e-5))
    print(json.dumps(dict(compiles=engine.stats.compiles, disk_hits=engine.stats.disk_hits, ok=ok,
                          links=engine.stats.links, orc_links=engine.stats.orc_links,
                          llvm_loaded="llvmlite.binding" in sys.modules, compile_s=t2 - t1)))
""")


@pytest.mark.parametrize("linker", ["default", "none"])
def test_second_process_compiles_nothing(tmp_path, linker):
    """With a system linker the second process loads a shared object and never loads LLVM; without
    one (TRACETORCH_LINKER=none forces that) it links the cached object in ORC: no compiling either way."""
    script = WARM_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests" / "runtime"))
    env = dict(os.environ, TRACETORCH_CACHE_DIR=str(tmp_path))
    env.pop("TRACETORCH_LINKER", None)
    if linker == "none":
        env["TRACETORCH_LINKER"] = "none"
    cold, warm = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                            check=True).stdout) for _ in range(2)]
    assert cold["compiles"] == 1 and cold["disk_hits"] == 0 and cold["ok"] and cold["llvm_loaded"]
    assert warm["compiles"] == 0 and warm["disk_hits"] == 1 and warm["ok"]
    assert cold["orc_links"] == 1                  # the compiling process runs the ORC copy at once
    if linker == "none":
        assert cold["links"] == 0 and warm["orc_links"] == 1 and warm["llvm_loaded"]
    elif cold["links"]:                            # ... and links the shared object later ones load
        assert warm["orc_links"] == 0 and not warm["llvm_loaded"]
    else:
        pytest.skip("no system linker here: only the ORC path ran")
