"""`Optimizer`: parameter groups, per-parameter state and PyTorch-format state dicts.

Numeric hyperparameters (lr, momentum, betas, eps, weight_decay, ...) live in
0-d float64 tensors that the update math reads. A scheduler that changes the
learning rate therefore changes data, not a constant baked into a compiled
step, so `@tt.compile` of a training step does not recompile. Users still see
Python floats: `group["lr"]` reads and writes a float, and the write lands in
the same tensor in place.
"""
from __future__ import annotations

import numbers
from collections import defaultdict
from typing import Any, Callable, Iterable

from .. import dtypes as D
from ..autograd import enable_grad, no_grad
from ..creation import tensor as _tensor
from ..tensor import Tensor


class ParamGroup(dict):
    """One parameter group: a dict whose numeric hyperparameters are backed by 0-d tensors.

    `group[key]` for a key in `group.tensors` returns a Python float (a tuple of
    floats for `betas`) read from the tensor; `group[key] = x` fills that tensor
    in place, so its identity never changes. Other keys ("params", flags such as
    "nesterov", scheduler keys such as "initial_lr") are ordinary dict entries.
    The plain dict view (`dict(group)`, `group.items()`) holds floats too. A float read
    is `tensor.item()`, so inside a traced region the tracer sees it as a value read.
    """

    __slots__ = ("tensors", "_tensor_keys")

    def __init__(self, values: dict, tensor_keys: Iterable[str] = ()):
        super().__init__()
        self.tensors: dict[str, Any] = {}
        self._tensor_keys = frozenset(tensor_keys)
        for key, value in values.items():
            self[key] = value

    def __getitem__(self, key):
        t = self.tensors.get(key)
        if t is None:
            return dict.__getitem__(self, key)
        if isinstance(t, tuple):
            return tuple(x.item() for x in t)
        return t.item()

    def __setitem__(self, key, value):
        if key not in self._tensor_keys or (value is None and key not in self.tensors):
            dict.__setitem__(self, key, value)      # e.g. a custom optimizer's lr=None stays a plain entry
            return
        value = _hyper_value(key, value)
        old = self.tensors.get(key)
        if old is None:
            self.tensors[key] = _hyper_tensor(value)
        else:
            _fill_hyper(key, old, value)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        self.tensors.pop(key, None)
        dict.__delitem__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def pop(self, key, *default):
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def items(self):
        return [(k, self[k]) for k in self]

    def values(self):
        return [self[k] for k in self]

    def copy(self) -> dict:
        return dict(self.items())

    def __repr__(self) -> str:
        return repr(self.copy())

    def __reduce__(self):
        return (ParamGroup, (self.copy(), tuple(self._tensor_keys)))


def _hyper_value(key, value):
    """Normalize a hyperparameter to a float (a tuple of floats for tuple-valued ones like betas)."""
    if isinstance(value, (tuple, list)):
        return tuple(_hyper_value(key, v) for v in value)
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"optimizer hyperparameter '{key}' must be a number or a one-element tensor, "
                             f"got a tensor of shape {list(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"optimizer hyperparameter '{key}' must be a number, got {type(value).__name__}")
    return float(value)


def _hyper_tensor(value):
    if isinstance(value, tuple):
        return tuple(_tensor(v, dtype=D.float64) for v in value)
    return _tensor(value, dtype=D.float64)


def _fill_hyper(key, old, value):
    with no_grad():
        if isinstance(old, tuple):
            if not isinstance(value, tuple) or len(value) != len(old):
                raise ValueError(f"optimizer hyperparameter '{key}' expects {len(old)} values, got {value!r}")
            for t, v in zip(old, value):
                t.fill_(v)
        else:
            if isinstance(value, tuple):
                raise ValueError(f"optimizer hyperparameter '{key}' expects one number, got {value!r}")
            old.fill_(value)


def is_nonzero(t: Tensor) -> bool:
    """Whether a hyperparameter tensor is nonzero: decides which update branch runs.

    A tensor comparison (not a Python float) so that a tracer can guard on the branch taken
    rather than on the value.
    """
    return bool(t != 0)


def per_dtype(*scalars):
    """dtype -> the 0-d `scalars` cast to that dtype, each cast made once per dtype.

    The update math would cast a float64 hyperparameter to the parameter's dtype at every use
    (PyTorch's promotion of 0-d tensors); casting once per group saves an op per parameter and
    lets in-place updates take the same-dtype fast path. None entries stay None.
    """
    cache: dict = {}

    def get(dtype):
        cast = cache.get(dtype)
        if cast is None:
            cast = cache[dtype] = tuple(None if s is None else s.to(dtype) for s in scalars)
        return cast
    return get


