"""The on-disk object cache: keys, integrity checks, and a warm second process compiling nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from runtime.disk_cache import DiskCache, cache_key, default_directory
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


def test_key_covers_ir_cpu_features_and_versions():
    base = cache_key("ir", "znver4", "+avx", "llvmlite 0.50")
    assert len(base) == 64
    others = [cache_key("ir2", "znver4", "+avx", "llvmlite 0.50"), cache_key("ir", "skylake", "+avx", "llvmlite 0.50"),
              cache_key("ir", "znver4", "-avx", "llvmlite 0.50"), cache_key("ir", "znver4", "+avx", "llvmlite 0.51")]
    assert len({base, *others}) == 5


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


def test_corrupt_entry_is_recompiled(tmp_path):
    program = two_stage_program(100, name="corrupt_entry")
    first = LLVMEngine(cache=DiskCache(tmp_path))
    first.compile(program)
    (entry,) = tmp_path.glob("*.o")
    entry.write_bytes(entry.read_bytes()[:100])
    second = LLVMEngine(cache=DiskCache(tmp_path))
    compiled = second.compile(program)
    assert second.stats.compiles == 1 and second.stats.disk_hits == 0 and second.cache.corrupt == 1
    x = np.linspace(-1, 1, 100).astype(np.float32)
    y, s = compiled(x)
    np.testing.assert_allclose(y, np.exp(x) * 0.5 + x, rtol=1e-6, atol=1e-6)


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
    ok = bool(np.allclose(y, np.exp(x) * 0.5 + x, rtol=1e-6, atol=1e-6)
              and np.isclose(s, (np.exp(x) * 0.5).sum(), rtol=1e-5))
    print(json.dumps(dict(compiles=engine.stats.compiles, disk_hits=engine.stats.disk_hits, ok=ok,
                          compile_s=t2 - t1)))
""")


def test_second_process_compiles_nothing(tmp_path):
    script = WARM_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests" / "runtime"))
    env = dict(os.environ, TRACETORCH_CACHE_DIR=str(tmp_path))
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True).stdout) for _ in range(2)]
    assert runs[0]["compiles"] == 1 and runs[0]["disk_hits"] == 0 and runs[0]["ok"]
    assert runs[1]["compiles"] == 0 and runs[1]["disk_hits"] == 1 and runs[1]["ok"]
