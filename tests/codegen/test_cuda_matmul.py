"""The tiled CUDA matmul (codegen.cuda_matmul): shapes off the tile grid, transposed and batched operands,
fused epilogues, the TF32 tensor-core path. One nvcc call compiles every variant for sm_90; the float32
kernels also run on the CPU emulator (tf32 `wmma` needs a GPU: `pytest -m cuda`)."""
from __future__ import annotations

import numpy as np
import pytest

from codegen.cuda_c import render_program
from codegen.cuda_matmul import ACC, TILES, MatmulSpec
from codegen.kernel import Arg, Buffer, IndexMap, Program
from codegen.scalar import op
from tracetorch.dtypes import float32, float64

import cuda_emulator
from cuda_testing import cuda_runner, nvcc_compile

RUNNERS = ["emulator", pytest.param("gpu", marks=pytest.mark.cuda)]


def gelu(x):
    inner = op("mul", op("add", x, op("mul", op("mul", op("mul", x, x), x), 0.044715)), 0.7978845608)
    return op("mul", op("mul", x, 0.5), op("add", op("tanh", inner), 1.0))


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


# name: (batch, m, n, k, trans_a, trans_b, epilogue, broadcast a?)
VARIANTS = {
    "square": (1, 64, 64, 64, False, False, None, False),
    "ragged": (1, 37, 45, 19, False, False, None, False),
    "trans_a": (1, 33, 20, 41, True, False, None, False),
    "trans_b": (1, 50, 17, 30, False, True, None, False),
    "both_transposed": (1, 9, 70, 13, True, True, None, False),
    "bias_relu": (1, 70, 90, 33, False, False, "bias_relu", False),
    "bias_gelu": (1, 130, 40, 24, False, True, "bias_gelu", False),
    "batched": (3, 20, 30, 16, False, False, None, False),
    "batched_broadcast_bias": (2, 25, 35, 12, True, False, "bias_relu", True),
    "tall_k": (1, 8, 8, 300, False, False, None, False),
}


def build(name, variant, tf32, rng):
    batch, m, n, k, ta, tb, epilogue, broadcast_a = variant
    a_shape = (k, m) if ta else (m, k)
    b_shape = (n, k) if tb else (k, n)
    a_np = rng.standard_normal(a_shape if broadcast_a or batch == 1 else (batch,) + a_shape).astype(np.float32)
    b_np = rng.standard_normal(b_shape if batch == 1 else (batch,) + b_shape).astype(np.float32)
    a, b = Buffer(f"{name}_a", float32, a_np.shape), Buffer(f"{name}_b", float32, b_np.shape)
    out_shape = (batch, m, n) if batch > 1 else (m, n)
    out = Buffer(f"{name}_out", float32, out_shape)
    inputs = {a: a_np, b: b_np}
    A = a_np.swapaxes(-1, -2) if ta else a_np
    B = b_np.swapaxes(-1, -2) if tb else b_np
    want = np.matmul(A.astype(np.float64), B.astype(np.float64))
    expr, extra = None, ()
    if epilogue:
        bias_np = rng.standard_normal(n).astype(np.float32)
        bias = Buffer(f"{name}_bias", float32, (n,))
        inputs[bias] = bias_np
        space = out_shape
        extra = (("bias", bias, IndexMap.broadcast((n,), space)),)
        x = op("add", ACC, Arg("bias", float32))
        expr = op("max", x, 0.0) if epilogue == "bias_relu" else gelu(x)
        want = want + bias_np
        want = np.maximum(want, 0.0) if epilogue == "bias_relu" else np_gelu(want)
    spec = MatmulSpec(name, a, b, out, m, n, k, batch=batch, trans_a=ta, trans_b=tb, epilogue=expr,
                      epilogue_inputs=extra, tf32=tf32)
    return spec, inputs, want.reshape(out_shape)


def programs():
    rng = np.random.default_rng(0)
    out = {}
    for tf32 in (False, True):
        specs, inputs, wants = [], {}, {}
        for name, variant in VARIANTS.items():
            spec, ins, want = build(name + ("_tf32" if tf32 else ""), variant, tf32, rng)
            specs.append(spec)
            inputs.update(ins)
            wants[spec.out] = want
        program = Program("matmul_tf32" if tf32 else "matmul", tuple(specs), tuple(inputs), tuple(wants))
        out[tf32] = (program, [inputs[b] for b in program.inputs], wants)
    return out


