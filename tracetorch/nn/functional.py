"""`tt.nn.functional`: activations, normalization, convolution, pooling,
attention and losses, composed from tracetorch ops.

Every function is built from the registry's primitives (elementwise,
reductions, slices, index, matmul), so autograd differentiates it and the
compiler can fuse it. Two have a hand-written backward, itself composed of
primitives: exact GELU (`_ExactGELU`), whose erfc series differentiated step
by step would keep a dozen intermediates for the backward pass, and binary
cross-entropy (`_BinaryCrossEntropy`), whose PyTorch gradient is not the
derivative of its clamped logs. Convolution and
pooling read their windows as strided slices of the padded input; class-index
losses pick the target's log-probability with a one-hot mask (no gather).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .. import dtypes as D
from ..autograd.function import Function
from ..autograd.grad_mode import no_grad
from ..creation import arange, full, tensor as _constant
from ..math import (abs as _abs, div as _div, exp, isnan, log, log1p, log_softmax as _log_softmax, matmul,
                    maximum, minimum, relu as _relu, rsqrt, sigmoid as _sigmoid, softmax as _softmax,
                    tanh as _tanh, where)
from ..ops import REGISTRY
from ..ops.dispatch import STATE, apply
from ..ops.elementwise import _where_eager
from ..random import rand
from ..shape import stack
from ..tensor import Tensor

_SLICE_SCATTER = REGISTRY["slice_scatter"]


# ================================================================ activations
def relu(input: Tensor, inplace: bool = False) -> Tensor:
    return input.relu_() if inplace else _relu(input)


def relu_(input: Tensor) -> Tensor:
    return input.relu_()


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    out = where(input > 0, input, input * negative_slope)
    return input.copy_(out) if inplace else out


def sigmoid(input: Tensor) -> Tensor:
    return _sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    return _tanh(input)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    out = input * _sigmoid(input)
    return input.copy_(out) if inplace else out


def logsigmoid(input: Tensor) -> Tensor:
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): no overflow, exact gradient at 0."""
    return minimum(input, 0) - log1p(exp(-_abs(input)))


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x), with Phi the standard normal CDF (exact), or its tanh approximation."""
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (input + 0.044715 * (input * input * input))
        return 0.5 * input * (1 + _tanh(inner))
    if approximate != "none":
        raise RuntimeError(f"approximate argument must be either none or tanh, got {approximate!r}")
    return _ExactGELU.apply(input)


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * _erfc(x * -math.sqrt(0.5))


class _ExactGELU(Function):
    """x * Phi(x) with the derivative Phi(x) + x phi(x) written out: differentiating the erfc series
    (a 14-step recurrence) would save every step's value for the backward pass (each a tensor the
    size of x: a compiled GPT block wrote and read back 14 of them); this saves x alone (a compiled
    program computes Phi once, in the forward kernel, and keeps at most that one tensor for the
    backward). The backward is composed of primitives, so it is differentiable again."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * _normal_cdf(x)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        density = exp(x * x * -0.5) * (1.0 / math.sqrt(2.0 * math.pi))
        return grad * (_normal_cdf(x) + x * density)


# Chebyshev coefficients of f(t) = log(erfc(z) / t) + z^2 with t = 2 / (2 + z), z >= 0, in the variable
# u = 2t - 1 (computed with mpmath at 50 digits). Truncated where the tail is below the dtype's precision.
_ERFC_CHEB = (-0.65132685989085471710, 0.64196979235649026030, 0.019476473204185836312,
              -0.0095615147868086316419, -0.00094659534448203686630, 0.00036683949785276145187,
              0.000042523324806907771645, -0.000020278578112534243154, -1.6242900046470255135e-6,
              1.3036558355805232018e-6, 1.5626441722066143178e-8, -8.5238095914926542525e-8,
              6.5290544390988514964e-9, 5.0593434955514689418e-9, -9.9136415649303308674e-10,
              -2.2736512229318358557e-10, 9.6467911020155268020e-11, 2.3940380830391147447e-12,
              -6.8860275264975533984e-12, 8.9448792730907257167e-13, 3.1309213993429580783e-13,
              -1.1270822361367252366e-13, 3.8109052551892320552e-16, 7.1060976136092369878e-15,
              -1.5230282014571043043e-15, -9.4574945712912340005e-17, 1.2102371892242789923e-16,
              -2.8166630877471769718e-17)
_ERFC_TERMS = {D.float64: 28}   # lower precisions: 14 terms (tail < 2e-9)


