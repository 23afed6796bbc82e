"""Code generators: IR kernels to LLVM IR (llvmlite) and to CUDA C source."""
from .kernel import (Accumulator, Arg, Assign, Buffer, CheckedIndex, Const, ExternCall, IndexMap, Kernel, Let, Load,
                     Loop, Op, Program, Reduce, Store, Var)
from .scalar import LoweringError, lower, op
from .templates import FLAT_INDEX, Moments, Reduction, SoftmaxStats, elementwise_kernel, reduction_kernel
from .verify import BoundsError, verify_bounds

__all__ = ["Accumulator", "Arg", "Assign", "Buffer", "CheckedIndex", "Const", "ExternCall", "IndexMap", "Kernel",
           "Let", "Load", "Loop", "Op", "Program", "Reduce", "Store", "Var", "LoweringError", "lower", "op",
           "FLAT_INDEX", "Moments", "Reduction", "SoftmaxStats", "elementwise_kernel", "reduction_kernel", "BoundsError",
           "verify_bounds"]
