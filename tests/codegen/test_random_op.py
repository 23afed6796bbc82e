"""The `random` scalar op (codegen.scalar.random): a uniform draw of ops/random.py's counter-based generator as
an expression of its counter. One program holds a kernel per float dtype and generator state (one of them
wraps the counter past 2^63); it runs on the LLVM engine and on the CUDA emulator, and both must give the
eager kernel's bits (REGISTRY["rand"]); nvcc compiles it."""
from __future__ import annotations

import re

import numpy as np
import pytest

from codegen.cuda_c import render_program as render_cuda
from codegen.kernel import Arg, Buffer, IndexMap, Op, Program
from codegen.llvm_ir import render_program as render_llvm
from codegen.scalar import RNG_GOLDEN, RNG_MIX1, RNG_MIX2, LoweringError, lower, op, random
from codegen.templates import FLAT_INDEX, elementwise_kernel
from tracetorch.dtypes import bfloat16, float16, float32, float64, int32, int64
from tracetorch.ops import REGISTRY

import cuda_emulator
from cuda_testing import nvcc_compile

DTYPES = (float32, float64, float16, bfloat16)
STATES = ((1234567, 987), (2**63 - 1, 2**63 - 40))      # the second counter wraps past 2^63 (uint64 in eager)
N = 301                                                # not a multiple of a vector or a block


def _program():
    kernels, outputs, inputs, wants = [], [], {}, []
    for s, (seed, offset) in enumerate(STATES):
        seed_buf, offset_buf = Buffer(f"seed{s}", int64, ()), Buffer(f"offset{s}", int64, ())
        inputs[seed_buf], inputs[offset_buf] = np.array(seed, np.int64), np.array(offset, np.int64)
        state = {"s": (seed_buf, IndexMap((0,))), "o": (offset_buf, IndexMap((0,)))}
        for dt in DTYPES:
            out = Buffer(f"u{s}_{dt.name}", dt, (N,))
            draw = random(op("add", Arg("o", int64), FLAT_INDEX), Arg("s", int64), dt)
            kernels.append(elementwise_kernel(out.name, (N,), state, [(out, draw)]))
            outputs.append(out)
            wants.append(REGISTRY["rand"].eager(seed, offset, shape=(N,), dtype=dt, normal=False))
    return Program("random_draws", tuple(kernels), tuple(inputs), tuple(outputs)), list(inputs.values()), wants


PROGRAM, INPUTS, WANTS = _program()


def _check(got, want, name):
    assert got.dtype == want.dtype, name
    np.testing.assert_array_equal(got, want, err_msg=name)       # bit for bit (no NaN can occur)
    assert got.min() >= 0 and got.max() < 1 and len(np.unique(got)) > 1, name


def test_llvm_draws_are_the_eager_bits(engine):
    for buf, got, want in zip(PROGRAM.outputs, engine.compile(PROGRAM)(*INPUTS), WANTS):
        _check(got, want, buf.name)


def test_cuda_draws_are_the_eager_bits_on_the_emulator():
    if not cuda_emulator.available():
        pytest.skip("g++ not found")
    emulated = cuda_emulator.EmulatedProgram(PROGRAM)
    for result in (emulated(*INPUTS), emulated(*INPUTS, reverse=True, max_blocks=1)):
        for buf, got, want in zip(PROGRAM.outputs, result, WANTS):
            _check(got, want, buf.name)


def test_cuda_draws_compile_with_nvcc(tmp_path):
    nvcc_compile(render_cuda(PROGRAM), tmp_path, "random_draws")


def test_llvm_draws_are_unsigned_64_bit_arithmetic():
    """Wrapping multiplies (no nsw/nuw: the hash overflows by design) and logical shifts."""
    ir = render_llvm(Program("one", PROGRAM.steps[:1], PROGRAM.inputs[:2], PROGRAM.outputs[:1])).ir
    for factor in (RNG_GOLDEN, RNG_MIX1, RNG_MIX2):
        assert re.search(rf"= mul i64 %[^,]+, {factor}\n", ir), hex(factor)
    assert "lshr i64" in ir and "ashr i64" not in ir and not re.search(r"mul (nsw|nuw)", ir)


def test_type_rules():
    c, s = Arg("c", int64), Arg("s", int64)
    assert random(c, s, float16) == Op("random", (c, s), float16)
    with pytest.raises(LoweringError, match="floating-point dtype, got int64"):
        random(c, s, int64)
    with pytest.raises(LoweringError, match="must be int64, got int32"):
        random(Arg("c", int32), s, float32)
    with pytest.raises(LoweringError, match="codegen.scalar.random"):
        op("random", c, s)
    with pytest.raises(LoweringError, match="unsupported syntax"):
        lower("random(x0, x1)", [c, s], float32)