def _erfc(x: Tensor) -> Tensor:
    """Complementary error function from exp and a Chebyshev series (Numerical Recipes' erfccheb
    form): relatively accurate for large |x|, differentiable, fusable. tracetorch has no erf primitive."""
    if (STATE.tracer is None and type(x._data) is np.ndarray and x.dtype in (D.float32, D.float64)
            and not (x.requires_grad and STATE.grad_enabled)):
        return Tensor._make(_erfc_numpy(x._data, _ERFC_CHEB[:_ERFC_TERMS.get(x.dtype, 14)]), x.dtype)
    z = _abs(x)
    t = 2.0 / (z + 2.0)
    two_u = 4.0 * t - 2.0
    coeffs = _ERFC_CHEB[:_ERFC_TERMS.get(x.dtype, 14)]
    b1, b2 = coeffs[-1], 0.0        # Clenshaw recurrence, highest term first
    for c in coeffs[-2:0:-1]:
        b1, b2 = two_u * b1 + (c - b2), b1
    series = 0.5 * two_u * b1 + (coeffs[0] - b2)
    tail = t * exp(series - z * z)
    return where(x >= 0, tail, 2.0 - tail)


_ERFC_BLOCK = 1 << 15          # elements per block: a block's few buffers stay in the L2 cache


def _erfc_numpy(a: np.ndarray, coeffs: tuple) -> np.ndarray:
    """`_erfc` on an array, eagerly, with nothing to record: the same operations in the same order
    (the same bits), block by block, the recurrence in three reused buffers instead of a fresh array
    per operation (W6's eager GELU: ~9 ms per call of 2^18 floats faulting in 35 new arrays of 1 MiB)."""
    if a.size <= _ERFC_BLOCK:
        return _erfc_block(a, coeffs)
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(flat.shape, a.dtype)
    for lo in range(0, flat.size, _ERFC_BLOCK):
        out[lo:lo + _ERFC_BLOCK] = _erfc_block(flat[lo:lo + _ERFC_BLOCK], coeffs)
    return out.reshape(a.shape)


def _erfc_block(a: np.ndarray, coeffs: tuple) -> np.ndarray:
    with np.errstate(all="ignore"):
        z = np.abs(a)
        t = np.divide(2.0, z + 2.0)
        two_u = 4.0 * t - 2.0
        b1, b2 = coeffs[-1], 0.0
        terms = coeffs[-2:0:-1]
        for c in terms[:2]:                 # Python floats until both are arrays
            b1, b2 = two_u * b1 + (c - b2), b1
        spare = np.empty_like(b1)
        for c in terms[2:]:
            np.subtract(c, b2, out=b2)
            np.multiply(two_u, b1, out=spare)
            np.add(spare, b2, out=b2)
            b1, b2, spare = b2, b1, spare
        series = 0.5 * two_u * b1 + (coeffs[0] - b2)
        np.multiply(z, z, out=z)
        np.subtract(series, z, out=series)
        np.exp(series, out=series)
        tail = np.multiply(t, series, out=t)
        return _where_eager(a >= 0, tail, 2.0 - tail)


def _softmax_dim(name: str, ndim: int) -> int:
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
                  "dim=X as an argument.", stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    if dim is None:
        dim = _softmax_dim("softmax", input.dim())
    return _softmax(input, dim, dtype=dtype)


def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    if dim is None:
        dim = _softmax_dim("log_softmax", input.dim())
    return _log_softmax(input, dim, dtype=dtype)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p). The mask comes from
    `tt.rand` on the default generator, so it is reproducible under `tt.manual_seed`."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        out = input * 0.0
    else:
        draw_dtype = input.dtype if input.is_floating_point() else D.get_default_dtype()
        keep = rand(*input.shape, dtype=draw_dtype, device=input.device) >= p
        out = input * keep / (1.0 - p)
    return input.copy_(out) if inplace else out


