"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay (PyTorch's formulas)."""
from __future__ import annotations

from .optimizer import Optimizer, ParamGroup, is_nonzero, per_dtype, reject_unsupported


class SGD(Optimizer):
    """g = grad (+ weight_decay * p); with momentum, buf = g on the first step, then
    buf = momentum * buf + (1 - dampening) * g, and g = g + momentum * buf (Nesterov) or buf;
    finally p -= lr * g. `maximize` ascends instead."""

    hyperparameter_tensors = ("lr", "momentum", "dampening", "weight_decay")

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        reject_unsupported(differentiable, fused)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _update_group(self, group: ParamGroup) -> None:
        hyper = group.tensors
        use_decay = is_nonzero(hyper["weight_decay"])
        use_momentum = is_nonzero(hyper["momentum"])
        nesterov, maximize = group["nesterov"], group["maximize"]
        scalars = per_dtype(-hyper["lr"], hyper["momentum"], 1 - hyper["dampening"], hyper["weight_decay"])
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            neg_lr, momentum, grad_weight, weight_decay = scalars(p.dtype)
            if maximize:
                g = -g
            if use_decay:
                g = g + p * weight_decay
            if use_momentum:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf.mul_(momentum).add_(g * grad_weight)
                g = g + buf * momentum if nesterov else buf
            p.add_(g * neg_lr)
