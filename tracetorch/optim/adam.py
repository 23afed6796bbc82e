"""Adam and AdamW (decoupled weight decay), with PyTorch's bias correction and optional AMSGrad."""
from __future__ import annotations

import numpy as np

from .. import dtypes as D
from .. import math as M
from ..ops.dispatch import STATE
from ..creation import zeros, zeros_like
from .optimizer import Optimizer, ParamGroup, is_nonzero, per_dtype, reject_unsupported, step_dtype


class Adam(Optimizer):
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2 (v_max = max(v_max, v) with amsgrad);
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).

    Weight decay adds `weight_decay * p` to the gradient, or with `decoupled_weight_decay`
    (AdamW) scales the parameter by `1 - lr * weight_decay` first.
    """

    hyperparameter_tensors = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        reject_unsupported(differentiable, fused)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _init_state(self, state: dict, p, amsgrad: bool) -> None:
        state["step"] = zeros((), dtype=step_dtype())
        state["exp_avg"] = zeros_like(p)
        state["exp_avg_sq"] = zeros_like(p)
        if amsgrad:
            state["max_exp_avg_sq"] = zeros_like(p)

    def _update_group(self, group: ParamGroup) -> None:
        hyper = group.tensors
        lr = hyper["lr"]
        beta1, beta2 = hyper["betas"]
        amsgrad, maximize = group["amsgrad"], group["maximize"]
        decay = is_nonzero(hyper["weight_decay"])
        decoupled = decay and group["decoupled_weight_decay"]
        scalars = per_dtype(1 - beta1, beta2, 1 - beta2, hyper["eps"], hyper["weight_decay"],
                            1 - lr * hyper["weight_decay"] if decoupled else None)
        # eagerly, parameters at the same step share their bias corrections (the same 8 ops on 0-d
        # tensors, once: W5's 28 parameters ran ~220 of them per step); a trace keeps one set per
        # parameter, as the step count is a tensor the compiled program reads each call
        corrections = {} if STATE.tracer is None else None
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            one_minus_beta1, sq_decay, one_minus_beta2, eps, weight_decay, shrink = scalars(p.dtype)
            state = self.state[p]
            if not state:
                self._init_state(state, p, amsgrad)
            step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step.add_(1)
            key = (float(step._data), p.dtype) if corrections is not None and type(step._data) is np.ndarray \
                else None
            found = corrections.get(key) if key is not None else None
            if found is None:
                # bias corrections in float64 from the per-parameter step count, as PyTorch computes them
                found = ((lr / (beta1 ** step - 1)).to(p.dtype), M.sqrt(1 - beta2 ** step).to(p.dtype))
                if key is not None:
                    corrections[key] = found
            neg_step_size, bias_correction2_sqrt = found
            if key is not None and _on_arrays(p, g, exp_avg, exp_avg_sq, state.get("max_exp_avg_sq")):
                _update_arrays(p, g, exp_avg, exp_avg_sq, state.get("max_exp_avg_sq"), maximize,
                               shrink if decoupled else None, weight_decay if decay and not decoupled else None,
                               one_minus_beta1, sq_decay, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt)
                continue
            if maximize:
                g = -g
            if decoupled:
                p.mul_(shrink)
            elif decay:
                g = g + p * weight_decay
            exp_avg.add_((g - exp_avg) * one_minus_beta1)
            exp_avg_sq.mul_(sq_decay).add_(g * g * one_minus_beta2)
            if amsgrad:
                max_exp_avg_sq = state["max_exp_avg_sq"]
                max_exp_avg_sq.copy_(M.maximum(max_exp_avg_sq, exp_avg_sq))
                exp_avg_sq = max_exp_avg_sq
            denom = M.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
            p.add_(exp_avg / denom * neg_step_size)


def _on_arrays(p, g, *states) -> bool:
    """Whether the update may run on the arrays themselves: numpy storage of one plain float32 or
    float64 dtype (not bfloat16, which rounds after every op), the parameter and its state writeable
    and of one shape (the tensor ops would compute the same ufuncs on them)."""
    dt = p._dtype
    if dt is not D.float32 and dt is not D.float64:
        return False
    for t in (p, g) + states:
        if t is not None and (type(t._data) is not np.ndarray or t._dtype is not dt
                              or t._data.shape != p._data.shape or (t is not g and not t._data.flags.writeable)):
            return False
    return True


def _update_arrays(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, maximize, shrink, weight_decay,
                   one_minus_beta1, sq_decay, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt):
    """The tensor update of `_update_group`, eagerly, as the numpy ufuncs its ops run, in their order
    (the same bits) but without a tensor per intermediate: ~10 numpy calls where ~15 ops each paid
    the dispatch (W5's eager Adam step). Version counters move as the in-place ops move them."""
    P, G, Ma, Va = p._data, g._data, exp_avg._data, exp_avg_sq._data
    with np.errstate(all="ignore"):
        if maximize:
            G = np.negative(G)
        if shrink is not None:
            np.multiply(P, shrink._data, out=P)
            p._version[0] += 1
        elif weight_decay is not None:
            G = np.add(G, np.multiply(P, weight_decay._data))
        t = np.subtract(G, Ma)
        np.multiply(t, one_minus_beta1._data, out=t)
        np.add(Ma, t, out=Ma)
        np.multiply(Va, sq_decay._data, out=Va)
        np.multiply(G, G, out=t)
        np.multiply(t, one_minus_beta2._data, out=t)
        np.add(Va, t, out=Va)
        exp_avg._version[0] += 1
        exp_avg_sq._version[0] += 2
        if max_exp_avg_sq is not None:
            np.maximum(max_exp_avg_sq._data, Va, out=max_exp_avg_sq._data)
            max_exp_avg_sq._version[0] += 1
            Va = max_exp_avg_sq._data
        np.sqrt(Va, out=t)
        np.divide(t, bias_correction2_sqrt._data, out=t)
        np.add(t, eps._data, out=t)
        np.divide(Ma, t, out=t)
        np.multiply(t, neg_step_size._data, out=t)
        np.add(P, t, out=P)
        p._version[0] += 1


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True)
