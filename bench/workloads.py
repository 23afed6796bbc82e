"""The workloads of shared/BENCH.md, for every system that has a version of them.

A workload function returns its `Case`s (one per size). A case makes its
numpy inputs once; each system's factory then builds a fresh `Instance` from
them (its own tensors, model and optimizer state), so the eager and compiled
copies of a training step start from the same state and can be compared.
The element-wise formulas are written once over an array namespace (numpy,
tracetorch or torch) so every system computes the very same expression.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Instance:
    """One system's copy of a case: `fn(*args)` is one call; `state()` the arrays that calls change."""
    fn: Callable
    args: tuple
    state: Callable[[], dict] = dict


@dataclass
class Case:
    """One workload at one size. Factories take the inputs (and tracetorch/torch, device) and build an Instance."""
    workload: str
    name: str
    title: str
    params: dict
    make_inputs: Callable[[], dict]
    tracetorch: Callable[[dict, str], Instance] | None = None
    numpy: Callable[[dict], Instance] | None = None
    torch: Callable[[dict, Any, str], Instance] | None = None
    ideal_bytes: int | None = None        # each input read once, each output written once: the least traffic
    tolerance: tuple[float, float] = (1e-4, 1e-5)   # rtol, atol of the checks against tracetorch eager
    cross_check: bool = True              # numpy and torch results are comparable to tracetorch eager


def build_cases(quick: bool, device: str) -> list[Case]:
    """Every case of every workload at the sizes of a quick or a full run."""
    cases = []
    for workload in (w1, w1b, w2, w3, w4, w5, w6):
        cases.extend(workload(quick, device))
    return cases


# BENCH.md's C1: the workloads whose compile time counts (the bench measures every selected one).
COMPILE_TIME_WORKLOADS = ("W3", "W5")


# ---------------------------------------------------------------- helpers

def _rng():
    return np.random.default_rng(0)


def _tt_tensor(array, device):
    """A tracetorch tensor sharing `array` (inputs are read-only; parameters are copied into)."""
    import tracetorch as tt
    t = tt.from_numpy(array)
    return t if device == "cpu" else t.to(device)


def _torch_tensor(torch, array, device):
    t = torch.from_numpy(array)
    return t if device == "cpu" else t.to(device)


