"""Run generated CUDA C on the CPU: a test tool for machines without a GPU.

The module's source is compiled with g++ against a small header that maps CUDA's built-ins to C++:
the threads of a block are fibers (ucontext) run one at a time, each until it reaches a barrier
(`__syncthreads`, `__syncwarp`, the two halves of a warp shuffle) or returns; blocks run one after
another; `__shared__` variables become function statics. Running the threads in forward and in reverse
order exposes missing barriers: a thread that reads what another thread wrote without a barrier
between them sees different values in the two orders. Threads waiting at barriers that can never
open (a deadlock on the GPU) make the launch fail with an error instead of hanging.

What it does not model: memory ordering inside a warp between barriers, CUDA's exact math library
(host libm is used), tensor-core `wmma` (not supported here), and fresh shared memory per block (a
`__shared__` static keeps its last value, which can hide a race on shared memory; races on global
memory, where outputs start poisoned, show).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from codegen.cuda_c import RenderedCuda, render_program
from codegen.kernel import Program

HEADER = r"""
#include <math.h>
#include <cmath>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#include <ucontext.h>

struct tt_dim3 { unsigned x, y, z; };
static tt_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

namespace tt_emu {
enum { RUNNABLE = 0, AT_BLOCK_BARRIER = 1, AT_WARP_BARRIER = 2, DONE = 3 };
const size_t STACK = 256 * 1024;
struct Fiber { ucontext_t ctx; int state; };
static std::vector<Fiber> fibers;
static std::vector<char*> stacks;
static ucontext_t scheduler;
static int current = 0, threads = 0;
static std::function<void()>* body = nullptr;
static unsigned long long exchange[1024];

static void entry() {
    (*body)();
    fibers[current].state = DONE;
    swapcontext(&fibers[current].ctx, &scheduler);
}
static void wait_at(int state) {
    fibers[current].state = state;
    swapcontext(&fibers[current].ctx, &scheduler);
}
static bool release() {
    bool any_live = false, all_block = true;
    for (int t = 0; t < threads; ++t) {
        if (fibers[t].state == DONE) continue;
        any_live = true;
        if (fibers[t].state != AT_BLOCK_BARRIER) all_block = false;
    }
    if (!any_live) return false;
    if (all_block) {
        for (int t = 0; t < threads; ++t) if (fibers[t].state != DONE) fibers[t].state = RUNNABLE;
        return true;
    }
    bool released = false;
    for (int w = 0; w * 32 < threads; ++w) {
        bool live = false, all_warp = true;
        for (int t = w * 32; t < threads && t < w * 32 + 32; ++t) {
            if (fibers[t].state == DONE) continue;
            live = true;
            if (fibers[t].state != AT_WARP_BARRIER) all_warp = false;
        }
        if (live && all_warp) {
            for (int t = w * 32; t < threads && t < w * 32 + 32; ++t)
                if (fibers[t].state != DONE) fibers[t].state = RUNNABLE;
            released = true;
        }
    }
    return released;
}
// Run one block; returns false on a deadlock.
static bool run_block(int n, bool reverse) {
    threads = n;
    fibers.assign(n, Fiber());
    while ((int)stacks.size() < n) stacks.push_back((char*)malloc(STACK));
    for (int t = 0; t < n; ++t) {
        getcontext(&fibers[t].ctx);
        fibers[t].ctx.uc_stack.ss_sp = stacks[t];
        fibers[t].ctx.uc_stack.ss_size = STACK;
        fibers[t].ctx.uc_link = &scheduler;
        makecontext(&fibers[t].ctx, entry, 0);
        fibers[t].state = RUNNABLE;
    }
    for (;;) {
        bool ran = false;
        for (int k = 0; k < n; ++k) {
            int t = reverse ? n - 1 - k : k;
            if (fibers[t].state != RUNNABLE) continue;
            current = t;
            threadIdx.x = t; threadIdx.y = 0; threadIdx.z = 0;
            swapcontext(&scheduler, &fibers[t].ctx);
            ran = true;
        }
        if (release() || ran) continue;
        for (int t = 0; t < n; ++t) if (fibers[t].state != DONE) return false;
        return true;
    }
}
static int launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, std::function<void()>& f, int reverse) {
    body = &f;
    gridDim = {gx, gy, gz};
    blockDim = {bx, 1, 1};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                if (!run_block((int)bx, reverse != 0)) return -1;
            }
    return 0;
}
}  // namespace tt_emu

