"""The demo's model and training step (examples/demo.py) under @tt.compile equal eager, step by
step (the full demo reaches the same test accuracy compiled and eager: same losses, same weights)."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F

DEMO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def _demo_module():
    if not DEMO.exists():
        pytest.skip("examples/demo.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("tracetorch_demo", DEMO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(compiled: bool, steps: int = 4, backend: str = "interp"):
    demo = _demo_module()
    tt.manual_seed(0)
    model = demo.MLPResNet(dim=20, hidden=16, blocks=2)
    opt = tt.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def eval_step(x, y):
        return (model(x).argmax(1) == y).sum()

    if compiled:
        train_step, eval_step = tt.compile(train_step, backend=backend), tt.compile(eval_step, backend=backend)
    tt.manual_seed(1)
    x, y = tt.randn(8, 20), tt.randint(0, 10, (8,))
    losses = [train_step(x, y).item() for _ in range(steps)]
    model.eval()
    with tt.no_grad():
        correct = [int(eval_step(x, y)) for _ in range(2)]
    return losses, correct, model, train_step


def test_demo_training_step_compiled_equals_eager():
    lc, cc, mc, step = _run(True)
    le, ce, me, _ = _run(False)
    assert lc == le and cc == ce
    for (name, a), (_, b) in zip(mc.state_dict().items(), me.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(force=True), b.numpy(force=True), err_msg=name)
    assert step.stats()["cache_hits"] == 2