def reject_unsupported(differentiable, fused) -> None:
    """PyTorch's implementation switches that tracetorch does not have."""
    if differentiable:
        raise NotImplementedError("differentiable=True is not supported by tracetorch optimizers")
    if fused:
        raise NotImplementedError("fused=True is not supported; @tt.compile fuses the whole step instead")


class Optimizer:
    """Base class: subclasses set `hyperparameter_tensors` and implement `_update_group(group)`.

    `step(closure)` evaluates the closure with grad enabled, then updates every group under
    `no_grad` with in-place tensor ops.
    """

    hyperparameter_tensors: tuple[str, ...] = ("lr",)

    def __init__(self, params, defaults: dict):
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got {type(params).__name__}")
        self.defaults = dict(defaults)
        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[ParamGroup] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """Add a group; missing hyperparameters come from `defaults`."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering "
                            "of tensors in sets will change between runs. Please use a list instead.")
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        if len({id(p) for p in params}) != len(params):
            import warnings
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in future, this will "
                          "cause an error", UserWarning, stacklevel=3)
        taken = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in taken for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        values = dict(param_group)
        values["params"] = params
        for name, default in self.defaults.items():
            values.setdefault(name, default)
        self.param_groups.append(ParamGroup(values, self.hyperparameter_tensors))

    # ------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (default) or zero every parameter's `.grad`. (Dropping does not read `.grad` first: a
        compiled step then does not depend on, or guard, what the previous step left there.)"""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                    continue
                g = p.grad
                if g is None:
                    continue
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
                with no_grad():
                    g.zero_()

    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a `.grad`; returns the closure's loss."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                self._update_group(group)
        self._opt_called = True
        return loss

    def _update_group(self, group: ParamGroup) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _update_group(group) or step()")

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict:
        """{'state': {index: {name: tensor}}, 'param_groups': [{hyperparameters..., 'params': [index]}]}.

        Parameters are numbered in group order, as PyTorch does; hyperparameters are Python
        floats and state entries are the live tensors (not copies).
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {(index[id(k)] if isinstance(k, Tensor) else k): dict(v) for k, v in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters into the existing 0-d tensors and state into the existing
        state tensors where shapes and dtypes agree (tensor identity is kept), else into copies."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for group, saved in zip(self.param_groups, saved_groups):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                                 "optimizer's group")
        params = {i: p for group, saved in zip(self.param_groups, saved_groups)
                  for i, p in zip(saved["params"], group["params"])}
        for key, saved_state in state_dict["state"].items():        # check all before changing anything
            p = params.get(key)
            for name, value in saved_state.items():
                if p is not None and name != "step" and isinstance(value, Tensor) and value.shape != p.shape:
                    raise ValueError(f"loaded state dict has state '{name}' of shape {list(value.shape)} for "
                                     f"parameter {key} of shape {list(p.shape)}")
        state: defaultdict = defaultdict(dict)
        for key, saved_state in state_dict["state"].items():
            p = params.get(key)
            if p is None:
                state[key] = saved_state
                continue
            old = self.state.get(p, {})
            state[p] = {name: _restore_state(p, name, value, old.get(name)) for name, value in saved_state.items()}
        for group, saved in zip(self.param_groups, saved_groups):
            for key, value in saved.items():
                if key != "params":
                    group[key] = value
        self.state = state

    # ------------------------------------------------------------ printing
    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def _restore_state(param: Tensor, name: str, value, current):
    """A loaded state entry as this optimizer's tensor: moved to the parameter's device and cast to
    its dtype (except 'step', which stays a CPU counter, as in PyTorch), written into `current` when
    it fits, else a fresh copy. (A checkpoint saved or loaded on the CPU thus resumes a cuda model.)"""
    if name == "step" and not isinstance(value, Tensor):
        value = _tensor(float(value), dtype=step_dtype())
    if not isinstance(value, Tensor):
        return value
    if name != "step":
        value = value.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
    with no_grad():
        if (isinstance(current, Tensor) and current.shape == value.shape and current.dtype is value.dtype
                and current.device == value.device):
            return current.copy_(value)
        return value.detach().clone()


def step_dtype():
    """dtype of per-parameter step counters, as PyTorch picks it."""
    return D.float64 if D.get_default_dtype() is D.float64 else D.float32