# ================================================================ linear, normalization, embedding
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """input @ weight.T + bias. Leading dims are folded into one, so forward and backward are single
    2-D matmuls (no per-batch weight gradients to sum)."""
    if input.dim() > 2 and weight.dim() == 2:
        out = matmul(input.reshape(-1, input.shape[-1]), weight.t())
        out = out.reshape(*input.shape[:-1], weight.shape[0])
    else:
        out = matmul(input, weight.t() if weight.dim() == 2 else weight)
    return out + bias if bias is not None else out


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(f"Given normalized_shape={list(shape)}, expected input with shape "
                           f"[*, {', '.join(map(str, shape))}], but got input of size{list(input.shape)}")
    dims = tuple(range(-len(shape), 0))
    centered = input - input.mean(dims, keepdim=True)
    var = (centered * centered).mean(dims, keepdim=True)
    out = centered * rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalize over every dim but the channel dim 1. Training uses the batch's statistics and
    updates the running ones in place (running_var with the unbiased variance)."""
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected an input with at least 2 dims (N, C, ...), got {list(input.shape)}")
    channels = input.shape[1]
    per_channel = (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var))
    for name, t in per_channel:
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")
    dims = (0,) + tuple(range(2, input.dim()))
    channel_shape = (1, channels) + (1,) * (input.dim() - 2)
    if training:
        count = input.numel() // channels
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")
        mean = input.mean(dims, keepdim=True)
        centered = input - mean
        var = (centered * centered).mean(dims, keepdim=True)
        with no_grad():
            if running_mean is not None:
                running_mean.copy_(running_mean * (1.0 - momentum) + mean.reshape(channels) * momentum)
            if running_var is not None:
                unbiased = var.reshape(channels) * (count / (count - 1))
                running_var.copy_(running_var * (1.0 - momentum) + unbiased * momentum)
        out = centered * rsqrt(var + eps)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm: running_mean and running_var must be defined in evaluation mode")
        out = (input - running_mean.reshape(channel_shape)) * rsqrt(running_var.reshape(channel_shape) + eps)
    if weight is not None:
        out = out * weight.reshape(channel_shape)
    if bias is not None:
        out = out + bias.reshape(channel_shape)
    return out


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of `weight` picked by the integer `input`; the padding_idx row gets no gradient."""
    if input.is_floating_point() or input.dtype is D.bool_:
        raise RuntimeError("Expected tensor for argument #1 'indices' to have one of the following scalar types: "
                           f"Long, Int; but got {input.dtype} instead (while checking arguments for embedding)")
    if scale_grad_by_freq:
        raise NotImplementedError("embedding: scale_grad_by_freq=True is not supported")
    num = weight.shape[0]
    if padding_idx is not None:
        if not -num <= padding_idx < num:
            raise ValueError("Padding_idx must be within num_embeddings")
        padding_idx %= num
    # A negative index is out of range, as in PyTorch (not wrapped): mapped to num, it fails the eager
    # gather and the compiled gather's bounds check (which then commits nothing) like an index >= num.
    index = where(input < 0, num, input)
    try:
        if max_norm is not None:
            _embedding_renorm_(weight, index, max_norm, norm_type)
        out = weight[index]
    except IndexError:
        values = np.asarray(input._data).reshape(-1)
        bad = values[(values < 0) | (values >= num)]
        if not bad.size:
            raise
        raise IndexError(f"index out of range in self: embedding index {int(bad[0])} is out of bounds for "
                         f"dimension 0 with size {num}") from None
    if padding_idx is not None and weight.requires_grad:
        out = where((input == padding_idx).unsqueeze(-1), out.detach(), out)
    return out


def _embedding_renorm_(weight: Tensor, input: Tensor, max_norm: float, norm_type: float) -> None:
    """Rescale, in place, the looked-up rows whose norm exceeds max_norm (as PyTorch does)."""
    with no_grad():
        rows = _constant(np.unique(input.numpy().reshape(-1)).astype(np.int64))
        picked = weight[rows]
        norms = picked.norm(p=norm_type, dim=1, keepdim=True)
        scale = where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
        weight[rows] = picked * scale


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    if tensor.dtype is not D.int64:
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor.")
    if num_classes == -1:
        if tensor.numel() == 0:
            raise RuntimeError("Can not infer total number of classes from empty tensor.")
        num_classes = int(tensor.max()) + 1
    _check_class_range(tensor, num_classes, None, "one_hot")
    return (tensor.unsqueeze(-1) == arange(num_classes, device=tensor.device)).long()


# ================================================================ padding, convolution, pooling
def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    if len(value) != 2:
        raise RuntimeError(f"{name} must be an int or a pair of ints, got {value}")
    return (int(value[0]), int(value[1]))


def pad(input: Tensor, pad, mode: str = "constant", value: float | None = None) -> Tensor:
    """Pad (or, with negative amounts, crop) the last len(pad)//2 dims; pad lists (left, right)
    pairs starting from the last dim. Modes: constant, reflect, replicate, circular."""
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2:
        raise RuntimeError("Padding length must be divisible by 2")
    if len(pad) // 2 > input.dim():
        raise RuntimeError(f"Padding length should be less than or equal to two times the input dimension but got "
                           f"padding length {len(pad)} and input of dimension {input.dim()}")
    amounts = {input.dim() - 1 - i: (pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)}
    if mode == "constant":
        for dim, (left, right) in amounts.items():
            if input.shape[dim] + left + right < 0:
                raise RuntimeError(f"pad: padding ({left}, {right}) gives a negative size at dimension {dim} of "
                                   f"input of size {list(input.shape)}")
        return _pad_constant(input, amounts, 0 if value is None else value)
    if mode not in ("reflect", "replicate", "circular"):
        raise NotImplementedError(f"pad: mode {mode!r} is not supported (constant, reflect, replicate, circular)")
    if value:
        raise RuntimeError(f'Padding mode "{mode}" doesn\'t take in value argument')
    out = input
    for dim, (left, right) in amounts.items():
        if left or right:
            index = _pad_index(mode, input.shape[dim], left, right, dim)
            out = out.index_select(dim, _constant(index))
    return input.clone() if out is input else out           # all-zero amounts: still a new tensor


