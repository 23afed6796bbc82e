"""Whole training steps compiled (forward, loss.backward(), optimizer.step() in one program) equal
eager over several steps: SGD, Adam, AdamW, BatchNorm, Dropout, Embedding, LayerNorm, attention."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.nn.functional as F


class Attention(nn.Module):
    """Token embedding, one self-attention block with LayerNorm, and a classifier."""

    def __init__(self, vocab=11, dim=8, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(dim, classes)

    def forward(self, tokens):
        h = self.emb(tokens)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = self.norm(h + self.drop(a))
        return self.out(h.mean(1))


def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


OPTIMIZERS = {
    "sgd": lambda p: tt.optim.SGD(p, lr=0.1),
    "sgd_momentum_nesterov_wd": lambda p: tt.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda p: tt.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adamw_amsgrad": lambda p: tt.optim.AdamW(p, lr=1e-2, amsgrad=True),
}


def _data(kind):
    tt.manual_seed(11)
    if kind == "attention":
        return tt.randint(0, 11, (4, 5)), tt.randint(0, 3, (4,))
    return tt.randn(10, 6), tt.randint(0, 3, (10,))


def _train(kind, make_opt, compiled, steps=5, backend="interp"):
    """`backend`: the reference interpreter by default (bit-for-bit with eager); the LLVM tests pass "auto"."""
    tt.manual_seed(0)
    model = Attention() if kind == "attention" else _mlp()
    opt = make_opt(model.parameters())

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    f = tt.compile(step, backend=backend) if compiled else step
    x, y = _data(kind)
    tt.manual_seed(5)                       # the dropout masks: the same stream in both runs
    losses = [float(f(x, y)) for _ in range(steps)]
    return losses, model, f


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["mlp_batchnorm_dropout", "attention"])
def test_training_steps_compiled_equal_eager(kind, opt_name):
    lc, mc, f = _train(kind, OPTIMIZERS[opt_name], compiled=True)
    le, me, _ = _train(kind, OPTIMIZERS[opt_name], compiled=False)
    np.testing.assert_allclose(lc, le, rtol=1e-6)
    for (name, a), (_, b) in zip(mc.state_dict().items(), me.state_dict().items()):
        np.testing.assert_allclose(a.numpy(force=True), b.numpy(force=True), rtol=1e-5, atol=1e-6, err_msg=name)
    s = f.stats()
    # step 1 may create optimizer state (then step 2 traces again); from then on one program serves every
    # call (zero_grad does not read the .grad the previous step left)
    want = 1 if opt_name == "sgd" else 2
    assert s["traces"] == want and s["cache_hits"] == s["calls"] - want, s


def test_eval_step_with_no_grad_and_train_eval_switch():
    tt.manual_seed(0)
    model = _mlp()
    evaluate = tt.compile(lambda x: model(x).argmax(1))
    x = tt.randn(10, 6)
    model.eval()
    with tt.no_grad():
        for _ in range(3):
            np.testing.assert_array_equal(evaluate(x).numpy(), model(x).argmax(1).numpy())
    assert evaluate.stats()["traces"] == 1
