"""Whole training steps compiled by the LLVM backend equal eager over several steps: the JIT's training
cases (SGD, Adam, AdamW, BatchNorm, Dropout, Embedding, LayerNorm, attention) and the demo's MLPResNet,
reused from test_jit_training / test_jit_demo_step with `backend="auto"` resolving to "llvm".

Compiled reductions sum in another order than numpy, so results agree to float rounding, not bit for
bit. Two parameters of these models have an exact gradient of zero (the bias of a Linear feeding
BatchNorm, which subtracts it again; the key part of the attention's qkv bias, to which softmax is
invariant): their "gradient" is rounding noise, which Adam's normalization turns into lr-sized steps
in whatever direction the noise has. Those parameters (and the BatchNorm running mean, which averages
that bias in) are only held to that bound."""
from __future__ import annotations

import numpy as np
import pytest

import test_jit_demo_step as demo
import test_jit_training as training
from tracetorch.jit import backends
from tracetorch.jit.llvm_backend import BACKEND, LLVMExecutable
from test_jit_training import test_eval_step_with_no_grad_and_train_eval_switch  # noqa: F401

STEPS = 5
NOISE_DRIVEN = {"mlp_batchnorm_dropout": {"0.bias": slice(None), "1.running_mean": slice(None)},
                "attention": {"qkv.bias": slice(8, 16)}}


@pytest.fixture(autouse=True)
def _auto_is_llvm(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "llvm", BACKEND)
    monkeypatch.setattr(backends, "AUTO_ORDER", ["llvm"])


@pytest.mark.parametrize("opt_name", sorted(training.OPTIMIZERS))
@pytest.mark.parametrize("kind", ["mlp_batchnorm_dropout", "attention"])
def test_training_steps_llvm_equal_eager(kind, opt_name):
    lc, mc, f = training._train(kind, training.OPTIMIZERS[opt_name], compiled=True, steps=STEPS, backend="auto")
    le, me, _ = training._train(kind, training.OPTIMIZERS[opt_name], compiled=False, steps=STEPS)
    assert all(isinstance(p.executable, LLVMExecutable) for p in f.programs)
    np.testing.assert_allclose(lc, le, rtol=1e-5)
    adaptive = opt_name != "sgd" and not opt_name.startswith("sgd")
    for (name, a), (_, b) in zip(mc.state_dict().items(), me.state_dict().items()):
        a, b = a.numpy(force=True).copy(), b.numpy(force=True).copy()
        noise = NOISE_DRIVEN[kind].get(name) if adaptive else None
        if noise is not None:
            lr = 1e-2
            assert np.abs(a[noise] - b[noise]).max() <= 2 * lr * STEPS, name
            a[noise] = b[noise] = 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6, err_msg=name)
    s = f.stats()
    traces = 1 if opt_name == "sgd" else 2          # plain SGD creates no state: step 2 needs no new trace
    assert s["traces"] == traces and s["cache_hits"] == STEPS - traces, s


def test_demo_training_step_llvm_equals_eager():
    lc, cc, mc, step = demo._run(True, backend="auto")
    le, ce, me, _ = demo._run(False)
    np.testing.assert_allclose(lc, le, rtol=1e-5)
    assert cc == ce
    for (name, a), (_, b) in zip(mc.state_dict().items(), me.state_dict().items()):
        np.testing.assert_allclose(a.numpy(force=True), b.numpy(force=True), rtol=1e-4, atol=1e-6, err_msg=name)
    assert step.stats()["cache_hits"] == 2
    assert isinstance(step.programs[0].executable, LLVMExecutable)
