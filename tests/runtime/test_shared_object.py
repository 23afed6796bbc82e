"""Shared objects: linked by the system linker in the background of a cold compile (which runs the
ORC copy meanwhile), loaded without LLVM, unloaded with their last user; a missing or failing linker
falls back to ORC."""
from __future__ import annotations

import gc
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from runtime.disk_cache import DiskCache
from runtime.llvm_engine import LLVMEngine
from runtime.shared_object import SharedLibrary, find_linker
from sample_programs import two_stage_program

needs_linker = pytest.mark.skipif(not (SharedLibrary.supported() and find_linker()),
                                  reason="needs memfd and a system linker (cc)")


def _check(compiled, n):
    x = np.linspace(-2, 2, n).astype(np.float32)
    y, s = compiled(x)
    np.testing.assert_allclose(y, np.exp(x) * 0.5 + x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s, (np.exp(x) * 0.5).sum(), rtol=1e-5)


def _memfd_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("memfd:tracetorch" in line for line in f)


@needs_linker
def test_cold_compile_links_a_shared_object_and_a_warm_engine_loads_it(tmp_path):
    cold = LLVMEngine(cache=DiskCache(tmp_path))
    _check(cold.compile(two_stage_program(300, name="linked")), 300)    # runs the ORC copy at once
    cold.wait_for_links()
    assert (cold.stats.compiles, cold.stats.orc_links, cold.stats.links, cold.stats.shared_loads) == (1, 1, 1, 0)
    assert len(list(tmp_path.glob("*.so"))) == 1
    warm = LLVMEngine(cache=DiskCache(tmp_path), linker=None)     # loading needs no linker, and no LLVM
    compiled = warm.compile(two_stage_program(300, name="linked"))
    _check(compiled, 300)
    assert isinstance(compiled._library, SharedLibrary) and warm._compiler is None
    assert (warm.stats.compiles, warm.stats.shared_loads, warm.stats.orc_links) == (0, 1, 0)


def test_without_a_linker_code_is_linked_in_orc(tmp_path):
    engine = LLVMEngine(cache=DiskCache(tmp_path), linker=None)
    _check(engine.compile(two_stage_program(200, name="orc_only")), 200)
    assert (engine.stats.links, engine.stats.orc_links) == (0, 1)
    assert not list(tmp_path.glob("*.so")) and len(list(tmp_path.glob("*.o"))) == 1


def test_a_failing_linker_falls_back_to_orc_and_is_not_retried(tmp_path):
    engine = LLVMEngine(cache=DiskCache(tmp_path), linker=("false",))
    _check(engine.compile(two_stage_program(100, name="bad_linker_1")), 100)
    if not engine.shared_objects:
        pytest.skip("shared objects are not supported here")
    engine.wait_for_links()
    assert engine.link_error and "false" in engine.link_error and engine.linker is None
    _check(engine.compile(two_stage_program(101, name="bad_linker_2")), 101)
    assert (engine.stats.links, engine.stats.orc_links) == (0, 2)
    assert not list(tmp_path.glob("*.so"))


@needs_linker
def test_a_shared_object_without_an_export_is_refused_and_closed(tmp_path):
    engine = LLVMEngine(cache=DiskCache(tmp_path))
    compiled = engine.compile(two_stage_program(64, name="exports"))
    engine.wait_for_links()
    (entry,) = tmp_path.glob("*.so")
    data = engine.cache.load(entry.name[:-3], ".so")
    before = _memfd_mappings()
    with pytest.raises(AttributeError):
        SharedLibrary(data, ("program", "no_such_function"))
    gc.collect()
    assert _memfd_mappings() == before
    lib = SharedLibrary(data, ("program",))
    assert lib["program"] and _memfd_mappings() > before
    del lib, compiled


@needs_linker
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads mappings from /proc")
def test_shared_objects_are_unloaded_with_their_last_user(tmp_path):
    cold = LLVMEngine(cache=DiskCache(tmp_path))
    for n in (10, 11, 12, 13):
        cold.compile(two_stage_program(n, name=f"unload_{n}"))
    cold.wait_for_links()
    del cold
    engine = LLVMEngine(cache=DiskCache(tmp_path))              # loads the four shared objects
    gc.collect()
    mappings, fds = _memfd_mappings(), len(os.listdir("/proc/self/fd"))
    programs = [engine.compile(two_stage_program(n, name=f"unload_{n}")) for n in (10, 11, 12, 13)]
    for n, compiled in zip((10, 11, 12, 13), programs):
        _check(compiled, n)
    assert engine.stats.shared_loads == 4 and _memfd_mappings() >= mappings + 4
    del programs, compiled
    gc.collect()
    assert _memfd_mappings() == mappings and len(os.listdir("/proc/self/fd")) == fds


@needs_linker
def test_a_process_that_exits_right_after_compiling_leaves_its_shared_object(tmp_path):
    """The background link finishes at exit (atexit), so a short cold run's warm successors load it. The
    linker sleeps first, so the process reaches exit while it runs: nothing else's exit hook (such as a
    temporary directory's finalizer) may remove its files meanwhile, and nothing is printed."""
    here = pathlib.Path(__file__).resolve().parent
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(here.parents[1])!r}, {str(here)!r}]
        from runtime.disk_cache import DiskCache
        from runtime.llvm_engine import LLVMEngine
        from sample_programs import two_stage_program
        import time
        LLVMEngine(cache=DiskCache({str(tmp_path)!r})).compile(two_stage_program(77, name="short_run"))
        time.sleep(0.3)         # the link thread is in the linker now; exit while it runs
    """)
    slow_linker = f"sh -c 'sleep 1; exec \"$0\" \"$@\"' {shlex.quote(find_linker()[0])}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRACETORCH_LINKER": slow_linker})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert len(list(tmp_path.glob("*.so"))) == 1
    warm = LLVMEngine(cache=DiskCache(tmp_path), linker=None)
    _check(warm.compile(two_stage_program(77, name="short_run")), 77)
    assert (warm.stats.compiles, warm.stats.shared_loads, warm.stats.orc_links) == (0, 1, 0)


@needs_linker
@pytest.mark.skipif(not __import__("shutil").which("nice"), reason="needs the nice command")
def test_a_background_link_runs_at_the_lowest_priority_and_a_waited_for_one_does_not(tmp_path):
    """The cold compile's links only serve later processes: they must not slow the program's first runs."""
    niceness = tmp_path / "niceness"
    recording = ("sh", "-c", f'nice >> {shlex.quote(str(niceness))}; exec {shlex.join(find_linker())} "$@"', "sh")
    cold = LLVMEngine(cache=DiskCache(tmp_path / "cache"), linker=recording)
    _check(cold.compile(two_stage_program(300, name="niced")), 300)
    cold.wait_for_links()
    assert niceness.read_text().split() == ["19"]
    for entry in (tmp_path / "cache").rglob("*.so"):
        entry.unlink()                             # objects cached, no shared object: linked while one waits
    warm = LLVMEngine(cache=DiskCache(tmp_path / "cache"), linker=recording)
    _check(warm.compile(two_stage_program(300, name="niced")), 300)
    assert warm.stats.shared_loads == 1
    assert niceness.read_text().split() == ["19", str(os.nice(0))]
