"""The program key (runtime.program_key) names a program's cached code: equal for the same program built
again, different when anything the renderer reads differs, or the target."""
from __future__ import annotations

from codegen.kernel import Arg, Buffer, IndexMap, Program
from codegen.scalar import op
from codegen.templates import elementwise_kernel
from runtime.program_key import program_key
from sample_programs import mixed_program, two_stage_program
from tracetorch.dtypes import float32, float64


def _scaled(n=64, factor=0.5, dtype=float32, name="p", kernel="scale", operation="mul"):
    x, y = Buffer("x", dtype, (n,)), Buffer("y", dtype, (n,))
    k = elementwise_kernel(kernel, (n,), {"x": (x, IndexMap((1,)))}, [(y, op(operation, Arg("x", dtype), factor))])
    return Program(name, (k,), (x,), (y,))


def test_the_same_program_built_again_has_the_same_key():
    assert program_key(mixed_program(), "host") == program_key(mixed_program(), "host")
    assert program_key(_scaled(), "host") == program_key(_scaled(), "host")


def test_anything_the_renderer_reads_changes_the_key():
    base = program_key(_scaled(), "host")
    others = [_scaled(n=65), _scaled(factor=0.25), _scaled(dtype=float64), _scaled(name="q"), _scaled(kernel="other"),
              _scaled(operation="add")]
    keys = {program_key(p, "host") for p in others}
    assert base not in keys and len(keys) == len(others)
    assert program_key(_scaled(), "another host") != base
    assert program_key(two_stage_program(64), "host") != program_key(two_stage_program(65), "host")