def _pad_constant(input: Tensor, amounts: dict, value) -> Tensor:
    x = input
    for dim, (left, right) in amounts.items():       # negative amounts crop
        if left < 0 or right < 0:
            start, stop = max(-left, 0), x.shape[dim] - max(-right, 0)
            x = x.narrow(dim, start, max(stop - start, 0))
    shape, starts, stops = list(x.shape), [0] * x.dim(), list(x.shape)
    for dim, (left, right) in amounts.items():
        shape[dim] += max(left, 0) + max(right, 0)
        starts[dim] = max(left, 0)
        stops[dim] = starts[dim] + x.shape[dim]
    if tuple(shape) == tuple(x.shape):
        return x.clone()             # a crop is a copy too, as in PyTorch: never a view of the input
    base = full(tuple(shape), value, dtype=input.dtype, device=input.device)
    return apply(_SLICE_SCATTER, base, x, starts=tuple(starts), stops=tuple(stops), steps=(1,) * x.dim())


def _pad_index(mode: str, size: int, left: int, right: int, dim: int) -> np.ndarray:
    """Source position of every output element along dim; negative amounts crop, as in PyTorch."""
    out = size + left + right
    if size == 0:
        raise RuntimeError(f"pad: {mode} padding needs a non-empty dimension {dim} to copy from")
    if out < (0 if mode == "circular" else 1):
        raise RuntimeError(f"pad: input of size {size} at dimension {dim} is too small for padding "
                           f"({left}, {right}): calculated output size {out}")
    if mode == "reflect" and (left >= size or right >= size):
        raise RuntimeError(f"Argument #4: Padding size should be less than the corresponding input dimension, but "
                           f"got: padding ({left}, {right}) at dimension {dim} of input of size {size}")
    if mode == "circular" and (left > size or right > size):
        raise RuntimeError("Padding value causes wrapping around more than once.")
    pos = np.arange(-left, size + right)
    if mode == "reflect":
        pos = np.abs(pos)
        pos = np.where(pos >= size, 2 * (size - 1) - pos, pos)
    elif mode == "replicate":
        pos = np.clip(pos, 0, size - 1)
    else:                               # circular wraps around what the negative amounts left of the input
        start, kept = max(-left, 0), size + min(left, 0) + min(right, 0)
        if kept <= 0 < out:
            raise RuntimeError(f"pad: padding ({left}, {right}) crops all of dimension {dim} but pads it again")
        pos = start + (pos - start) % max(kept, 1)
    return pos.astype(np.int64)


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool = False) -> int:
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _window_slices(x: Tensor, kernel, stride, dilation, out_hw) -> list[Tensor]:
    """The kh*kw strided views x[..., i*dh :: sh, j*dw :: sw] (each of spatial size out_hw),
    in the (i, j) row-major order of a kernel's weights."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    lead = (slice(None),) * (x.dim() - 2)
    return [x[lead + (slice(i * dh, i * dh + (oh - 1) * sh + 1, sh), slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))]
            for i in range(kh) for j in range(kw)]


def _batched(input: Tensor, op: str) -> tuple[Tensor, bool]:
    if input.dim() == 3:
        return input.unsqueeze(0), True
    if input.dim() != 4:
        raise RuntimeError(f"{op}: expected 3D (unbatched) or 4D (batched) input, but got input of size: "
                           f"{list(input.shape)}")
    return input, False


def _conv_padding(padding, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for padding = int | pair | 'valid' | 'same'."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    if isinstance(padding, str):
        raise RuntimeError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise RuntimeError(f"negative padding is not supported, got padding={padding}")
    return (ph, ph, pw, pw)


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D cross-correlation as pad + strided windows (im2col) + one matmul per group."""
    x, unbatched = _batched(input, "conv2d")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) <= 0:
        raise RuntimeError(f"non-positive stride is not supported, got stride={list(stride)}")
    if min(dilation) <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got {list(dilation)}")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if weight.dim() != 4:
        raise RuntimeError(f"conv2d: expected a 4-dimensional weight (out_channels, in_channels/groups, kH, kW), "
                           f"but got weight of size {list(weight.shape)}")
    n, c, h, w = x.shape
    out_c, c_per_group, kh, kw = weight.shape
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_c):
        raise RuntimeError(f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
                           f"{out_c} elements, but got bias of size {list(bias.shape)} instead")
    if bias is not None and bias.dtype is not x.dtype:
        raise RuntimeError(f"Input type ({x.dtype}) and bias type ({bias.dtype}) should be the same")
    if c != c_per_group * groups:
        raise RuntimeError(f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                           f"{list(x.shape)} to have {c_per_group * groups} channels, but got {c} channels instead")
    if out_c % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size {list(weight.shape)} instead")
    top, bottom, left, right = _conv_padding(padding, (kh, kw), stride, dilation)
    if top or bottom or left or right:
        x = _pad_constant(x, {2: (top, bottom), 3: (left, right)}, 0)
    oh = _out_size(x.shape[2], kh, stride[0], 0, dilation[0])
    ow = _out_size(x.shape[3], kw, stride[1], 0, dilation[1])
    if oh <= 0 or ow <= 0:
        raise RuntimeError(f"conv2d: calculated padded input size per channel: ({x.shape[2]} x {x.shape[3]}). "
                           f"Kernel size: ({dilation[0] * (kh - 1) + 1} x {dilation[1] * (kw - 1) + 1}). "
                           "Kernel size can't be greater than actual input size")
    # (C, N, H, W) windows stacked as (C, K, N, OH, OW): one (O/g, C/g*K) @ (C/g*K, N*OH*OW) matmul per group
    windows = stack(_window_slices(x.transpose(0, 1), (kh, kw), stride, dilation, (oh, ow)), dim=1)
    columns = windows.reshape(groups, c_per_group * kh * kw, n * oh * ow)
    out = matmul(weight.reshape(groups, out_c // groups, c_per_group * kh * kw), columns)
    out = out.reshape(out_c, n, oh, ow)
    if bias is not None:
        out = out + bias.reshape(out_c, 1, 1, 1)
    out = out.transpose(0, 1).contiguous()
    return out.squeeze(0) if unbatched else out


def _pool_geometry(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode, op: str):
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) \
        else _pair(stride, "stride")
    pad_hw, dilation = _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
        raise RuntimeError(f"{op}: kernel_size, stride and dilation should be greater than zero, but got "
                           f"kernel_size={list(kernel)}, stride={list(stride)} and dilation={list(dilation)}")
    if min(pad_hw) < 0:
        raise RuntimeError(f"{op}: pad must be non-negative, but got pad: {list(pad_hw)}")
    for k, p, d in zip(kernel, pad_hw, dilation):
        if p * 2 > d * (k - 1) + 1:
            raise RuntimeError(f"{op}: pad should be at most half of effective kernel size, but got pad={p}, "
                               f"kernel_size={k} and dilation={d}")
    out_hw = tuple(_out_size(s, k, st, p, d, ceil_mode)
                   for s, k, st, p, d in zip(x.shape[2:], kernel, stride, pad_hw, dilation))
    if out_hw[0] <= 0 or out_hw[1] <= 0:
        raise RuntimeError(f"{op}: given input size {list(x.shape)}, calculated output size "
                           f"{[x.shape[1], *out_hw]} is too small")
    # ceil_mode windows may reach past the padded input: pad the far side a little more
    extra = tuple(max(0, (o - 1) * st + d * (k - 1) + 1 - (s + 2 * p))
                  for o, st, d, k, s, p in zip(out_hw, stride, dilation, kernel, x.shape[2:], pad_hw))
    pads = {2: (pad_hw[0], pad_hw[0] + extra[0]), 3: (pad_hw[1], pad_hw[1] + extra[1])}
    return kernel, stride, pad_hw, dilation, out_hw, pads


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Max over each window, as a running maximum over the window's strided views. A later element
    replaces the maximum only when strictly greater (or NaN), so the gradient goes to the first
    maximum of a window, as in PyTorch. Padding never counts: a window's first element inside the
    input replaces the padding it started from, even when it is -inf."""
    x, unbatched = _batched(input, "max_pool2d")
    if x.dtype is D.bool_:
        raise NotImplementedError("\"max_pool2d\" not implemented for 'Bool'")
    kernel, stride, pad_hw, dilation, (oh, ow), pads = _pool_geometry(x, kernel_size, stride, padding, dilation,
                                                                       ceil_mode, "max_pool2d")
    floating = x.is_floating_point()
    lowest = float("-inf") if floating else int(np.iinfo(x.dtype.np).min)
    padded = _pad_constant(x, pads, lowest) if any(a or b for a, b in pads.values()) else x
    positions, inside = _window_positions(x.shape[2:], kernel, stride, pad_hw, dilation, (oh, ow))
    windows = _window_slices(padded, kernel, stride, dilation, (oh, ow))
    out = windows[0] if len(windows) > 1 else windows[0].clone()      # never a view of the input
    indices = _constant(positions[0]) if return_indices else None
    seen = inside[0]
    for k in range(1, len(windows)):
        take = windows[k] > out
        if floating:
            take = take | windows[k].isnan()
        first = inside[k] & ~seen
        if first.any():
            take = take | _constant(first)
        seen = seen | inside[k]
        out = where(take, windows[k], out)
        if return_indices:
            indices = where(take, _constant(positions[k]), indices)
    if return_indices:
        indices = indices.expand(*out.shape).clone()
    if unbatched:
        out = out.squeeze(0)
        indices = indices.squeeze(0) if indices is not None else None
    return (out, indices) if return_indices else out


def _window_positions(size_hw, kernel, stride, pad_hw, dilation, out_hw) -> tuple[np.ndarray, np.ndarray]:
    """(K, OH, OW) flat index h*W + w, in the unpadded input, of every window element, and whether
    that element lies inside the input (not in the padding)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, pad_hw, dilation, out_hw
    rows = (np.arange(oh) * sh - ph)[None, :] + (np.arange(kh) * dh)[:, None]       # (kh, oh)
    cols = (np.arange(ow) * sw - pw)[None, :] + (np.arange(kw) * dw)[:, None]       # (kw, ow)
    flat = rows[:, None, :, None] * size_hw[1] + cols[None, :, None, :]              # (kh, kw, oh, ow)
    inside = (((rows >= 0) & (rows < size_hw[0]))[:, None, :, None]
              & ((cols >= 0) & (cols < size_hw[1]))[None, :, None, :])
    return flat.reshape(kh * kw, oh, ow).astype(np.int64), inside.reshape(kh * kw, oh, ow)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """Window sums over the strided views, divided by PyTorch's divisor; an integer input keeps its
    dtype, its sums divided with truncation as PyTorch does."""
    x, unbatched = _batched(input, "avg_pool2d")
    if x.dtype is D.bool_:
        raise NotImplementedError("\"avg_pool2d\" not implemented for 'Bool'")
    kernel, stride, pad_hw, _, (oh, ow), pads = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode,
                                                                "avg_pool2d")
    padded = _pad_constant(x, pads, 0) if any(a or b for a, b in pads.values()) else x
    total = None
    for window in _window_slices(padded, kernel, stride, (1, 1), (oh, ow)):
        total = window if total is None else total + window
    if divisor_override is not None:
        if divisor_override == 0:
            raise RuntimeError("avg_pool2d: divisor must be not zero")
        divisor = divisor_override
    else:
        counts = _avg_divisor(x.shape[2:], kernel, stride, pad_hw, (oh, ow), count_include_pad)
        counts = counts if x.is_floating_point() else counts.astype(np.int64)
        divisor = counts.flat[0].item() if (counts == counts.flat[0]).all() else _constant(counts, dtype=x.dtype)
    out = total / divisor if x.is_floating_point() else _div(total, divisor, rounding_mode="trunc")
    return out.squeeze(0) if unbatched else out


