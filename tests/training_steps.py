"""The training step many tests compile: zero_grad, a loss, backward, step, as a user writes it."""
from __future__ import annotations

import tracetorch.nn.functional as F


def training_step(model, opt, loss_fn=F.cross_entropy):
    """step(x, y) -> the loss of one optimizer step of `model` on (x, y)."""
    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step