PROGRAMS = programs()


def test_every_variant_compiles_with_nvcc(tmp_path):
    """fp32 and tf32 variants in one module: one nvcc call."""
    specs = PROGRAMS[False][0].steps + PROGRAMS[True][0].steps
    buffers = {b: None for s in specs for b in s.inputs}
    program = Program("all_matmuls", specs, tuple(buffers), tuple(s.out for s in specs))
    rendered = render_program(program)
    assert "#include <mma.h>" in rendered.source
    nvcc_compile(rendered, tmp_path, "matmuls")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
def test_matmul_matches_numpy(runner, tf32):
    if runner == "emulator":
        if tf32:
            pytest.skip("tensor-core wmma runs on a GPU only")
        if not cuda_emulator.available():
            pytest.skip("g++ not found")
        def call(program, inputs):
            emulated = cuda_emulator.EmulatedProgram(program)
            forward, backward = emulated(*inputs), emulated(*inputs, reverse=True, max_blocks=1)
            for a, b in zip(forward, backward):          # a missing barrier shows as a difference
                np.testing.assert_array_equal(a, b)
            return forward
    else:
        call = cuda_runner()
    program, inputs, wants = PROGRAMS[tf32]
    results = call(program, inputs)
    for buf, got in zip(program.outputs, results):
        # tf32 rounds the inputs to 10 mantissa bits: relative error ~1e-3 of the sum of |products|
        tol = dict(rtol=2e-2, atol=2e-2) if tf32 else dict(rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, wants[buf], err_msg=buf.name, **tol)


def test_generated_text():
    spec = PROGRAMS[False][0].steps[5]                                      # bias_relu
    text, launch = spec.render_cuda("mm", [])
    assert "fmaf(" in text and "__shared__" in text and "tt_fmax" in text and "wmma" not in text
    bm, bn = spec.tiles()[:2]
    assert launch.plan == "matmul" and launch.grid(132) == (-(-spec.n // bn), -(-spec.m // bm), 1)
    tf32 = PROGRAMS[True][0].steps[6]                                       # bias_gelu, tf32
    text, launch = tf32.render_cuda("mm", [])
    assert "wmma::precision::tf32" in text and "wmma::mma_sync" in text and "tanhf" in text
    assert launch.block == 128 and launch.grid(132) == (1, 3, 1)


def test_tile_choice_fills_the_gpu():
    a, b = Buffer("a", float32, (4096, 4096)), Buffer("b", float32, (4096, 4096))
    big = MatmulSpec("big", a, b, Buffer("o", float32, (4096, 4096)), 4096, 4096, 4096)
    assert big.tiles() == TILES[0]
    a, b = Buffer("a", float32, (128, 784)), Buffer("b", float32, (784, 512))
    mlp = MatmulSpec("mlp", a, b, Buffer("o", float32, (128, 512)), 128, 512, 784)   # W3's first layer
    assert mlp.tiles() == TILES[-1]


def test_bad_specs_are_rejected():
    a, b = Buffer("a", float32, (4, 5)), Buffer("b", float32, (5, 6))
    with pytest.raises(ValueError, match="must hold 1x4x6"):
        MatmulSpec("m", a, b, Buffer("o", float32, (4, 5)), 4, 6, 5)
    with pytest.raises(IndexError, match=r"b:float32\[5, 6\] holds 30 elements"):
        MatmulSpec("m", a, b, Buffer("o", float32, (4, 7)), 4, 7, 5)
    with pytest.raises(TypeError, match="must be float32"):
        MatmulSpec("m", Buffer("a", float64, (4, 5)), b, Buffer("o", float32, (4, 6)), 4, 6, 5)
    with pytest.raises(IndexError, match="reaches elements"):
        MatmulSpec("m", a, b, Buffer("o", float32, (4, 6)), 4, 6, 5,
                   epilogue=op("add", ACC, Arg("c", float32)),
                   epilogue_inputs=(("c", Buffer("c", float32, (5,)), IndexMap((0, 1))),))