def _avg_divisor(size_hw, kernel, stride, pad_hw, out_hw, count_include_pad) -> np.ndarray:
    """How many elements PyTorch divides each window's sum by (windows cut by the padded border)."""
    counts = []
    for size, k, s, p, o in zip(size_hw, kernel, stride, pad_hw, out_hw):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, size + p)
        counts.append(end - start if count_include_pad else np.minimum(end, size) - np.maximum(start, 0))
    return (counts[0][:, None] * counts[1][None, :]).astype(np.float64)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Average over PyTorch's adaptive windows [floor(i*H/OH), ceil((i+1)*H/OH))."""
    x, unbatched = _batched(input, "adaptive_avg_pool2d")
    if not x.is_floating_point():
        raise NotImplementedError(f"\"adaptive_avg_pool2d\" not implemented for '{x.dtype.name}'")
    h, w = x.shape[2:]
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2:
        raise RuntimeError(f"adaptive_avg_pool2d: output_size must be 2, got {output_size}")
    oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
    if oh < 0 or ow < 0:
        raise RuntimeError(f"adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 "
                           f"but received {{{oh}, {ow}}}")
    if h == 0 or w == 0:
        raise RuntimeError(f"adaptive_avg_pool2d(): Expected input to have non-zero size for non-batch dimensions, "
                           f"but input has sizes {list(input.shape)}")
    if oh and ow and h % oh == 0 and w % ow == 0:
        out = x.reshape(x.shape[0], x.shape[1], oh, h // oh, ow, w // ow).mean((3, 5))
    else:
        rows = _constant(_adaptive_matrix(h, oh), dtype=x.dtype)
        cols = _constant(_adaptive_matrix(w, ow).T, dtype=x.dtype)
        out = matmul(matmul(rows, x), cols)
    return out.squeeze(0) if unbatched else out


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) averaging matrix of the adaptive windows along one dim."""
    m = np.zeros((out, size))
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


# ================================================================ attention
def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """softmax(q k^T * scale + mask) v. A boolean mask marks the positions that take part;
    a float mask is added to the scores; is_causal keeps key j <= query i. A query the mask
    leaves no key (a row of -inf scores) attends to nothing: its output and gradients are 0, as
    PyTorch's safe softmax makes them (a plain softmax's 0/0 is NaN, and NaN gradients everywhere)."""
    if is_causal and attn_mask is not None:
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    length, source = query.shape[-2], key.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if enable_gqa and query.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        key, value = _repeat_heads(key, query.shape[-3]), _repeat_heads(value, query.shape[-3])
    scores = matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        causal = (arange(source, device=query.device).reshape(1, source)
                  <= arange(length, device=query.device).reshape(length, 1))
        scores = where(causal, scores, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype is D.bool_:
            scores = where(attn_mask, scores, float("-inf"))
        else:
            scores = scores + attn_mask
    if attn_mask is None:
        weights = _softmax(scores, -1)
    else:
        empty = (scores == float("-inf")).all(-1, keepdim=True)
        weights = where(empty, 0.0, _softmax(where(empty, 0.0, scores), -1))
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p, training=True)
    return matmul(weights, value)


def _repeat_heads(x: Tensor, heads: int) -> Tensor:
    groups = heads // x.shape[-3]
    shape = tuple(x.shape)
    x = x.unsqueeze(-3).expand(*shape[:-2], groups, *shape[-2:])
    return x.reshape(*shape[:-3], heads, *shape[-2:])


# ================================================================ losses
def _reduction(size_average, reduce, reduction: str) -> str:
    """The legacy size_average/reduce flags, when given, override `reduction` (PyTorch's rule)."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "mean" if size_average and reduce else "sum" if reduce else "none"


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _check_class_range(target: Tensor, num_classes: int, ignore_index: int | None, op: str) -> None:
    """Range check of class indices (like PyTorch's), written with tensor ops: under `tt.compile` the
    test is a guard on its outcome, so a compiled run given a bad label is abandoned (nothing
    committed) and the call retraced, which raises here."""
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    if bad.any():
        t = np.asarray(target._data)
        raise IndexError(f"{op}: Target {int(t[np.asarray(bad._data)].flat[0])} is out of bounds (expected "
                         f"classes in [0, {num_classes}))")


def _class_dim(input: Tensor) -> int:
    return 0 if input.dim() == 1 else 1


def _check_class_target(input: Tensor, target: Tensor, op: str) -> None:
    if target.is_floating_point() or target.dtype is D.bool_:
        raise RuntimeError(f"{op}: expected target of integer class indices (Long), but got {target.dtype}")
    expected = tuple(input.shape[:1] + input.shape[2:]) if input.dim() > 1 else ()
    if tuple(target.shape) != expected:
        if input.dim() > 1 and target.dim() >= 1 and target.shape[0] != input.shape[0]:
            raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                             f"({target.shape[0]}).")
        raise RuntimeError(f"{op}: expected target of shape {list(expected)} for input of shape "
                           f"{list(input.shape)}, got {list(target.shape)}")


