"""tracetorch: an eager, PyTorch-compatible tensor library with a tracing JIT.

`import tracetorch as torch` runs code that stays inside the API of
shared/API.md unchanged.
"""
from __future__ import annotations

from . import ops  # noqa: F401  (registers every primitive op)
from . import tensor as _tensor_mod
from .dtypes import (DType as dtype, bool_ as bool, uint8, int8, int16, int32, int64, float16, bfloat16,  # noqa
                     float32, float64, get_default_dtype, set_default_dtype, promote_types)
from .device import device
from .tensor import Tensor, Size
from . import einsum as _einsum_module  # noqa: F401  (load first: the function tt.einsum must shadow it)
from . import math as _math
from .math import *  # noqa: F401,F403
from .math import (abs, all, any, max, min, round, pow, sum)  # noqa: F401  (shadow builtins on purpose)
from .shape import *  # noqa: F401,F403
from .creation import *  # noqa: F401,F403
from .random import (Generator, manual_seed, seed, initial_seed, get_rng_state, set_rng_state,  # noqa: F401
                     rand, randn, rand_like, randn_like, randint, randint_like, randperm, normal, bernoulli,
                     default_generator)
from .indexing import index_put, index_select, gather  # noqa: F401
from . import autograd  # noqa: F401
from .autograd import no_grad, enable_grad, set_grad_enabled, is_grad_enabled, inference_mode  # noqa: F401
from . import cuda  # noqa: F401
from .serialization import save, load  # noqa: F401
from ._methods import install as _install_methods

_tensor_mod._M = _math
_install_methods()

float = float32
double = float64
half = float16
long = int64
int = int32
short = int16
cfloat = None

__version__ = "0.1.0"


def __getattr__(name):
    # Subpackages that import heavy things load on first use.
    import importlib
    if name in ("nn", "optim", "utils", "data", "jit", "compiler"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("compile", "grad", "value_and_grad"):     # the tracing JIT (tracetorch/jit)
        return getattr(importlib.import_module(f"{__name__}.jit"), name)
    raise AttributeError(f"module 'tracetorch' has no attribute '{name}'")
