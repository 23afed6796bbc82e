"""Code generators: IR kernels to LLVM IR (llvmlite) and to CUDA C source."""