def _class_weight_view(weight: Tensor, input: Tensor, class_dim: int, op: str) -> Tensor:
    classes = input.shape[class_dim]
    if weight.dim() != 1 or weight.shape[0] != classes:
        raise RuntimeError(f"{op}: weight tensor should be defined either for all {classes} classes or no classes "
                           f"but got weight tensor of shape: {list(weight.shape)}")
    shape = [1] * input.dim()
    shape[class_dim] = classes
    return weight.to(input.dtype).reshape(shape)


def _pick_targets(logp: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, op: str):
    """Per-element -w[t] * logp[t] and the weight w[t] (0 where ignored), through a one-hot mask."""
    class_dim = _class_dim(logp)
    classes = logp.shape[class_dim]
    _check_class_target(logp, target, op)
    _check_class_range(target, classes, ignore_index, op)
    shape = [1] * logp.dim()
    shape[class_dim] = classes
    valid = target != ignore_index
    hot = ((target.unsqueeze(class_dim) == arange(classes, device=logp.device).reshape(shape))
           & valid.unsqueeze(class_dim))
    picked = where(hot, logp, 0).sum(class_dim)
    if weight is None:
        return -picked, valid.to(logp.dtype)
    w = _class_weight_view(weight, logp, class_dim, op)
    sample_weight = where(hot, w, 0).sum(class_dim)
    return -(picked * sample_weight), sample_weight


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean") -> Tensor:
    """-input[n, target[n]] * weight[target[n]]; the mean divides by the summed weights."""
    reduction = _reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    loss, sample_weight = _pick_targets(input, target, weight, ignore_index, "nll_loss")
    if reduction == "mean":
        return loss.sum() / sample_weight.sum()
    return _reduce(loss, reduction)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
                  ignore_index: int = -100, reduce=None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """log_softmax + nll_loss for class-index targets; -sum(p * log_softmax) for probability
    targets (a float target shaped like input). label_smoothing mixes in the uniform distribution."""
    reduction = _reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    class_dim = _class_dim(input)
    classes = input.shape[class_dim]
    logp = _log_softmax(input, class_dim)
    if target.is_floating_point():
        if ignore_index >= 0:           # PyTorch's check (a negative index matches no class: it is allowed)
            raise RuntimeError("ignore_index is not supported for floating point target")
        return _cross_entropy_probs(logp, target, weight, reduction, label_smoothing, class_dim)
    loss, sample_weight = _pick_targets(logp, target, weight, ignore_index, "cross_entropy")
    if reduction == "mean":
        denominator = sample_weight.sum()
        nll = loss.sum() / denominator
    else:
        nll = _reduce(loss, reduction)
    if label_smoothing == 0.0:
        return nll
    w = None if weight is None else _class_weight_view(weight, logp, class_dim, "cross_entropy")
    smooth = -(logp if w is None else logp * w).sum(class_dim)
    smooth = where(target != ignore_index, smooth, 0)
    smooth = smooth.sum() / denominator if reduction == "mean" else _reduce(smooth, reduction)
    return (1.0 - label_smoothing) * nll + smooth * (label_smoothing / classes)


