"""Helpers for the CUDA tests: nvcc compilation, batches of kernels with numpy expectations, runners.

nvcc takes ~0.5-1 s per call whatever the source size, so the tests put many kernels into one
program (one module) and compile each module once. `NVCC_LOG` records every call (seconds, kernels)."""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from codegen.cuda_c import ARCH, NVCC_OPTIONS, RenderedCuda
from codegen.kernel import Buffer, Kernel, Program
from tracetorch.dtypes import DType

NVCC_LOG: list[tuple[float, int]] = []


def nvcc_or_skip() -> str:
    path = shutil.which("nvcc")
    if path is None:
        pytest.skip("nvcc not found")
    return path


class NvccJob:
    """nvcc compiling a rendered module in the background (`-cubin`: through ptxas; `--ptx`: front end only)."""

    def __init__(self, rendered: RenderedCuda, directory: Path, stem: str, target: str = "cubin"):
        nvcc = nvcc_or_skip()
        self.rendered, self.target = rendered, target
        self.src, self.out = directory / f"{stem}.cu", directory / f"{stem}.{target}"
        self.src.write_text(rendered.source)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([nvcc, f"-arch={ARCH}", f"--{target}", *NVCC_OPTIONS, str(self.src), "-o",
                                      str(self.out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def check(self) -> None:
        """Wait; fail with nvcc's message, or unless every kernel symbol made it into the output."""
        _, err = self.proc.communicate()
        NVCC_LOG.append((time.perf_counter() - self.t0, len(self.rendered.symbols)))
        if self.proc.returncode != 0:
            pytest.fail(f"nvcc failed on {self.src}:\n{err[-6000:]}")
        out = self.out.read_bytes()
        marker = (lambda s: f".entry {s}(".encode()) if self.target == "ptx" else (lambda s: s.encode())
        missing = [s for s in self.rendered.symbols if marker(s) not in out]
        assert not missing, f"kernels missing from the {self.target}: {missing}"


def nvcc_compile(rendered: RenderedCuda, directory: Path, stem: str, target: str = "cubin") -> None:
    NvccJob(rendered, directory, stem, target).check()


@dataclass
class Expectation:
    case: str
    buffer: Buffer
    want: np.ndarray
    rtol: float = 0.0
    atol: float = 0.0
    exact: bool = False


@dataclass
class Batch:
    """Kernels of many test cases in one program; each case's buffers are prefixed with its name."""
    name: str
    kernels: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    expectations: list = field(default_factory=list)

    def buffer(self, case: str, name: str, dtype: DType, shape) -> Buffer:
        return Buffer(f"{case}__{name}", dtype, tuple(shape))

    def input(self, case: str, name: str, dtype: DType, value: np.ndarray) -> Buffer:
        value = np.asarray(value, dtype=dtype.np)
        buf = self.buffer(case, name, dtype, value.shape)
        self.inputs[buf] = value
        return buf

    def expect(self, case: str, buf: Buffer, want, rtol=0.0, atol=0.0, exact=False) -> None:
        self.expectations.append(Expectation(case, buf, np.asarray(want), rtol, atol, exact))

    def add(self, *kernels: Kernel) -> None:
        self.kernels.extend(kernels)

    @property
    def cases(self) -> list[str]:
        return list(dict.fromkeys(e.case for e in self.expectations))

    def program(self) -> Program:
        outputs = tuple(dict.fromkeys(e.buffer for e in self.expectations))
        return Program(self.name, tuple(self.kernels), tuple(self.inputs), outputs)

    def input_arrays(self) -> list[np.ndarray]:
        return [np.ascontiguousarray(self.inputs[b]).reshape(b.shape) for b in self.inputs]

    def failures(self, outputs: dict) -> dict[str, list[str]]:
        """{case: [messages]} for every expectation the outputs ({Buffer: array}) do not meet."""
        bad: dict[str, list[str]] = {}
        for e in self.expectations:
            got = outputs[e.buffer]
            try:
                assert got.shape == e.want.shape, f"shape {got.shape} != {e.want.shape}"
                if e.exact or e.want.dtype.kind in "biu":
                    np.testing.assert_array_equal(got, e.want.astype(got.dtype))
                else:
                    np.testing.assert_allclose(got.astype(np.float64), e.want.astype(np.float64), rtol=e.rtol,
                                               atol=e.atol, equal_nan=True)
            except AssertionError as err:
                bad.setdefault(e.case, []).append(f"{e.buffer.name}: {err}")
        return bad


def run_batch(batch: Batch, call) -> dict[str, list[str]]:
    """Run the batch's program with `call(program, inputs) -> outputs` and return its failures."""
    program = batch.program()
    results = call(program, batch.input_arrays())
    return batch.failures(dict(zip(program.outputs, results)))


def cuda_runner():
    """call(program, inputs) on the real GPU (outputs poisoned first); skips without a CUDA device."""
    import tracetorch.cuda
    if not tracetorch.cuda.is_available():
        pytest.skip("no CUDA device")
    from runtime.cuda_engine import default_engine
    engine = default_engine()

    def call(program, inputs):
        compiled = engine.compile(program)
        compiled.poison()
        return compiled(*inputs)
    return call
