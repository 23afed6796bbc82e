"""Object code cached on disk: a second process compiling the same training step loads the cached
code and runs no LLVM at all (it does not even render the IR, and with a system linker it loads
shared objects without importing LLVM); a corrupt cache entry is detected, dropped and recompiled."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    import tracetorch as tt, tracetorch.nn as nn, tracetorch.nn.functional as F
    import runtime.llvm_engine as engine_module
    from tracetorch.jit.llvm_backend import BACKEND
    import tracetorch.jit.llvm_backend as backend_module
    renders, render = [], engine_module.render_program
    engine_module.render_program = lambda program: renders.append(program.name) or render(program)
    fusions, fuse = [], backend_module.fuse
    backend_module.fuse = lambda graph: fusions.append(graph.name) or fuse(graph)
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))
    opt = tt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    @tt.compile(backend="llvm")
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x, y = tt.randn(8, 10), tt.randint(0, 4, (8,))
    losses = [step(x, y).item() for _ in range(4)]
    engine, cache = BACKEND.engine, BACKEND.engine.cache
    engine.wait_for_links()
    print(json.dumps({"losses": losses, "compiles": engine.stats.compiles, "disk_hits": engine.stats.disk_hits,
                      "links": engine.stats.links, "corrupt": cache.corrupt, "renders": len(renders), "fusions": len(fusions),
                      "llvm_loaded": "llvmlite.binding" in sys.modules, "dir": str(cache.directory)}))
""")


def _run(cache_dir) -> dict:
    env = dict(os.environ, TRACETORCH_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_compiles_no_llvm_and_recovers_from_a_corrupt_entry(tmp_path):
    cold = _run(tmp_path)
    assert cold["compiles"] >= 1 and cold["disk_hits"] == 0
    objects = sorted(pathlib.Path(cold["dir"]).glob("*.o"))
    shared = sorted(pathlib.Path(cold["dir"]).glob("*.so"))       # where a system linker exists
    libraries = [o for o in objects if "." not in o.stem]        # a big program's other modules: <key>.<i>.o
    assert len(objects) == cold["compiles"] and len(shared) == cold["links"] in (0, len(libraries))

    warm = _run(tmp_path)
    assert warm["compiles"] == 0 and warm["disk_hits"] == len(libraries)
    assert warm["renders"] == 0                    # found by program key: not even rendered to LLVM IR
    assert cold["fusions"] >= 1 and warm["fusions"] == 0      # nor fused and lowered (jit/lowering_cache)
    assert warm["llvm_loaded"] == (not shared)     # shared objects are loaded without LLVM
    assert warm["losses"] == cold["losses"]

    entries = objects + shared + sorted(pathlib.Path(cold["dir"]).glob("*.lowered"))
    for entry in entries:                          # flip bytes in the middle of every cached module
        blob = bytearray(entry.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        entry.write_bytes(bytes(blob))
    healed = _run(tmp_path)
    assert healed["corrupt"] == len(entries) and healed["compiles"] == cold["compiles"]
    assert healed["losses"] == cold["losses"] and healed["fusions"] == cold["fusions"]