def _cross_entropy_probs(logp, target, weight, reduction, label_smoothing, class_dim):
    if tuple(target.shape) != tuple(logp.shape):
        raise RuntimeError(f"cross_entropy: a floating-point target holds class probabilities and must have the "
                           f"input's shape {list(logp.shape)}, got {list(target.shape)}")
    classes = logp.shape[class_dim]
    if label_smoothing > 0.0:
        target = target * (1.0 - label_smoothing) + label_smoothing / classes
    terms = logp * target
    if weight is not None:
        terms = terms * _class_weight_view(weight, logp, class_dim, "cross_entropy")
    if reduction == "mean":
        return -terms.sum() / (logp.numel() // classes) if logp.numel() else terms.sum() * float("nan")
    if reduction == "sum":
        return -terms.sum()
    return -terms.sum(class_dim)


def _same_size(input: Tensor, target: Tensor, op: str) -> None:
    if tuple(target.shape) != tuple(input.shape):
        warnings.warn(f"{op}: Using a target size ({target.shape}) that is different to the input size "
                      f"({input.shape}). This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=3)


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean",
             weight: Tensor | None = None) -> Tensor:
    reduction = _reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    _same_size(input, target, "mse_loss")
    diff = input - target
    loss = diff * diff
    return _reduce(loss * weight if weight is not None else loss, reduction)


def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean",
            weight: Tensor | None = None) -> Tensor:
    reduction = _reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    _same_size(input, target, "l1_loss")
    loss = _abs(input - target)
    return _reduce(loss * weight if weight is not None else loss, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     size_average=None, reduce=None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """-[pos_weight * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))], computed stably as
    (1 - t) * x + (1 + (pos_weight - 1) * t) * softplus(-x)."""
    reduction = _reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"Target size ({target.shape}) must be the same as input size ({input.shape})")
    softplus_neg = log1p(exp(-_abs(input))) + maximum(-input, 0)
    if pos_weight is not None:
        loss = (1 - target) * input + ((pos_weight - 1) * target + 1) * softplus_neg
    else:
        loss = (1 - target) * input + softplus_neg
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


