"""Adam and AdamW (decoupled weight decay), with PyTorch's bias correction and optional AMSGrad."""
from __future__ import annotations

import numpy as np

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
            if maximize:
                g = -g
            state = self.state[p]
            if not state:
                self._init_state(state, p, amsgrad)
            step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step.add_(1)
            if decoupled:
                p.mul_(shrink)
            elif decay:
                g = g + p * weight_decay
            exp_avg.add_((g - exp_avg) * one_minus_beta1)
            exp_avg_sq.mul_(sq_decay).add_(g * g * one_minus_beta2)
            # bias corrections in float64 from the per-parameter step count, as PyTorch computes them
            key = (float(step._data), p.dtype) if corrections is not None and type(step._data) is np.ndarray \
                else None
            found = corrections.get(key) if key is not None else None
            if found is None:
                found = ((lr / (beta1 ** step - 1)).to(p.dtype), M.sqrt(1 - beta2 ** step).to(p.dtype))
                if key is not None:
                    corrections[key] = found
            neg_step_size, bias_correction2_sqrt = found
            if amsgrad:
                max_exp_avg_sq = state["max_exp_avg_sq"]
                max_exp_avg_sq.copy_(M.maximum(max_exp_avg_sq, exp_avg_sq))
                exp_avg_sq = max_exp_avg_sq
            denom = M.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
            p.add_(exp_avg / denom * neg_step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True)