inline void __syncthreads() { tt_emu::wait_at(tt_emu::AT_BLOCK_BARRIER); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { tt_emu::wait_at(tt_emu::AT_WARP_BARRIER); }
template <class T> T tt_emu_shuffle(T v, int lane_from) {
    const int t = tt_emu::current, base = t - (t & 31);
    std::memcpy(&tt_emu::exchange[t], &v, sizeof(T));
    __syncwarp();
    T r = v;
    if (lane_from >= 0 && lane_from < 32 && base + lane_from < tt_emu::threads)
        std::memcpy(&r, &tt_emu::exchange[base + lane_from], sizeof(T));
    __syncwarp();
    return r;
}
template <class T> T __shfl_down_sync(unsigned, T v, int delta) {
    const int lane = tt_emu::current & 31;
    return tt_emu_shuffle(v, lane + delta < 32 ? lane + delta : lane);
}
template <class T> T __shfl_sync(unsigned, T v, int src) { return tt_emu_shuffle(v, src); }
inline int atomicCAS(int* p, int compare, int value) { int old = *p; if (old == compare) *p = value; return old; }

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
template <class I, class F> I tt_emu_saturate(F x, F lo, F hi, I ilo, I ihi) {
    if (x != x) return 0;
    if (x >= hi) return ihi;
    if (x <= lo) return ilo;
    return (I)x;
}
inline int __float2int_rz(float x) {
    return tt_emu_saturate<int, float>(x, -2147483648.0f, 2147483648.0f, INT_MIN, INT_MAX); }
inline int __double2int_rz(double x) {
    return tt_emu_saturate<int, double>(x, -2147483649.0, 2147483648.0, INT_MIN, INT_MAX); }
inline long long __float2ll_rz(float x) {
    return tt_emu_saturate<long long, float>(x, -0x1p63f, 0x1p63f, LLONG_MIN, LLONG_MAX); }
inline long long __double2ll_rz(double x) {
    return tt_emu_saturate<long long, double>(x, -0x1p63, 0x1p63, LLONG_MIN, LLONG_MAX); }

struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

struct __half { unsigned short bits; };
inline float __half2float(__half h) { _Float16 f; std::memcpy(&f, &h.bits, 2); return (float)f; }
inline __half __float2half_rn(float x) { _Float16 f = (_Float16)x; __half h; std::memcpy(&h.bits, &f, 2); return h; }
inline __half __double2half(double x) { _Float16 f = (_Float16)x; __half h; std::memcpy(&h.bits, &f, 2); return h; }
struct __nv_bfloat16 { unsigned short bits; };
inline float __bfloat162float(__nv_bfloat16 b) {
    unsigned u = (unsigned)b.bits << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    unsigned u; std::memcpy(&u, &x, 4);
    __nv_bfloat16 b;
    if (x != x) { b.bits = 0x7fc0; return b; }
    u += 0x7fffu + ((u >> 16) & 1u);
    b.bits = (unsigned short)(u >> 16);
    return b;
}
"""


def available() -> bool:
    return shutil.which("g++") is not None


class EmulatedModule:
    """A CUDA source module compiled for the CPU with g++ (in the background until `wait()` or a launch;
    builds are cached by source hash in the temp dir, so several modules and nvcc can compile at once)."""

    def __init__(self, source: str, wait: bool = True):
        text = emulation_source(source)
        directory = Path(tempfile.gettempdir()) / "tt-cuda-emulator"
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self._lib_path, self._src = directory / f"{digest}.so", directory / f"{digest}.cpp"
        self._tmp = directory / f"{digest}.{os.getpid()}.so"
        self._build = None
        if not self._lib_path.exists():
            self._src.write_text(text)
            self._build = subprocess.Popen(["g++", "-std=c++17", "-O1", "-w", "-fPIC", "-shared", "-ffp-contract=off",
                                            str(self._src), "-o", str(self._tmp)],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lib = None
        if wait:
            self.wait()

    def wait(self) -> EmulatedModule:
        if self.lib is None:
            if self._build is not None:
                _, err = self._build.communicate()
                if self._build.returncode != 0:
                    raise RuntimeError(f"g++ failed on the emulated module {self._src}:\n{err[-4000:]}")
                os.replace(self._tmp, self._lib_path)
            self.lib = ctypes.CDLL(str(self._lib_path))
        return self

    def launch(self, symbol: str, grid, block: int, pointers, reverse: bool = False) -> None:
        """Run kernel `symbol` over `grid` (x, y, z) blocks of `block` threads with these argument addresses."""
        self.wait()
        args = (ctypes.c_void_p * len(pointers))(*pointers)
        fn = getattr(self.lib, f"emulate_{symbol}")
        if fn(*[ctypes.c_uint(g) for g in grid], ctypes.c_uint(block), args, int(reverse)) != 0:
            raise RuntimeError(f"emulated kernel {symbol}: deadlock (threads wait at different barriers)")


class EmulatedProgram:
    """A program's CUDA module run on the CPU; call it like the engines: inputs -> outputs."""

    def __init__(self, program: Program, rendered: RenderedCuda | None = None, wait: bool = True):
        self.program = program
        self.rendered = rendered or render_program(program)
        self.module = EmulatedModule(self.rendered.source, wait)
        self.launched: list[tuple[str, tuple]] = []

    def __call__(self, *inputs: np.ndarray, reverse: bool = False, sm_count: int = 1,
                 max_blocks: int | None = None) -> tuple[np.ndarray, ...]:
        """Run every step; `max_blocks` caps grid-stride launches (so their loops take several steps)."""
        program = self.program
        arrays = {}
        for buf, a in zip(program.inputs, inputs):
            arrays[buf] = np.ascontiguousarray(np.asarray(a, dtype=buf.dtype.np).reshape(buf.shape))
        for buf in program.outputs + program.temps:
            arrays[buf] = _poisoned(buf)
        err = np.zeros(1, np.int32)
        self.launched = []
        for step, launch in zip(program.steps, self.rendered.launches):
            if launch is None:
                step.fn(*[arrays[b] for b in step.inputs], *[arrays[b] for b in step.outputs])
                continue
            grid = launch.grid(sm_count)
            if max_blocks and launch.fixed_grid is None:
                grid = (min(grid[0], max_blocks), 1, 1)
            self.launched.append((launch.symbol, grid))
            pointers = [arrays[b].ctypes.data for b in launch.buffers] + [err.ctypes.data]
            self.module.launch(launch.symbol, grid, launch.block, pointers, reverse)
        if err[0]:
            check = self.rendered.checks[err[0] - 1]
            raise check.error(f"{check.message} (program {program.name!r})")
        return tuple(arrays[b] for b in program.outputs)


KERNEL = re.compile(r'^extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\((.*)\) \{$', re.M)


def emulation_source(source: str) -> str:
    """A CUDA module as C++ for g++: the emulation header, the module, and per kernel `k` a launcher
    `int emulate_k(gx, gy, gz, block, void** args, reverse)` (0, or -1 on a deadlock)."""
    body = re.sub(r"^#include <(cuda_fp16|cuda_bf16|mma)\.h>$", "", source, flags=re.M)
    lines = [HEADER, body]
    for symbol, params in KERNEL.findall(source):
        types = [p.rsplit(" ", 1)[0].replace("__restrict__", "").strip() for p in params.split(", ")]
        args = ", ".join(f"({t})args[{k}]" for k, t in enumerate(types))
        lines.append(f'extern "C" int emulate_{symbol}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
                     f'void** args, int reverse) {{\n'
                     f'    std::function<void()> f = [&]() {{ {symbol}({args}); }};\n'
                     f'    return tt_emu::launch(gx, gy, gz, bx, f, reverse);\n}}')
    return "\n".join(lines)


def _poisoned(buf) -> np.ndarray:
    """Garbage a kernel must overwrite: NaN for floats, a fixed byte pattern otherwise."""
    a = np.empty(buf.shape, buf.dtype.np)
    if a.dtype.kind == "f":
        a.fill(np.nan)
    else:
        a.reshape(-1).view(np.uint8).fill(0x5A)          # (reshape: a 0-d array cannot change its dtype)
    return a