def _n_label(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def _bind(formula, xp):
    """`formula(xp, *arrays)` as a function of the arrays alone, named after the formula (for IR dumps)."""
    def bound(*arrays):
        return formula(xp, *arrays)
    bound.__name__ = bound.__qualname__ = formula.__name__
    return bound


def _elementwise_case(workload, name, title, params, make_inputs, formula, ideal_bytes, device):
    """A case computing `formula(xp, *inputs)` on numpy, tracetorch and torch alike."""
    def on_tracetorch(inputs, dev):
        import tracetorch as tt
        return Instance(_bind(formula, tt), tuple(_tt_tensor(v, dev) for v in inputs.values()))

    def on_numpy(inputs):
        return Instance(_bind(formula, np), tuple(inputs.values()))

    def on_torch(inputs, torch, dev):
        return Instance(_bind(formula, torch), tuple(_torch_tensor(torch, v, dev) for v in inputs.values()))

    return Case(workload, name, title, params, make_inputs, on_tracetorch, on_numpy, on_torch,
                ideal_bytes=ideal_bytes)


# ---------------------------------------------------------------- W1, W1b: element-wise

def gelu_formula(xp, x, a, b):
    """W1. z^3 is written z*z*z: numpy's z**3 calls powf (10x slower), the anchors used products."""
    z = x * a + b
    return 0.5 * z * (1 + xp.tanh(0.79788456 * (z + 0.044715 * (z * z * z))))


def chain10_formula(xp, x, r):
    """W1b: ten element-wise ops, three of them broadcasting the row vector r over the rows of x."""
    t = x * r
    t = t + 1.0
    t = t * x
    t = t - r
    t = t * t
    t = t + 0.5
    t = xp.sqrt(t)
    t = t * r
    t = t + x
    return t * 0.25


def w1(quick, device):
    n = 1 << (16 if quick else 26 if device == "cuda" else 24)

    def make_inputs():
        rng = _rng()
        return {k: rng.standard_normal(n, dtype=np.float32) for k in ("x", "a", "b")}
    return [_elementwise_case("W1", f"W1 N={_n_label(n)}", "GELU (tanh formula) of x*a+b", {"n": n},
                              make_inputs, gelu_formula, 4 * 4 * n, device)]


def w1b(quick, device):
    rows, cols = (128, 512) if quick else (4096, 4096)

    def make_inputs():
        rng = _rng()
        return {"x": rng.standard_normal((rows, cols), dtype=np.float32),
                "r": rng.standard_normal(cols, dtype=np.float32)}
    return [_elementwise_case("W1b", f"W1b {rows}x{cols}", "10-op chain broadcasting a row vector",
                              {"rows": rows, "cols": cols}, make_inputs, chain10_formula,
                              4 * (2 * rows * cols + cols), device)]


# ---------------------------------------------------------------- W2: row reductions

def softmax_rows(xp, x):
    return xp.softmax(x, dim=1)


def layer_norm_rows(F, x, w, b):
    return F.layer_norm(x, (x.shape[1],), w, b)


def _numpy_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _numpy_layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(axis=1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=1, keepdims=True)
    return centered / np.sqrt(var + eps) * w + b


def _softmax_tt(inputs, dev):
    import tracetorch as tt
    return Instance(_bind(softmax_rows, tt), (_tt_tensor(inputs["x"], dev),))


def _softmax_torch(inputs, torch, dev):
    return Instance(_bind(softmax_rows, torch), (_torch_tensor(torch, inputs["x"], dev),))


def _layer_norm_tt(inputs, dev):
    import tracetorch.nn.functional as F
    return Instance(_bind(layer_norm_rows, F), tuple(_tt_tensor(v, dev) for v in inputs.values()))


def _layer_norm_torch(inputs, torch, dev):
    return Instance(_bind(layer_norm_rows, torch.nn.functional),
                    tuple(_torch_tensor(torch, v, dev) for v in inputs.values()))


def w2(quick, device):
    sizes = [256] if quick else [4096, 8192] if device == "cuda" else [4096]
    cases = []
    for n in sizes:
        def make_inputs(n=n):
            rng = _rng()
            return {"x": rng.standard_normal((n, n), dtype=np.float32),
                    "w": rng.standard_normal(n, dtype=np.float32),
                    "b": rng.standard_normal(n, dtype=np.float32)}

        cases.append(Case("W2", f"W2 softmax {n}x{n}", "softmax over rows", {"rows": n, "cols": n}, make_inputs,
                          _softmax_tt, lambda inputs: Instance(_numpy_softmax, (inputs["x"],)), _softmax_torch,
                          ideal_bytes=2 * 4 * n * n))
        cases.append(Case("W2", f"W2 layernorm {n}x{n}", "layer norm over rows (affine)",
                          {"rows": n, "cols": n}, make_inputs, _layer_norm_tt,
                          lambda inputs: Instance(_numpy_layer_norm, tuple(inputs.values())), _layer_norm_torch,
                          ideal_bytes=4 * (2 * n * n + 2 * n)))
    return cases


# ---------------------------------------------------------------- W3: MLP training step

MLP_SIZES = (784, 512, 512, 10)


def _mlp_parameters(sizes):
    """PyTorch's Linear init (uniform, bound 1/sqrt(fan_in)), named as in nn.Sequential."""
    rng = _rng()
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1 / np.sqrt(fan_in)
        params[f"{2 * i}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        params[f"{2 * i}.bias"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)
    return params


def _mlp(nn, sizes):
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def training_step(model, opt, loss_fn):
    """The whole step BENCH.md times: zero_grad, forward, backward, optimizer step; returns the loss."""
    def step(*batch):
        opt.zero_grad()
        loss = loss_fn(model, *batch)
        loss.backward()
        opt.step()
        return loss
    return step


def _load_parameters(model, arrays: dict, no_grad, to_tensor):
    """Copy `arrays` (by parameter name) into `model`, so every system starts from the same weights."""
    params = dict(model.named_parameters())
    if set(params) != set(arrays):
        raise RuntimeError(f"parameter names differ: {sorted(set(params) ^ set(arrays))}")
    with no_grad():
        for name, p in params.items():
            p.copy_(to_tensor(arrays[name]))


def _parameter_state(model):
    return lambda: {name: p for name, p in model.named_parameters()}


def _cross_entropy_loss(F):
    return lambda model, x, y: F.cross_entropy(model(x), y)


def _numpy_mlp_step(params: dict, x, y, lr, momentum):
    """W3 by hand in numpy: forward, cross-entropy, backward, SGD with momentum (PyTorch's update)."""
    names = sorted({k.split(".")[0] for k in params}, key=int)
    buffers = {}

    def step(x, y):
        acts = [x]
        for i, layer in enumerate(names):
            h = acts[-1] @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
            acts.append(np.maximum(h, 0) if i < len(names) - 1 else h)
        logits = acts[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(y))
        loss = -log_probs[rows, y].mean()
        grad = np.exp(log_probs)
        grad[rows, y] -= 1
        grad /= len(y)
        grads = {}
        for i in reversed(range(len(names))):
            layer = names[i]
            grads[f"{layer}.weight"] = grad.T @ acts[i]
            grads[f"{layer}.bias"] = grad.sum(axis=0)
            if i:
                grad = (grad @ params[f"{layer}.weight"]) * (acts[i] > 0)
        for name, g in grads.items():
            buf = buffers.get(name)
            buf = g if buf is None else momentum * buf + g
            buffers[name] = buf
            params[name] -= lr * buf
        return np.float32(loss)

    return Instance(step, (x, y), lambda: dict(params))


def w3(quick, device):
    batches = [32] if quick else [128, 1024]
    lr, momentum = 0.01, 0.9
    cases = []
    for batch in batches:
        def make_inputs(batch=batch):
            rng = _rng()
            return {"x": rng.standard_normal((batch, MLP_SIZES[0]), dtype=np.float32),
                    "y": rng.integers(0, MLP_SIZES[-1], batch).astype(np.int64),
                    "params": _mlp_parameters(MLP_SIZES)}

        def on_tracetorch(inputs, dev):
            import tracetorch as tt
            import tracetorch.nn as nn
            import tracetorch.nn.functional as F
            model = _mlp(nn, MLP_SIZES).to(dev)
            _load_parameters(model, inputs["params"], tt.no_grad, lambda a: _tt_tensor(a, dev))
            opt = tt.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
            return Instance(training_step(model, opt, _cross_entropy_loss(F)),
                            (_tt_tensor(inputs["x"], dev), _tt_tensor(inputs["y"], dev)), _parameter_state(model))

        def on_torch(inputs, torch, dev):
            model = _mlp(torch.nn, MLP_SIZES).to(dev)
            _load_parameters(model, inputs["params"], torch.no_grad, lambda a: _torch_tensor(torch, a, dev))
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
            return Instance(training_step(model, opt, _cross_entropy_loss(torch.nn.functional)),
                            (_torch_tensor(torch, inputs["x"], dev), _torch_tensor(torch, inputs["y"], dev)),
                            _parameter_state(model))

        def on_numpy(inputs):
            params = {k: v.copy() for k, v in inputs["params"].items()}
            return _numpy_mlp_step(params, inputs["x"], inputs["y"], lr, momentum)

        cases.append(Case("W3", f"W3 B={batch}", "MLP 784-512-512-10 training step, SGD momentum",
                          {"batch": batch}, make_inputs, on_tracetorch, on_numpy, on_torch,
                          tolerance=(1e-3, 1e-5)))
    return cases


# ---------------------------------------------------------------- W4: per-call overhead

def chain50(xp, x):
    """W4: 50 chained scalar ops; nothing to compute, everything is per-op overhead."""
    for _ in range(25):
        x = x * 1.01
        x = x + 0.5
    return x


def w4(quick, device):
    def make_inputs():
        return {"x": _rng().standard_normal((16, 16), dtype=np.float32)}
    return [_elementwise_case("W4", "W4 50 ops 16x16", "50 chained element-wise ops on a small tensor",
                              {"rows": 16, "cols": 16, "ops": 50}, make_inputs, chain50,
                              None, device)]


# ---------------------------------------------------------------- W5, W6: the example models

def _example_models(nn, F):
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from examples.models import define_models
    return define_models(nn, F)


def _model_case(workload, name, title, params, make_batch, build_model, make_optimizer, loss_fn, tolerance,
                cross_check):
    """A training step of an example model; the tracetorch model's initial weights are shared with torch."""
    def tracetorch_model():
        import tracetorch as tt
        import tracetorch.nn as nn
        import tracetorch.nn.functional as F
        tt.manual_seed(0)
        return build_model(_example_models(nn, F))

    def make_inputs():
        inputs = dict(make_batch())
        try:
            inputs["params"] = {k: p.detach().numpy().copy() for k, p in tracetorch_model().named_parameters()}
        except Exception:     # tracetorch.nn missing: torch then runs from its own init, unchecked
            inputs["params"] = None
        return inputs

    def on_tracetorch(inputs, dev):
        import tracetorch as tt
        import tracetorch.nn.functional as F
        model = tracetorch_model().to(dev)
        model.train()
        opt = make_optimizer(tt.optim, model)
        batch = tuple(_tt_tensor(v, dev) for k, v in inputs.items() if k != "params")
        tt.manual_seed(0)
        return Instance(training_step(model, opt, loss_fn(F)), batch, _parameter_state(model))

    def on_torch(inputs, torch, dev):
        torch.manual_seed(0)
        model = build_model(_example_models(torch.nn, torch.nn.functional)).to(dev)
        if inputs["params"] is not None:
            _load_parameters(model, inputs["params"], torch.no_grad, lambda a: _torch_tensor(torch, a, dev))
        model.train()
        opt = make_optimizer(torch.optim, model)
        batch = tuple(_torch_tensor(torch, v, dev) for k, v in inputs.items() if k != "params")
        return Instance(training_step(model, opt, loss_fn(torch.nn.functional)), batch, _parameter_state(model))

    return Case(workload, name, title, params, make_inputs, on_tracetorch, None, on_torch,
                tolerance=tolerance, cross_check=cross_check)


def w5(quick, device):
    batch = 100

    def make_batch():
        rng = _rng()
        return {"x": rng.random((batch, 784), dtype=np.float32), "y": rng.integers(0, 10, batch).astype(np.int64)}
    return [_model_case("W5", f"W5 MLPResNet B={batch}", "the demo's MLPResNet training step (Adam)",
                        {"batch": batch}, make_batch, lambda models: models.MLPResNet(),
                        lambda optim, model: optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3),
                        _cross_entropy_loss, tolerance=(1e-3, 1e-4),
                        cross_check=False)]   # dropout masks differ between libraries


def w6(quick, device):
    batch, seq, width, vocab = (2, 32, 64, 256) if quick else (8, 64, 128, 256)

    def make_batch():
        rng = _rng()
        return {"idx": rng.integers(0, vocab, (batch, seq)).astype(np.int64),
                "positions": np.arange(seq, dtype=np.int64),
                "targets": rng.integers(0, vocab, (batch, seq)).astype(np.int64)}

    def loss_fn(F):
        return lambda model, idx, positions, targets: F.cross_entropy(
            model(idx, positions).reshape(-1, vocab), targets.reshape(-1))

    return [_model_case("W6", f"W6 GPT B={batch} T={seq} C={width}",
                        "2-layer GPT training step (causal attention, GELU MLP, AdamW)",
                        {"batch": batch, "seq": seq, "width": width, "vocab": vocab, "layers": 2, "heads": 4},
                        make_batch, lambda models: models.TinyGPT(vocab, seq, width, heads=4, layers=2),
                        lambda optim, model: optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1),
                        loss_fn, tolerance=(1e-3, 1e-3), cross_check=True)]
