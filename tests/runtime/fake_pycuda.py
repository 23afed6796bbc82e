"""A stand-in for pycuda on machines without a GPU, for testing runtime.cuda_engine's own code.

"Device" memory is host memory (allocations are numpy buffers; addresses are real pointers) and
`SourceModule` compiles the CUDA source for the CPU emulator (tests/codegen/cuda_emulator.py), whose
launches run the kernels on those buffers. Only the calls the engine makes exist; `install` puts the
fake modules in sys.modules through a pytest MonkeyPatch, so they vanish after the test.
"""
from __future__ import annotations

import ctypes
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

SM_COUNT = 2          # small: grid-stride kernels get few blocks, so their loops take several steps


def _emulator():
    if "cuda_emulator" in sys.modules:
        return sys.modules["cuda_emulator"]
    path = Path(__file__).parent.parent / "codegen" / "cuda_emulator.py"
    spec = importlib.util.spec_from_file_location("cuda_emulator", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cuda_emulator"] = module
    spec.loader.exec_module(module)
    return module


class _Allocation:
    def __init__(self, nbytes: int):
        self.memory = np.zeros(nbytes + 256, np.uint8)
        shift = (-self.memory.ctypes.data) % 256              # cudaMalloc returns 256-byte aligned memory
        self.address = self.memory.ctypes.data + shift

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        self.memory = None
        self.address = 0


class _Function:
    def __init__(self, module, symbol: str, log: list):
        self.module, self.symbol, self.log = module, symbol, log
        self.format = None

    def prepare(self, arg_format: str):
        self.format = arg_format
        return self

    def prepared_call(self, grid, block, *args):
        assert self.format is not None and len(args) == len(self.format), "prepare() first, one argument per P"
        grid = tuple(grid) + (1,) * (3 - len(grid))
        self.log.append((self.symbol, grid, tuple(block)))
        self.module.launch(self.symbol, grid, block[0], [int(a) for a in args])


def install(monkeypatch) -> dict:
    """Install fake `pycuda`, `pycuda.driver`, `pycuda.compiler`; returns a log of SourceModule builds
    ("modules": their keyword arguments) and kernel launches ("launches")."""
    emulator = _emulator()
    log = {"modules": [], "launches": []}
    driver = types.ModuleType("pycuda.driver")

    class Device:
        @staticmethod
        def count():
            return 1

        def compute_capability(self):
            return (9, 0)

        def get_attribute(self, attribute):
            assert attribute == "MULTIPROCESSOR_COUNT"
            return SM_COUNT

    class Context:
        @staticmethod
        def get_current():
            return Context

        @staticmethod
        def get_device():
            return Device()

        @staticmethod
        def synchronize():
            pass

    driver.init = lambda: None
    driver.Context = Context
    driver.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT")
    driver.mem_alloc = _Allocation
    driver.memset_d8 = lambda dest, value, count: ctypes.memset(int(dest), value, count)

    def memset_d32(dest, value, count):
        (ctypes.c_uint32 * count).from_address(int(dest))[:] = [value] * count

    def memcpy_htod(dest, src):
        src = np.ascontiguousarray(src)
        ctypes.memmove(int(dest), src.ctypes.data, src.nbytes)

    def memcpy_dtoh(dest, src):
        assert dest.flags.c_contiguous
        ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)

    def memcpy_dtod(dest, src, size):
        ctypes.memmove(int(dest), int(src), size)

    driver.memset_d32, driver.memcpy_htod, driver.memcpy_dtoh = memset_d32, memcpy_htod, memcpy_dtoh
    driver.memcpy_dtod, driver.Device = memcpy_dtod, Device

    compiler = types.ModuleType("pycuda.compiler")

    class SourceModule:
        def __init__(self, source, **kwargs):
            log["modules"].append(kwargs)
            self.module = emulator.EmulatedModule(source)

        def get_function(self, name):
            getattr(self.module.wait().lib, f"emulate_{name}")      # AttributeError for an unknown kernel
            return _Function(self.module, name, log["launches"])

    compiler.SourceModule = SourceModule
    package = types.ModuleType("pycuda")
    package.driver, package.compiler = driver, compiler
    for name, module in (("pycuda", package), ("pycuda.driver", driver), ("pycuda.compiler", compiler)):
        monkeypatch.setitem(sys.modules, name, module)
    return log
