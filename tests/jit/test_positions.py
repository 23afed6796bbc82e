"""Index arithmetic of fused kernels (tracetorch/jit/passes/positions.py): the coordinates a reshape
reads are the row-major digits of the element's flat index, at every element of random spaces, and
merging the digits again gives back an affine (vectorizable) index."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from codegen.kernel import Const, Var
from tracetorch.jit.passes.positions import Space, flat_index, reshape_source

_OPS = {"add": int.__add__, "mul": int.__mul__, "floordiv": int.__floordiv__, "mod": int.__mod__}


def _value(coord, env) -> int:
    if coord.affine:
        return sum(c * env[k] for k, c in enumerate(coord.coeffs)) + coord.const

    def ev(e):
        if isinstance(e, Var):
            return env[int(e.name[2:])]             # "@i<k>"
        if isinstance(e, Const):
            return e.value
        return _OPS[e.op](*(ev(x) for x in e.args))
    return ev(coord.as_expr())


def _factorizations(n, rng, parts):
    """A random shape of `parts` dims with product n."""
    dims = []
    for _ in range(parts - 1):
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        d = int(rng.choice(divisors))
        dims.append(d)
        n //= d
    dims.append(n)
    return tuple(dims)


@pytest.mark.parametrize("seed", range(40))
def test_reshape_chains_read_the_row_major_element(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([24, 36, 48, 60, 64, 72, 96]))
    shapes = [_factorizations(n, rng, int(rng.integers(1, 5))) for _ in range(3)]
    space = Space(shapes[0])
    pos = space.identity()
    for a, b in zip(shapes, shapes[1:]):               # the kernel's space read as shapes[1], then shapes[2]
        pos = reshape_source(space, pos, a, b)
    last = shapes[-1]
    flat = flat_index(space, pos, last)
    for env in itertools.product(*(range(d) for d in shapes[0])):
        want = int(np.ravel_multi_index(env, shapes[0])) if env else 0
        got = tuple(_value(c, env) for c in pos)
        assert got == tuple(int(v) for v in np.unravel_index(want, last)), (shapes, env)
        assert _value(flat, env) == want
    assert flat.affine, (shapes, flat)                 # every split merged again: the plain flat index
    assert flat.const == 0 and flat.coeffs == tuple(math.prod(shapes[0][k + 1:]) if d > 1 else 0
                                                    for k, d in enumerate(shapes[0]))