_BCE_EPS = float(np.float32(1e-12))     # PyTorch's EPSILON, which reaches its kernels as a float32


class _BinaryCrossEntropy(Function):
    """The elementwise loss with PyTorch's backward rather than the clamped logs' derivative:
    (x - t) / max(x (1 - x), 1e-12) for the input (0 at a perfect x == t in {0, 1}, bounded near the
    edges), -logit(x) for the target. Composed of primitives, so differentiable again."""

    @staticmethod
    def forward(ctx, x, t):
        ctx.save_for_backward(x, t)
        # each log reads a safe argument where it is clamped, so no warning or NaN arises there
        below_one = x < 1
        log_1m = where(below_one, log1p(-where(below_one, x, 0.0)), -100.0).clamp(min=-100.0)
        positive = x > 0
        log_x = where(positive, log(where(positive, x, 1.0)), -100.0).clamp(min=-100.0)
        return (t - 1) * log_1m - t * log_x

    @staticmethod
    def backward(ctx, grad):
        x, t = ctx.saved_tensors
        gx = grad * (x - t) / (x * (1 - x)).clamp(min=_BCE_EPS) if ctx.needs_input_grad[0] else None
        gt = grad * (log1p(-x) - log(x)) if ctx.needs_input_grad[1] else None
        return gx, gt


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
                         reduce=None, reduction: str = "mean") -> Tensor:
    """-w * [t * log(x) + (1 - t) * log(1 - x)], each log clamped at -100 as in PyTorch."""
    reduction = _reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"Using a target size ({target.shape}) that is different to the input size "
                         f"({input.shape}) is deprecated. Please ensure they have the same size.")
    # with tensor ops, as _check_class_range: under tt.compile the outcome is a guard, so a bad input retraces
    if ((input < 0) | (input > 1) | isnan(input)).any():
        raise RuntimeError("all elements of input should be between 0 and 1")
    loss = _BinaryCrossEntropy.apply(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


__all__ = ["relu", "relu_", "leaky_relu", "sigmoid", "tanh", "silu", "logsigmoid", "gelu", "softmax",
           "log_softmax", "dropout", "linear", "layer_norm", "batch_norm", "embedding", "one_hot", "pad", "conv2d",
           "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "scaled_dot_product_attention", "nll_loss",
           "cross_entropy", "mse_loss", "l1_loss", "binary_cross_entropy_with_logits", "binary_cross_entropy"]
